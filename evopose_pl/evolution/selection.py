"""Selection: who the parents are after a generation, by the search's strategy and ranking, and the
generation's summary (best and median fitness, the front's hypervolume); a generation with too many
failures stops the search instead.

Strategies (``Settings.strategy``): ``mu_plus_lambda`` (SPEC section 6) keeps the ``parents`` best of the
parents and the generation's children; ``regularized`` (aging evolution) keeps the newest ``population``
completed individuals, whatever their fitness, as the population its tournaments sample; ``random`` keeps
the ``parents`` best of everything trained (the search's answer; its children are not bred from them).
Ranking (``Settings.selection``): by fitness, or NSGA-II's fronts and crowding over ``objectives``.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from evopose_pl.evolution.objective import objective_values
from evopose_pl.evolution.pareto import hypervolume, nsga2_select, pareto_front
from evopose_pl.evolution.settings import Settings
from evopose_pl.evolution.state import COMPLETED, FAILED, PENDING, Individual, SearchState, SearchStopped


def ranked(candidates: Sequence[Individual], settings: Settings, count: int) -> list[Individual]:
    """The ``count`` best of ``candidates``, best first: by fitness, or by NSGA-II over the objectives
    (whole fronts, then the cut front by crowding distance)."""
    count = min(count, len(candidates))
    if settings.selection == "nsga2":
        points = [objective_values(ind, settings.objectives) for ind in candidates]
        return [candidates[i] for i in nsga2_select(points, count)]
    return sorted(candidates, key=lambda ind: ind.rank_key)[:count]


def reference_point(state: SearchState, settings: Settings) -> tuple[float, ...] | None:
    """The hypervolume's fixed reference: the configured one, else twice the ancestor's objectives (None
    while the ancestor has not completed)."""
    if settings.reference is not None:
        return tuple(float(settings.reference[name]) for name in settings.objectives)
    ancestor = state.individuals[0] if state.individuals else None
    if ancestor is None or ancestor.status != COMPLETED:
        return None
    return tuple(2 * v for v in objective_values(ancestor, settings.objectives))


def front_and_hypervolume(state: SearchState, settings: Settings) -> tuple[list[int], float | None]:
    """The ids of the non-dominated completed individuals over the objectives, and the share of the box
    between the origin and the reference point that they dominate (objectives divided by the reference's,
    so searches with the same reference compare; None without a reference)."""
    done = [ind for ind in state.individuals if ind.status == COMPLETED]
    points = [objective_values(ind, settings.objectives) for ind in done]
    front = [done[i].id for i in pareto_front(points)]
    reference = reference_point(state, settings)
    if reference is None:
        return front, None
    scaled = [tuple(v / r for v, r in zip(point, reference)) for point in points]
    return front, hypervolume(scaled, (1.0,) * len(reference))


def select(state: SearchState, settings: Settings, generation: int) -> dict[str, Any]:
    """Choose the parents after ``generation`` by the strategy and ranking, and add the generation's
    summary to the history; returns the summary. Changes ``state`` only.

    Raises ``SearchStopped`` (with ``state.stopped`` saying why) when the generation's failure rate
    exceeds ``max_failure_rate`` or nothing completed.
    """
    children = state.generation_of(generation)
    unfinished = [c.id for c in children if c.status == PENDING]
    if unfinished:
        raise RuntimeError(f"generation {generation} still has unfinished children {unfinished}")
    failed = [c for c in children if c.status == FAILED]
    rate = len(failed) / len(children)
    completed = [c for c in children if c.status == COMPLETED]
    done = [ind for ind in state.individuals if ind.status == COMPLETED]
    if settings.strategy == "regularized":  # the newest population, oldest first; the older ones have died
        living = done[-settings.population :]
        parents = ranked(living, settings, len(living))
    else:
        pool = done if settings.strategy == "random" else [*state.parent_individuals(), *completed]
        parents = ranked(pool, settings, settings.parents)
    if rate > settings.max_failure_rate or not parents:
        first = failed[0]
        state.stopped = (
            f"generation {generation}: {len(failed)} of {len(children)} children failed"
            f" (rate {rate:.2f} > max_failure_rate={settings.max_failure_rate});"
            f" first error, individual {first.id} ({first.directory}): {first.error}"
        )
        raise SearchStopped(state.stopped)
    state.parents = [p.id for p in parents]
    front, volume = front_and_hypervolume(state, settings)
    best_child = min(completed, key=lambda ind: ind.rank_key) if completed else None
    summary = {
        "generation": generation,
        "children": len(children),
        "failed": len(failed),
        "best_fitness": best_child.fitness if best_child else None,
        "best_id": best_child.id if best_child else None,
        "median_fitness": statistics.median(c.fitness for c in completed) if completed else None,
        "parents": list(state.parents),
        "parent_fitness": [p.fitness for p in parents],
        "front": front,
        "hypervolume": volume,
    }
    state.history.append(summary)
    return summary
