"""The (mu + lambda) logic without training: settings, planning, recording, selection, resume."""

from __future__ import annotations

import json
import math
import statistics

import pytest

from evopose_pl.evolution import (
    COMPLETED,
    FAILED,
    PENDING,
    RESULT_FILE,
    Evolution,
    SearchStopped,
    Settings,
    SettingsError,
    fitness,
    load_state,
)
from evopose_pl.search import ANCESTOR, EVOPOSE2D_S, Genotype, SearchSpace

E3_SPACE = {
    "ancestor": str(ANCESTOR),
    "kernels": [3, 5],
    "max_repeats": 4,
    "stride_modules": [4, 5, 6],
    "max_stride2": 4,
}


def _settings(**overrides) -> Settings:
    values = {"population": 6, "parents": 2, "generations": 3, "epochs": 1, "ancestor_epochs": 2, "seed": 0}
    values.update(overrides)
    return Settings.from_config({**values, "search_space": E3_SPACE})


def _result(ind, loss: float, params: int = 1_000_000) -> dict:
    return {
        "id": ind.id,
        "genotype": ind.genotype,
        "params": params,
        "params_trainable": params - 100,
        "flops": 10**8,
        "val_loss": loss,
        "fitness": fitness(loss, params, 5e6, -0.07),
        "checkpoint": None,
        "wall_time": 1.0,
        "transfer": None,
    }


def _finish(evolution: Evolution, generation: int, losses: dict[int, float] | None = None) -> None:
    """Record every pending child of the generation with a loss (default: 100 + id)."""
    for job in list(evolution.jobs(generation)):
        ind = job.individual
        evolution.record(ind.id, _result(ind, (losses or {}).get(ind.id, 100.0 + ind.id)))


def test_fitness_is_the_papers_formula():
    assert fitness(2.0, 5_000_000, 5e6, -0.07) == pytest.approx(2.0)
    # a network twice the target size pays (1/2)^-0.07 = 2^0.07
    assert fitness(2.0, 10_000_000, 5e6, -0.07) == pytest.approx(2.0 * 2**0.07)
    assert fitness(2.0, 10_000_000, 5e6, 0.0) == pytest.approx(2.0)


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


def test_named_and_string_ancestors():
    assert _settings(ancestor="evopose2d_s").ancestor == EVOPOSE2D_S
    assert _settings(ancestor=str(EVOPOSE2D_S)).ancestor == EVOPOSE2D_S
    assert _settings().ancestor == ANCESTOR  # the default: the search space's ancestor


def test_generation_zero_is_the_ancestor_then_each_parent_gets_population_over_parents(tmp_path):
    evolution = Evolution(tmp_path, _settings())
    assert evolution.next_generation() == 0
    (job,) = evolution.jobs(0)
    assert job.individual.genotype == str(ANCESTOR) and job.epochs == 2 and job.parent_checkpoint is None
    _finish(evolution, 0)
    evolution.select(0)
    assert evolution.next_generation() == 1
    children = evolution.generation_of(1)
    assert len(children) == 6 and {c.parent for c in children} == {0}
    _finish(evolution, 1, {1: 50, 2: 40, 3: 300, 4: 30, 5: 200, 6: 250})
    summary = evolution.select(1)
    assert evolution.state.parents == [4, 2]  # the two fittest of ancestor (100) and children
    assert summary["best_id"] == 4
    assert summary["median_fitness"] == pytest.approx(statistics.median(c.fitness for c in children))
    assert evolution.next_generation() == 2
    kids = evolution.generation_of(2)
    assert [k.parent for k in kids].count(4) == 3 and [k.parent for k in kids].count(2) == 3
    assert all(job.epochs == 1 for job in evolution.jobs(2))


def test_genotypes_are_never_sampled_twice_and_all_lie_in_the_space(tmp_path):
    settings = _settings(population=8, parents=2, generations=4)
    evolution = Evolution(tmp_path, settings)
    while (g := evolution.next_generation()) is not None:
        _finish(evolution, g, {i: 100.0 - i for i in range(200)})
        evolution.select(g)
    genotypes = [ind.genotype for ind in evolution.state.individuals]
    assert len(genotypes) == 1 + 4 * 8 == len(set(genotypes)) == len(evolution.state.cache)
    assert all(settings.search_space.contains(Genotype.from_string(g)) for g in genotypes)


