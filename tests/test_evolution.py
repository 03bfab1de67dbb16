"""The (mu + lambda) logic without training: settings, planning, recording, fitness, selection, resume."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import stat
import statistics
import subprocess
import sys
from dataclasses import dataclass, field, fields, replace

import pytest

from evopose_pl.evolution import (
    COMPLETED,
    FAILED,
    MAY_CHANGE_ON_RESUME,
    PENDING,
    RESULT_FILE,
    Evolution,
    Individual,
    Planner,
    Recorder,
    SearchLock,
    SearchLocked,
    SearchStopped,
    Settings,
    SettingsError,
    StateError,
    StateStore,
    fitness,
    load_state,
    prune_checkpoints,
    select,
)
from evopose_pl.search import ANCESTOR, EVOPOSE2D_S, Genotype, SearchSpace

E3_SPACE = {
    "bounds": str(ANCESTOR),
    "kernels": [3, 5],
    "max_repeats": 4,
    "stride_modules": [4, 5, 6],
    "max_stride2": 4,
}


def _settings(cls: type[Settings] = Settings, **overrides) -> Settings:
    values = {"population": 6, "parents": 2, "generations": 3, "epochs": 1, "ancestor_epochs": 2, "seed": 0}
    values.update(overrides)
    return cls.from_config({**values, "search_space": E3_SPACE})


def _result(ind, loss: float, params: int = 1_000_000) -> dict:
    """What a child reports: its measurements, no fitness."""
    return {
        "id": ind.id,
        "genotype": ind.genotype,
        "params": params,
        "params_trainable": params - 100,
        "flops": 10**8,
        "val_loss": loss,
        "checkpoint": None,
        "wall_time": 1.0,
        "transfer": None,
    }


def _finish(evolution: Evolution, generation: int, losses: dict[int, float] | None = None) -> None:
    """Record every pending child of the generation with a loss (default: 100 + id)."""
    for job in list(evolution.jobs(generation)):
        ind = job.individual
        evolution.record(ind.id, _result(ind, (losses or {}).get(ind.id, 100.0 + ind.id)))


def test_fitness_is_the_papers_formula_with_the_searchs_settings():
    settings = _settings(gamma=-0.07, target_params=5e6)
    assert fitness({"val_loss": 2.0, "params": 5_000_000}, settings) == pytest.approx(2.0)
    # a network twice the target size pays (1/2)^-0.07 = 2^0.07
    assert fitness({"val_loss": 2.0, "params": 10_000_000}, settings) == pytest.approx(2.0 * 2**0.07)
    assert fitness({"val_loss": 2.0, "params": 10_000_000}, _settings(gamma=0.0)) == pytest.approx(2.0)
    assert fitness({"val_loss": 2.0, "params": 10_000_000}, _settings(target_params=1e7)) == pytest.approx(2.0)


def test_the_driver_computes_the_fitness_from_what_the_child_measured(tmp_path):
    for gamma in (-0.07, -0.5):
        evolution = Evolution(tmp_path / str(gamma), _settings(gamma=gamma))
        evolution.resume_or_plan()
        result = _result(evolution.individual(0), 3.0, params=2_500_000)
        assert "fitness" not in result
        ind = evolution.record(0, result)
        assert ind.status == COMPLETED and ind.fitness == pytest.approx(3.0 * 2**gamma)
        assert load_state(tmp_path / str(gamma)).individuals[0].fitness == ind.fitness


def test_a_tested_childs_accuracy_and_devices_are_recorded_beside_a_fitness_they_do_not_change(tmp_path):
    evolution = Evolution(tmp_path, _settings())
    evolution.resume_or_plan()
    tested = {**_result(evolution.individual(0), 3.0, 5_000_000), "devices": 2, "accuracy": 0.61,
              "accuracy_metric": "COCO keypoints AP", "test_metrics": {"AP": 0.61, "AR": 0.66}}  # fmt: skip
    ind = evolution.record(0, tested)
    assert ind.status == COMPLETED and ind.fitness == pytest.approx(3.0)
    saved = load_state(tmp_path).individuals[0]
    assert (saved.accuracy, saved.accuracy_metric, saved.devices) == (0.61, "COCO keypoints AP", 2)
    untested = Evolution(tmp_path / "untested", _settings())
    untested.resume_or_plan()
    ind = untested.record(0, _result(untested.individual(0), 3.0))
    assert ind.accuracy is None and ind.accuracy_metric is None and ind.devices is None


def test_a_fitness_in_an_older_childs_result_is_accepted_and_replaced_by_the_drivers(tmp_path):
    evolution = Evolution(tmp_path, _settings())
    evolution.resume_or_plan()
    ind = evolution.individual(0)
    result = tmp_path / ind.directory / RESULT_FILE
    result.parent.mkdir(parents=True)
    result.write_text(json.dumps({**_result(ind, 3.0, params=5_000_000), "fitness": 99.0}))  # as children wrote it
    resumed = Evolution(tmp_path, _settings())
    assert resumed.resume_or_plan() == 0 and list(resumed.jobs(0)) == []
    assert resumed.individual(0).status == COMPLETED and resumed.individual(0).fitness == pytest.approx(3.0)
    other = Evolution(tmp_path / "returned", _settings())
    other.resume_or_plan()
    returned = {**_result(other.individual(0), 3.0, params=5_000_000), "fitness": float("nan")}
    assert other.record(0, returned).fitness == pytest.approx(3.0)


def test_the_recorder_scores_every_record_with_the_one_fitness_function(tmp_path, monkeypatch):
    import evopose_pl.evolution.recorder as recorder

    calls = []

    def scored(record, settings):
        calls.append((dict(record), settings))
        return 7.0

    monkeypatch.setattr(recorder, "fitness", scored)
    settings = _settings()
    evolution = Evolution(tmp_path, settings)
    evolution.resume_or_plan()
    result = _result(evolution.individual(0), 3.0)
    assert evolution.record(0, result).fitness == 7.0 and calls == [(result, settings)]


@pytest.mark.parametrize(
    "overrides,named",
    [
        ({"population": 5}, "population=5"),
        ({"parents": 0}, "parents=0"),
        ({"epochs": 0}, "epochs=0"),
        ({"generations": -1}, "generations=-1"),
        ({"max_failure_rate": 1.5}, "max_failure_rate=1.5"),
        ({"target_params": 0}, "target_params=0"),
        ({"gamma": "big"}, "gamma='big'"),
        ({"weight_transfer": "yes"}, "weight_transfer='yes'"),
        ({"ancestor": "evopose2d_q"}, "ancestor='evopose2d_q'"),
        ({"ancestor": str(ANCESTOR).replace("c40s1", "c41s1")}, "modules[6].channels_div8"),
    ],
)
def test_invalid_settings_name_the_override(overrides, named):
    with pytest.raises(SettingsError, match=named.replace("[", r"\[").replace("]", r"\]")):
        _settings(**overrides)


def test_search_space_errors_name_the_group():
    with pytest.raises(SettingsError, match="search_space: .*kernels"):
        Settings.from_config({"search_space": {**E3_SPACE, "kernels": [4]}})
    with pytest.raises(SettingsError, match="search_space: .*unexpected keyword.*fields are"):
        Settings.from_config({"search_space": {**E3_SPACE, "kernel": [3]}})


def test_named_and_string_ancestors(test_genotype):
    assert _settings(ancestor="evopose2d_s").ancestor == EVOPOSE2D_S
    assert _settings(ancestor=str(EVOPOSE2D_S)).ancestor == EVOPOSE2D_S
    assert _settings().ancestor == ANCESTOR  # the default: the search space's bounds
    small = test_genotype
    assert Settings.from_config({"search_space": {**E3_SPACE, "bounds": small}}).ancestor == Genotype.from_string(small)


def test_generation_zero_is_the_ancestor_then_each_parent_gets_population_over_parents(tmp_path):
    evolution = Evolution(tmp_path, _settings())
    assert evolution.resume_or_plan() == 0
    (job,) = evolution.jobs(0)
    assert job.individual.genotype == str(ANCESTOR) and job.epochs == 2 and job.parent_checkpoint is None
    _finish(evolution, 0)
    evolution.select(0)
    assert evolution.resume_or_plan() == 1
    children = evolution.generation_of(1)
    assert len(children) == 6 and {c.parent for c in children} == {0}
    _finish(evolution, 1, {1: 50, 2: 40, 3: 300, 4: 30, 5: 200, 6: 250})
    summary = evolution.select(1)
    assert evolution.state.parents == [4, 2]  # the two fittest of ancestor (100) and children
    assert summary["best_id"] == 4
    assert summary["median_fitness"] == pytest.approx(statistics.median(c.fitness for c in children))
    assert evolution.resume_or_plan() == 2
    kids = evolution.generation_of(2)
    assert [k.parent for k in kids].count(4) == 3 and [k.parent for k in kids].count(2) == 3
    assert all(job.epochs == 1 for job in evolution.jobs(2))


def test_genotypes_are_never_sampled_twice_and_all_lie_in_the_space(tmp_path):
    settings = _settings(population=8, parents=2, generations=4)
    evolution = Evolution(tmp_path, settings)
    while (g := evolution.resume_or_plan()) is not None:
        _finish(evolution, g, {i: 100.0 - i for i in range(200)})
        evolution.select(g)
    genotypes = [ind.genotype for ind in evolution.state.individuals]
    assert len(genotypes) == 1 + 4 * 8 == len(set(genotypes)) == len(evolution.state.cache)
    assert all(settings.search_space.contains(Genotype.from_string(g)) for g in genotypes)


def test_same_seed_same_search_and_resume_equals_uninterrupted(tmp_path):
    def run(directory, stop_after: int | None = None):
        evolution = Evolution(directory, _settings())
        while (g := evolution.resume_or_plan()) is not None:
            jobs = list(evolution.jobs(g))
            for n, job in enumerate(jobs):
                if stop_after is not None and g == 2 and n == stop_after:
                    return None  # the driver dies here: the state on disk is all that survives
                evolution.record(job.individual.id, _result(job.individual, 1000.0 / (1 + job.individual.id % 7)))
            evolution.select(g)
        return evolution.state

    full = run(tmp_path / "a")
    assert run(tmp_path / "b", stop_after=2) is None
    partial = load_state(tmp_path / "b")
    assert [i.status for i in partial.individuals if i.generation == 2].count(COMPLETED) == 2
    resumed = run(tmp_path / "b")
    assert [i.genotype for i in resumed.individuals] == [i.genotype for i in full.individuals]
    assert resumed.parents == full.parents and resumed.history == full.history


def test_resume_refuses_changed_search_settings_and_leaves_the_state_alone(tmp_path):
    evolution = Evolution(tmp_path, _settings())
    evolution.resume_or_plan()
    before = (tmp_path / "state.json").read_bytes()
    with pytest.raises(SettingsError, match=r"gamma=-0.05.*gamma=-0.07.*re-run with gamma=-0.07"):
        Evolution(tmp_path, _settings(gamma=-0.05))
    assert (tmp_path / "state.json").read_bytes() == before
    # the generation limit and failure tolerance may change on resume
    assert Evolution(tmp_path, _settings(generations=10, max_failure_rate=0.5)).resumed


def test_failures_are_recorded_and_the_search_goes_on_below_the_rate(tmp_path):
    evolution = Evolution(tmp_path, _settings(population=4, max_failure_rate=0.25))
    evolution.resume_or_plan()
    _finish(evolution, 0)
    evolution.select(0)
    evolution.resume_or_plan()
    jobs = list(evolution.jobs(1))
    evolution.record_failure(jobs[0].individual.id, "RuntimeError: boom")
    nan = _result(jobs[1].individual, float("nan"))
    for job in jobs[2:]:
        evolution.record(job.individual.id, _result(job.individual, 50.0))
    evolution.record(jobs[1].individual.id, nan)  # a NaN loss is a failure too
    failed = [i for i in evolution.generation_of(1) if i.status == FAILED]
    assert len(failed) == 2 and all(math.isinf(i.fitness) for i in failed)
    with pytest.raises(SearchStopped, match="2 of 4 children failed.*first error, individual 1.*boom"):
        evolution.select(1)
    state = load_state(tmp_path)
    assert state.stopped and len(state.history) == 1 and state.parents == [0]
    # re-running retries the failed children of the unfinished generation, keeps the rest
    evolution = Evolution(tmp_path, _settings(population=4, max_failure_rate=0.25))
    assert evolution.resume_or_plan() == 1
    assert [j.individual.id for j in evolution.jobs(1)] == [1, 2]
    evolution.record(1, _result(evolution.individual(1), 40.0))
    evolution.record_failure(2, "MemoryError")
    assert evolution.select(1)["failed"] == 1  # 1 of 4 is within the rate
    assert evolution.state.parents == [1, 3]


def test_results_left_by_children_are_adopted_on_resume(tmp_path):
    evolution = Evolution(tmp_path, _settings())
    evolution.resume_or_plan()
    (job,) = evolution.jobs(0)
    result = tmp_path / job.individual.directory / RESULT_FILE
    result.parent.mkdir(parents=True)
    result.write_text(json.dumps(_result(job.individual, 77.0)))
    resumed = Evolution(tmp_path, _settings())
    assert resumed.resume_or_plan() == 0
    assert list(resumed.jobs(0)) == [] and resumed.individual(0).val_loss == 77.0
    # a result of another genotype (a foreign or stale file) is not taken
    other = Evolution(tmp_path / "other", _settings())
    other.resume_or_plan()
    foreign = tmp_path / "other" / job.individual.directory / RESULT_FILE
    foreign.parent.mkdir(parents=True)
    foreign.write_text(json.dumps({**_result(job.individual, 77.0), "genotype": str(EVOPOSE2D_S)}))
    assert not other.adopt_result(0) and other.individual(0).status == FAILED
    assert f"{foreign}: it is the record of individual 0 '{EVOPOSE2D_S}'" in other.individual(0).error
    assert not foreign.exists() and foreign.with_name("result.rejected-1.json").exists()  # kept for inspection


def test_non_parent_checkpoints_are_deleted_records_kept(tmp_path):
    evolution = Evolution(tmp_path, _settings(population=2, parents=1))
    for g in range(2):
        evolution.resume_or_plan()
        for job in list(evolution.jobs(g)):
            ind = job.individual
            ckpt = tmp_path / ind.directory / "checkpoints" / "best.ckpt"
            ckpt.parent.mkdir(parents=True)
            ckpt.write_bytes(b"weights")
            evolution.record(ind.id, {**_result(ind, 100.0 - 10 * ind.id), "checkpoint": str(ckpt)})
        evolution.select(g)
    (parent,) = evolution.parents
    assert parent.id == 2 and (tmp_path / parent.checkpoint).exists()
    for ind in evolution.state.individuals:
        if ind.id != parent.id:
            assert ind.checkpoint is None and not (tmp_path / ind.directory / "checkpoints" / "best.ckpt").exists()
            assert ind.status == COMPLETED and ind.val_loss is not None
    kept = Evolution(tmp_path / "k", _settings(population=2, parents=1, keep_checkpoints=True))
    kept.resume_or_plan()
    kept.record(0, _result(kept.individual(0), 1.0))
    assert kept.select(0) and kept.individual(0).status == COMPLETED


def test_exhausted_search_stops_instead_of_hanging(tmp_path):
    # one module, kernel fixed, 1 repeat, 1 channel: the ancestor has no neighbour at all
    space = {"bounds": "k3r1c1s1", "kernels": [3], "max_repeats": 1, "stride_modules": [], "max_stride2": 0}
    settings = Settings.from_config({"population": 2, "parents": 1, "search_space": space})
    evolution = Evolution(tmp_path, settings)
    evolution.resume_or_plan()
    evolution.record(0, _result(evolution.individual(0), 1.0))
    evolution.select(0)
    with pytest.raises(SearchStopped, match="exhausted"):
        evolution.resume_or_plan()
    assert load_state(tmp_path).stopped.startswith("search space exhausted")


def test_parents_short_of_mu_share_the_population(tmp_path):
    space = SearchSpace()
    evolution = Evolution(tmp_path, _settings(population=4, parents=2))
    evolution.resume_or_plan()
    _finish(evolution, 0)
    evolution.select(0)  # one candidate: the ancestor alone
    assert evolution.state.parents == [0]
    evolution.resume_or_plan()
    assert len(evolution.generation_of(1)) == 4
    assert all(space.contains(Genotype.from_string(c.genotype)) for c in evolution.generation_of(1))
    assert all(c.status == PENDING for c in evolution.generation_of(1))


def test_unreadable_state_is_reported_with_its_path(tmp_path):
    (tmp_path / "state.json").write_text("{not json")
    with pytest.raises(ValueError, match="state.json: not valid JSON"):
        Evolution(tmp_path, _settings())
    (tmp_path / "state.json").write_text(json.dumps({"version": 99}))
    with pytest.raises(ValueError, match="state.json: not a search state"):
        load_state(tmp_path)


def _bad_results(ind) -> dict[str, bytes]:
    good = _result(ind, 50.0)
    return {
        "binary": os.urandom(256),
        "truncated": json.dumps(good).encode()[:40],
        "not-an-object": b"[1, 2, 3]",
        "zero-params": json.dumps({**good, "params": 0}).encode(),
        "infinite-loss": json.dumps({**good, "val_loss": float("inf")}).encode(),
        "string-params": json.dumps({**good, "params": "many"}).encode(),
        "boolean-flops": json.dumps({**good, "flops": True}).encode(),
        "missing-field": json.dumps({k: v for k, v in good.items() if k != "wall_time"}).encode(),
        "bad-transfer": json.dumps({**good, "transfer": {"transfer/copied": "all"}}).encode(),
        "zero-devices": json.dumps({**good, "devices": 0}).encode(),
        "unnamed-accuracy": json.dumps({**good, "accuracy": 0.5}).encode(),
        "nan-accuracy": json.dumps({**good, "accuracy": float("nan"), "accuracy_metric": "COCO keypoints AP"}).encode(),
    }


@pytest.mark.parametrize("kind", list(_bad_results(Individual(0, 0, str(ANCESTOR), None, "x"))))
def test_a_bad_result_is_moved_aside_recorded_and_retrained_not_readopted(tmp_path, kind, caplog):
    evolution = Evolution(tmp_path, _settings())
    evolution.resume_or_plan()
    (job,) = evolution.jobs(0)
    result = tmp_path / job.individual.directory / RESULT_FILE
    result.parent.mkdir(parents=True)
    content = _bad_results(job.individual)[kind]
    result.write_bytes(content)
    # the launcher lost the child and its result is read from disk: rejected, recorded as failed, the file named
    assert not evolution.adopt_result(0)
    ind = evolution.individual(0)
    assert ind.status == FAILED and str(result) in ind.error and "kept as result.rejected-1.json" in ind.error
    assert load_state(tmp_path).individuals[0].status == FAILED
    aside = result.with_name("result.rejected-1.json")
    assert not result.exists() and aside.read_bytes() == content
    # the next run trains it again instead of adopting the same file forever
    resumed = Evolution(tmp_path, _settings())
    assert resumed.resume_or_plan() == 0 and [j.individual.id for j in resumed.jobs(0)] == [0]
    resumed.record(0, _result(resumed.individual(0), 60.0))
    assert resumed.individual(0).status == COMPLETED and resumed.select(0)["best_fitness"] > 0


def test_a_bad_result_found_on_resume_is_trained_again_at_once(tmp_path, caplog):
    evolution = Evolution(tmp_path, _settings())
    evolution.resume_or_plan()
    result = tmp_path / evolution.individual(0).directory / RESULT_FILE
    result.parent.mkdir(parents=True)
    result.write_text(json.dumps({**_result(evolution.individual(0), 1.0), "val_loss": float("nan")}))
    resumed = Evolution(tmp_path, _settings())
    assert resumed.resume_or_plan() == 0
    assert [j.individual.id for j in resumed.jobs(0)] == [0] and resumed.individual(0).status == PENDING
    assert f"{result}: val_loss=nan is not a finite number" in caplog.text
    assert result.with_name("result.rejected-1.json").exists()


def _state_with_a_generation(tmp_path) -> dict:
    evolution = Evolution(tmp_path, _settings(population=2, parents=1))
    evolution.resume_or_plan()
    _finish(evolution, 0)
    evolution.select(0)
    evolution.resume_or_plan()
    _finish(evolution, 1)
    return json.loads((tmp_path / "state.json").read_text())


@pytest.mark.parametrize(
    "corrupt,message",
    [
        (lambda s: s.update(parents=[7]), "parents[0]: 7 is not a completed individual"),
        (lambda s: s["individuals"][1].update(fitness=float("nan")), "individuals[1].fitness: nan: a completed"),
        (lambda s: s["individuals"][2].update(val_loss="low"), "individuals[2].val_loss: 'low': a completed"),
        (lambda s: s["individuals"][2].update(id=5), "individuals[2].id: 5, but individuals are numbered"),
        (lambda s: s["individuals"][1].update(status="done"), "individuals[1].status: unknown status 'done'"),
        (lambda s: s["individuals"][1].update(parent=9), "individuals[1].parent: 9 is not an earlier individual"),
        (lambda s: s["individuals"][1].update(genotype="k9"), "individuals[1].genotype: 'k9' is not a genotype"),
        (lambda s: s["individuals"][1].update(colour="red"), "individuals[1] is not an individual"),
        (lambda s: s.update(cache="k3r1c2s1"), "cache: must be a list of genotype strings"),
        (lambda s: s["cache"].append("k7"), "cache[3]: 'k7' is not a genotype"),
        (lambda s: s.update(parents=[[0]]), "parents[0]: [0] is not a completed individual"),
        (lambda s: s["individuals"][1].update(parent=[0]), "individuals[1].parent: [0] is not an earlier"),
        (lambda s: s["settings"].update(training=["a"]), "settings.training: must be an object"),
        (lambda s: s.update(parents=[]), "parents: a search with a selected generation has parents"),
        (lambda s: s.update(generation=3), "history: 1 generations selected, but 3 is the newest planned"),
        (lambda s: s.update(generation=2, history=s["history"] * 2), "individuals: hold generations [0, 1], but"),
        (lambda s: s["individuals"][1].update(checkpoint=5), "individuals[1].checkpoint: 5 is not a path"),
        (lambda s: s["individuals"][1].update(directory=None), "individuals[1].directory: None is not a path"),
        (lambda s: s.update(stopped=5), "stopped: must be a reason or null"),
        (lambda s: s.update(rng={"bit_generator": "MT19937"}), "rng: not the state of numpy's default generator"),
        (lambda s: s.pop("settings"), "not a complete search state (it lacks ['settings'])"),
    ],
)
def test_an_inconsistent_state_is_refused_naming_the_field(tmp_path, corrupt, message):
    state = _state_with_a_generation(tmp_path)
    corrupt(state)
    (tmp_path / "state.json").write_text(json.dumps(state))
    with pytest.raises(StateError) as info:
        Evolution(tmp_path, _settings(population=2, parents=1))
    assert str(info.value).startswith(f"{tmp_path / 'state.json'}: ") and message in str(info.value)


@pytest.mark.parametrize("content", [os.urandom(300), b"\x89PNG\r\n\x1a\n", b"[]", b""])
def test_a_state_file_that_is_not_a_state_names_the_file(tmp_path, content):
    (tmp_path / "state.json").write_bytes(content)
    with pytest.raises(StateError, match=re.escape(str(tmp_path / "state.json")) + ": not"):
        Evolution(tmp_path, _settings())


def test_stale_temporary_state_files_are_removed_and_state_files_get_the_usual_mode(tmp_path):
    stale = [tmp_path / ".state.json.4242-0a1b2c3d.tmp", tmp_path / ".state.json.ab12cd.tmp"]
    for path in stale:
        path.write_text('{"half": ')
    other = tmp_path / "notes.tmp"
    other.write_text("mine")
    umask = os.umask(0o022)
    try:
        evolution = Evolution(tmp_path, _settings())
        evolution.resume_or_plan()
    finally:
        os.umask(umask)
    assert not any(p.exists() for p in stale) and other.exists()
    assert stat.S_IMODE((tmp_path / "state.json").stat().st_mode) == 0o644  # as open() makes every other output
    result = tmp_path / evolution.individual(0).directory / RESULT_FILE
    result.parent.mkdir(parents=True)
    half = result.with_name(".result.json.99-deadbeef.tmp")
    half.write_text("{")
    (job,) = evolution.jobs(0)
    evolution.prepare(job)
    assert not half.exists()


def test_resume_refuses_changed_training_settings_with_both_values(tmp_path):
    training = {"data.input_size": [64, 48], "recipe.lr": 0.001, "trainer.precision": None}
    evolution = Evolution(tmp_path, _settings(training=training))
    evolution.resume_or_plan()
    before = (tmp_path / "state.json").read_bytes()
    for key, value, shown, saved in [
        ("data.input_size", [128, 96], "[128,96]", "[64,48]"),
        ("recipe.lr", 0.002, "0.002", "0.001"),
        ("trainer.precision", "bf16-mixed", "bf16-mixed", "null"),
    ]:
        with pytest.raises(SettingsError) as info:
            Evolution(tmp_path, _settings(training={**training, key: value}))
        assert f"{key}={shown}, but {tmp_path / 'state.json'} holds a search with {key}={saved}" in str(info.value)
        assert f"re-run with {key}={saved}" in str(info.value)
    with pytest.raises(SettingsError, match=r"recipe.l2=1e-05, but .* recipe.l2=\(not set\).*re-run without recipe.l2"):
        Evolution(tmp_path, _settings(training={**training, "recipe.l2": 1e-5}))
    assert (tmp_path / "state.json").read_bytes() == before
    assert Evolution(tmp_path, _settings(training=dict(training))).resumed


def test_a_state_from_before_training_settings_takes_this_runs(tmp_path):
    evolution = Evolution(tmp_path, _settings())
    evolution.resume_or_plan()
    state = json.loads((tmp_path / "state.json").read_text())
    del state["settings"]["training"]
    (tmp_path / "state.json").write_text(json.dumps(state))
    resumed = Evolution(tmp_path, _settings(training={"recipe.lr": 0.001}))
    resumed.resume_or_plan()
    assert load_state(tmp_path).settings["training"] == {"recipe.lr": 0.001}
    with pytest.raises(SettingsError, match="recipe.lr=0.01"):
        Evolution(tmp_path, _settings(training={"recipe.lr": 0.01}))


HOLD_LOCK = """
import sys, time
from evopose_pl.evolution import SearchLock
SearchLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(600)
"""


def test_one_driver_per_search_and_a_killed_drivers_lock_is_free_at_once(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(SearchLocked) as info:
            SearchLock(tmp_path).acquire()
        assert str(info.value).startswith(f"{tmp_path} is the directory of a search that another evolve.py is driving")
        assert f"pid {holder.pid} on " in str(info.value)
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    finally:
        holder.kill()
    with SearchLock(tmp_path) as lock:  # no stale lock after a SIGKILL
        with pytest.raises(SearchLocked, match="this very process"):
            SearchLock(tmp_path).acquire()
    # read after release: closing any descriptor of the file in the holding process drops a POSIX lock
    assert f"pid {os.getpid()} on" in lock.path.read_text()
    SearchLock(tmp_path).acquire().release()  # released on exit


def test_an_invalid_returned_record_gives_way_to_the_childs_result_file(tmp_path):
    evolution = Evolution(tmp_path, _settings())
    evolution.resume_or_plan()
    ind = evolution.individual(0)
    result = tmp_path / ind.directory / RESULT_FILE
    result.parent.mkdir(parents=True)
    result.write_text(json.dumps(_result(ind, 42.0)))
    assert evolution.record(0, None).status == COMPLETED and ind.val_loss == 42.0  # a launcher that lost the value
    resumed = Evolution(tmp_path / "b", _settings())
    resumed.resume_or_plan()
    other = resumed.individual(0)
    (tmp_path / "b" / other.directory).mkdir(parents=True)
    (tmp_path / "b" / other.directory / RESULT_FILE).write_bytes(b"\x00\xff")
    assert resumed.record(0, {"id": 0}).status == FAILED  # both bad: the file is named and kept aside
    assert "not a JSON text file" in other.error and "result.rejected-1.json" in other.error
    assert (
        resumed.record(0, {"id": 0}).error == "result rejected: it is the record of individual 0 None, not of "
        f"individual 0 {other.genotype}"
    )  # no file left: the returned record's own problem


def test_a_fitness_that_is_not_a_finite_number_is_a_failure(tmp_path):
    evolution = Evolution(tmp_path, _settings(gamma=100.0))
    evolution.resume_or_plan()
    result = {**_result(evolution.individual(0), 1.0, params=1), "params_trainable": 1}  # (5e6 / 1)^100 overflows
    ind = evolution.record(0, result)
    assert ind.status == FAILED and "fitness of val_loss=1.0, params=1 with target_params=5000000.0" in ind.error


def test_the_identity_is_every_setting_but_those_that_may_change_on_resume():
    changeable = {f.name for f in fields(Settings) if f.metadata == MAY_CHANGE_ON_RESUME}
    assert changeable == {"generations", "max_failure_rate", "keep_checkpoints"}
    identity = _settings(training={"recipe.lr": 0.001}).identity()
    assert set(identity) == {f.name for f in fields(Settings)} - changeable == set(Settings.identity_fields())
    assert identity["ancestor"] == str(ANCESTOR) and identity["search_space"] == {"kind": "e3", **E3_SPACE}
    assert identity["training"] == {"recipe.lr": 0.001} and identity["population"] == 6


@dataclass(frozen=True)
class _NewSettings(Settings):
    """Settings as a later version might have them: one knob more, and one that may change on resume."""

    momentum: float = 0.9
    note: str = field(default="", metadata=MAY_CHANGE_ON_RESUME)


@dataclass(frozen=True)
class _NewSpace(SearchSpace):
    max_channels: int = 40


def test_a_new_setting_is_part_of_the_identity_by_default(tmp_path):
    assert "momentum" in _settings(_NewSettings).identity() and "note" not in _settings(_NewSettings).identity()
    assert Settings(search_space=_NewSpace()).identity()["search_space"]["max_channels"] == 40
    Evolution(tmp_path, _settings(_NewSettings)).resume_or_plan()
    with pytest.raises(SettingsError, match=r"momentum=0.5, but .* holds a search with momentum=0.9"):
        Evolution(tmp_path, _settings(_NewSettings, momentum=0.5))
    assert Evolution(tmp_path, _settings(_NewSettings, note="changed")).resumed
    # a search started before the setting existed does not record it: refused, not guessed
    Evolution(tmp_path / "older", _settings()).resume_or_plan()
    with pytest.raises(SettingsError, match=r"momentum=0.9, but .* holds a search with momentum=\(not recorded\)"):
        Evolution(tmp_path / "older", _settings(_NewSettings))


def test_a_state_that_calls_the_search_spaces_bounds_ancestor_resumes(tmp_path):
    """States written before ``SearchSpace.ancestor`` was renamed ``bounds``."""
    Evolution(tmp_path, _settings()).resume_or_plan()
    state = json.loads((tmp_path / "state.json").read_text())
    space = state["settings"]["search_space"]
    space["ancestor"] = space.pop("bounds")
    del space["kind"]  # nor did they name the kind of space: E3 was the only one
    (tmp_path / "state.json").write_text(json.dumps(state))
    assert Evolution(tmp_path, _settings()).resume_or_plan() == 0
    assert load_state(tmp_path).settings["search_space"] == {"kind": "e3", **E3_SPACE}
    with pytest.raises(SettingsError, match="search_space=.*'max_stride2': 5"):
        Evolution(tmp_path, replace(_settings(), search_space=SearchSpace(max_stride2=5)))


def test_each_piece_does_one_job(tmp_path):
    """The store opens and saves, the planner plans and saves what it planned, the recorder records with
    the fitness, selection changes the state only, the pruner deletes the checkpoints no parent needs."""
    settings = _settings(population=2, parents=1)
    store = StateStore(tmp_path, settings)
    assert not store.resumed and not (tmp_path / "state.json").exists()
    planner, recorder = Planner(store, settings), Recorder(store, settings)
    assert planner.plan_next() == 0 and load_state(tmp_path).generation == 0
    (job,) = planner.jobs(0)
    checkpoint = tmp_path / job.individual.directory / "checkpoints" / "best.ckpt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"weights")
    recorder.record(0, {**_result(job.individual, 2.0, params=5_000_000), "checkpoint": str(checkpoint)})
    saved = load_state(tmp_path).individuals[0]
    assert saved.fitness == pytest.approx(2.0) and saved.checkpoint == "individuals/0000/checkpoints/best.ckpt"
    assert select(store.state, settings, 0)["best_id"] == 0 and store.state.parents == [0]
    assert load_state(tmp_path).parents == []  # selection does not save
    prune_checkpoints(store)
    assert checkpoint.exists()  # a parent keeps its weights
    store.save()
    assert planner.plan_next() == 1 and {c.parent for c in store.state.generation_of(1)} == {0}
    for job in list(planner.jobs(1)):
        assert job.parent_checkpoint == checkpoint.resolve()
        recorder.record(job.individual.id, _result(job.individual, 1.0))
    select(store.state, settings, 1)
    assert store.state.parents != [0]
    prune_checkpoints(store)
    assert not checkpoint.exists() and store.state.individual(0).checkpoint is None
    assert store.state.individual(0).status == COMPLETED  # its record stays
