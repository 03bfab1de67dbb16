"""evolve.py through the real command line: multirun searches with real launchers and children."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evopose_pl.evolution import COMPLETED, FAILED, load_state
from evopose_pl.predict import load_pose_module
from evopose_pl.report import CSV_FILE, FITNESS_FILE, PARETO_FILE
from evopose_pl.runtimes import fastest_runtime, precision

FAIL = [
    "+callbacks.fail._target_=tests.failing.FailIndividuals",
    "+callbacks.fail.individual=${individual.id}",
]


class Evolve:
    """``python evolve.py`` on a tiny search: the small test genotype, a narrow head and a few tiny
    images (a child trains in about a second), 4 children of 2 parents for 2 generations."""

    def __init__(self, root: Path, genotype: str) -> None:
        self.root = root
        self.tiny = [
            "logger=none",
            "data.num_workers=0",
            "data.synthetic.train_images=24",
            "data.synthetic.val_images=6",
            "data.batch_size=8",
            f"ancestor={genotype}",
            "+model.head_channels=32",
            "population=4",
            "parents=2",
            "generations=2",
            "epochs=1",
            "ancestor_epochs=1",
        ]

    def command(self, sweep_dir: Path, *overrides: str) -> list[str]:
        return [sys.executable, "evolve.py", f"hydra.sweep.dir={sweep_dir}", *self.tiny, *overrides]

    def __call__(self, sweep_dir: Path, *overrides: str, env: dict | None = None, timeout: int = 600):
        return subprocess.run(self.command(sweep_dir, *overrides), cwd=self.root, capture_output=True, text=True,
                              timeout=timeout, env=env)  # fmt: skip


@pytest.fixture(scope="module")
def evolve(root, test_genotype) -> Evolve:
    return Evolve(root, test_genotype)


def _ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def basic_search(tmp_path_factory, evolve):
    sweep = tmp_path_factory.mktemp("evolve") / "basic"
    output = _ok(evolve(sweep))
    return sweep, load_state(sweep), output


def _fitness_order(individuals):
    return sorted((i for i in individuals if i.status == COMPLETED), key=lambda i: (i.fitness, i.id))


def test_basic_search_completes_with_a_consistent_state(basic_search):
    sweep, state, output = basic_search
    assert len(state.individuals) == 1 + 2 * 4 and all(i.status == COMPLETED for i in state.individuals)
    assert [h["generation"] for h in state.history] == [0, 1, 2] and state.stopped is None
    # (mu + lambda) is elitist: the final parents are the mu fittest of every network ever trained
    assert state.parents == [i.id for i in _fitness_order(state.individuals)[:2]]
    genotypes = [i.genotype for i in state.individuals]
    assert len(set(genotypes)) == len(genotypes) and state.cache == genotypes
    previous_parents = {1: {0}, 2: set(state.history[1]["parents"])}
    for ind in state.individuals:
        assert ind.params > ind.params_trainable > 0 and ind.flops > 0 and ind.wall_time > 0
        assert ind.fitness == pytest.approx(ind.val_loss * (5e6 / ind.params) ** -0.07)  # the driver's
        t = ind.timing  # what bench/evolution_overhead.py splits the wall time with
        assert t["started"] < t["fit_started"] < t["fit_ended"] <= t["ended"] and t["train"] > 0 and t["val"] > 0
        assert t["train"] + t["val"] < t["fit_ended"] - t["fit_started"]
        measured = json.loads((sweep / ind.directory / "result.json").read_text())  # what the child measured
        assert "fitness" not in measured and measured["val_loss"] == ind.val_loss and measured["params"] == ind.params
        if ind.generation:
            assert ind.parent in previous_parents[ind.generation]
            assert 0 < ind.transfer["transfer/inherited_fraction"] <= 1
        checkpoints = list((sweep / ind.directory).rglob("*.ckpt"))
        if ind.id in state.parents:
            assert checkpoints == [sweep / ind.checkpoint]
        else:
            assert checkpoints == [] and ind.checkpoint is None
    assert output.count("individual ") >= 9 and output.count(" selected: best fitness") == 3
    assert output.count("Crop cache: ") == 2 * 9  # every child trains and validates on the search's cached crops
    assert (sweep / CSV_FILE).read_text().count("\n") == 1 + 9
    best = next(i for i in state.individuals if i.id == state.parents[0])  # ready for predict and export
    assert str(load_pose_module(sweep / best.checkpoint).net.genotype) == best.genotype
    for png in (PARETO_FILE, FITNESS_FILE):
        assert (sweep / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rerunning_a_finished_search_trains_nothing(basic_search, evolve):
    sweep, _, _ = basic_search
    before = (sweep / "state.json").read_bytes()
    output = _ok(evolve(sweep))
    assert "Launching" not in output and "Search finished after generation 2" in output
    assert (sweep / "state.json").read_bytes() == before


def test_changed_search_settings_refuse_to_resume(basic_search, evolve):
    sweep, _, _ = basic_search
    before = (sweep / "state.json").read_bytes()
    result = evolve(sweep, "gamma=-0.05")
    assert result.returncode != 0
    assert "gamma=-0.05" in result.stderr and "re-run with gamma=-0.07" in result.stderr
    assert (sweep / "state.json").read_bytes() == before


@pytest.mark.parametrize(
    "override,saved",
    [
        ("data.input_size=[32,24]", "data.input_size=[64,48]"),
        ("recipe.lr=0.002", "recipe.lr=0.001"),
        ("codec.sigma=3.0", "codec.sigma=null"),
        ("trainer.precision=bf16-mixed", "trainer.precision=null"),
        ("data.synthetic.train_images=30", "data.synthetic.train_images=24"),
    ],
)
def test_changed_training_settings_refuse_to_resume(basic_search, evolve, override, saved):
    """What a child's fitness means is part of the search: another input size, rate, precision or dataset
    would mix incomparable fitness values."""
    sweep, _, _ = basic_search
    before = (sweep / "state.json").read_bytes()
    result = evolve(sweep, override)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert f"{override}, but {sweep / 'state.json'} holds a search with {saved}" in result.stderr, result.stderr[-2000:]
    assert (sweep / "state.json").read_bytes() == before


def test_settings_that_change_only_speed_or_bookkeeping_may_change_on_resume(basic_search, evolve):
    sweep, _, _ = basic_search
    output = _ok(evolve(sweep, "data.pin_memory=false", "channels_last=false", "flip_test=true",
                        "keep_checkpoints=true", "max_failure_rate=0.5", "threads=1"))  # fmt: skip
    assert "Resuming the search" in output and "Search finished after generation 2" in output


def test_threads_resolved_by_the_child_do_not_stop_the_driver(tmp_path, evolve):
    """SLURM's threads=${hydra:launcher.cpus_per_task} can only be resolved in a job: the driver leaves it alone."""
    sweep = tmp_path / "resolved-by-child"
    _ok(evolve(sweep, "generations=0", "threads=${hydra:sweeper.max_batch_size}"))
    assert load_state(sweep).individuals[0].status == COMPLETED
    overrides = (sweep / "individuals/0000/.hydra/overrides.yaml").read_text()
    assert "- threads=${hydra:sweeper.max_batch_size}\n" in overrides and overrides.count("threads=") == 1


