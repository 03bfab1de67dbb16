"""The EvoPose2D mutation operator (SPEC section 3): one child from one parent."""

from __future__ import annotations

from collections.abc import MutableSet

import numpy as np

from evopose_pl.search.genotype import GENE_NAMES, Genotype
from evopose_pl.search.space import SearchSpace


class SearchExhaustedError(RuntimeError):
    """Every single-gene neighbour of a parent is already in the cache: no new child exists."""


def neighbours(parent: Genotype, space: SearchSpace) -> set[Genotype]:
    """Every genotype one application of the operator can reach from ``parent`` (parent excluded)."""
    found: set[Genotype] = set()
    for i, gene in enumerate(parent):
        for kernel in space.kernels:
            found.add(parent.replace(i, "kernel", kernel))
        found.update(parent.replace(i, "repeats", r) for r in _repeat_moves(gene.repeats, space.max_repeats))
        found.update(parent.replace(i, "channels_div8", c) for c in range(1, space.channel_caps[i] + 1))
        stride = _stride_move(parent, i, space)
        if stride is not None:
            found.add(parent.replace(i, "stride", stride))
    found.discard(parent)
    return found


def mutate(
    parent: Genotype,
    rng: np.random.Generator,
    cache: MutableSet[Genotype],
    space: SearchSpace | None = None,
) -> Genotype:
    """Mutate one gene of ``parent`` until the child is new to ``cache``, then add it there.

    Draws, in order, per attempt: the module, the gene, then the gene's own draw (kernel
    index, repeat direction, or channel count), so a seeded generator gives the same child.
    Raises ``SearchExhaustedError`` instead of looping forever when no new child exists.
    """
    space = space or SearchSpace()
    parent = space.validate(parent, what="parent")
    if all(n in cache for n in neighbours(parent, space)):
        raise SearchExhaustedError(
            f"every single-gene mutation of parent {parent} is already in the cache of sampled genotypes"
        )
    while True:
        i = int(rng.integers(space.num_modules))
        name = GENE_NAMES[int(rng.integers(len(GENE_NAMES)))]
        value = _draw(parent, i, name, rng, space)
        if value is None:
            continue
        child = parent.replace(i, name, value)
        if child != parent and child not in cache:
            cache.add(child)
            return child


def _draw(parent: Genotype, i: int, name: str, rng: np.random.Generator, space: SearchSpace) -> int | None:
    """The new value of gene ``name`` of module ``i``, or None when this draw cannot change it."""
    gene = parent[i]
    if name == "kernel":
        return space.kernels[int(rng.integers(len(space.kernels)))]
    if name == "repeats":
        moves = _repeat_moves(gene.repeats, space.max_repeats)
        if len(moves) == 2:
            return moves[0] if rng.random() < 0.5 else moves[1]
        return moves[0] if moves else None
    if name == "channels_div8":
        return int(rng.integers(1, space.channel_caps[i] + 1))
    return _stride_move(parent, i, space)


def _repeat_moves(repeats: int, max_repeats: int) -> tuple[int, ...]:
    """1 -> 2, max -> max-1, otherwise one up or one down."""
    if max_repeats == 1:
        return ()
    if repeats <= 1:
        return (2,)
    if repeats >= max_repeats:
        return (max_repeats - 1,)
    return (repeats + 1, repeats - 1)


def _stride_move(parent: Genotype, i: int, space: SearchSpace) -> int | None:
    """Toggle a mutable stride within the stride-2 budget; None when the rules allow no change."""
    if i not in space.stride_modules:
        return None
    if parent[i].stride == 2 and parent.num_stride2 == space.max_stride2:
        return 1
    if parent[i].stride == 1 and parent.num_stride2 < space.max_stride2:
        return 2
    return None
