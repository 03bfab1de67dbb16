"""Shared fixtures: paths, deterministic torch, a real checkpoint."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"
# train.py overrides for a run of seconds: EvoPose2D-XS at 64x48, one epoch of a few synthetic images.
SHORT_TRAIN = ["data.num_workers=0", "trainer.max_epochs=1", "model=evopose2d_xs", "data.input_size=[64,48]"]
TINY_TRAIN = ["data.synthetic.train_images=24", "data.synthetic.val_images=6", *SHORT_TRAIN]


@pytest.fixture(autouse=True)
def _seed_torch():
    import torch

    torch.manual_seed(0)


SHARED_DATA = ROOT.parent / "shared" / "data"
COCO_SAMPLE = SHARED_DATA / "coco_val_sample"


@pytest.fixture
def coco_sample() -> Path:
    """The real COCO val2017 sample beside the repository (four images, their people, detections)."""
    if not (COCO_SAMPLE / "test_coco.json").exists():
        pytest.fail(f"the shared COCO sample is missing at {COCO_SAMPLE}: CI runs with ../shared beside the clone")
    return COCO_SAMPLE


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