@pytest.mark.slow  # the lock's own test: test_evolution.py (one driver per search)
def test_a_second_driver_on_the_same_search_exits_at_once(tmp_path, evolve):
    sweep = tmp_path / "locked"
    small = ["generations=2", "population=2", "parents=1"]  # 5 networks: long enough to be driving when refused
    first = subprocess.Popen(evolve.command(sweep, *small), cwd=evolve.root, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (sweep / "state.json").exists() and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.05)
        assert first.poll() is None, "the first driver ended before the second started"
        started = time.monotonic()
        second = evolve(sweep, *small)
        assert first.poll() is None, "the first search finished before the second driver was refused"
        assert second.returncode != 0 and time.monotonic() - started < 60
        assert f"{sweep} is the directory of a search that another evolve.py is driving (pid {first.pid} on" in (
            second.stderr
        ), second.stderr[-3000:]
        assert "Launching" not in second.stdout + second.stderr and "Traceback" not in second.stderr
        output, _ = first.communicate(timeout=600)
    finally:
        first.kill()
    assert first.returncode == 0, output[-3000:]
    state = load_state(sweep)  # the first driver's search, untouched by the second
    assert len(state.individuals) == 5 and all(i.status == COMPLETED for i in state.individuals)
    assert all((sweep / i.checkpoint).exists() for i in state.individuals if i.id in state.parents)
    assert output.count("Launching 1 jobs locally") == 5


@pytest.mark.slow  # building leaves the random state alone: test_crop_cache.py
def test_a_search_that_builds_the_crop_cache_equals_one_that_reuses_it(tmp_path, evolve):
    """Building the cache must not draw from global random state: the same search, cache built or found."""
    small = ["generations=1", "population=2", "parents=1", f"data.crop_cache={tmp_path / 'crops'}"]
    built = tmp_path / "built"
    assert "Crop cache: " in _ok(evolve(built, *small)) and (tmp_path / "crops").exists()
    reused = tmp_path / "reused"
    _ok(evolve(reused, *small))
    losses = [[i.val_loss for i in load_state(sweep).individuals] for sweep in (built, reused)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-6, abs=0)


