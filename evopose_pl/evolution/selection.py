"""Selection (SPEC section 6, (mu + lambda)): the mu fittest of the parents and a generation's children
become the parents; a generation with too many failures stops the search instead."""

from __future__ import annotations

import statistics
from typing import Any

from evopose_pl.evolution.settings import Settings
from evopose_pl.evolution.state import COMPLETED, FAILED, PENDING, SearchState, SearchStopped


def select(state: SearchState, settings: Settings, generation: int) -> dict[str, Any]:
    """Make the ``settings.parents`` fittest of the parents and ``generation``'s children the parents,
    and add the generation's summary to the history; returns the summary. Changes ``state`` only.

    Raises ``SearchStopped`` (with ``state.stopped`` saying why) when the generation's failure rate
    exceeds ``max_failure_rate`` or nothing completed.
    """
    children = state.generation_of(generation)
    unfinished = [c.id for c in children if c.status == PENDING]
    if unfinished:
        raise RuntimeError(f"generation {generation} still has unfinished children {unfinished}")
    failed = [c for c in children if c.status == FAILED]
    rate = len(failed) / len(children)
    candidates = [p for p in state.parent_individuals() if p.status == COMPLETED]
    candidates += [c for c in children if c.status == COMPLETED]
    if rate > settings.max_failure_rate or not candidates:
        first = failed[0]
        state.stopped = (
            f"generation {generation}: {len(failed)} of {len(children)} children failed"
            f" (rate {rate:.2f} > max_failure_rate={settings.max_failure_rate});"
            f" first error, individual {first.id} ({first.directory}): {first.error}"
        )
        raise SearchStopped(state.stopped)
    parents = sorted(candidates, key=lambda ind: ind.rank_key)[: settings.parents]
    state.parents = [p.id for p in parents]
    completed = [c for c in children if c.status == COMPLETED]
    best_child = min(completed, key=lambda ind: ind.rank_key)
    summary = {
        "generation": generation,
        "children": len(children),
        "failed": len(failed),
        "best_fitness": best_child.fitness,
        "best_id": best_child.id,
        "median_fitness": statistics.median(c.fitness for c in completed),
        "parents": list(state.parents),
        "parent_fitness": [p.fitness for p in parents],
    }
    state.history.append(summary)
    return summary
