"""Input pipeline: what the training loader delivers against what the model consumes.

    python bench/input_pipeline.py                        # search-time recipe, 64x48 and 256x192
    python bench/input_pipeline.py --sizes 256x192 --workers 0 2 4 --augmentation full

For each input size, source (JPEG decoding or the crop cache) and number of loader workers:

- loader: samples per second of the training loader alone, over the epochs after its first
  batch (decode + warp + flip, or reading the memory-mapped crops), and the first batch's delay;
- fit: a real ``fit`` of the ancestor with the same data module, as a search child runs it
  (default precision and memory format), profiled by Lightning's SimpleProfiler: the samples
  per second the training steps consume, and the fraction of step time spent waiting for data
  (``train_dataloader_next`` against ``run_training_batch``).

The loader's rate over the model's is the headroom: at least 2x keeps the model from waiting.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from common import compose, machine
from hydra.utils import instantiate

from evopose_pl.data import Augmentation
from evopose_pl.datamodule import PoseDataModule
from evopose_pl.search import ANCESTOR
from session import build

SOURCES = ("jpeg", "cache")
FETCH = "[_TrainingEpochLoop].train_dataloader_next"
STEP = "run_training_batch"


def overrides(size: tuple[int, int], source: str, workers: int, augmentation: str, cache_dir: Path) -> list[str]:
    """The search child's config at this size, source and worker count."""
    height, width = size
    args = [
        f"individual.genotype={ANCESTOR}", "individual.id=0", "logger=none",
        f"data.input_size=[{height},{width}]",
        f"data.num_workers={workers}", f"data.crop_cache={cache_dir if source == 'cache' else 'null'}",
    ]  # fmt: skip
    if augmentation == "full":
        args += ["data.augmentation.scale_factor=0.3", "data.augmentation.rotation_prob=0.6", "data.crop_cache=null"]
    return args


def loader_rate(datamodule: PoseDataModule, epochs: int) -> tuple[float, float, float]:
    """(set-up seconds, first-batch seconds, samples per second after the first batch)."""
    start = time.perf_counter()
    datamodule.setup("fit")
    setup = time.perf_counter() - start
    loader = datamodule.train_dataloader()
    first, samples, elapsed = 0.0, 0, 0.0
    for epoch in range(epochs):
        loader.dataset.set_epoch(epoch)
        start = time.perf_counter()
        for i, batch in enumerate(loader):
            now = time.perf_counter()
            if epoch == 0 and i == 0:
                first, start = now - start, now
                continue
            samples += len(batch["image"])
        elapsed += time.perf_counter() - start
    return setup, first, samples / elapsed