@pytest.mark.slow  # resume equals uninterrupted, results adopted: test_evolution.py
def test_resume_after_sigkill_mid_generation_matches_the_uninterrupted_search(basic_search, evolve, tmp_path):
    _, uninterrupted, _ = basic_search
    sweep = tmp_path / "killed"
    process = subprocess.Popen(evolve.command(sweep), cwd=evolve.root, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and process.poll() is None:
            try:
                state = load_state(sweep)
            except (FileNotFoundError, ValueError):
                state = None
            if state and sum(i.generation == 2 and i.status == COMPLETED for i in state.individuals) >= 1:
                break
            time.sleep(0.02)
        assert process.poll() is None, "the search ended before it could be killed mid-generation"
        process.send_signal(signal.SIGKILL)
        process.wait()
    finally:
        process.kill()
    killed = load_state(sweep)
    done = {i.id: (sweep / i.directory / "result.json").stat().st_mtime_ns for i in killed.individuals
            if i.status == COMPLETED}  # fmt: skip
    assert 1 + 4 < len(done) < 9, "killed in generation 2"

    output = _ok(evolve(sweep))
    resumed = load_state(sweep)
    for id, mtime in done.items():  # finished children were not trained again
        assert (sweep / resumed.individuals[id].directory / "result.json").stat().st_mtime_ns == mtime
    assert output.count("individual ") - output.count("Search finished") >= 9 - len(done)
    assert all(i.status == COMPLETED for i in resumed.individuals) and len(resumed.history) == 3
    assert [i.genotype for i in resumed.individuals] == [i.genotype for i in uninterrupted.individuals]
    assert resumed.parents == uninterrupted.parents
    for a, b in zip(resumed.individuals, uninterrupted.individuals):
        assert a.val_loss == pytest.approx(b.val_loss, rel=1e-4)


def test_joblib_search_runs_children_in_parallel_workers(basic_search, evolve, tmp_path):
    _, basic, _ = basic_search
    sweep = tmp_path / "joblib"
    output = _ok(evolve(sweep, "launcher=joblib", "hydra.launcher.n_jobs=2"))
    state = load_state(sweep)
    assert "Joblib.Parallel" in output and "2 children per launch" in output
    assert len(state.individuals) == 9 and all(i.status == COMPLETED for i in state.individuals)
    assert state.parents == [i.id for i in _fitness_order(state.individuals)[:2]]
    # the same seed draws the same children from the same parents
    assert [i.genotype for i in state.individuals[:5]] == [i.genotype for i in basic.individuals[:5]]
    cores = len(os.sched_getaffinity(0))
    for ind in state.individuals:
        assert (list((sweep / ind.directory).rglob("*.ckpt")) != []) == (ind.id in state.parents)
        # two children at a time share the cores; the ancestor, launched alone, has them all
        overrides = (sweep / ind.directory / ".hydra/overrides.yaml").read_text()
        assert f"- threads={cores if ind.id == 0 else max(1, cores // 2)}\n" in overrides
    assert (sweep / PARETO_FILE).exists() and (sweep / FITNESS_FILE).exists() and (sweep / CSV_FILE).exists()


def test_failed_children_are_recorded_and_the_search_goes_on(tmp_path, evolve):
    sweep = tmp_path / "failures"
    output = _ok(evolve(sweep, "generations=1", "max_failure_rate=0.5", *FAIL,
                        "+callbacks.fail.raise_for=[2]", "+callbacks.fail.nan_for=[3]"))  # fmt: skip
    state = load_state(sweep)
    by_id = {i.id: i for i in state.individuals}
    assert by_id[2].status == by_id[3].status == FAILED and math.isinf(by_id[2].fitness)
    assert "RuntimeError: injected failure of individual 2" in by_id[2].error
    assert "FloatingPointError" in by_id[3].error and "nan" in by_id[3].error
    assert by_id[1].status == by_id[4].status == COMPLETED and len(state.history) == 2
    assert set(state.parents) <= {0, 1, 4}
    assert "FAILED" in output and state.history[1]["failed"] == 2


def test_too_many_failures_stop_the_search_cleanly(tmp_path, evolve):
    sweep = tmp_path / "stopped"
    result = evolve(sweep, "generations=2", "max_failure_rate=0.5", *FAIL, "+callbacks.fail.raise_for=[1,2,3]")
    assert result.returncode != 0
    assert "3 of 4 children failed" in result.stderr and "injected failure of individual 1" in result.stderr
    state = load_state(sweep)  # intact and complete up to the failure
    assert state.stopped and len(state.history) == 1 and state.parents == [0]
    assert [i.status for i in state.individuals] == [COMPLETED, FAILED, FAILED, FAILED, COMPLETED]
    assert (sweep / state.individuals[0].checkpoint).exists()  # the parent keeps its weights for a re-run
    assert (sweep / CSV_FILE).exists()


def test_no_weight_transfer_and_offline_wandb(tmp_path, evolve):
    sweep = tmp_path / "scratch"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB")}
    env["HOME"] = str(tmp_path)  # no ~/.netrc: no W&B key
    output = _ok(evolve(sweep, "generations=1", "population=2", "parents=1", "weight_transfer=false",
                        "logger=wandb", "search_name=scratch", env=env))  # fmt: skip
    state = load_state(sweep)
    assert all(i.transfer is None for i in state.individuals) and "weight transfer:" not in output
    assert state.settings["weight_transfer"] is False
    for ind in state.individuals:  # one offline W&B run per child, and the search run
        runs = list((sweep / ind.directory / "wandb").glob("offline-run-*"))
        assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
    search_runs = list((sweep / "wandb").glob("offline-run-*"))
    assert len(search_runs) == 1 and "wandb sync" in output
    logged = next(search_runs[0].glob("*.wandb")).read_bytes()
    assert b"individual/fitness" in logged  # the driver logs each child's fitness; children log none
    for ind in state.individuals:  # (their config holds the setting fitness=params, no fitness figure)
        assert b"/fitness" not in next((sweep / ind.directory / "wandb").glob("offline-run-*/*.wandb")).read_bytes()
    tables = sorted((search_runs[0] / "files/media/table/search").glob("individuals_*.table.json"))
    assert len(tables) == 2  # one per generation
    last = json.loads(max(tables, key=lambda p: int(p.name.split("_")[1])).read_text())
    assert len(last["data"]) == 3 and {"genotype", "params", "val_loss", "fitness"} <= set(last["columns"])


def test_multi_device_children_run_their_other_ranks(tmp_path, evolve):
    """trainer=ddp: Lightning re-runs the script for rank 1, which must train the child, not start a search."""
    sweep = tmp_path / "ddp"
    ddp = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true",
           "trainer.sync_batchnorm=false"]  # fmt: skip
    output = _ok(evolve(sweep, "generations=1", "population=2", "parents=1", *ddp))
    state = load_state(sweep)
    assert all(i.status == COMPLETED for i in state.individuals) and len(state.individuals) == 3
    assert output.count("GLOBAL_RANK: 1, MEMBER: 2/2") == 3 and output.count("Starting the search") == 1
    assert "global batch 16" in output  # 2 ranks x 8
    for ind in state.individuals:
        assert (sweep / ind.directory / "rank_1.log").exists()


