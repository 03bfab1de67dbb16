"""A network's measured speed on the hardware it will run on: median milliseconds per image at batch 1 and
images per second at a throughput batch, on a device (``cpu``, ``cuda``) and runtime (``evopose_pl.runtimes``:
``auto``, the fastest installed for the device, or ``torch``, ``onnxruntime``, ``openvino``), after warm-up;
cached per architecture, input size, device, runtime and machine.

Parameters and FLOPs do not see what makes a network slow on real hardware (depthwise convolutions,
squeeze-excitation, memory traffic): the search's latency objective (``fitness=latency``, ``objectives``)
uses this instead. The weights do not change the time, so a network measured once is not measured again:
``LatencyCache`` keys the figures by everything that does.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from evopose_pl.files import FileFormatError, read_json, write_json_atomic
from evopose_pl.module import PoseModule
from evopose_pl.nets import describe
from evopose_pl.runtimes import AUTO, RUNTIMES, inference_network, precision, resolve_runtime

DEVICES = ("cpu", "cuda")


@dataclass(frozen=True)
class LatencySettings:
    """How to measure: where, with what, and how long (``latency.*`` of evolve.py)."""

    device: str = "cpu"
    runtime: str = AUTO
    throughput_batch: int = 32
    warmup: int = 5
    repeats: int = 20

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ValueError(f"latency.device={self.device!r}: must be one of {', '.join(DEVICES)}")
        if self.runtime not in (AUTO, *RUNTIMES):
            raise ValueError(f"latency.runtime={self.runtime!r}: must be one of {AUTO}, {', '.join(RUNTIMES)}")
        for name in ("throughput_batch", "repeats"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"latency.{name}={getattr(self, name)!r}: must be a whole number >= 1")
        if not isinstance(self.warmup, int) or self.warmup < 0:
            raise ValueError(f"latency.warmup={self.warmup!r}: must be a whole number >= 0")

    def resolved_runtime(self) -> str:
        """The runtime that runs the network (``auto``: the fastest installed for the device)."""
        return resolve_runtime(self.runtime, self.device, "latency.runtime")


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


def measure_latency(module: PoseModule, settings: LatencySettings) -> Latency:
    """Time the deployed network (no flip test, no decoding) on random crops of its input size, normalised as
    the module does, in the settings' runtime."""
    if settings.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("latency.device=cuda: this machine has no CUDA device")
    runtime = settings.resolved_runtime()
    height, width = module.input_size
    network = inference_network(module, runtime, settings.device)
    tensor_device = settings.device if runtime == "torch" else "cpu"  # the ONNX runtimes take host arrays
    module.to(tensor_device)
    synchronise = torch.cuda.synchronize if tensor_device == "cuda" else (lambda: None)

    def run(images: torch.Tensor) -> Any:
        with torch.inference_mode():
            return network(module.normalise(images))

    single = torch.rand(1, 3, height, width, device=tensor_device) * 255
    batch = torch.rand(settings.throughput_batch, 3, height, width, device=tensor_device) * 255
    one = _median_seconds(lambda: run(single), synchronise, settings.warmup, settings.repeats)
    many = _median_seconds(lambda: run(batch), synchronise, settings.warmup, settings.repeats)
    return Latency(
        ms=1000 * one,
        throughput=settings.throughput_batch / many,
        device=f"{machine(settings.device)}, {runtime} {precision(runtime, settings.device)}",
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
        runtime = settings.resolved_runtime()
        identity = {
            "network": network,
            "input_size": list(module.input_size),
            "settings": {**asdict(settings), "runtime": runtime},
            "precision": precision(runtime, settings.device),
            "machine": machine(settings.device),
            "torch": torch.__version__,
            runtime: _version(runtime),
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


def _version(runtime: str) -> str:
    return importlib.import_module(runtime).__version__
