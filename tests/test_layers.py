"""The layering rules of ARCHITECTURE.md: search imports no torch, the library imports no Hydra."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _imported_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return {name.split(".")[0] for name in out.split()}


@pytest.mark.parametrize("module", ["evopose_pl.search", "evopose_pl.evolution", "evopose_pl.report"])
def test_search_and_evolution_import_no_torch(module):
    """The driver plans, selects and reports without torch (or Hydra)."""
    assert not {"torch", "hydra", "lightning"} & _imported_after(f"import {module}")


@pytest.mark.parametrize(
    "module", ["evopose_pl.nets", "evopose_pl.transfer", "evopose_pl.evolution", "evopose_pl.report"]
)
def test_library_imports_no_hydra_or_lightning(module):
    loaded = _imported_after(f"import {module}")
    assert not {"hydra", "omegaconf", "lightning", "pytorch_lightning"} & loaded


def test_callbacks_use_lightning_pytorch_not_pytorch_lightning():
    assert "pytorch_lightning" not in _imported_after("import callbacks")
