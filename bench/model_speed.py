"""Model speed: training-step and inference time per batch, variants side by side.

    python bench/model_speed.py                                        # EvoPose2D-S, 256x192, batch 32
    python bench/model_speed.py --models evopose2d_s evopose2d_xs simplebaseline_r50 \\
        --sizes 256x192 64x48 --batches 1 32 --variants fp32 channels_last bf16 compile
    python bench/model_speed.py --models efficientpose_rt efficientpose_i evopose2d_xs evopose2d_s \\
        --sizes 256x256 --variants fp32 channels_last+bf16    # the MPII trade-off

A training step is what the LightningModule does per batch: normalise uint8 crops, forward, the
system's codec (Gaussian heatmaps and masked MSE; EfficientPose's confidence maps and PAFs on every
pass), backward, Adam step. Inference runs the deployed network (EfficientPose: its final maps only).
Each variant's time is printed with its ratio to fp32 of the same model, size and batch, all
measured in one run (this machine is noisy).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from common import machine

from evopose_pl.codecs import Codec, ConfidenceMapCodec, HeatmapCodec  # noqa: E402
from evopose_pl.module import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from evopose_pl.nets import EFFICIENTPOSE_VARIANTS, build_model, count_parameters, deployed  # noqa: E402

OPTIONS = ("channels_last", "bf16", "compile")  # a variant is fp32 or options joined by "+"


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


def measure(name: str, size: tuple[int, int], batch: int, variant: str, device: torch.device, warmup: int,
            repeats: int) -> tuple[float, float]:  # fmt: skip
    """(training-step seconds, inference seconds) per batch."""
    parts = set(variant.split("+"))
    num_keypoints, codec = system(name)
    net = build_model(name, num_keypoints=num_keypoints).to(device)
    fmt = torch.channels_last if "channels_last" in parts else torch.contiguous_format
    net = net.to(memory_format=fmt)
    model = torch.compile(net) if "compile" in parts else net
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled="bf16" in parts)
    mean = 255 * torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = 255 * torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    images = torch.randint(0, 256, (batch, 3, *size), dtype=torch.uint8, device=device)
    extent = torch.tensor([size[1], size[0], 2.0], device=device)
    keypoints = torch.rand(batch, num_keypoints, 3, device=device) * extent
    keypoints[..., 2] = keypoints[..., 2].round()
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-4)

    def inputs() -> torch.Tensor:
        return ((images.float() - mean) / std).contiguous(memory_format=fmt)

    def train_step() -> None:
        with autocast:
            outputs = model(inputs())
        loss = codec.loss(outputs, keypoints, size)["loss"]
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()

    @torch.no_grad()
    def infer() -> None:
        with autocast, deployed(net):
            model(inputs())

    net.train()
    train = _timed(train_step, device, warmup, repeats)
    net.eval()
    inference = _timed(infer, device, warmup, repeats)
    return train, inference


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["evopose2d_s"])
    parser.add_argument("--sizes", nargs="+", default=["256x192"], help="HxW")
    parser.add_argument("--batches", nargs="+", type=int, default=[32])
    parser.add_argument(
        "--variants", nargs="+", default=["fp32", "channels_last", "bf16", "channels_last+bf16"],
        help=f"fp32, or any of {', '.join(OPTIONS)} joined by '+'",
    )  # fmt: skip
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    for variant in args.variants:
        if variant != "fp32" and not set(variant.split("+")) <= set(OPTIONS):
            parser.error(f"--variants: {variant!r} is not fp32 or a '+'-joined combination of {', '.join(OPTIONS)}")
    device = torch.device(args.device)
    variants = ["fp32", *[v for v in args.variants if v != "fp32"]]  # the reference for the ratios first
    print(f"# model speed on {machine()}, device {device}")
    print("| model | params | input | batch | variant | train step s | ratio | inference s | ratio | train img/s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in args.models:
        params = count_parameters(build_model(name, num_keypoints=system(name)[0])).with_bn_stats
        for size_text in args.sizes:
            size = tuple(int(v) for v in size_text.lower().split("x"))
            for batch in args.batches:
                reference = None
                for variant in variants:
                    train, infer = measure(name, size, batch, variant, device, args.warmup, args.repeats)
                    reference = reference or (train, infer)
                    print(
                        f"| {name} | {params / 1e6:.2f}M | {size_text} | {batch} | {variant} | {train:.3f} |"
                        f" {reference[0] / train:.2f}x | {infer:.3f} | {reference[1] / infer:.2f}x |"
                        f" {batch / train:.1f} |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
