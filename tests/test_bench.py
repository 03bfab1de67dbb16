"""The benchmark scripts run and print their tables (their figures live in BENCHMARKS.md, not here)."""

from __future__ import annotations

import subprocess
import sys

from .conftest import ROOT


def test_model_speed_prints_every_variant_with_its_ratio():
    result = subprocess.run(
        [sys.executable, "bench/model_speed.py", "--sizes", "64x48", "--batches", "2", "--repeats", "1",
         "--warmup", "0", "--variants", "channels_last", "bf16"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| evopose2d_s")]
    assert [row.split("|")[5].strip() for row in rows] == ["fp32", "channels_last", "bf16"]
    assert rows[0].split("|")[7].strip() == "1.00x" and "cores, torch" in result.stdout
