"""Shared fixtures: paths, config composition, short training runs, the small test genotype, a real checkpoint.

Test files share through these fixtures, never by importing one another.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"
# train.py overrides for a run of seconds: EvoPose2D-XS at 64x48, one epoch of a few synthetic images.
SHORT_TRAIN = ["data.num_workers=0", "trainer.max_epochs=1", "model=evopose2d_xs", "data.input_size=[64,48]"]
TINY_TRAIN = ["data.synthetic.train_images=24", "data.synthetic.val_images=6", *SHORT_TRAIN]
# A genotype of one block per module and few channels: the smallest network tests train.
TEST_GENOTYPE = "k3r1c1s1-k3r1c2s2-k3r1c3s2-k3r1c4s2-k3r1c6s1-k3r1c8s1-k3r1c8s1"
SHARED_DATA = ROOT.parent / "shared" / "data"
COCO_SAMPLE = SHARED_DATA / "coco_val_sample"
MPII_SAMPLE = SHARED_DATA / "mpii_sample"
EFFICIENTPOSE_WEIGHTS = SHARED_DATA / "efficientpose"


@pytest.fixture(autouse=True)
def _seed_torch():
    import torch

    torch.manual_seed(0)


@pytest.fixture(scope="session")
def root() -> Path:
    """The repository root (entry scripts run from it)."""
    return ROOT


@pytest.fixture(scope="session")
def conf_dir() -> Path:
    return CONF_DIR


@pytest.fixture(scope="session")
def short_train() -> list[str]:
    """train.py overrides for a run of seconds: EvoPose2D-XS at 64x48, one epoch, no loader workers."""
    return list(SHORT_TRAIN)


@pytest.fixture(scope="session")
def tiny_train() -> list[str]:
    """``short_train`` on a synthetic dataset of 24 training and 6 validation images."""
    return list(TINY_TRAIN)


@pytest.fixture(scope="session")
def test_genotype() -> str:
    """The small test genotype: one block per module and few channels."""
    return TEST_GENOTYPE


@pytest.fixture
def random_crops() -> Callable:
    """``random_crops(n, batch)``: a loader of ``n`` random 64x48 uint8 crops with 17 random keypoints each."""
    import torch
    from torch.utils.data import DataLoader

    def _loader(n: int, batch: int) -> DataLoader:
        samples = [
            {"image": torch.randint(0, 255, (3, 64, 48), dtype=torch.uint8),
             "keypoints": torch.rand(17, 3) * torch.tensor([48.0, 64.0, 2.0])}
            for _ in range(n)
        ]  # fmt: skip
        return DataLoader(samples, batch_size=batch)

    return _loader


@pytest.fixture
def compose(tmp_path) -> Callable:
    """Compose a config as the entry scripts do: ``compose("train", "model=evopose2d_xs")``, with the
    ``hydra`` node, and ``paths.output_dir`` under the test's tmp folder. ``config_name=None`` composes
    from an empty primary config (``compose(None, "+paths=default")``; a model config needs ``train``,
    whose defaults list holds the codec and recipe groups it overrides)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    def _compose(config_name: str | None, *overrides: str):
        os.environ.setdefault("EVOPOSE_ROOT", str(ROOT))
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            if config_name is None:
                return hydra_compose(overrides=list(overrides))
            cfg = hydra_compose(config_name=config_name, overrides=list(overrides), return_hydra_config=True)
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / "output")
        return cfg

    return _compose


@pytest.fixture
def coco_sample() -> Path:
    """The real COCO val2017 sample beside the repository (four images, their people, detections)."""
    if not (COCO_SAMPLE / "test_coco.json").exists():
        pytest.fail(f"the shared COCO sample is missing at {COCO_SAMPLE}: CI runs with ../shared beside the clone")
    return COCO_SAMPLE


@pytest.fixture
def mpii_sample() -> Path:
    """The real MPII sample beside the repository (its annotation json and images)."""
    if not MPII_SAMPLE.is_dir():
        pytest.fail(f"the shared MPII sample is missing at {MPII_SAMPLE}: CI runs with ../shared beside the clone")
    return MPII_SAMPLE


@pytest.fixture
def efficientpose_weights() -> Path:
    """The folder of the released EfficientPose Keras weights beside the repository (EfficientPoseRT.h5, I)."""
    if not (EFFICIENTPOSE_WEIGHTS / "EfficientPoseRT.h5").exists():
        missing = f"the released EfficientPose weights are missing at {EFFICIENTPOSE_WEIGHTS}"
        pytest.fail(f"{missing}: CI runs with ../shared beside the clone")
    return EFFICIENTPOSE_WEIGHTS


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory) -> Path:
    """A real best.ckpt from `python train.py` on the synthetic data (EvoPose2D-XS at 64x48); last.ckpt beside it."""
    run = tmp_path_factory.mktemp("train")
    result = subprocess.run(
        [sys.executable, "train.py", *TINY_TRAIN, "test=false", "logger=none", f"hydra.run.dir={run}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return run / "checkpoints" / "best.ckpt"


@pytest.fixture
def onnx_export(root) -> Callable:
    """`python -m evopose_pl.export ckpt=<ckpt> output=<out> [args]`, which must succeed: the exported model's
    onnxruntime session (CPU) and its metadata, each entry decoded from JSON."""
    import onnx
    import onnxruntime

    def export(ckpt: Path, out: Path, *args: str) -> tuple[Any, dict[str, Any]]:
        result = subprocess.run(
            [sys.executable, "-m", "evopose_pl.export", f"ckpt={ckpt}", *args, f"output={out}"],
            cwd=root, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        return session, {p.key: json.loads(p.value) for p in onnx.load(str(out)).metadata_props}

    return export
