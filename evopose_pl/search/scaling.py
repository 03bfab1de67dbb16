"""EfficientNet compound scaling of depth and width with the resolution a network is decoded for (SPEC section 2)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def round_filters(channels: float, width: float, divisor: int = 8) -> int:
    """EfficientNet's channel rounding: nearest multiple of ``divisor``, never 10 % below ``c * w``."""
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


def round_repeats(repeats: int, depth: float) -> int:
    """Blocks per module after depth scaling: ``ceil(d * repeats)``."""
    return int(math.ceil(depth * repeats))


def drop_connect_rate(resolution: Sequence[int]) -> float:
    """Stochastic-depth rate by resolution, as EfficientNet-B0/B3/B5 use it (SPEC section 1)."""
    size = sum(resolution[:2]) / 2
    if size <= 240:
        return 0.2
    if size <= 300:
        return 0.3
    if size <= 456:
        return 0.4
    return 0.5


@dataclass(frozen=True)
class CompoundScaling:
    """``phi = log_gamma(size / base_size)``, depth ``alpha^phi``, width ``beta^phi``.

    ``size`` is the mean of the height and width of the resolution a network is decoded for, so
    256x192 (size 224) gives phi 0: the searched networks are unscaled and EvoPose2D-M and L are
    the S genotype scaled up. ``filters`` and ``repeats`` are the rule the decoder applies.
    """

    alpha: float = 1.2
    beta: float = 1.1
    gamma: float = 1.15
    base_size: float = 224.0
    divisor: int = 8

    def __post_init__(self) -> None:
        for name in ("alpha", "beta", "gamma", "base_size"):
            if not getattr(self, name) > 0:
                raise ValueError(f"compound scaling {name}: must be positive, got {getattr(self, name)}")
        if self.gamma == 1:
            raise ValueError("compound scaling gamma: must differ from 1 (phi divides by log gamma)")

    def phi(self, resolution: Sequence[int]) -> float:
        size = sum(resolution[:2]) / 2
        return (math.log(size) - math.log(self.base_size)) / math.log(self.gamma)

    def coefficients(self, resolution: Sequence[int]) -> tuple[float, float]:
        """(depth, width) coefficients for a resolution ``(height, width)``."""
        phi = self.phi(resolution)
        return self.alpha**phi, self.beta**phi

    def filters(self, channels: int, resolution: Sequence[int]) -> int:
        """A layer's width (stem, module output, top, head) width-scaled for ``resolution``."""
        return round_filters(channels, self.coefficients(resolution)[1], self.divisor)

    def repeats(self, repeats: int, resolution: Sequence[int]) -> int:
        """A module's block count depth-scaled for ``resolution``."""
        return round_repeats(repeats, self.coefficients(resolution)[0])
