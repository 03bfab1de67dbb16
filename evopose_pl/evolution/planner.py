"""Planning generations (SPEC sections 3 and 6): generation 0 is the ancestor; each later one, by the
strategy, has population/parents mutations of every parent (``mu_plus_lambda``), ``batch`` mutations of
tournament winners (``regularized``) or ``batch`` genotypes drawn uniformly from the search space
(``random``); never a genotype sampled before in the search.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from evopose_pl.evolution.selection import ranked
from evopose_pl.evolution.settings import Settings
from evopose_pl.evolution.state import PENDING, RESULT_FILE, Individual, SearchStopped, StateError, StateStore
from evopose_pl.files import stale_temporaries
from evopose_pl.search import SearchExhaustedError

EXHAUSTED = "search space exhausted: no genotype left that was not sampled already"
RANDOM_DRAWS = 10_000  # uniform draws tried per random generation before the space counts as exhausted


class Job(NamedTuple):
    """What a launched child needs besides the search's own config."""

    individual: Individual
    parent_checkpoint: Path | None
    epochs: int


class Planner:
    """Makes each generation's individuals and their jobs. Owns the mutations' generator, whose state
    the search's state carries, so that a resumed search draws what an uninterrupted one would."""

    def __init__(self, store: StateStore, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.rng = np.random.default_rng(settings.seed)
        if store.state.rng is not None:
            try:
                self.rng.bit_generator.state = store.state.rng
            except (TypeError, ValueError, KeyError) as e:
                raise StateError(f"{store.path}: rng: not the state of numpy's default generator ({e})") from None

    def plan_next(self) -> int | None:
        """Plan the generation after the newest one and save it; None past the generation limit.

        Raises ``SearchStopped`` (state saved) when no parent has a genotype left to try.
        """
        state = self.store.state
        generation = state.generation + 1
        limit = self.settings.generations
        if limit is not None and generation > limit:
            return None
        try:
            children = self._individuals(generation)
        finally:
            state.rng = self.rng.bit_generator.state
        if not children:
            state.stopped = EXHAUSTED
            self.store.save()
            raise SearchStopped(state.stopped)
        state.individuals.extend(children)
        state.generation = generation
        state.stopped = None
        self.store.save()
        return generation

    def _individuals(self, generation: int) -> list[Individual]:
        state, settings = self.store.state, self.settings
        next_id = len(state.individuals)
        if generation == 0:
            state.cache.append(str(settings.ancestor))
            return [Individual(0, 0, str(settings.ancestor), None, individual_directory(0))]
        cache = {settings.search_space.parse(g) for g in state.cache}
        if settings.strategy == "regularized":
            drawn = self._tournament_children(cache)
        elif settings.strategy == "random":
            drawn = self._random_genotypes(cache)
        else:
            drawn = self._mutations_of_parents(cache)
        children = []
        for genotype, parent in drawn:
            state.cache.append(str(genotype))
            child_id = next_id + len(children)
            children.append(Individual(child_id, generation, str(genotype), parent, individual_directory(child_id)))
        return children

    def _mutations_of_parents(self, cache: set[Any]) -> list[tuple[Any, int]]:
        """(mu + lambda): population/parents mutations of every parent (the fittest take the share of parents
        missing or exhausted)."""
        settings = self.settings
        parents = self.store.state.parent_individuals()
        quota = [settings.population // len(parents)] * len(parents)
        for k in range(settings.population - sum(quota)):  # fewer parents than mu: the fittest take more
            quota[k % len(parents)] += 1
        drawn: list[tuple[Any, int]] = []
        exhausted: set[int] = set()
        while sum(quota) and len(exhausted) < len(parents):
            for k, parent in enumerate(parents):
                while quota[k] and k not in exhausted:
                    try:
                        genotype = settings.search_space.mutate(
                            settings.search_space.parse(parent.genotype), self.rng, cache
                        )
                    except SearchExhaustedError:
                        exhausted.add(k)
                        # its remaining children go to the next parent that can still produce
                        open_parents = [j for j in range(len(parents)) if j not in exhausted]
                        if open_parents:
                            quota[open_parents[0]] += quota[k]
                        quota[k] = 0
                        break
                    quota[k] -= 1
                    drawn.append((genotype, parent.id))
        return drawn

    def _tournament_children(self, cache: set[Any]) -> list[tuple[Any, int]]:
        """Aging evolution: per child, ``sample_size`` individuals drawn from the living population, the best
        of them (by the search's ranking) mutated. A winner with no new mutation left loses its place to the
        next tournament; the generation ends short when every individual is exhausted."""
        settings = self.settings
        population = self.store.state.parent_individuals()
        drawn: list[tuple[Any, int]] = []
        exhausted: set[int] = set()
        while len(drawn) < settings.batch and len(exhausted) < len(population):
            open_ones = [ind for ind in population if ind.id not in exhausted]
            picks = self.rng.choice(len(open_ones), size=min(settings.sample_size, len(open_ones)), replace=False)
            winner = ranked([open_ones[i] for i in sorted(picks)], settings, 1)[0]
            try:
                genotype = settings.search_space.mutate(settings.search_space.parse(winner.genotype), self.rng, cache)
            except SearchExhaustedError:
                exhausted.add(winner.id)
                continue
            drawn.append((genotype, winner.id))
        return drawn

    def _random_genotypes(self, cache: set[Any]) -> list[tuple[Any, int | None]]:
        """Random search: ``batch`` genotypes drawn uniformly from the space, each inheriting the ancestor's
        weights (individual 0) with weight transfer, or none."""
        settings = self.settings
        parent = 0 if settings.weight_transfer else None
        drawn: list[tuple[Any, int | None]] = []
        for _ in range(RANDOM_DRAWS):
            if len(drawn) == settings.batch:
                break
            genotype = settings.search_space.sample(self.rng)
            if genotype not in cache:
                cache.add(genotype)
                drawn.append((genotype, parent))
        return drawn

    def jobs(self, generation: int) -> Iterator[Job]:
        """The children of ``generation`` still to train, with what each one inherits."""
        for ind in self.store.state.generation_of(generation):
            if ind.status != PENDING:
                continue
            parent_checkpoint = None
            if ind.parent is not None and self.settings.weight_transfer:
                parent_checkpoint = self.store.absolute(self.store.state.individual(ind.parent).checkpoint)
            epochs = self.settings.ancestor_epochs if ind.generation == 0 else self.settings.epochs
            yield Job(ind, parent_checkpoint, epochs)

    def prepare(self, job: Job) -> Path:
        """The job's directory, cleared of checkpoints and results an interrupted attempt left behind."""
        directory = self.store.directory / job.individual.directory
        for stale in [*(directory / "checkpoints").glob("*.ckpt"), *stale_temporaries(directory / RESULT_FILE)]:
            stale.unlink()
        (directory / RESULT_FILE).unlink(missing_ok=True)
        return directory


def individual_directory(id: int) -> str:
    return f"individuals/{id:04d}"
