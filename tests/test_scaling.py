"""Compound scaling (SPEC section 2) against EfficientNet's published numbers."""

from __future__ import annotations

import math

import pytest

from evopose_pl.search import CompoundScaling, drop_connect_rate, round_filters, round_repeats


def test_base_resolution_is_unscaled():
    assert CompoundScaling().phi((256, 192)) == 0
    assert CompoundScaling().coefficients((256, 192)) == (1.0, 1.0)


def test_coefficients_follow_phi():
    s = CompoundScaling()
    phi = math.log(336 / 224) / math.log(1.15)
    assert s.phi((384, 288)) == pytest.approx(phi)
    assert s.coefficients((384, 288)) == pytest.approx((1.2**phi, 1.1**phi))
    custom = CompoundScaling(alpha=1.3, beta=1.2, gamma=1.2, base_size=200)
    assert custom.coefficients((240, 160)) == (1.0, 1.0)
    assert custom.coefficients((480, 320))[0] == pytest.approx(1.3 ** (math.log(2) / math.log(1.2)))


@pytest.mark.parametrize(
    ("channels", "width", "expected"),
    # EfficientNet-B4 (w 1.4): stem 32 -> 48, 320 -> 448, 1280 -> 1792; B2 (w 1.1): 16 -> 16, 112 -> 120.
    [(32, 1.4, 48), (320, 1.4, 448), (1280, 1.4, 1792), (16, 1.1, 16), (112, 1.1, 120), (8, 0.5, 8)],
)
def test_round_filters_matches_efficientnet(channels, width, expected):
    assert round_filters(channels, width) == expected


def test_round_filters_never_drops_ten_percent():
    for c in range(8, 400, 8):
        for w in (0.5, 0.9, 1.1, 1.3185, 1.6043):
            assert round_filters(c, w) >= 0.9 * c * w and round_filters(c, w) % 8 == 0


def test_round_repeats_is_ceil():
    assert [round_repeats(r, 1.8) for r in (1, 2, 3, 4)] == [2, 4, 6, 8]
    assert round_repeats(3, 1.0) == 3


def test_filters_and_repeats_are_the_decoders_rule():
    s = CompoundScaling()
    assert [s.filters(c, (256, 192)) for c in (16, 32, 128)] == [16, 32, 128]
    assert [s.repeats(r, (256, 192)) for r in (1, 2, 3, 4)] == [1, 2, 3, 4]
    depth, width = s.coefficients((384, 288))
    assert s.filters(32, (384, 288)) == round_filters(32, width) == 40
    assert s.repeats(3, (384, 288)) == round_repeats(3, depth) == 6
    assert CompoundScaling(divisor=16).filters(40, (256, 192)) == 48


def test_drop_connect_thresholds():
    sizes = ((256, 192), (240, 240), (320, 256), (300, 300), (384, 288), (512, 384), (600, 400))
    assert [drop_connect_rate(s) for s in sizes] == [0.2, 0.2, 0.3, 0.3, 0.4, 0.4, 0.5]


def test_invalid_scaling_rejected():
    with pytest.raises(ValueError, match="gamma"):
        CompoundScaling(gamma=1.0)
    with pytest.raises(ValueError, match="alpha"):
        CompoundScaling(alpha=0)
