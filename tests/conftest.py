"""Shared fixtures: paths, and deterministic torch."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"


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
