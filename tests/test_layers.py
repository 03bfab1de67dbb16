"""The layering rules of ARCHITECTURE.md: search imports no torch, the library imports no Hydra.

Every module is found by walking the packages, so a new module is guarded without naming it here.
"""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import pytest

import evopose_pl.evolution
import evopose_pl.search

HYDRA = {"hydra", "omegaconf"}
SEARCH_FORBIDDEN = {"torch", "lightning", "pytorch_lightning", *HYDRA}


def _modules(package) -> list[str]:
    """``package`` and every module and subpackage under it, by name."""
    prefix = package.__name__ + "."
    return [package.__name__, *sorted(m.name for m in pkgutil.walk_packages(package.__path__, prefix))]


SEARCH_MODULES = [*_modules(evopose_pl.search), *_modules(evopose_pl.evolution), "evopose_pl.report"]

# In one process: import each module of the library in turn (walk_packages yields a package before
# importing it to look inside) and report the top-level packages of `watched` each import brought in.
WALK = """
import importlib, json, pkgutil, sys
watched = set(sys.argv[1].split(","))
import evopose_pl
loaded, report = set(), {}
for info in pkgutil.walk_packages(evopose_pl.__path__, "evopose_pl."):
    importlib.import_module(info.name)
    now = {name.split(".")[0] for name in sys.modules} & watched
    report[info.name] = sorted(now - loaded)
    loaded |= now
print(json.dumps(report))
"""


def _imported_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return {name.split(".")[0] for name in out.split()}


def test_no_library_module_imports_hydra():
    result = subprocess.run([sys.executable, "-c", WALK, ",".join(sorted(HYDRA))], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    # the walk reached every layer (a vacuous pass would otherwise look the same)
    assert {"evopose_pl.nets.registry", "evopose_pl.search.genotype", "evopose_pl.evolution.state",
            "evopose_pl.data.dataset", "evopose_pl.module", "evopose_pl.predict"} <= set(report)  # fmt: skip
    assert set(SEARCH_MODULES) <= set(report)
    assert {module: found for module, found in report.items() if found} == {}


@pytest.mark.parametrize("module", SEARCH_MODULES)
def test_search_modules_import_no_torch_or_hydra(module):
    """The driver plans, selects and reports without torch, Lightning or Hydra: each module on its own."""
    assert not SEARCH_FORBIDDEN & _imported_after(f"import {module}")


def test_callbacks_use_lightning_pytorch_not_pytorch_lightning():
    assert "pytorch_lightning" not in _imported_after("import callbacks")