def test_same_seed_same_search_and_resume_equals_uninterrupted(tmp_path):
    def run(directory, stop_after: int | None = None):
        evolution = Evolution(directory, _settings())
        while (g := evolution.next_generation()) is not None:
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
    evolution.next_generation()
    before = (tmp_path / "state.json").read_bytes()
    with pytest.raises(SettingsError, match=r"gamma=-0.05.*gamma=-0.07.*re-run with gamma=-0.07"):
        Evolution(tmp_path, _settings(gamma=-0.05))
    assert (tmp_path / "state.json").read_bytes() == before
    # the generation limit and failure tolerance may change on resume
    assert Evolution(tmp_path, _settings(generations=10, max_failure_rate=0.5)).resumed


def test_failures_are_recorded_and_the_search_goes_on_below_the_rate(tmp_path):
    evolution = Evolution(tmp_path, _settings(population=4, max_failure_rate=0.25))
    evolution.next_generation()
    _finish(evolution, 0)
    evolution.select(0)
    evolution.next_generation()
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
    assert evolution.next_generation() == 1
    assert [j.individual.id for j in evolution.jobs(1)] == [1, 2]
    evolution.record(1, _result(evolution.individual(1), 40.0))
    evolution.record_failure(2, "MemoryError")
    assert evolution.select(1)["failed"] == 1  # 1 of 4 is within the rate
    assert evolution.state.parents == [1, 3]


def test_results_left_by_children_are_adopted_on_resume(tmp_path):
    evolution = Evolution(tmp_path, _settings())
    evolution.next_generation()
    (job,) = evolution.jobs(0)
    result = tmp_path / job.individual.directory / RESULT_FILE
    result.parent.mkdir(parents=True)
    result.write_text(json.dumps(_result(job.individual, 77.0)))
    resumed = Evolution(tmp_path, _settings())
    assert resumed.next_generation() == 0
    assert list(resumed.jobs(0)) == [] and resumed.individual(0).val_loss == 77.0
    # a result of another genotype (a foreign or stale file) is not taken
    other = Evolution(tmp_path / "other", _settings())
    other.next_generation()
    foreign = tmp_path / "other" / job.individual.directory / RESULT_FILE
    foreign.parent.mkdir(parents=True)
    foreign.write_text(json.dumps({**_result(job.individual, 77.0), "genotype": str(EVOPOSE2D_S)}))
    assert not other.adopt_result(0) and other.individual(0).status == PENDING


def test_non_parent_checkpoints_are_deleted_records_kept(tmp_path):
    evolution = Evolution(tmp_path, _settings(population=2, parents=1))
    for g in range(2):
        evolution.next_generation()
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
    kept.next_generation()
    kept.record(0, _result(kept.individual(0), 1.0))
    assert kept.select(0) and kept.individual(0).status == COMPLETED


def test_exhausted_search_stops_instead_of_hanging(tmp_path):
    # one module, kernel fixed, 1 repeat, 1 channel: the ancestor has no neighbour at all
    space = {"ancestor": "k3r1c1s1", "kernels": [3], "max_repeats": 1, "stride_modules": [], "max_stride2": 0}
    settings = Settings.from_config({"population": 2, "parents": 1, "search_space": space})
    evolution = Evolution(tmp_path, settings)
    evolution.next_generation()
    evolution.record(0, _result(evolution.individual(0), 1.0))
    evolution.select(0)
    with pytest.raises(SearchStopped, match="exhausted"):
        evolution.next_generation()
    assert load_state(tmp_path).stopped.startswith("search space exhausted")


def test_parents_short_of_mu_share_the_population(tmp_path):
    space = SearchSpace()
    evolution = Evolution(tmp_path, _settings(population=4, parents=2))
    evolution.next_generation()
    _finish(evolution, 0)
    evolution.select(0)  # one candidate: the ancestor alone
    assert evolution.state.parents == [0]
    evolution.next_generation()
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