def test_submitit_local_runs_a_generation(tmp_path, evolve):
    sweep = tmp_path / "submitit"
    _ok(evolve(sweep, "launcher=submitit_local", "generations=1", "population=2", "parents=1"))
    state = load_state(sweep)
    assert len(state.individuals) == 3 and all(i.status == COMPLETED for i in state.individuals)
    assert list((sweep / ".submitit").iterdir())


@pytest.mark.parametrize(
    "override,message",
    [
        ("population=5", "population=5: must be divisible by parents=2"),
        ("ancestor=k3r1c2s1", "ancestor='k3r1c2s1': the ancestor has 1 module genes"),
        ("search_space.max_repeats=0", "search_space: search space max_repeats"),
        ("gamma=-0.07,-0.05", "gamma=-0.07,-0.05: sweeps over values are not part of a search"),
        ("individual.id=3", "individual.id=3: individual.* is set by the search"),
        ("trainer.max_epochs=7", "trainer.max_epochs=7: the search sets it for each child from epochs="),
        ("strategy=annealing", "strategy='annealing': must be one of mu_plus_lambda, regularized, random"),
        ("objectives=[val_loss,accuracy]", "objectives=['val_loss', 'accuracy']: must be two or three different"),
        (
            "fitness=latency latency.runtime=tensorrt",
            "latency.runtime='tensorrt': must be one of auto, torch, onnxruntime, openvino",
        ),
        (
            "fitness=latency latency.device=cuda latency.runtime=openvino",
            "latency.runtime=openvino runs networks on the CPU here, not on cuda",
        ),
    ],
)
def test_invalid_overrides_fail_before_anything_is_launched(tmp_path, evolve, override, message):
    sweep = tmp_path / "invalid"
    result = evolve(sweep, *override.split())
    assert result.returncode != 0 and message in result.stderr, result.stderr[-3000:]
    assert "Traceback" not in result.stderr  # one line naming the override
    assert not (sweep / "state.json").exists() and not (sweep / "individuals").exists()


