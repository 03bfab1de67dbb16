"""Model speed: training-step and inference time per batch, variants side by side.

    python bench/model_speed.py                                        # EvoPose2D-S, 256x192, batch 32
    python bench/model_speed.py --models evopose2d_s evopose2d_xs simplebaseline_r50 \\
        --sizes 256x192 64x48 --batches 1 32 --variants fp32 channels_last bf16 compile
    python bench/model_speed.py --models efficientpose_rt efficientpose_i evopose2d_xs evopose2d_s \\
        --sizes 256x256 --variants fp32 channels_last+bf16    # the MPII trade-off

``--variants onnxruntime openvino`` time inference alone: the deployed network exported to ONNX and run by
onnxruntime (fp32) or OpenVINO (bf16 where the CPU has it natively), with torch's CPU threads, as ``predict`` and
the latency objective run it (``evopose_pl.runtimes``). ``retain`` keeps freed host memory for the next step
(``evopose_pl.allocator``, train.py's default); variants without it run with glibc's own policy. Each variant
runs in a fresh process, so that none inherits another's allocator settings or heap.

A training step is what the LightningModule does per batch: normalise uint8 crops, forward, the
system's codec (Gaussian heatmaps and masked MSE; EfficientPose's confidence maps and PAFs on every
pass), backward, Adam step. Inference runs the deployed network (EfficientPose: its final maps only).
Each variant's time is printed with its ratio to fp32 of the same model, size and batch, all
measured in one run (this machine is noisy).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from common import machine

from evopose_pl.allocator import retain_freed_memory  # noqa: E402
from evopose_pl.codecs import Codec, ConfidenceMapCodec, HeatmapCodec  # noqa: E402
from evopose_pl.module import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from evopose_pl.nets import EFFICIENTPOSE_VARIANTS, build_model, count_parameters, deployed  # noqa: E402
from evopose_pl.runtimes import ExportedNetwork  # noqa: E402

OPTIONS = ("channels_last", "bf16", "compile", "retain")  # a variant is fp32, a runtime, or options joined by "+"
#: Inference only: the deployed network exported to ONNX and run by these runtimes with torch's threads.
RUNTIMES = ("onnxruntime", "openvino")
#: The reference TensorFlow implementation's EvoPose2D-S at 256x192, batch 32, on a quiet machine of this type
#: (2 cores, 2 threads; median of 5 steps after 2 warm-ups): (training step s, inference s), each a range.
REFERENCE = {
    "reference TF, fp32": ((2.18, 2.21), (0.46, 0.50)),
    "reference TF, mixed bfloat16": ((2.04, 2.47), (0.28, 0.37)),
}
REFERENCE_CASE = ("evopose2d_s", "256x192", 32)


def _timed(step: Callable[[], None], device: torch.device, warmup: int, repeats: int) -> float:
    """Median seconds per call after ``warmup`` calls."""
    times = []
    for i in range(warmup + repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def system(name: str) -> tuple[int, Codec]:
    """A named model's keypoint count and codec: EfficientPose is MPII's (16 joints), the others COCO's."""
    if name in EFFICIENTPOSE_VARIANTS:
        return 16, ConfidenceMapCodec()
    return 17, HeatmapCodec()


class Workload:
    """One model's training step and inference on a fixed batch, in a variant: the phases apart (forward
    with the codec's loss, backward, optimiser step), so that ``profile_step.py`` can time them one by one.
    ``retain`` keeps freed memory for the rest of the process."""

    def __init__(self, name: str, size: tuple[int, int], batch: int, variant: str, device: torch.device) -> None:
        parts = set(variant.split("+"))
        if "retain" in parts:  # for the rest of the process
            retain_freed_memory()
        num_keypoints, self.codec = system(name)
        self.size = size
        self.net = build_model(name, num_keypoints=num_keypoints).to(device)
        self.format = torch.channels_last if "channels_last" in parts else torch.contiguous_format
        self.net = self.net.to(memory_format=self.format)
        self.model = torch.compile(self.net) if "compile" in parts else self.net
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled="bf16" in parts)
        self.mean = 255 * torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        self.std = 255 * torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
        self.images = torch.randint(0, 256, (batch, 3, *size), dtype=torch.uint8, device=device)
        extent = torch.tensor([size[1], size[0], 2.0], device=device)
        self.keypoints = torch.rand(batch, num_keypoints, 3, device=device) * extent
        self.keypoints[..., 2] = self.keypoints[..., 2].round()
        self.optimiser = torch.optim.Adam(self.net.parameters(), lr=1e-4)

    def inputs(self) -> torch.Tensor:
        return ((self.images.float() - self.mean) / self.std).contiguous(memory_format=self.format)

    def forward(self) -> torch.Tensor:
        """Normalisation, the network and the codec's loss."""
        with self.autocast:
            outputs = self.model(self.inputs())
        return self.codec.loss(outputs, self.keypoints, self.size)["loss"]

    def backward(self, loss: torch.Tensor) -> None:
        self.optimiser.zero_grad(set_to_none=True)
        loss.backward()

    def update(self) -> None:
        self.optimiser.step()

    def train_step(self) -> None:
        self.backward(self.forward())
        self.update()

    @torch.no_grad()
    def infer(self) -> None:
        with self.autocast, deployed(self.net):
            self.model(self.inputs())


