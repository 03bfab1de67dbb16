"""Evaluation throughput: the COCO test protocol's stages, per person instance.

    python bench/evaluation.py                              # EvoPose2D-S at 256x192, synthetic val
    python bench/evaluation.py --model evopose2d_xs --size 64x48 --batch 64

The test data module's batches (detector boxes on the synthetic validation images) go through
what ``PoseModule.test_step`` does, each stage timed on its own: the forward pass, the flip test
(the flipped pass and the merge), decoding (argmax, quarter offset, back to image pixels), the
COCO results records with their instance scores, then COCO keypoint scoring (pycocotools) of
all of them. The network is untrained: scoring costs the same whatever the AP.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager

import torch
from common import compose, machine

from evopose_pl.data.heatmaps import to_image
from evopose_pl.evaluation import evaluate_coco, results_records
from evopose_pl.module import default_precision
from session import build


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="evopose2d_s")
    parser.add_argument("--size", default="256x192", help="HxW")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--val-images", type=int, default=100, help="synthetic validation images")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    height, width = (int(v) for v in args.size.lower().split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose("train", [
            f"model={args.model}", f"data.input_size=[{height},{width}]", f"data.batch_size={args.batch}",
            f"data.synthetic.val_images={args.val_images}", "data.num_workers=0", "logger=none",
        ], tmp)  # fmt: skip
        session = build(cfg)
    module, datamodule = session.module, session.datamodule
    datamodule.setup("test")
    device = torch.device(args.device)
    module.to(device).eval()
    precision = default_precision(device.type)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision.startswith("bf16"))
    seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def stage(name: str):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        yield
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds[name] += time.perf_counter() - start

    results, instances = [], 0
    with torch.no_grad(), autocast:
        module(next(iter(datamodule.test_dataloader()))["image"].to(device))  # warm-up: kernels are chosen once
        for batch in datamodule.test_dataloader():
            images, affine = batch["image"].to(device), batch["affine"].to(device)
            with stage("forward"):
                outputs = module(images)
            with stage("flip test"):
                outputs = module.codec.merge_flip(outputs, module(images.flip(-1)), module.flip_index)
            with stage("decode"):
                coords, scores = module.codec.decode(outputs, module.input_size)
                instance = module.codec.person_scores(batch["score"].to(device), scores.float()).cpu().numpy()
                coords, kp_scores = to_image(coords.float(), affine.float()).cpu().numpy(), scores.float().cpu().numpy()
            with stage("records"):
                results += results_records(batch["image_id"].tolist(), coords, kp_scores, instance)
            instances += len(images)
    with stage("COCO scoring"):
        metrics = evaluate_coco(datamodule.test_set.annotation_file, results)
    total = sum(seconds.values())
    print(f"# evaluation on {machine()}, device {device}, {precision}")
    print(f"{args.model} at {args.size}, batch {args.batch}: {instances} detections on {args.val_images} synthetic"
          f" images (AP {metrics['AP']:.3f}, untrained)\n")  # fmt: skip
    print("| stage | seconds | ms per instance | instances/s | share |")
    print("|---|---|---|---|---|")
    for stage, value in [*seconds.items(), ("all", total)]:
        print(f"| {stage} | {value:.3f} | {1000 * value / instances:.2f} | {instances / value:.0f} |"
              f" {100 * value / total:.1f}% |")  # fmt: skip


if __name__ == "__main__":
    main()
