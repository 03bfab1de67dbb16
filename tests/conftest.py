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
