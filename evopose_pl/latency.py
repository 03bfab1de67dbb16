"""A network's measured speed on the hardware it will run on: median milliseconds per image at batch 1 and
images per second at a throughput batch, on a device (``cpu``, ``cuda``) and runtime (``torch``,
``onnxruntime``), after warm-up; cached per architecture, input size, device, runtime and machine.

Parameters and FLOPs do not see what makes a network slow on real hardware (depthwise convolutions,
squeeze-excitation, memory traffic): the search's latency objective (``fitness=latency``, ``objectives``)
uses this instead. The weights do not change the time, so a network measured once is not measured again:
``LatencyCache`` keys the figures by everything that does.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from evopose_pl.files import FileFormatError, read_json, write_json_atomic
from evopose_pl.module import PoseModule
from evopose_pl.nets import deployed, describe

DEVICES = ("cpu", "cuda")
RUNTIMES = ("torch", "onnxruntime")


@dataclass(frozen=True)
class LatencySettings:
    """How to measure: where, with what, and how long (``latency.*`` of evolve.py)."""

    device: str = "cpu"
    runtime: str = "torch"
    throughput_batch: int = 32
    warmup: int = 5
    repeats: int = 20

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ValueError(f"latency.device={self.device!r}: must be one of {', '.join(DEVICES)}")
        if self.runtime not in RUNTIMES:
            raise ValueError(f"latency.runtime={self.runtime!r}: must be one of {', '.join(RUNTIMES)}")
        for name in ("throughput_batch", "repeats"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"latency.{name}={getattr(self, name)!r}: must be a whole number >= 1")
        if not isinstance(self.warmup, int) or self.warmup < 0:
            raise ValueError(f"latency.warmup={self.warmup!r}: must be a whole number >= 0")


@dataclass(frozen=True)
class Latency:
    """What was measured: ``ms`` per image at batch 1 (median), ``throughput`` in images per second at the
    throughput batch (median), and ``device``: the device, runtime, threads and machine it ran on."""

    ms: float
    throughput: float
    device: str


def machine(device: str) -> str:
    """The hardware a figure belongs to: the GPU's name, or the CPU's model and the threads used."""
    if device == "cuda":
        return f"cuda: {torch.cuda.get_device_name()}"
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"cpu: {model}, {torch.get_num_threads()} threads"


def _median_seconds(step: Callable[[], Any], synchronise: Callable[[], None], warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        step()
    synchronise()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        synchronise()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _torch_runner(module: PoseModule, device: str) -> tuple[Callable[[torch.Tensor], Any], Callable[[], None]]:
    """The deployed network in eager PyTorch (bf16 autocast on CUDA, as it trains there), and a synchroniser."""
    module = module.to(device).eval()

    def run(images: torch.Tensor) -> Any:
        with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16, enabled=device == "cuda"):
            return module(images)

    return run, (torch.cuda.synchronize if device == "cuda" else (lambda: None))


def onnxruntime_runner(module: PoseModule, device: str, directory: Path) -> Callable[[torch.Tensor], Any]:
    """The deployed network exported to ONNX and run by onnxruntime with this process's CPU threads (or CUDA)."""
    import onnxruntime

    from evopose_pl.export import export_onnx

    path = export_onnx(module, directory / "latency.onnx")
    provider = "CUDAExecutionProvider" if device == "cuda" else "CPUExecutionProvider"
    if provider not in onnxruntime.get_available_providers():
        raise ValueError(f"latency.runtime=onnxruntime latency.device={device}: onnxruntime here lacks {provider}")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = onnxruntime.InferenceSession(str(path), options, providers=[provider])
    name = session.get_inputs()[0].name
    return lambda images: session.run(None, {name: images.numpy()})


def measure_latency(module: PoseModule, settings: LatencySettings) -> Latency:
    """Time the deployed network (no flip test, no decoding) on random crops of its input size."""
    if settings.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("latency.device=cuda: this machine has no CUDA device")
    height, width = module.input_size
    device = "cpu" if settings.runtime == "onnxruntime" and settings.device == "cpu" else settings.device
    with deployed(module.net), tempfile.TemporaryDirectory() as tmp:
        if settings.runtime == "onnxruntime":
            run, synchronise = onnxruntime_runner(module, settings.device, Path(tmp)), (lambda: None)
            tensor_device = "cpu"  # onnxruntime takes host arrays
        else:
            run, synchronise = _torch_runner(module, device)
            tensor_device = device
        single = torch.rand(1, 3, height, width, device=tensor_device) * 255
        batch = torch.rand(settings.throughput_batch, 3, height, width, device=tensor_device) * 255
        one = _median_seconds(lambda: run(single), synchronise, settings.warmup, settings.repeats)
        many = _median_seconds(lambda: run(batch), synchronise, settings.warmup, settings.repeats)
    return Latency(
        ms=1000 * one,
        throughput=settings.throughput_batch / many,
        device=f"{machine(settings.device)}, {settings.runtime}",
    )


class LatencyCache:
    """Measured latencies in a folder, one JSON file per key: the architecture, input size, measuring settings,
    machine and library versions. Separate files let parallel children write without a lock; a file that
    is not a latency record (a broken write) is measured again and replaced."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)

    def key(self, module: PoseModule, settings: LatencySettings) -> str:
        try:
            network: Any = describe(module.net)
        except TypeError:  # a network of the user's own: its layers as printed
            network = repr(module.net)
        identity = {
            "network": network,
            "input_size": list(module.input_size),
            "settings": asdict(settings),
            "machine": machine(settings.device),
            "torch": torch.__version__,
            "onnxruntime": _onnxruntime_version() if settings.runtime == "onnxruntime" else None,
        }
        return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:32]

    def measure(self, module: PoseModule, settings: LatencySettings) -> tuple[Latency, bool]:
        """The cached latency of ``module``'s network, or a new measurement (then cached); and whether cached."""
        path = self.directory / f"{self.key(module, settings)}.json"
        try:
            cached = Latency(**read_json(path))
            if _positive(cached.ms) and _positive(cached.throughput) and isinstance(cached.device, str):
                return cached, True
        except (FileNotFoundError, FileFormatError, TypeError):
            pass
        latency = measure_latency(module, settings)
        write_json_atomic(path, asdict(latency))
        return latency, False


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < float("inf")


def _onnxruntime_version() -> str:
    import onnxruntime

    return onnxruntime.__version__
