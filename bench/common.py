"""What the benchmark scripts share: the machine line every figure is printed with, and the
configs users run, composed as the entry scripts compose them."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("EVOPOSE_ROOT", str(ROOT))


def machine() -> str:
    """CPU model, cores, torch and its threads, GPU: what a figure was measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads){gpu},"
        f" Python {platform.python_version()}"
    )


def compose(config_name: str, overrides: list[str], output_dir: str | os.PathLike):
    """``conf/<config_name>.yaml`` with ``overrides``, as a run writing to ``output_dir`` sees it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = hydra_compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.output_dir = cfg.hydra.runtime.output_dir = str(output_dir)
    return cfg


def run_search(overrides: list[str], sweep_dir: Path | None = None) -> tuple[str, float, float, list[dict]]:
    """``python evolve.py <overrides>`` in its own process and a fresh sweep directory, as a user runs it:
    ``sweep_dir`` (kept), or a temporary one.

    Returns the command as shown (without the sweep directory), its start (wall clock), its seconds,
    and the individuals of its ``state.json``; exits naming the command when it fails.
    """
    with tempfile.TemporaryDirectory() as tmp:
        sweep = Path(tmp) / "search" if sweep_dir is None else Path(sweep_dir)
        command = [sys.executable, "evolve.py", f"hydra.sweep.dir={sweep}", *overrides]
        start = time.time()
        run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        total = time.time() - start
        if run.returncode != 0:
            sys.exit(f"{' '.join(command)} failed:\n{run.stderr[-3000:]}")
        individuals = json.loads((sweep / "state.json").read_text())["individuals"]
    shown = "python " + " ".join(arg for arg in command[1:] if not arg.startswith("hydra.sweep.dir="))
    return shown, start, total, individuals
