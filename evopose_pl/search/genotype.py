"""Genotypes: the integer encoding of an EvoPose2D backbone (SPEC section 1).

A genotype is a tuple of module genes ``(kernel, repeats, channels_div8, stride)``, the gene
order of the reference code. It is immutable and hashable so that it can key the mutation
cache, and it has a short stable string form for file names, caches and Hydra overrides.
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Iterable, Sequence
from typing import NamedTuple

GENE_NAMES = ("kernel", "repeats", "channels_div8", "stride")
_STRING_GENE = re.compile(r"^k(\d+)r(\d+)c(\d+)s(\d+)$")


class GenotypeError(ValueError):
    """A genotype that is malformed, or outside a search space; the message names the culprit."""


class Gene(NamedTuple):
    """One backbone module: ``repeats`` MBConv blocks with ``8 * channels_div8`` output channels."""

    kernel: int
    repeats: int
    channels_div8: int
    stride: int

    @property
    def channels(self) -> int:
        return 8 * self.channels_div8

    def __str__(self) -> str:
        return f"k{self.kernel}r{self.repeats}c{self.channels_div8}s{self.stride}"


class Genotype:
    """An immutable sequence of module genes, e.g. ``Genotype.from_list([[3, 1, 2, 1], ...])``."""

    __slots__ = ("_genes", "_hash")

    def __init__(self, genes: Iterable[Gene | Sequence[int]]) -> None:
        checked = tuple(_check_gene(i, g) for i, g in enumerate(genes))
        if not checked:
            raise GenotypeError("a genotype needs at least one module gene, got none")
        self._genes = checked
        self._hash = hash(checked)

    @classmethod
    def from_list(cls, genes: Iterable[Sequence[int]]) -> Genotype:
        """Build from nested lists, as written in configs: ``[[kernel, repeats, channels_div8, stride], ...]``."""
        if isinstance(genes, (str, bytes)) or not isinstance(genes, Iterable):
            raise GenotypeError(f"a genotype is a list of module genes, got {genes!r}")
        return cls(genes)

    @classmethod
    def from_string(cls, text: str) -> Genotype:
        """Parse the string form written by ``str(genotype)``, e.g. ``k3r1c2s1-k3r2c3s2-...``."""
        genes = []
        for i, part in enumerate(text.strip().split("-")):
            match = _STRING_GENE.match(part)
            if match is None:
                raise GenotypeError(
                    f"modules[{i}]: {part!r} is not of the form k<kernel>r<repeats>c<channels_div8>s<stride>"
                    f" (in genotype string {text!r})"
                )
            genes.append(tuple(int(v) for v in match.groups()))
        return cls(genes)

    @classmethod
    def coerce(cls, value: Genotype | str | Sequence[Sequence[int]]) -> Genotype:
        """Accept a genotype, its string form, or its list form (configs give any of the three)."""
        if isinstance(value, Genotype):
            return value
        if isinstance(value, str):
            return cls.from_string(value)
        return cls.from_list(value)

    def to_list(self) -> list[list[int]]:
        return [list(g) for g in self._genes]

    def replace(self, module: int, gene: str, value: int) -> Genotype:
        """A copy with one gene changed (``gene`` is one of ``GENE_NAMES``)."""
        genes = list(self._genes)
        genes[module] = genes[module]._replace(**{gene: value})
        return Genotype(genes)

    @property
    def genes(self) -> tuple[Gene, ...]:
        return self._genes

    @property
    def num_stride2(self) -> int:
        return sum(g.stride == 2 for g in self._genes)

    def __len__(self) -> int:
        return len(self._genes)

    def __iter__(self):
        return iter(self._genes)

    def __getitem__(self, index: int) -> Gene:
        return self._genes[index]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Genotype) and self._genes == other._genes

    def __hash__(self) -> int:
        return self._hash

    def __str__(self) -> str:
        return "-".join(str(g) for g in self._genes)

    def __repr__(self) -> str:
        return f"Genotype({self.to_list()})"


def _check_gene(index: int, gene: Gene | Sequence[int]) -> Gene:
    """Structural checks that hold in any search space (positive sizes, odd kernels, stride 1 or 2)."""
    if isinstance(gene, (str, bytes)) or not isinstance(gene, Iterable) or len(gene := tuple(gene)) != len(GENE_NAMES):
        raise GenotypeError(
            f"modules[{index}]: a module gene is [kernel, repeats, channels_div8, stride], got {gene!r}"
        )
    values = []
    for name, value in zip(GENE_NAMES, gene):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise GenotypeError(f"modules[{index}].{name}: must be an integer, got {value!r}")
        values.append(int(value))
    kernel, repeats, channels_div8, stride = values
    if kernel < 1 or kernel % 2 == 0:
        raise GenotypeError(f"modules[{index}].kernel: must be a positive odd integer, got {kernel}")
    if repeats < 1:
        raise GenotypeError(f"modules[{index}].repeats: must be at least 1, got {repeats}")
    if channels_div8 < 1:
        raise GenotypeError(f"modules[{index}].channels_div8: must be at least 1, got {channels_div8}")
    if stride not in (1, 2):
        raise GenotypeError(f"modules[{index}].stride: must be 1 or 2, got {stride}")
    return Gene(*values)


GenotypeLike = Genotype | str | Sequence[Sequence[int]]

# Reference genotypes (SPEC section 1). The ancestor is EfficientNet-B0's block layout.
ANCESTOR = Genotype.from_list(
    [[3, 1, 2, 1], [3, 2, 3, 2], [5, 2, 5, 2], [3, 3, 10, 2], [5, 3, 14, 1], [5, 4, 24, 2], [3, 1, 40, 1]]
)
EVOPOSE2D_S = Genotype.from_list(
    [[3, 1, 2, 1], [3, 3, 3, 2], [5, 2, 5, 2], [3, 4, 10, 2], [5, 2, 14, 1], [5, 4, 16, 1], [3, 2, 10, 1]]
)
EVOPOSE2D_XS = EVOPOSE2D_S.replace(5, "stride", 2)

GENOTYPES: dict[str, Genotype] = {
    "ancestor": ANCESTOR,
    "evopose2d_xs": EVOPOSE2D_XS,
    "evopose2d_s": EVOPOSE2D_S,
}
