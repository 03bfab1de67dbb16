"""A search space of one's own in a few dozen lines (``search_space.kind: tests.toy_space:ToySpace``): one gene,
the head's width in steps of 8 channels, on a fixed small backbone; ``decode`` is its ``model._target_``."""

from __future__ import annotations

import re
from collections.abc import MutableSet
from dataclasses import dataclass
from typing import Any

import numpy as np

from evopose_pl.search import GenotypeError, SearchExhaustedError

BACKBONE = "k3r1c1s1-k3r1c2s2-k3r1c3s2-k3r1c4s2-k3r1c6s1-k3r1c8s1-k3r1c8s1"


@dataclass(frozen=True)
class ToySpace:
    """Genotypes ``w1`` .. ``w<max_width>``: a head of 8 x w channels; searches start at ``w<start>``."""

    max_width: int = 8
    start: int = 4

    @property
    def default_ancestor(self) -> str:
        return f"w{self.start}"

    def parse(self, value: Any, what: str = "genotype") -> str:
        match = re.fullmatch(r"w(\d+)", str(value))
        if match is None or not 1 <= int(match.group(1)) <= self.max_width:
            raise GenotypeError(f"{what}: {value!r} is not one of w1..w{self.max_width}")
        return str(value)

    def mutate(self, genotype: str, rng: np.random.Generator, cache: MutableSet[str]) -> str:
        width = int(self.parse(genotype)[1:])
        options = [f"w{w}" for w in (width - 1, width + 1) if 1 <= w <= self.max_width and f"w{w}" not in cache]
        if not options:
            raise SearchExhaustedError(f"both neighbours of {genotype} were sampled already")
        child = options[int(rng.integers(len(options)))]
        cache.add(child)
        return child

    def sample(self, rng: np.random.Generator) -> str:
        return f"w{int(rng.integers(1, self.max_width + 1))}"


def decode(genotype: str, **kwargs: Any):
    from evopose_pl.nets import EvoPoseNet

    return EvoPoseNet(BACKBONE, head_blocks=1, head_channels=8 * int(genotype[1:]), **kwargs)