def measure(name: str, size: tuple[int, int], batch: int, variant: str, device: torch.device, warmup: int,
            repeats: int) -> tuple[float | None, float]:  # fmt: skip
    """(training-step seconds, inference seconds) per batch; no training step for the ONNX runtimes."""
    if variant in RUNTIMES:
        work = Workload(name, size, batch, "fp32", device)
        network = ExportedNetwork(work.net, variant, device.type, size, whole_image=False)
        images = work.inputs()
        return None, _timed(lambda: network(images), torch.device("cpu"), warmup, repeats)
    work = Workload(name, size, batch, variant, device)
    work.net.train()
    train = _timed(work.train_step, device, warmup, repeats)
    work.net.eval()
    inference = _timed(work.infer, device, warmup, repeats)
    return train, inference


def measure_apart(name: str, size: tuple[int, int], batch: int, variant: str, device: torch.device, warmup: int,
                  repeats: int) -> tuple[float | None, float]:  # fmt: skip
    """``measure`` in a fresh process with this one's threads (the allocator's settings are a process's)."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_measure_with_threads, (torch.get_num_threads(), name, size, batch, variant, str(device),
                                                  warmup, repeats))  # fmt: skip


def _measure_with_threads(threads: int, name: str, size: tuple[int, int], batch: int, variant: str, device: str,
                          warmup: int, repeats: int) -> tuple[float | None, float]:  # fmt: skip
    torch.set_num_threads(threads)
    return measure(name, size, batch, variant, torch.device(device), warmup, repeats)


def _concurrent_steps(name: str, size: tuple[int, int], batch: int, variant: str, threads: int, warmup: int,
                      steps: int, barrier: Any) -> float:  # fmt: skip
    """One of several concurrent training processes: ``threads`` CPU threads, warm-up, then (all started together)
    the seconds ``steps`` training steps take."""
    torch.set_num_threads(threads)
    work = Workload(name, size, batch, variant, torch.device("cpu"))
    work.net.train()
    for _ in range(warmup):
        work.train_step()
    barrier.wait()
    start = time.perf_counter()
    for _ in range(steps):
        work.train_step()
    return time.perf_counter() - start


def concurrent_throughput(name: str, size: tuple[int, int], batch: int, variant: str, processes: int, threads: int,
                          warmup: int, steps: int) -> float:  # fmt: skip
    """Training images per second of ``processes`` processes training at once with ``threads`` threads each: all
    their images over the time from their common start to the last one's end."""
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, context.Pool(processes) as pool:
        barrier = manager.Barrier(processes)
        jobs = [(name, size, batch, variant, threads, warmup, steps, barrier)] * processes
        seconds = pool.starmap(_concurrent_steps, jobs)
    return processes * steps * batch / max(seconds)


