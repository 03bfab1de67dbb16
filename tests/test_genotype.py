"""Genotypes and the search space: encoding, round trips, and validation messages."""

from __future__ import annotations

import numpy as np
import pytest

from evopose_pl.search import ANCESTOR, EVOPOSE2D_S, EVOPOSE2D_XS, GENOTYPES, Gene, Genotype, GenotypeError, SearchSpace


def test_list_and_string_round_trip():
    genes = [[3, 1, 2, 1], [3, 3, 3, 2], [5, 2, 5, 2], [3, 4, 10, 2], [5, 2, 14, 1], [5, 4, 16, 1], [3, 2, 10, 1]]
    g = Genotype.from_list(genes)
    assert g.to_list() == genes
    assert str(g) == "k3r1c2s1-k3r3c3s2-k5r2c5s2-k3r4c10s2-k5r2c14s1-k5r4c16s1-k3r2c10s1"
    assert Genotype.from_string(str(g)) == g
    assert Genotype.coerce(str(g)) is not g and Genotype.coerce(str(g)) == g
    assert Genotype.coerce(g) is g
    assert g == EVOPOSE2D_S


def test_immutable_equal_and_hashable():
    a = Genotype.from_list(ANCESTOR.to_list())
    assert a == ANCESTOR and hash(a) == hash(ANCESTOR)
    assert len({a, ANCESTOR, EVOPOSE2D_S}) == 2
    with pytest.raises(AttributeError):
        a.extra = 1
    assert a[0] == Gene(3, 1, 2, 1) and a[0].channels == 16
    assert a.replace(0, "kernel", 5)[0].kernel == 5 and a[0].kernel == 3


def test_numpy_integers_accepted():
    g = Genotype.from_list(np.array(ANCESTOR.to_list()))
    assert g == ANCESTOR and all(type(v) is int for gene in g for v in gene)


def test_named_genotypes():
    assert set(GENOTYPES) == {"ancestor", "evopose2d_xs", "evopose2d_s"}
    diff = [(i, a, b) for i, (a, b) in enumerate(zip(EVOPOSE2D_S, EVOPOSE2D_XS)) if a != b]
    assert diff == [(5, Gene(5, 4, 16, 1), Gene(5, 4, 16, 2))]


@pytest.mark.parametrize(
    ("genes", "culprit"),
    [
        ([], "at least one module gene"),
        ([[3, 1, 2]], "modules[0]: a module gene is"),
        ([[3, 1, 2, 1], [4, 1, 2, 1]], "modules[1].kernel"),
        ([[3, 0, 2, 1]], "modules[0].repeats"),
        ([[3, 1, 0, 1]], "modules[0].channels_div8"),
        ([[3, 1, 2, 3]], "modules[0].stride"),
        ([[3, 1.5, 2, 1]], "modules[0].repeats: must be an integer"),
        ([[3, True, 2, 1]], "modules[0].repeats: must be an integer"),
    ],
)
def test_malformed_genotypes_name_the_culprit(genes, culprit):
    with pytest.raises(GenotypeError) as info:
        Genotype.from_list(genes)
    assert culprit in str(info.value)


@pytest.mark.parametrize(
    ("text", "culprit"),
    [("k3r1c2s1-x", "modules[1]: 'x'"), ("k3r1c2", "modules[0]"), ("", "modules[0]")],
)
def test_bad_strings_name_the_part(text, culprit):
    with pytest.raises(GenotypeError, match=None) as info:
        Genotype.from_string(text)
    assert culprit in str(info.value)


@pytest.mark.parametrize(
    ("module", "gene", "value", "culprit"),
    [
        (2, "kernel", 7, "modules[2].kernel=7 is not one of [3, 5]"),
        (3, "repeats", 5, "modules[3].repeats=5 is outside [1, 4]"),
        (6, "channels_div8", 41, "modules[6].channels_div8=41 is outside [1, 40]"),
        (0, "channels_div8", 3, "modules[0].channels_div8=3 is outside [1, 2]"),
        (1, "stride", 1, "modules[1].stride=1 differs from the search space's bounds (2)"),
        (4, "stride", 2, "5 modules have stride 2"),
    ],
)
def test_space_validation_names_module_and_gene(module, gene, value, culprit):
    space = SearchSpace()
    bad = ANCESTOR.replace(module, gene, value)
    with pytest.raises(GenotypeError) as info:
        space.validate(bad)
    assert culprit in str(info.value)
    assert not space.contains(bad)


def test_space_validation_wrong_module_count():
    with pytest.raises(GenotypeError, match="has 6 module genes; this search space needs 7"):
        SearchSpace().validate(ANCESTOR.to_list()[:6])


def test_named_genotypes_lie_in_the_e3_space():
    space = SearchSpace()
    for g in GENOTYPES.values():
        assert space.validate(g) == g
    assert space.channel_caps == (2, 3, 5, 10, 14, 24, 40)


def test_space_size_counts_every_backbone():
    # E3: per module 2 kernels x 4 repeats x cap channels; the three fixed stride-2 modules
    # leave room for one more among modules 4..6: 1 + 3 stride patterns.
    expected = np.prod([2 * 4 * c for c in (2, 3, 5, 10, 14, 24, 40)], dtype=object) * 4
    assert SearchSpace().size == expected
    assert 10**13 < SearchSpace().size < 10**14

    # Brute force on a tiny space: enumerate and validate everything.
    tiny = SearchSpace(
        bounds=[[3, 1, 2, 1], [3, 2, 1, 2], [5, 1, 2, 2]], max_repeats=2, stride_modules=(0, 2), max_stride2=2
    )
    count = sum(
        tiny.contains([[k0, r0, c0, s0], [k1, r1, 1, 2], [k2, r2, c2, s2]])
        for k0 in (3, 5)
        for r0 in (1, 2)
        for c0 in (1, 2)
        for s0 in (1, 2)
        for k1 in (3, 5)
        for r1 in (1, 2)
        for k2 in (3, 5)
        for r2 in (1, 2)
        for c2 in (1, 2)
        for s2 in (1, 2)
    )
    assert tiny.size == count


def test_space_rejects_bad_bounds():
    with pytest.raises(GenotypeError, match="stride_modules"):
        SearchSpace(stride_modules=(7,))
    with pytest.raises(GenotypeError, match=r"^bounds: modules\[2\].kernel=5 is not one of \[3\]"):
        SearchSpace(kernels=(3,))


def test_the_space_is_bounded_by_a_genotype_that_is_not_called_the_ancestor(test_genotype):
    """``ancestor`` means where a search starts (``Settings.ancestor``); the space has bounds."""
    small = Genotype.from_string(test_genotype)
    space = SearchSpace(bounds=small)
    assert space.bounds == small and space.channel_caps == (1, 2, 3, 4, 6, 8, 8)
    assert not hasattr(space, "ancestor")
    with pytest.raises(TypeError, match="ancestor"):
        SearchSpace(ancestor=small)
    with pytest.raises(GenotypeError, match=r"channels_div8=2 is outside \[1, 1\] \(the cap is that module's"):
        space.validate(ANCESTOR.replace(0, "repeats", 1).replace(0, "channels_div8", 2))
