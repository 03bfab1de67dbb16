"""Searches side by side (``python -m evopose_pl.report compare``): an evolution's sweep directory and train.py
runs read into one table and one Pareto plot, with their costs in device-hours; and the documented pair of
commands (evolve.py experiment=compare_evolution, train.py experiment=compare_pnfs) run for real."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from evopose_pl.comparison import CSV_FILE, PLOT_FILE, PROGRESS_FILE, ComparisonError, read_searches, rows
from evopose_pl.evolution import COMPLETED, FAILED, RESULT_FILE, STATE_FILE, Individual, SearchState, load_state
from evopose_pl.files import write_json_atomic
from evopose_pl.report import main as report_main

AP = "COCO keypoints AP"


def write_evolution(directory: Path, genotype: str, individuals: list[dict]) -> Path:
    """A finished search: individual 0 the ancestor, the rest its children (generation 1)."""
    inds = [
        Individual(
            id=k, generation=min(k, 1), genotype=genotype, parent=None if k == 0 else 0, directory=f"ind{k}", **fields
        )  # fmt: skip
        for k, fields in enumerate(individuals)
    ]
    state = SearchState(
        settings={"population": len(inds) - 1, "parents": 1},
        generation=inds[-1].generation,
        individuals=inds,
        parents=[min((i for i in inds if i.status == COMPLETED), key=lambda i: i.fitness).id],
        history=[{"generation": g} for g in range(inds[-1].generation + 1)],
    )
    write_json_atomic(directory / STATE_FILE, state.to_json())
    return directory


def trained(fitness: float, accuracy: float | None, params: int, wall_time: float = 1800.0, **extra) -> dict:
    tested = {"accuracy": accuracy, "accuracy_metric": AP} if accuracy is not None else {}
    return dict(status=COMPLETED, fitness=fitness, val_loss=fitness, params=params, params_trainable=params,
                flops=10 * params, wall_time=wall_time, **tested, **extra)  # fmt: skip


def write_run(directory: Path, accuracy: float | None, params: int, wall_time: float, **extra) -> Path:
    record = {"network": "PNFSNet", "search": "sync", "derived": False, "params": params, "params_trainable": params,
              "flops": 20 * params, "val_loss": 0.002, "checkpoint": None, "wall_time": wall_time,
              "devices": 1}  # fmt: skip
    if accuracy is not None:
        record.update(accuracy=accuracy, accuracy_metric=AP, test_metrics={"AP": accuracy})
    record.update(extra)
    write_json_atomic(directory / RESULT_FILE, record)
    return directory


@pytest.fixture
def evolution(tmp_path, test_genotype) -> Path:
    return write_evolution(
        tmp_path / "evolution",
        test_genotype,
        [
            trained(10.0, 0.30, 200_000),
            trained(9.0, 0.40, 300_000, devices=2),  # the fittest: the search's answer
            trained(9.5, 0.45, 900_000),
            dict(status=FAILED, error="boom"),
        ],
    )


def test_an_evolution_and_a_run_side_by_side(evolution, tmp_path):
    run = write_run(tmp_path / "pnfs_sync", 0.42, 2_900_000, 3600.0)
    searches = read_searches([str(evolution), str(run)])
    assert [s.label for s in searches] == ["evolution", "pnfs_sync"]
    evo, pnfs = searches
    assert evo.chosen.name == "individual 1" and evo.chosen.accuracy == 0.40 and len(evo.networks) == 3
    assert evo.device_hours == pytest.approx((1800 + 2 * 1800 + 1800) / 3600)  # the child on 2 devices counts twice
    assert "mu 1, lambda 3" in evo.method
    assert pnfs.method == "PNFSNet, search=sync" and pnfs.device_hours == pytest.approx(1.0)
    table = {r["search"]: r for r in rows(searches)}
    # front by parameters: 0.2M at 0.30, 0.3M at 0.40, 0.9M at 0.45; PNFS (2.9M, 0.42) is beaten by individual 2
    assert table["evolution"]["on_front"] and not table["pnfs_sync"]["on_front"]
    assert table["pnfs_sync"]["params"] == 2_900_000 and table["pnfs_sync"]["networks"] == 1


def test_runs_under_one_label_are_one_search_whose_costs_add_up(evolution, tmp_path):
    search = write_run(tmp_path / "darts_search", 0.35, 2_900_000, 1800.0, search="darts")
    retrain = write_run(tmp_path / "darts_retrain", 0.50, 2_000_000, 900.0, search=None, derived=True)
    _, darts = read_searches([str(evolution), f"darts={search}", f"darts={retrain}"])
    assert darts.label == "darts" and len(darts.networks) == 2
    assert darts.chosen.name == "darts_retrain" and darts.chosen.accuracy == 0.50  # the last run is the answer
    assert darts.device_hours == pytest.approx(0.75)
    assert darts.method == "PNFSNet, search=darts + PNFSNet, derived architecture retrained"


def test_the_report_command_writes_one_table_and_one_plot(evolution, tmp_path, capsys):
    run = write_run(tmp_path / "pnfs_sync", 0.42, 2_900_000, 3600.0)
    out = tmp_path / "out"
    report_main(["compare", str(evolution), f"pnfs={run}", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "Searches side by side" in printed and "individual 1" in printed
    with open(out / CSV_FILE) as f:
        table = list(csv.DictReader(f))
    assert [r["search"] for r in table] == ["evolution", "pnfs"]
    assert table[0][f"accuracy ({AP})"] == "0.4" and table[1]["device_hours"] == "1.0"
    assert (out / PLOT_FILE).stat().st_size > 10_000
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left


@pytest.mark.parametrize(
    "problem, message",
    [
        ("untested run", "did not test its network (test=false)"),
        ("another metric", "tested with different metrics"),
        ("not a search", "neither an evolution's sweep directory"),
        ("missing", "no such directory"),
        ("same directory name", "give each a label"),
        ("broken record", "params='many' is not what a run records"),
    ],
)
def test_what_cannot_be_compared_is_refused_naming_the_path(problem, message, evolution, tmp_path, test_genotype):
    if problem == "untested run":
        other = write_run(tmp_path / "run", None, 100_000, 10.0)
    elif problem == "another metric":
        other = write_run(tmp_path / "run", 0.8, 100_000, 10.0, accuracy_metric="MPII PCKh Mean")
    elif problem == "not a search":
        other = tmp_path / "empty"
        other.mkdir()
    elif problem == "missing":
        other = tmp_path / "nowhere"
    elif problem == "same directory name":
        other = write_run(tmp_path / "elsewhere" / "evolution", 0.4, 100_000, 10.0)
    else:
        other = write_run(tmp_path / "run", 0.4, 100_000, 10.0, devices=1)
        record = json.loads((other / RESULT_FILE).read_text())
        (other / RESULT_FILE).write_text(json.dumps({**record, "params": "many"}))
    with pytest.raises(ComparisonError, match=re.escape(message)) as error:
        read_searches([str(evolution), str(other)])
    if problem != "another metric":
        assert str(other) in str(error.value)


def test_evolutions_progress_compares_with_one_reference_point(evolution, tmp_path, test_genotype):
    """Two evolutions, one untested: best fitness and hypervolume after each generation, the hypervolume against
    the larger of the two references (twice each ancestor's (val_loss, params)), networks and device-hours."""
    other = write_evolution(
        tmp_path / "other", test_genotype, [trained(20.0, None, 400_000), trained(15.0, None, 100_000)]
    )
    searches = read_searches([str(evolution), str(other)])
    first, second = searches
    assert second.accuracy_metric is None and second.chosen.name == "individual 1"
    assert [p.networks for p in first.progress] == [1, 4] and [p.best_fitness for p in first.progress] == [10.0, 9.0]
    assert first.progress[-1].device_hours == pytest.approx(2.0)  # the failed child left no time
    # references: (20, 400k) for the first (ancestor loss 10 at 200k), (40, 800k) for the other: (40, 800k) rules
    table = {r["search"]: r for r in rows(searches)}
    # the other's networks (15, 100k) and (20, 400k) scaled by (40, 800k): (0.375, 0.125) dominates (0.5, 0.5)
    assert table["other"]["hypervolume"] == pytest.approx((1 - 0.375) * (1 - 0.125))
    # the first's front (10, 200k), (9, 300k), (9.5, 900k: outside the reference) scaled by (40, 800k)
    assert table["evolution"]["hypervolume"] == pytest.approx((0.25 - 0.225) * (1 - 0.375) + 0.75 * 0.75)
    assert table["other"]["accuracy"] is None and table["other"]["on_front"] is None
    assert table["evolution"]["best_fitness"] == 9.0 and table["evolution"]["on_front"]
    report_main(["compare", str(evolution), str(other), "--out", str(tmp_path / "out")])
    assert (tmp_path / "out" / PROGRESS_FILE).stat().st_size > 10_000 and (tmp_path / "out" / PLOT_FILE).exists()
    report_main(["compare", str(other), "--out", str(tmp_path / "untested")])  # nothing tested: no Pareto plot
    assert not (tmp_path / "untested" / PLOT_FILE).exists() and (tmp_path / "untested" / PROGRESS_FILE).exists()


def test_the_command_line_refuses_bad_input_with_one_line(tmp_path):
    command = [sys.executable, "-m", "evopose_pl.report", "compare", str(tmp_path / "nowhere")]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 2 and "no such directory" in result.stderr and "Traceback" not in result.stderr


def test_the_documented_pair_of_commands_runs_both_searches_on_the_same_data(root, tmp_path, test_genotype):
    """README "Searches side by side": the evolution with its children tested, PNFS on the same data, the report."""
    tiny = ["logger=none", "data.num_workers=0", "data.synthetic.train_images=24", "data.synthetic.val_images=6",
            "data.batch_size=8", f"paths.log_dir={tmp_path}"]  # fmt: skip
    evolve = [sys.executable, "evolve.py", "experiment=compare_evolution", *tiny, f"ancestor={test_genotype}",
              "+model.head_channels=32", "population=2", "parents=1", "generations=1", "epochs=1",
              "ancestor_epochs=1"]  # fmt: skip
    pnfs = [sys.executable, "train.py", "experiment=compare_pnfs", *tiny, "trainer.max_epochs=1", "model.channels=4"]
    for command in (evolve, pnfs):
        result = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
    sweep, run = tmp_path / "compare" / "evolution", tmp_path / "compare" / "pnfs_sync"
    state = load_state(sweep)
    assert all(ind.accuracy_metric == AP and 0 <= ind.accuracy <= 1 for ind in state.individuals)
    record = json.loads((run / RESULT_FILE).read_text())
    assert record["network"] == "PNFSNet" and record["search"] == "sync" and record["accuracy_metric"] == AP
    assert record["devices"] == 1 and record["wall_time"] > 0 and record["checkpoint"].endswith(".ckpt")
    # the same data: PNFS trained on the evolution demo's synthetic set, at its input size
    assert record["input_size"] == list(state.settings["training"]["data.input_size"])
    report = subprocess.run(
        [sys.executable, "-m", "evopose_pl.report", "compare", str(sweep), str(run), "--out", str(tmp_path)],
        cwd=root, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert report.returncode == 0, report.stderr
    with open(tmp_path / CSV_FILE) as f:
        table = {r["search"]: r for r in csv.DictReader(f)}
    assert table["evolution"]["networks"] == "3" and table["pnfs_sync"]["networks"] == "1"
    assert float(table["pnfs_sync"]["device_hours"]) == pytest.approx(record["wall_time"] / 3600)
    assert (tmp_path / PLOT_FILE).exists()
