"""Searches beyond the paper, without training: the latency fitness, NSGA-II selection over objectives, the
hypervolume of each generation's front, aging (regularized) evolution and random search, their settings,
and resuming searches saved before these settings existed."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from evopose_pl.evolution import COMPLETED, FAILED, Evolution, Settings, SettingsError, fitness, load_state
from evopose_pl.evolution.pareto import hypervolume
from evopose_pl.search import ANCESTOR, Genotype, SearchSpace

SPACE = {"bounds": str(ANCESTOR), "kernels": [3, 5], "max_repeats": 4, "stride_modules": [4, 5, 6], "max_stride2": 4}


def settings(**overrides) -> Settings:
    values = {"population": 4, "parents": 2, "generations": 3, "epochs": 1, "ancestor_epochs": 1, "seed": 0}
    return Settings.from_config({**values, **overrides, "search_space": SPACE})


def result(ind, val_loss: float, params: int, **extra) -> dict:
    return {"id": ind.id, "genotype": ind.genotype, "params": params, "params_trainable": params, "flops": 10 * params,
            "val_loss": val_loss, "checkpoint": None, "wall_time": 1.0, "transfer": None, **extra}  # fmt: skip


def run(evolution: Evolution, measure, generations: int | None = None) -> None:
    """Plan, record (``measure(individual) -> (val_loss, params, extra)``) and select generation after generation."""
    while (generation := evolution.resume_or_plan()) is not None:
        for job in list(evolution.jobs(generation)):
            val_loss, params, extra = measure(job.individual)
            evolution.record(job.individual.id, result(job.individual, val_loss, params, **extra))
        evolution.select(generation)
        if generations is not None and generation >= generations:
            break


def test_fitness_with_latency_is_the_papers_form_with_measured_latency():
    record = {"val_loss": 2.0, "params": 10_000_000, "latency": 20.0}
    slow = settings(fitness="latency", target_latency=10.0, gamma=-0.07)
    assert fitness(record, slow) == pytest.approx(2.0 * 2**0.07)  # twice the target latency pays 2^0.07
    assert fitness({**record, "latency": 10.0}, slow) == pytest.approx(2.0)
    assert fitness(record, settings()) == pytest.approx(2.0 * 2**0.07)  # the paper's: parameters, T = 5M


@pytest.mark.parametrize(
    "override, message",
    [
        ({"strategy": "annealing"}, "strategy='annealing': must be one of mu_plus_lambda, regularized, random"),
        ({"selection": "nsga3"}, "selection='nsga3': must be one of fitness, nsga2"),
        ({"objectives": ["val_loss"]}, "objectives=['val_loss']: must be two or three different ones"),
        ({"objectives": ["val_loss", "accuracy"]}, "must be two or three different ones of val_loss, params"),
        ({"objectives": ["params", "params"]}, "must be two or three different ones"),
        ({"reference": {"val_loss": 300}}, "reference={'val_loss': 300}: must be null (twice the ancestor's)"),
        ({"fitness": "flops"}, "fitness='flops': must be one of params, latency"),
        ({"target_latency": 0}, "target_latency=0: must be positive (ms)"),
        ({"strategy": "regularized", "sample_size": 5}, "sample_size=5: must be a whole number from 1 to population=4"),
        ({"batch": 0}, "batch=0: must be a whole number of children >= 1"),
    ],
)
def test_bad_strategy_and_selection_settings_name_the_override(override, message):
    with pytest.raises(SettingsError) as error:
        settings(**override)
    assert message in str(error.value)


def test_regularized_and_random_need_no_population_divisible_by_parents():
    assert settings(strategy="regularized", population=5, parents=2).population == 5
    with pytest.raises(SettingsError, match="must be divisible by parents=2"):
        settings(population=5, parents=2)


def test_a_search_saved_before_these_settings_resumes_with_their_defaults(tmp_path):
    evolution = Evolution(tmp_path, settings())
    evolution.resume_or_plan()
    state = json.loads((tmp_path / "state.json").read_text())
    for key in (
        "strategy",
        "batch",
        "sample_size",
        "fitness",
        "target_latency",
        "selection",
        "objectives",
        "reference",
    ):
        del state["settings"][key]
    (tmp_path / "state.json").write_text(json.dumps(state))
    assert Evolution(tmp_path, settings()).resume_or_plan() == 0  # the old search: (mu + lambda) by fitness
    with pytest.raises(SettingsError, match="selection='nsga2', but .* holds a search with selection='fitness'"):
        Evolution(tmp_path, settings(selection="nsga2"))


def test_nsga2_keeps_the_front_of_the_objectives_and_each_generation_logs_its_hypervolume(tmp_path):
    evolution = Evolution(tmp_path, settings(selection="nsga2", parents=2, population=4, generations=1))
    # ancestor: loss 100 at 4M parameters: the reference point is twice that, (200, 8M)
    children = {1: (90.0, 6e6), 2: (120.0, 1e6), 3: (95.0, 7e6), 4: (130.0, 3e6)}

    def measure(ind):
        loss, params = (100.0, 4e6) if ind.id == 0 else children[ind.id]
        return loss, int(params), {}

    run(evolution, measure)
    summary = evolution.state.history[-1]
    # front over (val_loss, params): 1 (90, 6M), 0 (100, 4M), 2 (120, 1M); 3 and 4 are dominated by 1 and 2
    assert sorted(summary["front"]) == [0, 1, 2]
    # two parents from a front of three: the extremes (infinite crowding distance) 1 and 2, not the middle 0
    assert sorted(summary["parents"]) == [1, 2]
    scaled = [(90 / 200, 6 / 8), (100 / 200, 4 / 8), (120 / 200, 1 / 8)]
    assert summary["hypervolume"] == pytest.approx(hypervolume(scaled, (1, 1)))
    # by hand: staircase x 0.45 -> 0.5 at height 1 - 0.75, 0.5 -> 0.6 at 1 - 0.5, 0.6 -> 1 at 1 - 0.125
    assert summary["hypervolume"] == pytest.approx(0.05 * 0.25 + 0.1 * 0.5 + 0.4 * 0.875)
    assert evolution.state.history[0]["hypervolume"] == pytest.approx(0.5 * 0.5)  # the ancestor alone


def test_a_configured_reference_point_fixes_the_hypervolume(tmp_path):
    evolution = Evolution(tmp_path, settings(generations=0, reference={"val_loss": 400, "params": 1e7}))
    run(evolution, lambda ind: (100.0, 4_000_000, {}))
    assert evolution.state.history[0]["hypervolume"] == pytest.approx((1 - 100 / 400) * (1 - 0.4))


def test_regularized_evolution_breeds_tournament_winners_and_the_oldest_die(tmp_path):
    config = settings(strategy="regularized", population=3, sample_size=2, batch=2, generations=4)
    evolution = Evolution(tmp_path, config)
    losses = {}

    def measure(ind):
        losses[ind.id] = 100.0 - ind.id  # the younger, the better
        return losses[ind.id], 4_000_000, {}

    run(evolution, measure)
    state = evolution.state
    assert [len(state.generation_of(g)) for g in range(5)] == [1, 2, 2, 2, 2]
    # after every generation the population is the newest 3 completed individuals, whatever their fitness
    for summary in state.history:
        done = [ind.id for ind in state.individuals if ind.generation <= summary["generation"]]
        assert sorted(summary["parents"]) == done[-3:]
    # each child's parent was alive when it was planned (in the previous generation's population)
    for ind in state.individuals[1:]:
        assert ind.parent in state.history[ind.generation - 1]["parents"]
    assert len(set(state.cache)) == len(state.cache) == 9


def with_checkpoints(evolution: Evolution, generations: int, loss=lambda ind: 50.0) -> None:
    """Run ``generations`` generations whose children each leave a checkpoint file."""
    for generation in range(generations):
        evolution.resume_or_plan()
        for job in list(evolution.jobs(generation)):
            ckpt = evolution.directory / job.individual.directory / "checkpoints" / "best.ckpt"
            ckpt.parent.mkdir(parents=True)
            ckpt.write_bytes(b"weights")
            record = result(job.individual, loss(job.individual), 1000)
            evolution.record(job.individual.id, {**record, "checkpoint": str(ckpt)})
        evolution.select(generation)


def test_regularized_evolution_loses_the_checkpoints_of_the_dead(tmp_path):
    evolution = Evolution(tmp_path, settings(strategy="regularized", population=2, sample_size=1, batch=1))
    with_checkpoints(evolution, 3)
    assert sorted(evolution.state.parents) == [1, 2]
    assert evolution.individual(0).checkpoint is None and evolution.individual(2).checkpoint is not None


def test_random_search_draws_uniformly_from_the_space_and_inherits_from_the_ancestor(tmp_path):
    evolution = Evolution(tmp_path, settings(strategy="random", batch=3, parents=1, generations=2))
    run(evolution, lambda ind: (100.0 - ind.id, 4_000_000, {}))
    children = evolution.state.individuals[1:]
    assert len(children) == 6 and all(ind.parent == 0 for ind in children)
    space = SearchSpace(**{**SPACE, "bounds": ANCESTOR})
    assert all(space.contains(ind.genotype) for ind in children)
    ancestor = Genotype.from_string(str(ANCESTOR))
    # uniform draws, not mutations: they differ from the ancestor in many genes at once
    assert all(sum(a != b for a, b in zip(ancestor, Genotype.from_string(c.genotype))) > 1 for c in children)
    assert evolution.state.parents == [6]  # the best of everything trained: the search's answer
    scratch = Evolution(tmp_path / "scratch", settings(strategy="random", batch=2, weight_transfer=False))
    scratch.resume_or_plan()
    scratch.record(0, result(scratch.individual(0), 100.0, 1000))
    scratch.select(0)
    scratch.resume_or_plan()
    assert [ind.parent for ind in scratch.state.generation_of(1)] == [None, None]


def test_random_search_keeps_the_ancestors_checkpoint_for_its_children(tmp_path):
    evolution = Evolution(tmp_path, settings(strategy="random", batch=2, parents=1))
    with_checkpoints(evolution, 2, loss=lambda ind: 100.0 if ind.id == 0 else 10.0)
    assert evolution.state.parents != [0] and evolution.individual(0).checkpoint is not None
    evolution.resume_or_plan()
    assert all(job.parent_checkpoint is not None for job in evolution.jobs(2))


def test_uniform_sampling_covers_the_space_evenly():
    space = SearchSpace(bounds="k3r2c2s1-k3r1c1s2-k5r1c3s1", kernels=[3, 5], max_repeats=2, stride_modules=[2],
                        max_stride2=1)  # fmt: skip
    rng = np.random.default_rng(0)
    draws = Counter(space.sample(rng) for _ in range(8000))
    # module 0: 2 kernels x 2 repeats x 2 channels; module 1: 2 x 2 x 1; module 2: 2 x 2 x 3, stride 1 only
    # (module 1's stride 2 uses the budget): 8 * 4 * 12 = 384 genotypes, about 21 draws each
    assert len(draws) == space.size == 384
    assert all(space.contains(g) for g in draws)
    assert max(draws.values()) < 45 and min(draws.values()) > 5


def test_a_search_whose_objectives_use_latency_refuses_children_without_it(tmp_path):
    evolution = Evolution(tmp_path, settings(objectives=["val_loss", "latency"], selection="nsga2"))
    evolution.resume_or_plan()
    ind = evolution.record(0, result(evolution.individual(0), 100.0, 1000))
    assert ind.status == FAILED and "it lacks latency" in ind.error
    evolution = Evolution(tmp_path / "measured", settings(fitness="latency", target_latency=5.0, gamma=-0.5))
    evolution.resume_or_plan()
    ind = evolution.record(0, result(evolution.individual(0), 100.0, 1000, latency=20.0, throughput=80.0,
                                     latency_device="cpu: test, 2 threads, torch"))  # fmt: skip
    assert ind.status == COMPLETED and ind.fitness == pytest.approx(100.0 * (5 / 20) ** -0.5)
    saved = load_state(tmp_path / "measured").individuals[0]
    assert (saved.latency, saved.throughput, saved.latency_device) == (20.0, 80.0, "cpu: test, 2 threads, torch")


@pytest.mark.parametrize("strategy", ["regularized", "random"])
@pytest.mark.parametrize("selection", ["fitness", "nsga2"])
def test_a_search_stopped_mid_generation_resumes_as_if_never_stopped(tmp_path, strategy, selection):
    """The driver dies after one child of generation 2: a new driver on the directory plans nothing twice, and
    the search ends as the uninterrupted one does (genotypes, parents, fronts)."""
    config = settings(strategy=strategy, selection=selection, batch=3, sample_size=2, population=3, generations=3)

    def measure(ind):
        return 100.0 + 7 * (ind.id % 3) - ind.id, 1_000_000 + 250_000 * (ind.id % 4), {}

    uninterrupted = Evolution(tmp_path / "whole", config)
    run(uninterrupted, measure)
    stopped = Evolution(tmp_path / "stopped", config)
    run(stopped, measure, generations=1)
    assert stopped.resume_or_plan() == 2
    first = next(iter(stopped.jobs(2))).individual
    stopped.record(first.id, result(first, *measure(first)[:2]))
    del stopped  # killed: the state on disk is all that is left
    resumed = Evolution(tmp_path / "stopped", config)
    run(resumed, measure)
    assert [i.genotype for i in resumed.state.individuals] == [i.genotype for i in uninterrupted.state.individuals]
    assert [i.parent for i in resumed.state.individuals] == [i.parent for i in uninterrupted.state.individuals]
    assert [h["parents"] for h in resumed.state.history] == [h["parents"] for h in uninterrupted.state.history]
    assert [h["front"] for h in resumed.state.history] == [h["front"] for h in uninterrupted.state.history]
