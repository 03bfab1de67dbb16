"""The mutation operator of SPEC section 3, property-based over many seeds."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evopose_pl.search import (
    ANCESTOR,
    EVOPOSE2D_S,
    EVOPOSE2D_XS,
    GENE_NAMES,
    Genotype,
    GenotypeError,
    SearchExhaustedError,
    SearchSpace,
    mutate,
    neighbours,
)

SPACE = SearchSpace()


def _differences(a: Genotype, b: Genotype) -> list[tuple[int, str]]:
    return [(i, name) for i in range(len(a)) for name, x, y in zip(GENE_NAMES, a[i], b[i]) if x != y]


def _random_parent(seed: int, steps: int) -> Genotype:
    """A valid genotype some mutations away from the ancestor."""
    rng, cache, parent = np.random.default_rng(seed), {ANCESTOR}, ANCESTOR
    for _ in range(steps):
        parent = mutate(parent, rng, cache, SPACE)
    return parent


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), steps=st.integers(0, 12), cached=st.integers(0, 30))
def test_child_differs_in_one_gene_inside_the_space_and_new(seed, steps, cached):
    parent = _random_parent(seed, steps)
    rng = np.random.default_rng(seed + 1)
    cache = {parent}
    for _ in range(cached):  # siblings already sampled
        mutate(parent, rng, cache, SPACE)
    before = set(cache)
    child = mutate(parent, rng, cache, SPACE)

    assert child not in before and child in cache and len(cache) == len(before) + 1
    diff = _differences(parent, child)
    assert len(diff) == 1
    module, gene = diff[0]
    SPACE.validate(child)
    if gene == "repeats":
        r, r2 = parent[module].repeats, child[module].repeats
        assert abs(r - r2) == 1 and (r != 1 or r2 == 2) and (r != 4 or r2 == 3)
    if gene == "stride":
        assert module in SPACE.stride_modules
        if child[module].stride == 1:
            assert parent.num_stride2 == SPACE.max_stride2
        else:
            assert parent.num_stride2 < SPACE.max_stride2


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_same_seed_same_child(seed):
    parent = _random_parent(seed, 3)
    a = [mutate(parent, np.random.default_rng(seed), {parent}, SPACE) for _ in range(2)]
    assert a[0] == a[1]


def test_different_seeds_explore():
    children = {mutate(ANCESTOR, np.random.default_rng(s), {ANCESTOR}, SPACE) for s in range(50)}
    assert len(children) > 25


def test_stride_rules_at_the_budget():
    # XS has 4 stride-2 modules (the budget): only module 5 (stride 2) may change, to 1.
    assert {n for n in neighbours(EVOPOSE2D_XS, SPACE) if n.num_stride2 != EVOPOSE2D_XS.num_stride2} == {
        EVOPOSE2D_XS.replace(5, "stride", 1)
    }
    # S has 3: each of modules 4..6 (all stride 1) may go to 2; nothing goes to 1.
    assert {n for n in neighbours(EVOPOSE2D_S, SPACE) if n.num_stride2 != EVOPOSE2D_S.num_stride2} == {
        EVOPOSE2D_S.replace(i, "stride", 2) for i in (4, 5, 6)
    }
    # Under the budget a stride-2 mutable module stays: the rule gives no change.
    under = ANCESTOR.replace(1, "kernel", 3)
    space = SearchSpace(max_stride2=5)
    assert under.replace(5, "stride", 1) not in neighbours(under, space)


def test_repeat_rules():
    assert {n[0].repeats for n in neighbours(ANCESTOR, SPACE) if n[0].repeats != 1} == {2}
    assert {n[5].repeats for n in neighbours(ANCESTOR, SPACE) if n[5].repeats != 4} == {3}
    assert {n[1].repeats for n in neighbours(ANCESTOR, SPACE) if n[1].repeats != 2} == {1, 3}


def test_every_neighbour_is_reached_then_exhaustion_raises():
    rng, cache = np.random.default_rng(7), {ANCESTOR}
    expected = neighbours(ANCESTOR, SPACE)
    seen = {mutate(ANCESTOR, rng, cache, SPACE) for _ in range(len(expected))}
    assert seen == expected
    with pytest.raises(SearchExhaustedError, match="every single-gene mutation of parent k3r1c2s1"):
        mutate(ANCESTOR, rng, cache, SPACE)


def test_precomputed_cache_of_all_neighbours_raises():
    with pytest.raises(SearchExhaustedError):
        mutate(EVOPOSE2D_S, np.random.default_rng(0), neighbours(EVOPOSE2D_S, SPACE) | {EVOPOSE2D_S}, SPACE)


def test_parent_outside_the_space_is_rejected():
    with pytest.raises(GenotypeError, match="parent: modules\\[0\\].channels_div8=3"):
        mutate(ANCESTOR.replace(0, "channels_div8", 3), np.random.default_rng(0), set(), SPACE)
