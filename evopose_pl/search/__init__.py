"""The search core in pure Python: genotypes, search spaces, mutation, compound scaling.

Nothing here imports torch, so the evolution driver can plan a generation without it.

A search space is a part, chosen by config (``search_space=e3``, ``e3_head``, or ``kind: module:Class``
for a space of one's own). The search asks a space for: ``default_ancestor``; ``parse(value, what)``, a
genotype from its string (or a name) checked against the space, raising ``GenotypeError``; ``mutate(genotype,
rng, cache)``, a child new to ``cache`` (added to it), raising ``SearchExhaustedError`` when none is left;
``sample(rng)``, a genotype drawn uniformly. Genotypes are hashable and ``str()`` gives the form ``parse``
reads. How a genotype becomes a network is the child's ``model`` config, which the space's config sets;
weight transfer needs nothing of a space (it matches layers by name and shape).
"""

import importlib
from collections.abc import Mapping
from typing import Any

from evopose_pl.search.genotype import (
    ANCESTOR,
    EVOPOSE2D_S,
    EVOPOSE2D_XS,
    GENE_NAMES,
    GENOTYPES,
    Gene,
    Genotype,
    GenotypeError,
    GenotypeLike,
)
from evopose_pl.search.head_space import HeadGenotype, HeadSearchSpace
from evopose_pl.search.mutation import SearchExhaustedError, mutate, neighbours
from evopose_pl.search.scaling import CompoundScaling, drop_connect_rate, round_filters, round_repeats
from evopose_pl.search.space import SearchSpace

#: The search spaces shipped, by the ``kind`` their configs name.
SEARCH_SPACES: dict[str, type] = {"e3": SearchSpace, "e3_head": HeadSearchSpace}


def search_space_class(kind: str) -> type:
    """The class of a space ``kind``: a shipped one's name, or ``module:Class`` of one's own."""
    if kind in SEARCH_SPACES:
        return SEARCH_SPACES[kind]
    module, sep, name = str(kind).partition(":")
    if not sep:
        raise GenotypeError(f"kind={kind!r}: one of {', '.join(SEARCH_SPACES)}, or module:Class of a space")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise GenotypeError(f"kind={kind!r}: cannot import it ({e})") from None


def build_search_space(config: Mapping[str, Any]) -> Any:
    """The space a ``search_space`` config describes: its ``kind`` (default ``e3``) built from its other keys."""
    fields = dict(config)
    return search_space_class(fields.pop("kind", "e3"))(**fields)


def search_space_kind(space: Any) -> str:
    """The ``kind`` that names ``space``'s class in a config."""
    for kind, cls in SEARCH_SPACES.items():
        if type(space) is cls:
            return kind
    return f"{type(space).__module__}:{type(space).__qualname__}"


__all__ = [
    "ANCESTOR",
    "EVOPOSE2D_S",
    "EVOPOSE2D_XS",
    "GENE_NAMES",
    "GENOTYPES",
    "CompoundScaling",
    "Gene",
    "Genotype",
    "GenotypeError",
    "GenotypeLike",
    "HeadGenotype",
    "HeadSearchSpace",
    "SEARCH_SPACES",
    "SearchExhaustedError",
    "SearchSpace",
    "build_search_space",
    "search_space_class",
    "search_space_kind",
    "drop_connect_rate",
    "mutate",
    "neighbours",
    "round_filters",
    "round_repeats",
]
