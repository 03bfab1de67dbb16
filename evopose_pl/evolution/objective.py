"""The objective (SPEC section 5): the fitness the driver computes from what a child measured.

A child reports only its measurements (validation loss, size, timing); the driver scores them
with the search's settings when it records the child, here and nowhere else. Selection ranks
by this one number, lower is better.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from evopose_pl.evolution.settings import Settings


def fitness(record: Mapping[str, Any], settings: Settings) -> float:
    """``J = L_val * (T / n_params)^gamma`` of a child's measured ``record`` (its ``val_loss`` and
    ``params``), with the search's ``target_params`` (T) and ``gamma``; gamma < 0 penalises large networks."""
    val_loss, params = float(record["val_loss"]), float(record["params"])
    return val_loss * (float(settings.target_params) / params) ** float(settings.gamma)
