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


SMALL = "k3r1c1s1-k3r1c2s2-k3r1c3s2-k3r1c4s2-k3r1c6s1-k3r1c8s1-k3r1c8s1"
TINY_DATA = ["data.synthetic.train_images=24", "data.synthetic.val_images=6", "data.batch_size=8"]


def _bench(*args: str) -> str:
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "cores, torch" in result.stdout  # every figure names its machine
    return result.stdout


def _table(output: str, first_cell: str) -> list[list[str]]:
    return [
        [c.strip() for c in line.split("|")[1:-1]] for line in output.splitlines() if line.startswith(f"| {first_cell}")
    ]


def test_input_pipeline_compares_the_loader_with_a_real_fit():
    out = _bench("bench/input_pipeline.py", "--sizes", "64x48", "--workers", "0", "--epochs", "1",
                 "--fit-batches", "2", "--synthetic-images", "40")  # fmt: skip
    rows = _table(out, "64x48")
    assert [r[1] for r in rows] == ["jpeg", "cache"]
    for row in rows:
        loaded, consumed, ratio = float(row[5]), float(row[6]), float(row[7].rstrip("x"))
        assert loaded > 0 and consumed > 0 and abs(ratio - loaded / consumed) <= 0.1 + 0.05 * ratio
        assert row[8].endswith("of 2 steps")
    assert "crop cache at 64x48:" in out


def test_evolution_overhead_splits_the_whole_wall_time(tmp_path):
    out = _bench("bench/evolution_overhead.py", "--generations", "1", "population=2", "parents=2", "epochs=1",
                 "ancestor_epochs=1", "logger=none", f"ancestor={SMALL}", "+model.head_channels=32",
                 *TINY_DATA)  # fmt: skip
    rows = {r[0]: r for r in (line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| "))}
    parts = [float(r[1]) for name, r in rows.items() if not name.strip().startswith(("component", "**"))]
    assert len(parts) == 6 and parts[0] > 0 and all(p >= 0 for p in parts[1:4])
    total = float(out.split("trained in ")[1].split(" s")[0])
    assert abs(sum(parts) - total) < 0.2 and "3 networks" in out


def test_evaluation_times_each_stage_of_the_test_protocol():
    out = _bench("bench/evaluation.py", "--model", "evopose2d_xs", "--size", "64x48", "--val-images", "6")
    stages = [row[0] for row in _table(out, "") if row[0] not in ("stage", "---")]
    assert stages == ["forward", "flip test", "decode", "records", "COCO scoring", "all"]


def test_transfer_ablation_trains_the_same_children_both_ways(tmp_path):
    plot = tmp_path / "ablation.png"
    out = _bench("bench/transfer_ablation.py", "--children", "1", "--plot", str(plot), "ancestor_epochs=1",
                 "epochs=1", f"ancestor={SMALL}", "+model.head_channels=32", *TINY_DATA)  # fmt: skip
    (row,) = _table(out, "k")
    assert float(row[2]) > 0 and float(row[3]) > 0 and plot.read_bytes()[:4] == b"\x89PNG"


def test_parallel_children_compares_launchers_on_the_same_children():
    out = _bench("bench/parallel_children.py", "--jobs", "2", "population=2", "epochs=1", "ancestor_epochs=1",
                 f"ancestor={SMALL}", "+model.head_channels=32", *TINY_DATA)  # fmt: skip
    rows = [r for r in _table(out, "") if r[0] not in ("variant", "---")]
    assert [r[0] for r in rows] == ["one after another", "2 at a time, shared cores", "2 at a time, oversubscribed"]
    for row in rows:
        assert int(row[2]) == 2 and float(row[3]) > 0 and float(row[4]) > 0 and float(row[5]) > 0
    assert rows[0][6] == "1.00x"
