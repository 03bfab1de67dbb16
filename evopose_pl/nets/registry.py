"""The named EvoPose2D models of the paper: a genotype and the input size it is scaled to."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from evopose_pl.nets.evopose import EvoPoseNet
from evopose_pl.search import ANCESTOR, EVOPOSE2D_S, EVOPOSE2D_XS, CompoundScaling, Genotype


class NamedModel(NamedTuple):
    genotype: Genotype
    input_size: tuple[int, int]


MODELS: dict[str, NamedModel] = {
    "ancestor": NamedModel(ANCESTOR, (256, 192)),
    "evopose2d_xs": NamedModel(EVOPOSE2D_XS, (256, 192)),
    "evopose2d_s": NamedModel(EVOPOSE2D_S, (256, 192)),
    "evopose2d_m": NamedModel(EVOPOSE2D_S, (384, 288)),
    "evopose2d_l": NamedModel(EVOPOSE2D_S, (512, 384)),
}


def build_model(
    name: str,
    num_keypoints: int = 17,
    input_size: Sequence[int] | None = None,
    scaling: CompoundScaling | None = None,
    **kwargs,
) -> EvoPoseNet:
    """Decode a named model; ``input_size`` overrides its own (and so its compound scaling)."""
    if name not in MODELS:
        raise ValueError(f"unknown model name {name!r}; the named models are {sorted(MODELS)}")
    genotype, size = MODELS[name]
    return EvoPoseNet(genotype, input_size or size, num_keypoints, scaling=scaling, **kwargs)
