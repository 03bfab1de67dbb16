"""The benchmark scripts run and print their tables (their figures live in BENCHMARKS.md, not here).

Each figure a script derives (a ratio, a rate, a share) is checked against the figures it is derived
from as printed, and what a search recorded (its state.json, individuals.csv, the children's
result.json) against what the script says of it.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import time

import pytest
from hydra.utils import instantiate

from evopose_pl.nets import build_model, count_parameters

TINY_DATA = ["data.synthetic.train_images=24", "data.synthetic.val_images=6", "data.batch_size=8"]


def _quotient_matches(shown: float, a: float, b: float, a_step: float, b_step: float, shown_step: float) -> bool:
    """Whether ``shown`` (printed rounded to ``shown_step``) can be ``a / b``, for ``a`` and ``b`` as printed
    (rounded to ``a_step`` and ``b_step``; a step of 0: exact)."""
    low = (a - a_step / 2) / (b + b_step / 2)
    high = (a + a_step / 2) / (b - b_step / 2) if b > b_step / 2 else float("inf")
    return low - shown_step / 2 - 1e-9 <= shown <= high + shown_step / 2 + 1e-9


def _bench(root, *args: str) -> str:
    result = subprocess.run([sys.executable, *args], cwd=root, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "cores, torch" in result.stdout  # every figure names its machine
    return result.stdout


def _table(output: str, first_cell: str = "") -> list[list[str]]:
    """The cells of the table rows that start with ``first_cell``, header and rule excluded."""
    rows = [
        [c.strip() for c in line.split("|")[1:-1]] for line in output.splitlines() if line.startswith(f"| {first_cell}")
    ]
    return [row for row in rows if not row[0].startswith("---")][(0 if first_cell else 1) :]


def test_model_speed_prints_every_variant_with_its_ratio(root):
    out = _bench(root, "bench/model_speed.py", "--sizes", "64x48", "--batches", "2", "--repeats", "1",
                 "--warmup", "0", "--variants", "channels_last", "bf16")  # fmt: skip
    rows = _table(out, "evopose2d_s")
    assert [row[4] for row in rows] == ["fp32", "channels_last", "bf16"]  # the reference first
    params = count_parameters(build_model("evopose2d_s"))
    reference_train, reference_infer = float(rows[0][5]), float(rows[0][7])
    for row in rows:
        assert row[1] == f"{params.with_bn_stats / 1e6:.2f}M" and row[2:4] == ["64x48", "2"]
        train, infer = float(row[5]), float(row[7])
        assert _quotient_matches(float(row[6].rstrip("x")), reference_train, train, 0.001, 0.001, 0.01), row
        assert _quotient_matches(float(row[8].rstrip("x")), reference_infer, infer, 0.001, 0.001, 0.01), row
        assert _quotient_matches(float(row[9]), 2, train, 0, 0.001, 0.1), row  # images per second of training


def test_model_speed_times_the_onnx_runtimes_inference_against_the_same_fp32_network(root):
    out = _bench(root, "bench/model_speed.py", "--sizes", "64x48", "--batches", "2", "--repeats", "1",
                 "--warmup", "1", "--variants", "onnxruntime", "openvino")  # fmt: skip
    reference, *exported = _table(out, "evopose2d_s")
    assert [row[4] for row in exported] == ["onnxruntime", "openvino"]
    for row in exported:
        assert row[5:7] == ["n/a", "n/a"] and row[9] == "n/a"  # inference only
        assert _quotient_matches(float(row[8].rstrip("x")), float(reference[7]), float(row[7]), 0.001, 0.001, 0.01)


def test_model_speed_compares_concurrent_training_processes_by_threads_each(root):
    out = _bench(root, "bench/model_speed.py", "--sizes", "64x48", "--batches", "2", "--repeats", "2",
                 "--warmup", "1", "--variants", "channels_last+retain", "--concurrent", "2")  # fmt: skip
    rows = _table(out, "1 process") + _table(out, "2 processes")
    cores = os.cpu_count()
    assert [row[:2] for row in rows] == [
        ["1 process", str(cores)], ["2 processes", str(max(1, cores // 2))], ["2 processes, oversubscribed", str(cores)]
    ]  # fmt: skip
    alone = float(rows[0][2])
    assert alone > 0 and rows[0][3] == "1.00x"
    for row in rows[1:]:
        assert _quotient_matches(float(row[3].rstrip("x")), float(row[2]), alone, 0.01, 0.01, 0.01), row


def test_profile_step_splits_a_training_step_into_its_phases_and_operators(root):
    out = _bench(root, "bench/profile_step.py", "--size", "64x48", "--batch", "2", "--warmup", "0", "--steps", "1",
                 "--variant", "channels_last", "--top", "4")  # fmt: skip
    phases = re.findall(r"## (\w+): ([\d.]+) s per step \((\d+)% of the step\)", out)
    assert [p[0] for p in phases] == ["forward", "backward", "optimiser"]
    assert 97 <= sum(int(p[2]) for p in phases) <= 103
    backward = out.split("## backward")[1].split("## optimiser")[0]
    rows = _table(backward, "aten::")
    assert 1 <= len(rows) <= 4 and any(row[0] == "aten::convolution_backward" for row in rows)
    shares = [float(row[4].rstrip("%")) for row in rows]
    assert shares == sorted(shares, reverse=True) and sum(shares) <= 100.05


def test_profile_step_by_layer_times_each_kind_of_layer_with_hooks(root):
    out = _bench(root, "bench/profile_step.py", "--size", "64x48", "--batch", "2", "--warmup", "1", "--steps", "2",
                 "--variant", "channels_last+bf16", "--by-layer", "--top", "40")  # fmt: skip
    totals = re.search(r"A step: ([\d.]+) s; .*forward ([\d.]+) s, backward ([\d.]+) s", out)
    step, forward, backward = map(float, totals.groups())
    assert 0 < forward + backward <= step
    rows = _table(out)
    kinds = {row[0]: row for row in rows}
    assert {"BatchNorm2d", "SiLU"} <= set(kinds) and any(kind.endswith("depthwise") for kind in kinds)
    assert kinds["Conv2d 1x1 stride 1 128->17"][1] == "1"  # the final layer, one of its kind
    assert all(float(row[3]) > 0 for row in rows if "depthwise" in row[0])  # their backward, ours included
    shares = [float(row[4].rstrip("%")) for row in rows]
    assert shares == sorted(shares, reverse=True) and sum(shares) <= 100.05


def test_input_pipeline_compares_the_loader_with_a_real_fit(root):
    out = _bench(root, "bench/input_pipeline.py", "--sizes", "64x48", "--workers", "0", "--epochs", "1",
                 "--fit-batches", "2", "--synthetic-images", "40")  # fmt: skip
    rows = _table(out, "64x48")
    assert [r[1:3] for r in rows] == [["jpeg", "0"], ["cache", "0"]]
    for row in rows:
        loaded, consumed, ratio = float(row[5]), float(row[6]), float(row[7].rstrip("x"))
        assert _quotient_matches(ratio, loaded, consumed, 1, 0.1, 0.1), row
        waiting, steps = re.fullmatch(r"([\d.]+)% of (\d+) steps", row[8]).groups()
        assert int(steps) == 2 and float(waiting) <= 100  # --fit-batches
    assert "crop cache at 64x48:" in out


def test_evolution_overhead_splits_the_wall_time_as_the_search_recorded_it(root, tmp_path, test_genotype):
    sweep = tmp_path / "search"
    before = time.time()
    out = _bench(root, "bench/evolution_overhead.py", "--generations", "1", "--sweep-dir", str(sweep), "population=2",
                 "parents=2", "epochs=1", "ancestor_epochs=1", "logger=none", f"ancestor={test_genotype}",
                 "+model.head_channels=32", *TINY_DATA)  # fmt: skip
    elapsed = time.time() - before
    individuals = json.loads((sweep / "state.json").read_text())["individuals"]
    with open(sweep / "individuals.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(individuals) == 3  # the ancestor and population=2 children of one generation
    assert sorted(int(row["id"]) for row in table) == sorted(ind["id"] for ind in individuals)
    networks, total = re.search(r": (\d+) networks trained in ([\d.]+) s", out).groups()
    assert int(networks) == len(individuals)
    total = float(total)
    rows = {row[0]: (float(row[1]), float(row[2].rstrip("%"))) for row in _table(out)}
    for name, (seconds, share) in rows.items():
        assert _quotient_matches(share, 100 * seconds, total, 100 * 0.1, 0.1, 0.1), name

    # The children's components from their own records (result.json in each one's directory).
    timing = [json.loads((sweep / ind["directory"] / "result.json").read_text())["timing"] for ind in individuals]
    recorded = {
        "children's training and validation": sum(t["train"] + t["val"] for t in timing),
        "child set-up": sum(t["fit_started"] - t["started"] for t in timing),
        "in-fit, outside the loops": sum(t["fit_ended"] - t["fit_started"] - t["train"] - t["val"] for t in timing),
        "child wrap-up": sum(t["ended"] - t["fit_ended"] for t in timing),
    }
    for name, seconds in recorded.items():
        assert abs(rows[name][0] - seconds) <= 0.05 + 1e-6, (name, rows[name][0], seconds)
    # The driver's, which no child records, bounded by this test's own clock: the command started
    # after `before`, the children ran one after another inside it, and it ended before `elapsed`.
    first, last = min(t["started"] for t in timing), max(t["ended"] for t in timing)
    driver_start = rows["driver start"][0]
    assert 0 < driver_start <= first - before + 0.05
    assert driver_start + (last - first) - 0.1 <= total <= elapsed + 0.05
    inside = sum(t["ended"] - t["started"] for t in timing)
    assert abs(rows["driver, between children"][0] - (total - driver_start - inside)) <= 0.15
    overhead = rows["**overhead (all but training and validation)**"][0]
    assert abs(overhead - (total - recorded["children's training and validation"])) <= 0.1


def test_evaluation_times_each_stage_of_the_test_protocol(root):
    out = _bench(root, "bench/evaluation.py", "--model", "evopose2d_xs", "--size", "64x48", "--val-images", "6")
    rows = _table(out)
    assert [row[0] for row in rows] == ["forward", "flip test", "decode", "records", "COCO scoring", "all"]
    instances = int(re.search(r": (\d+) detections on 6 synthetic images", out).group(1))
    total = float(rows[-1][1])
    for stage, seconds, per_instance, rate, share in rows:
        seconds = float(seconds)
        assert _quotient_matches(float(per_instance), 1000 * seconds, instances, 1000 * 0.001, 0, 0.01), stage
        assert _quotient_matches(float(rate), instances, seconds, 0, 0.001, 1), stage
        assert _quotient_matches(float(share.rstrip("%")), 100 * seconds, total, 100 * 0.001, 0.001, 0.1), stage


def test_transfer_ablation_trains_the_same_children_both_ways(root, tmp_path, compose, test_genotype):
    plot = tmp_path / "ablation.png"
    overrides = ["ancestor_epochs=1", "epochs=1", f"ancestor={test_genotype}", "+model.head_channels=32", *TINY_DATA]
    out = _bench(root, "bench/transfer_ablation.py", "--children", "1", "--plot", str(plot), *overrides)
    assert plot.read_bytes()[:4] == b"\x89PNG"

    def params(genotype: str) -> str:
        net = instantiate(compose("evolve", f"individual.genotype={genotype}", *overrides).model)
        return f"{count_parameters(net).with_bn_stats / 1e6:.2f}M"

    ancestor = re.search(rf"ancestor {test_genotype} \(([\d.]+M)\), e0 = 1: best validation loss ([\d.]+);", out)
    assert ancestor is not None, out
    assert ancestor.group(1) == params(test_genotype)
    (row,) = _table(out, "k")
    genotype, size, transfer, scratch, ratio, below = row
    assert genotype != test_genotype and size == params(genotype)  # the child, one mutation away, as built
    transfer, scratch, best = float(transfer), float(scratch), float(ancestor.group(2))
    assert _quotient_matches(float(ratio.rstrip("x")), scratch, transfer, 0.1, 0.1, 0.01)
    for loss, answer in zip((transfer, scratch), below.split(" / ")):
        if abs(loss - best) > 0.1:  # decidable from the rounded figures
            assert answer == ("yes" if loss < best else "no"), row


@pytest.mark.slow  # three searches
def test_parallel_children_compares_launchers_on_the_same_children(root, test_genotype):
    out = _bench(root, "bench/parallel_children.py", "--jobs", "2", "population=2", "epochs=1", "ancestor_epochs=1",
                 f"ancestor={test_genotype}", "+model.head_channels=32", *TINY_DATA)  # fmt: skip
    rows = _table(out)
    assert [r[0] for r in rows] == ["one after another", "2 at a time, shared cores", "2 at a time, oversubscribed"]
    baseline = float(rows[0][3])
    for _, _, count, wall, _, rate, speed_up in rows:
        assert int(count) == 2  # population=2 children in every variant
        wall = float(wall)
        assert _quotient_matches(float(rate), 60 * 2, wall, 0, 0.1, 0.01), rate
        assert _quotient_matches(float(speed_up.rstrip("x")), baseline, wall, 0.1, 0.1, 0.01), speed_up


def test_model_speed_times_efficientpose_with_its_own_codec(root):
    """EfficientPose trains through its confidence-map codec on every pass and is timed as deployed."""
    out = _bench(root, "bench/model_speed.py", "--models", "efficientpose_rt", "--sizes", "64x64", "--batches", "2",
                 "--repeats", "1", "--warmup", "0", "--variants", "fp32")  # fmt: skip
    (row,) = _table(out, "efficientpose_rt")
    assert row[1] == "0.46M" and row[2:5] == ["64x64", "2", "fp32"] and float(row[5]) > 0 and float(row[7]) > 0


def test_search_strategies_compares_searches_at_the_same_budget(root, tmp_path, test_genotype):
    out = _bench(root, "bench/search_strategies.py", "--generations", "1", "--searches", "plus_nsga2", "random",
                 "--out", str(tmp_path), "logger=none", f"ancestor={test_genotype}", "+model.head_channels=32",
                 "epochs=1", "ancestor_epochs=1", "latency.repeats=2", "latency.warmup=0",
                 "latency.throughput_batch=2", *TINY_DATA)  # fmt: skip
    rows = _table(out)
    assert [(r[0], r[1], r[2]) for r in rows] == [("plus_nsga2", "0", "1"), ("plus_nsga2", "1", "5"),
                                                  ("random", "0", "1"), ("random", "1", "5")]  # fmt: skip
    states = {name: json.loads((tmp_path / name / "state.json").read_text()) for name in ("plus_nsga2", "random")}
    for name, generation, _, hours, best, volume in rows:
        individuals = [i for i in states[name]["individuals"] if i["generation"] <= int(generation)]
        assert float(best) == pytest.approx(min(i["fitness"] for i in individuals), rel=1e-3)
        assert float(hours) == pytest.approx(sum(i["wall_time"] for i in individuals) / 3600, abs=1e-3)
        assert 0 <= float(volume) <= 1
    assert all(i["latency"] > 0 for s in states.values() for i in s["individuals"])
    correlation = re.search(r"10 networks; Spearman rank correlation of latency with parameters (-?[\d.]+)", out)
    assert correlation and -1 <= float(correlation.group(1)) <= 1
    assert (tmp_path / "comparison.csv").exists() and (tmp_path / "comparison_progress.png").exists()


def test_model_speed_compares_with_the_reference_implementation(root, monkeypatch, capsys):
    """--against-reference: each variant's speed-up over the reference TF's fastest figures (ranges)."""
    monkeypatch.syspath_prepend(str(root / "bench"))
    from model_speed import print_against_reference

    print_against_reference({"channels_last+bf16": (1.7, 0.2), "onnxruntime": (None, 0.5)})
    rows = {row[0]: row for row in _table(capsys.readouterr().out)}
    assert rows["reference TF, mixed bfloat16"][1] == "2.04-2.47"
    assert rows["ours, channels_last+bf16"][1:] == ["1.700", "1.20-1.45x", "0.200", "1.40-1.85x"]
    assert rows["ours, onnxruntime"][1:] == ["n/a", "n/a", "0.500", "0.56-0.74x"]
