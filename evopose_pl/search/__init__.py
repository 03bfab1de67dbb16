"""The search core in pure Python: genotypes, the search space, mutation, compound scaling.

Nothing here imports torch, so the evolution driver can plan a generation without it.
"""

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
from evopose_pl.search.mutation import SearchExhaustedError, mutate, neighbours
from evopose_pl.search.scaling import CompoundScaling, drop_connect_rate, round_filters, round_repeats
from evopose_pl.search.space import SearchSpace

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
    "SearchExhaustedError",
    "SearchSpace",
    "drop_connect_rate",
    "mutate",
    "neighbours",
    "round_filters",
    "round_repeats",
]
