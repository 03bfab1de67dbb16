"""The search the sweeper drives, whatever its strategy: one object over the pieces that do the work."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from evopose_pl.evolution.checkpoints import prune_checkpoints
from evopose_pl.evolution.planner import Job, Planner
from evopose_pl.evolution.recorder import Recorder
from evopose_pl.evolution.selection import select
from evopose_pl.evolution.settings import Settings
from evopose_pl.evolution.state import Individual, SearchState, SearchStopped, StateStore


class Evolution:
    """A search in a sweep directory: plan a generation, record its children, select.

    The driver loop::

        evolution = Evolution(sweep_dir, settings)
        while (generation := evolution.resume_or_plan()) is not None:
            for job in evolution.jobs(generation): launch it, then record() or record_failure()
            evolution.select(generation)

    Opening a directory with a state resumes it: a generation already planned is finished
    (its completed children kept, children whose result file exists adopted), never re-drawn.
    Each job is one piece's: ``store`` (``state.json``), ``planner`` (individuals and jobs),
    ``recorder`` (results and fitness), ``select`` and ``prune_checkpoints``.
    """

    def __init__(self, directory: str | os.PathLike, settings: Settings) -> None:
        self.settings = settings
        self.store = StateStore(directory, settings)
        self.planner = Planner(self.store, settings)
        self.recorder = Recorder(self.store, settings)

    @property
    def directory(self) -> Path:
        return self.store.directory

    @property
    def path(self) -> Path:
        return self.store.path

    @property
    def state(self) -> SearchState:
        return self.store.state

    @property
    def resumed(self) -> bool:
        return self.store.resumed

    def individual(self, id: int) -> Individual:
        return self.state.individual(id)

    def generation_of(self, generation: int) -> list[Individual]:
        return self.state.generation_of(generation)

    @property
    def parents(self) -> list[Individual]:
        return self.state.parent_individuals()

    def resume_or_plan(self) -> int | None:
        """The generation to run now: the unfinished one, taken up again (failures to retry, results left
        on disk adopted), or a newly planned one; None past the generation limit."""
        generation = self.state.unfinished
        if generation is None:
            return self.planner.plan_next()
        self.state.stopped = None
        self.recorder.reopen(generation)
        return generation

    def jobs(self, generation: int) -> Iterator[Job]:
        return self.planner.jobs(generation)

    def prepare(self, job: Job) -> Path:
        return self.planner.prepare(job)

    def record(self, id: int, result: Any) -> Individual:
        return self.recorder.record(id, result)

    def record_failure(self, id: int, error: str) -> Individual:
        return self.recorder.record_failure(id, error)

    def adopt_result(self, id: int) -> bool:
        return self.recorder.adopt_result(id)

    def select(self, generation: int) -> dict[str, Any]:
        """Select the next parents, delete the checkpoints no parent needs (unless ``keep_checkpoints``),
        save. Raises ``SearchStopped`` (state saved) when the generation failed too often."""
        try:
            summary = select(self.state, self.settings, generation)
        except SearchStopped:
            self.store.save()
            raise
        if not self.settings.keep_checkpoints:
            # random search's children all inherit the ancestor's weights
            ancestor = (0,) if self.settings.strategy == "random" and self.settings.weight_transfer else ()
            prune_checkpoints(self.store, also_keep=ancestor)
        self.store.save()
        return summary