def fit_rate(cfg, batches: int, out: Path) -> tuple[float, float, int]:
    """(samples per second consumed by the training steps, fraction of step time waiting for data, steps)."""
    from omegaconf import open_dict

    with open_dict(cfg):
        cfg.trainer.max_epochs = 1
        cfg.trainer.limit_train_batches = batches
        cfg.trainer.limit_val_batches = 0
        cfg.trainer.profiler = {"_target_": "lightning.pytorch.profilers.SimpleProfiler", "dirpath": str(out),
                                "filename": "profile"}  # fmt: skip
        cfg.callbacks = None
    session = build(cfg)
    session.trainer.fit(session.module, session.datamodule)
    durations = session.trainer.profiler.recorded_durations
    wait, compute = sum(durations[FETCH]), sum(durations[STEP])
    steps = durations[STEP][1:]  # the first step allocates: not the steady rate
    return len(steps) * session.datamodule.batch_size / sum(steps), wait / (wait + compute), len(durations[STEP])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["64x48", "256x192"], help="HxW")
    parser.add_argument("--workers", nargs="+", type=int, default=[0, 2])
    parser.add_argument("--sources", nargs="+", default=list(SOURCES), choices=SOURCES)
    parser.add_argument(
        "--augmentation",
        default="search",
        choices=("search", "full"),
        help="search: flip only (the crop cache applies); full: scale and rotation too, no cache",
    )
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2, help="loader epochs timed")
    parser.add_argument("--fit-batches", type=int, default=16, help="training steps of each profiled fit")
    parser.add_argument("--synthetic-images", type=int, default=500, help="training images of the synthetic data")
    parser.add_argument("--coco-sample", type=Path, default=None,
                        help="also time the loader alone on this COCO-format folder (test_coco.json and its images),"
                             " e.g. ../shared/data/coco_val_sample")  # fmt: skip
    args = parser.parse_args(argv)
    sources = ["jpeg"] if args.augmentation == "full" else args.sources
    rows = [
        f"# input pipeline on {machine()}; synthetic data, {args.augmentation} augmentation, batch {args.batch}",
        "| input | source | workers | set-up s | first batch s | loader samples/s | model samples/s | loader / model |"
        " waiting for data | precision |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    notes: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for size_text in args.sizes:
            size = tuple(int(v) for v in size_text.lower().split("x"))
            cache_dir = Path(tmp) / f"crops-{size_text}"  # built by the first cached row: its set-up time
            # a first fit in the process chooses its kernels: not part of any row
            fit_rate(compose("evolve", overrides(size, "jpeg", 0, args.augmentation, cache_dir), Path(tmp) / "run"),
                     2, Path(tmp) / "run")  # fmt: skip
            for source in sources:
                for workers in args.workers:
                    cfg = compose("evolve", [
                        *overrides(size, source, workers, args.augmentation, cache_dir),
                        f"data.batch_size={args.batch}", f"data.synthetic.train_images={args.synthetic_images}",
                    ], Path(tmp) / "run")  # fmt: skip
                    setup, first, loaded = loader_rate(instantiate(cfg.data), args.epochs)
                    consumed, waiting, steps = fit_rate(cfg, args.fit_batches, Path(tmp) / "run")
                    rows.append(
                        f"| {size_text} | {source} | {workers} | {setup:.2f} | {first:.2f} | {loaded:.0f} |"
                        f" {consumed:.1f} | {loaded / consumed:.1f}x | {100 * waiting:.1f}% of {steps} steps |"
                        f" {cfg.trainer.precision} |"
                    )
            if cache_dir.exists():
                size_mib = sum(f.stat().st_size for f in cache_dir.rglob("*.npy")) / 2**20
                notes.append(f"- crop cache at {size_text}: {size_mib:.1f} MiB for train and val")
        rows += ["", *notes]
        if args.coco_sample is not None:
            rows += ["\nThe loader alone on real COCO images (decoding 640x480 JPEGs):\n", *coco_rows(args)]
    print("\n".join(rows))  # after the runs' own logging


def coco_rows(args: argparse.Namespace) -> list[str]:
    """Loader-alone rows for a COCO-format folder (``test_coco.json`` and its images)."""
    annotations = args.coco_sample / "test_coco.json"
    augmentation = Augmentation.search() if args.augmentation == "search" else Augmentation()
    rows = ["| input | source | workers | set-up s | first batch s | loader samples/s |", "|---|---|---|---|---|---|"]
    for size_text in args.sizes:
        size = tuple(int(v) for v in size_text.lower().split("x"))
        for workers in args.workers:
            datamodule = PoseDataModule(
                annotations, args.coco_sample, annotations, args.coco_sample, input_size=size, batch_size=args.batch,
                num_workers=workers, augmentation=augmentation,
            )  # fmt: skip
            setup, first, loaded = loader_rate(datamodule, max(args.epochs, 20))
            rows.append(f"| {size_text} | jpeg ({args.coco_sample.name}) | {workers} | {setup:.2f} | {first:.2f} |"
                        f" {loaded:.0f} |")  # fmt: skip
    return rows


if __name__ == "__main__":
    torch.set_float32_matmul_precision("high")
    main()