def print_concurrent(name: str, size_text: str, batch: int, variant: str, processes: int, warmup: int,
                     steps: int) -> None:  # fmt: skip
    """Aggregate training throughput of one process with every core against ``processes`` at once, each with its
    share of the cores (what the evolution launcher gives children) or with every core (oversubscribed)."""
    cores = os.cpu_count() or 1
    size = tuple(int(v) for v in size_text.lower().split("x"))
    settings = [(1, cores), (processes, max(1, cores // processes)), (processes, cores)]
    print(f"\n| {name}, {size_text}, batch {batch}, {variant}: training at once | threads each | "
          "aggregate img/s | vs one process |")  # fmt: skip
    print("|---|---|---|---|")
    alone = None
    for count, threads in settings:
        rate = concurrent_throughput(name, size, batch, variant, count, threads, warmup, steps)
        alone = alone or rate
        label = "1 process" if count == 1 else f"{count} processes" + (", oversubscribed" if threads == cores else "")
        print(f"| {label} | {threads} | {rate:.2f} | {rate / alone:.2f}x |", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["evopose2d_s"])
    parser.add_argument("--sizes", nargs="+", default=["256x192"], help="HxW")
    parser.add_argument("--batches", nargs="+", type=int, default=[32])
    parser.add_argument(
        "--variants", nargs="+", default=["fp32", "channels_last", "bf16", "channels_last+bf16"],
        help=f"fp32, {' or '.join(RUNTIMES)} (inference only), or any of {', '.join(OPTIONS)} joined by '+'",
    )  # fmt: skip
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--against-reference", action="store_true",
        help="after the table, each variant of EvoPose2D-S at 256x192, batch 32 against the reference TF figures",
    )  # fmt: skip
    parser.add_argument(
        "--concurrent", type=int, default=0, metavar="N",
        help="then N training processes at once against one (the first model, size, batch and last training "
        "variant; CPU): aggregate images per second by threads per process",
    )  # fmt: skip
    args = parser.parse_args(argv)
    for variant in args.variants:
        if variant not in ("fp32", *RUNTIMES) and not set(variant.split("+")) <= set(OPTIONS):
            parser.error(
                f"--variants: {variant!r} is not fp32, {', '.join(RUNTIMES)} or a '+'-joined combination of "
                f"{', '.join(OPTIONS)}"
            )
    device = torch.device(args.device)
    if device.type != "cpu" and args.concurrent:
        parser.error(f"--concurrent: training processes sharing the CPU's cores, not on --device {device}")
    if device.type != "cpu" and "openvino" in args.variants:
        parser.error(f"--variants openvino: OpenVINO runs networks on the CPU here, not on --device {device}")
    variants = ["fp32", *[v for v in args.variants if v != "fp32"]]  # the reference for the ratios first
    print(f"# model speed on {machine()}, device {device}")
    print("| model | params | input | batch | variant | train step s | ratio | inference s | ratio | train img/s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    measured: dict[str, tuple[float | None, float]] = {}
    for name in args.models:
        params = count_parameters(build_model(name, num_keypoints=system(name)[0])).with_bn_stats
        for size_text in args.sizes:
            size = tuple(int(v) for v in size_text.lower().split("x"))
            for batch in args.batches:
                reference = None
                for variant in variants:
                    train, infer = measure_apart(name, size, batch, variant, device, args.warmup, args.repeats)
                    reference = reference or (train, infer)
                    if (name, size_text, batch) == REFERENCE_CASE:
                        measured[variant] = (train, infer)
                    trained = "n/a | n/a" if train is None else f"{train:.3f} | {reference[0] / train:.2f}x"
                    rate = "n/a" if train is None else f"{batch / train:.1f}"
                    print(
                        f"| {name} | {params / 1e6:.2f}M | {size_text} | {batch} | {variant} | {trained} |"
                        f" {infer:.3f} | {reference[1] / infer:.2f}x | {rate} |",
                        flush=True,
                    )
    if args.against_reference:
        print_against_reference(measured)
    if args.concurrent:
        trained = [v for v in variants if v not in RUNTIMES]
        print_concurrent(args.models[0], args.sizes[0], args.batches[0], trained[-1], args.concurrent, args.warmup,
                         args.repeats)  # fmt: skip


def _against(ours: float, low: float, high: float) -> str:
    """Our time against a reference range, as speed-ups (>1: ours is faster)."""
    return f"{low / ours:.2f}-{high / ours:.2f}x"


def print_against_reference(measured: dict[str, tuple[float | None, float]]) -> None:
    """The reference TF figures (REFERENCE) and each measured variant, with its speed-up over the reference's
    best (the lower bound of the fastest range, and its upper bound)."""
    if not measured:
        print(f"\n(--against-reference: no row of {' '.join(map(str, REFERENCE_CASE))} was measured)")
        return
    best_train = min(REFERENCE.values(), key=lambda r: r[0][0])[0]
    best_infer = min(REFERENCE.values(), key=lambda r: r[1][0])[1]
    print("\n| EvoPose2D-S, 256x192, batch 32 | training step s | vs the reference's best | inference s |"
          " vs the reference's best |")  # fmt: skip
    print("|---|---|---|---|---|")
    for name, (train, infer) in REFERENCE.items():
        print(f"| {name} | {train[0]:.2f}-{train[1]:.2f} | | {infer[0]:.2f}-{infer[1]:.2f} | |")
    for variant, (train, infer) in measured.items():
        trained = "n/a | n/a" if train is None else f"{train:.3f} | {_against(train, *best_train)}"
        print(f"| ours, {variant} | {trained} | {infer:.3f} | {_against(infer, *best_infer)} |")


if __name__ == "__main__":
    main()
