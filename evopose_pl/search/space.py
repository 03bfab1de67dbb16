"""The search space: which genotypes a search may visit (SPEC section 1, the E3 space)."""

from __future__ import annotations

import itertools
import math
from collections.abc import MutableSet
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from evopose_pl.search.genotype import ANCESTOR, GENOTYPES, Genotype, GenotypeError, GenotypeLike


@dataclass(frozen=True)
class SearchSpace:
    """Bounds of the EvoPose2D search; the defaults are the paper's E3 space.

    ``bounds`` is the genotype that bounds the space: its number of modules, each module's
    channel cap (its ``channels_div8``) and the strides of the modules outside ``stride_modules``.
    The paper takes them from its ancestor (the E3 default); where a search starts is a setting
    of the search (``Settings.ancestor``), not of the space.

    Module indices are 0-based, like the layer names ``modules.<i>``: the paper's modules
    5, 6 and 7 (the only ones whose stride may mutate) are indices 4, 5 and 6.
    """

    genotype_type = Genotype  # what ``parse`` reads (``from_string``): a state's genotypes are checked with it
    bounds: Genotype = ANCESTOR
    kernels: tuple[int, ...] = (3, 5)
    max_repeats: int = 4
    stride_modules: tuple[int, ...] = (4, 5, 6)
    max_stride2: int = 4
    channel_caps: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "bounds", Genotype.coerce(self.bounds))
        object.__setattr__(self, "kernels", tuple(sorted({int(k) for k in self.kernels})))
        object.__setattr__(self, "stride_modules", tuple(sorted({int(m) for m in self.stride_modules})))
        object.__setattr__(self, "channel_caps", tuple(g.channels_div8 for g in self.bounds))
        if not self.kernels or any(k < 1 or k % 2 == 0 for k in self.kernels):
            raise GenotypeError(f"search space kernels: positive odd integers needed, got {self.kernels}")
        if self.max_repeats < 1:
            raise GenotypeError(f"search space max_repeats: must be at least 1, got {self.max_repeats}")
        bad = [m for m in self.stride_modules if not 0 <= m < self.num_modules]
        if bad:
            raise GenotypeError(
                f"search space stride_modules: {bad} outside the module indices 0..{self.num_modules - 1} of bounds"
            )
        self.validate(self.bounds, what="bounds")

    @property
    def num_modules(self) -> int:
        return len(self.bounds)

    @property
    def default_ancestor(self) -> Genotype:
        """Where a search starts when it names no ancestor: the paper's (the bounds' genotype)."""
        return self.bounds

    def parse(self, value: Any, what: str = "genotype") -> Genotype:
        """A named genotype (``ancestor``, ``evopose2d_s``, ...), a genotype string or gene list, in this space."""
        return self.validate(GENOTYPES[value] if isinstance(value, str) and value in GENOTYPES else value, what)

    def mutate(self, genotype: Genotype, rng: np.random.Generator, cache: MutableSet[Genotype]) -> Genotype:
        """The paper's operator (``search.mutate``): one gene changed, the child new to ``cache``."""
        from evopose_pl.search.mutation import mutate  # it builds on this module

        return mutate(genotype, rng, cache, self)

    def validate(self, genotype: GenotypeLike, what: str = "genotype") -> Genotype:
        """Return the genotype if it lies in this space, else raise naming the module and gene."""
        genotype = Genotype.coerce(genotype)
        if len(genotype) != self.num_modules:
            raise GenotypeError(f"{what} has {len(genotype)} module genes; this search space needs {self.num_modules}")
        for i, (gene, cap, base) in enumerate(zip(genotype, self.channel_caps, self.bounds)):
            if gene.kernel not in self.kernels:
                raise GenotypeError(f"{what}: modules[{i}].kernel={gene.kernel} is not one of {list(self.kernels)}")
            if not 1 <= gene.repeats <= self.max_repeats:
                raise GenotypeError(f"{what}: modules[{i}].repeats={gene.repeats} is outside [1, {self.max_repeats}]")
            if not 1 <= gene.channels_div8 <= cap:
                raise GenotypeError(
                    f"{what}: modules[{i}].channels_div8={gene.channels_div8} is outside [1, {cap}]"
                    " (the cap is that module's channels_div8 in the search space's bounds)"
                )
            if gene.stride != base.stride and i not in self.stride_modules:
                raise GenotypeError(
                    f"{what}: modules[{i}].stride={gene.stride} differs from the search space's bounds ({base.stride}),"
                    f" and only modules {list(self.stride_modules)} may change their stride"
                )
        if genotype.num_stride2 > self.max_stride2:
            raise GenotypeError(
                f"{what}: {genotype.num_stride2} modules have stride 2"
                f" (modules {[i for i, g in enumerate(genotype) if g.stride == 2]}); the budget is {self.max_stride2}"
            )
        return genotype

    def contains(self, genotype: GenotypeLike) -> bool:
        try:
            self.validate(genotype)
        except GenotypeError:
            return False
        return True

    def sample(self, rng: np.random.Generator) -> Genotype:
        """A genotype drawn uniformly from the space (random search): each module's kernel, repeats and channels
        independently, and the strides of ``stride_modules`` uniformly among the assignments the budget allows."""
        fixed = sum(g.stride == 2 for i, g in enumerate(self.bounds) if i not in self.stride_modules)
        allowed = [
            strides
            for strides in itertools.product((1, 2), repeat=len(self.stride_modules))
            if fixed + strides.count(2) <= self.max_stride2
        ]
        strides = dict(zip(self.stride_modules, allowed[int(rng.integers(len(allowed)))]))
        return Genotype(
            (
                int(rng.choice(self.kernels)),
                int(rng.integers(1, self.max_repeats + 1)),
                int(rng.integers(1, cap + 1)),
                strides.get(i, base.stride),
            )
            for i, (cap, base) in enumerate(zip(self.channel_caps, self.bounds))
        )

    @property
    def size(self) -> int:
        """Number of distinct backbones in the space (about 10^13.5 for E3)."""
        per_module = math.prod(len(self.kernels) * self.max_repeats * cap for cap in self.channel_caps)
        fixed = sum(g.stride == 2 for i, g in enumerate(self.bounds) if i not in self.stride_modules)
        free = len(self.stride_modules)
        strides = sum(math.comb(free, k) for k in range(free + 1) if fixed + k <= self.max_stride2)
        return per_module * strides