def test_a_missing_data_root_is_refused_before_the_search_starts(tmp_path, root):
    """Every child would fail on it, and a state recording it would refuse the corrected resume."""
    sweep = tmp_path / "no-root"
    result = subprocess.run([sys.executable, "evolve.py", f"hydra.sweep.dir={sweep}", "data=coco", "logger=none"],
                            cwd=root, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode != 0 and "error: data.root: has no value; set it (data.root=...)" in result.stderr
    assert not (sweep / "state.json").exists()


LATENCY = ["latency.warmup=1", "latency.repeats=3", "latency.throughput_batch=4"]


def test_nsga2_over_validation_loss_and_latency_keeps_fronts_and_hypervolumes(tmp_path, evolve):
    sweep = tmp_path / "nsga2"
    cache = tmp_path / "latency"
    output = _ok(evolve(sweep, "selection=nsga2", "objectives=[val_loss,latency]", "generations=1",
                        f"latency.cache_dir={cache}", *LATENCY))  # fmt: skip
    state = load_state(sweep)
    assert len(state.individuals) == 5 and all(i.status == COMPLETED for i in state.individuals)
    auto = f"threads, {fastest_runtime('cpu')} {precision(fastest_runtime('cpu'), 'cpu')}"  # latency.runtime=auto
    for ind in state.individuals:  # measured after training, in the child, and cached per architecture
        assert ind.latency > 0 and ind.throughput > 0 and ind.latency_device.endswith(auto)
    assert len(list(cache.glob("*.json"))) == 5
    for summary in state.history:
        assert 0 < summary["hypervolume"] <= 1 and summary["front"]
    assert state.history[1]["hypervolume"] >= state.history[0]["hypervolume"]  # the front only grows
    with open(sweep / CSV_FILE) as f:
        table = {int(row["id"]): row for row in csv.DictReader(f)}
    assert {id for id, row in table.items() if row["front_rank"] == "0"} == set(state.history[-1]["front"])
    assert all(float(table[i.id]["latency"]) == i.latency for i in state.individuals)
    assert "hypervolume" in output and " ms, " in output


@pytest.mark.parametrize("strategy", ["regularized", "random"])
def test_regularized_and_random_searches_run_and_resume(tmp_path, evolve, strategy):
    sweep = tmp_path / strategy
    knobs = [f"strategy={strategy}", "batch=2", "sample_size=2", "population=3"]
    _ok(evolve(sweep, *knobs, "generations=1"))
    first = load_state(sweep)
    assert [len(first.generation_of(g)) for g in (0, 1)] == [1, 2]
    _ok(evolve(sweep, *knobs, "generations=2"))  # the same search, one generation further
    state = load_state(sweep)
    assert [i.genotype for i in state.individuals[:3]] == [i.genotype for i in first.individuals]
    assert [i.val_loss for i in state.individuals[:3]] == [i.val_loss for i in first.individuals]
    assert len(state.individuals) == 5 and all(i.status == COMPLETED for i in state.individuals)
    assert len(state.history) == 3 and all(h["hypervolume"] is not None for h in state.history)
    if strategy == "random":
        assert all(i.parent == 0 and i.transfer is not None for i in state.individuals[1:])
        assert state.individuals[0].checkpoint is not None  # every child inherits the ancestor's weights
    else:  # the population is the newest 3; the others died and lost their checkpoints
        assert sorted(state.parents) == [2, 3, 4] and state.individuals[0].checkpoint is None
        assert all(i.parent in state.history[i.generation - 1]["parents"] for i in state.individuals[1:])


def test_report_rebuilds_table_and_plots(basic_search, tmp_path):
    sweep, state, _ = basic_search
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "state.json").write_bytes((sweep / "state.json").read_bytes())
    result = subprocess.run([sys.executable, "-m", "evopose_pl.report", str(copy)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert f"fittest: individual {state.parents[0]}" in result.stdout
    assert {p.name for p in copy.iterdir()} >= {CSV_FILE, PARETO_FILE, FITNESS_FILE}
    missing = subprocess.run([sys.executable, "-m", "evopose_pl.report", str(tmp_path)], capture_output=True, text=True)
    assert missing.returncode == 2 and "no search state here" in missing.stderr
