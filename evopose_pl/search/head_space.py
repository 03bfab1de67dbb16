"""The E3 space with the head searched too: how many transposed convolutions upsample the backbone's
features and how wide they are, beside E3's backbone genes (``search_space=e3_head``).

A genotype is E3's with the head gene after a bar: ``k3r1c2s1-...-k3r1c40s1|h3c128`` (3 transposed
convolutions of 128 channels, the paper's head). Mutation changes one gene: a backbone gene as E3's
operator does, or a head gene to a neighbouring choice; sampling draws the head uniformly from its choices.
"""

from __future__ import annotations

import re
from collections.abc import MutableSet
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from evopose_pl.search.genotype import ANCESTOR, GENOTYPES, Genotype, GenotypeError
from evopose_pl.search.mutation import SearchExhaustedError, mutate, neighbours
from evopose_pl.search.space import SearchSpace

_HEAD = re.compile(r"^h(\d+)c(\d+)$")


@dataclass(frozen=True)
class HeadGenotype:
    """A backbone genotype and its head: ``blocks`` transposed convolutions of ``channels`` channels."""

    backbone: Genotype
    blocks: int
    channels: int

    def __str__(self) -> str:
        return f"{self.backbone}|h{self.blocks}c{self.channels}"

    @classmethod
    def from_string(cls, text: str) -> HeadGenotype:
        backbone, sep, head = str(text).partition("|")
        match = _HEAD.match(head)
        if not sep or match is None:
            raise GenotypeError(f"{text!r} is not a backbone genotype and a head gene, such as <backbone>|h3c128")
        return cls(Genotype.from_string(backbone), int(match.group(1)), int(match.group(2)))


@dataclass(frozen=True)
class HeadSearchSpace:
    """E3's bounds for the backbone (the same fields as ``SearchSpace``); ``head_blocks`` and ``head_channels``
    the head's choices (a mutation moves to a neighbouring one); ``head`` the head searches start from by
    default (blocks, channels)."""

    genotype_type = HeadGenotype
    bounds: Genotype = ANCESTOR
    kernels: tuple[int, ...] = (3, 5)
    max_repeats: int = 4
    stride_modules: tuple[int, ...] = (4, 5, 6)
    max_stride2: int = 4
    head_blocks: tuple[int, ...] = (1, 2, 3, 4)
    head_channels: tuple[int, ...] = (32, 64, 128, 256)
    head: tuple[int, int] = (3, 128)
    backbone: SearchSpace = field(init=False)

    def __post_init__(self) -> None:
        backbone = SearchSpace(self.bounds, self.kernels, self.max_repeats, self.stride_modules, self.max_stride2)
        object.__setattr__(self, "backbone", backbone)
        object.__setattr__(self, "bounds", backbone.bounds)
        for name in ("head_blocks", "head_channels"):
            values = tuple(sorted({int(v) for v in getattr(self, name)}))
            if not values or values[0] < 1:
                raise GenotypeError(f"search space {name}: positive integers needed, got {getattr(self, name)}")
            object.__setattr__(self, name, values)
        object.__setattr__(self, "head", tuple(int(v) for v in self.head))
        self.validate(self.default_ancestor, what="the search space's head")

    @property
    def default_ancestor(self) -> HeadGenotype:
        return HeadGenotype(self.bounds, *self.head)

    def parse(self, value: Any, what: str = "genotype") -> HeadGenotype:
        """A named backbone (with the default head) or a genotype string, in this space."""
        if isinstance(value, str) and value in GENOTYPES:
            return self.validate(HeadGenotype(GENOTYPES[value], *self.head), what=what)
        return self.validate(value if isinstance(value, HeadGenotype) else HeadGenotype.from_string(value), what)

    def validate(self, genotype: Any, what: str = "genotype") -> HeadGenotype:
        if not isinstance(genotype, HeadGenotype):
            raise GenotypeError(f"{what}: {genotype!r} is not a genotype with a head")
        self.backbone.validate(genotype.backbone, what=what)
        if genotype.blocks not in self.head_blocks:
            raise GenotypeError(f"{what}: head blocks {genotype.blocks} is not one of {list(self.head_blocks)}")
        if genotype.channels not in self.head_channels:
            raise GenotypeError(f"{what}: head channels {genotype.channels} is not one of {list(self.head_channels)}")
        return genotype

    def _head_neighbours(self, genotype: HeadGenotype) -> list[HeadGenotype]:
        found = []
        for name, choices in (("blocks", self.head_blocks), ("channels", self.head_channels)):
            k = choices.index(getattr(genotype, name))
            found += [replace(genotype, **{name: choices[j]}) for j in (k - 1, k + 1) if 0 <= j < len(choices)]
        return found

    def mutate(self, genotype: HeadGenotype, rng: np.random.Generator, cache: MutableSet) -> HeadGenotype:
        """One gene of the backbone (E3's mutation) or of the head to a neighbouring value, new to ``cache``
        (and added to it). Raises ``SearchExhaustedError`` when every such child was sampled."""
        genotype = self.validate(genotype, what="parent")
        candidates = [replace(genotype, backbone=b) for b in neighbours(genotype.backbone, self.backbone)]
        if all(c in cache for c in [*candidates, *self._head_neighbours(genotype)]):
            raise SearchExhaustedError(f"every single-gene mutation of parent {genotype} was sampled already")
        head_genes, backbone_genes = 2, 4 * self.backbone.num_modules
        while True:
            if rng.integers(head_genes + backbone_genes) < head_genes:
                options = self._head_neighbours(genotype)
                child = options[int(rng.integers(len(options)))]
            else:
                child = replace(genotype, backbone=mutate(genotype.backbone, rng, {genotype.backbone}, self.backbone))
            if child not in cache:
                cache.add(child)
                return child

    def sample(self, rng: np.random.Generator) -> HeadGenotype:
        """A genotype drawn uniformly: E3's backbone draw and each head gene among its choices."""
        return HeadGenotype(
            self.backbone.sample(rng),
            self.head_blocks[int(rng.integers(len(self.head_blocks)))],
            self.head_channels[int(rng.integers(len(self.head_channels)))],
        )

    @property
    def size(self) -> int:
        return self.backbone.size * len(self.head_blocks) * len(self.head_channels)
