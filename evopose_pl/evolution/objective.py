"""The objective (SPEC section 5): the fitness the driver computes from what a child measured, and the
objectives a multi-objective selection minimises.

A child reports only its measurements (validation loss, size, latency, timing); the driver scores them
with the search's settings when it records the child, here and nowhere else. Selection ranks by this one
number, lower is better, or (``selection=nsga2``) by the ``objectives`` vector.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from evopose_pl.evolution.settings import Settings
    from evopose_pl.evolution.state import Individual


def fitness(record: Mapping[str, Any], settings: Settings) -> float:
    """``J = L_val * (T / cost)^gamma`` of a child's measured ``record``: its ``val_loss`` and, by
    ``settings.fitness``, its ``params`` against ``target_params`` (the paper's) or its ``latency`` (ms)
    against ``target_latency``; gamma < 0 penalises large or slow networks."""
    val_loss = float(record["val_loss"])
    if settings.fitness == "latency":
        return val_loss * (float(settings.target_latency) / float(record["latency"])) ** float(settings.gamma)
    return val_loss * (float(settings.target_params) / float(record["params"])) ** float(settings.gamma)


def objective_values(ind: Individual, objectives: Sequence[str]) -> tuple[float, ...]:
    """The individual's ``objectives`` (``val_loss``, ``params``, ``flops``, ``latency``), all minimised."""
    return tuple(float(getattr(ind, name)) for name in objectives)
