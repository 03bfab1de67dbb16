"""NSGA-II selection and hypervolume against hand-computed fronts, and against brute-force definitions."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from evopose_pl.evolution.pareto import (
    crowding_distance,
    dominates,
    front_ranks,
    hypervolume,
    non_dominated_sort,
    nsga2_select,
    pareto_front,
)

# Eight 2-D points, three fronts (hand-computed):
#   front 0: 1 (1, 8), 4 (3, 4), 6 (7, 1)                     nothing has x <= 1, or x <= 3 and y <= 4, or y <= 1
#   front 1: 0 (4, 6), 2 (8, 2), 5 (2, 9), 7 (5, 5)           dominated by 4, 6, 1, 4; x rises while y falls
#   front 2: 3 (9, 9)                                         dominated by 7 (5, 5), which is in front 1
POINTS = [(4, 6), (1, 8), (8, 2), (9, 9), (3, 4), (2, 9), (7, 1), (5, 5)]
FRONTS = [[1, 4, 6], [0, 2, 5, 7], [3]]
# Crowding of front 1:
#   objective 0: order 5 (2), 0 (4), 7 (5), 2 (8), range 8 - 2 = 6: 5, 2 inf; 0: (5 - 2) / 6 = 1/2; 7: (8 - 4) / 6 = 2/3
#   objective 1: order 2 (2), 7 (5), 0 (6), 5 (9), range 9 - 2 = 7: 2, 5 inf; 7: (6 - 2) / 7 = 4/7; 0: (9 - 5) / 7 = 4/7
#   totals: 0: 1/2 + 4/7 = 15/14; 7: 2/3 + 4/7 = 26/21
FRONT_1_CROWDING = {0: 15 / 14, 2: math.inf, 5: math.inf, 7: 26 / 21}
# Crowding of front 0: 1 and 6 are the extremes of both objectives; 4: (7 - 1) / 6 + (8 - 1) / 7 = 1 + 1 = 2.
FRONT_0_CROWDING = {1: math.inf, 4: 2.0, 6: math.inf}


def test_dominates():
    assert dominates((1, 2), (2, 3))
    assert dominates((1, 2), (1, 3))
    assert not dominates((2, 3), (1, 2))
    assert not dominates((1, 2), (1, 2))  # equal points: neither dominates
    assert not dominates((1, 3), (2, 2))  # a trade-off: neither dominates
    assert dominates((1, 1, 1), (1, 1, 2))
    assert not dominates((1, 1, 2), (1, 2, 1))


def test_infinite_objectives_are_dominated():
    assert dominates((5, 5), (math.inf, math.inf))
    assert dominates((math.inf, 1), (math.inf, 2))
    assert not dominates((math.inf, math.inf), (math.inf, math.inf))
    points = [(1, 2), (math.inf, math.inf), (2, 1), (math.inf, 0)]
    assert non_dominated_sort(points) == [[0, 2, 3], [1]]  # (inf, 0) is the best in the second objective
    assert pareto_front(points) == [0, 2, 3]


def test_pareto_front_is_sorted_by_objectives():
    assert pareto_front(POINTS) == [1, 4, 6]  # x = 1, 3, 7
    # Front 0 of the reversed list: the same points, at indices 7 - i.
    assert pareto_front(POINTS[::-1]) == [6, 3, 1]
    assert pareto_front([(2, 1), (1, 2), (1, 3), (1, 2)]) == [1, 3, 0]  # (1, 3) is dominated; duplicates by index
    assert pareto_front([(1, 3, 1), (1, 2, 2), (0, 5, 5)]) == [2, 1, 0]  # ties on the first objective: by the second


def test_pareto_front_keeps_duplicates():
    points = [(3, 1), (1, 3), (2, 2), (2, 2), (3, 3), (1, 3)]
    assert pareto_front(points) == [1, 5, 2, 3, 0]
    assert non_dominated_sort(points) == [[0, 1, 2, 3, 5], [4]]


def test_pareto_front_three_objectives():
    points = [(1, 2, 3), (3, 2, 1), (2, 2, 2), (2, 3, 3), (1, 2, 3), (3, 3, 1)]
    # (2, 3, 3) is dominated by (2, 2, 2), (3, 3, 1) by (3, 2, 1); the duplicates (1, 2, 3) both stay.
    assert pareto_front(points) == [0, 4, 2, 1]
    assert non_dominated_sort(points) == [[0, 1, 2, 4], [3, 5]]


def test_non_dominated_sort_and_ranks_hand_computed():
    assert non_dominated_sort(POINTS) == FRONTS
    assert front_ranks(POINTS) == [1, 0, 1, 2, 0, 1, 0, 1]


def test_empty_input():
    assert pareto_front([]) == []
    assert non_dominated_sort([]) == []
    assert front_ranks([]) == []
    assert crowding_distance([], []) == {}
    assert nsga2_select([], 0) == []
    assert hypervolume([], (1, 1)) == 0.0


def test_crowding_distance_hand_computed():
    assert crowding_distance(POINTS, FRONTS[1]) == pytest.approx(FRONT_1_CROWDING)
    assert crowding_distance(POINTS, FRONTS[0]) == pytest.approx(FRONT_0_CROWDING)
    # The front's order does not matter.
    assert crowding_distance(POINTS, [7, 5, 2, 0]) == pytest.approx(FRONT_1_CROWDING)


def test_crowding_distance_small_fronts_are_infinite():
    assert crowding_distance(POINTS, [4]) == {4: math.inf}
    assert crowding_distance(POINTS, [6, 1]) == {6: math.inf, 1: math.inf}


def test_crowding_distance_constant_objective_adds_nothing():
    # Objective 1 is 5 everywhere: only objective 0 counts, 1: (4 - 1) / (4 - 1) = 1.
    assert crowding_distance([(1, 5), (2, 5), (4, 5)], [0, 1, 2]) == {0: math.inf, 1: 1.0, 2: math.inf}
    # Three objectives, the third constant: (3 - 1) / 2 + (3 - 1) / 2 + 0 = 2.
    points = [(1, 3, 7), (2, 2, 7), (3, 1, 7)]
    assert crowding_distance(points, [0, 1, 2]) == {0: math.inf, 1: 2.0, 2: math.inf}
    # Every objective constant: the extremes (by index) are still infinite, the middle gets 0.
    assert crowding_distance([(1, 1)] * 3, [0, 1, 2]) == {0: math.inf, 1: 0.0, 2: math.inf}
    assert crowding_distance([(1, 1)] * 3, [2, 0, 1]) == {0: math.inf, 1: 0.0, 2: math.inf}  # by index, not position


def test_crowding_distance_with_infinite_objectives():
    # The ranges are infinite, so there is no finite scale: the interior point gets 0, never NaN.
    points = [(0, math.inf), (1, 1), (math.inf, 0)]
    assert crowding_distance(points, [0, 1, 2]) == {0: math.inf, 1: 0.0, 2: math.inf}
    points = [(math.inf, 1), (math.inf, 2), (math.inf, 4)]  # objective 0 is inf everywhere: adds nothing
    assert crowding_distance(points, [0, 1, 2]) == {0: math.inf, 1: 1.0, 2: math.inf}


def test_crowding_distance_rejects_bad_fronts():
    with pytest.raises(ValueError, match="front index 8"):
        crowding_distance(POINTS, [0, 8])
    with pytest.raises(ValueError, match="front index -1"):
        crowding_distance(POINTS, [-1, 0])
    with pytest.raises(ValueError, match="repeats"):
        crowding_distance(POINTS, [0, 2, 0])


def test_nsga2_select_hand_computed():
    # Front 0 (3 points) fits; front 1 is cut to 2 by crowding: 2 and 5 (both inf, ascending index).
    assert nsga2_select(POINTS, 5) == [1, 4, 6, 2, 5]
    assert nsga2_select(POINTS, 6) == [1, 4, 6, 2, 5, 7]  # 7 (26/21) before 0 (15/14)
    assert nsga2_select(POINTS, 7) == [1, 4, 6, 0, 2, 5, 7]  # whole fronts in ascending index order
    assert nsga2_select(POINTS, 8) == [1, 4, 6, 0, 2, 5, 7, 3]
    assert nsga2_select(POINTS, 3) == [1, 4, 6]
    assert nsga2_select(POINTS, 2) == [1, 6]  # the extremes of front 0
    assert nsga2_select(POINTS, 0) == []


def test_nsga2_select_breaks_crowding_ties_by_index():
    # One front, evenly spaced: extremes 1 (4, 0) and 3 (0, 4) are inf; 0, 2, 4 all get 2/4 + 2/4 = 1.
    points = [(2, 2), (4, 0), (1, 3), (0, 4), (3, 1)]
    assert crowding_distance(points, [0, 1, 2, 3, 4]) == {0: 1.0, 1: math.inf, 2: 1.0, 3: math.inf, 4: 1.0}
    assert nsga2_select(points, 3) == [1, 3, 0]
    assert nsga2_select(points, 4) == [1, 3, 0, 2]


def test_nsga2_select_rejects_bad_counts():
    with pytest.raises(ValueError, match="between 0 and 8"):
        nsga2_select(POINTS, 9)
    with pytest.raises(ValueError, match="got -1"):
        nsga2_select(POINTS, -1)


def test_hypervolume_2d_hand_computed():
    # Staircase: (1, 3): 1 * (4 - 3) = 1; (2, 2): 1 * 2 = 2; (3, 1): 1 * 3 = 3; total 6.
    assert hypervolume([(1, 3), (2, 2), (3, 1)], (4, 4)) == 6.0
    assert hypervolume([(3, 1), (1, 3), (2, 2)], (4, 4)) == 6.0  # order does not matter
    assert hypervolume([(1, 1)], (4, 4)) == 9.0
    # Front 0 of POINTS against (10, 10), by inclusion-exclusion of the boxes
    #   A = [1,10]x[8,10] = 18, B = [3,10]x[4,10] = 42, C = [7,10]x[1,10] = 27,
    #   AB = [3,10]x[8,10] = 14, AC = [7,10]x[8,10] = 6, BC = [7,10]x[4,10] = 18, ABC = 6:
    #   18 + 42 + 27 - 14 - 6 - 18 + 6 = 55; the dominated points add nothing.
    assert hypervolume(POINTS, (10, 10)) == 55.0
    assert hypervolume([POINTS[i] for i in FRONTS[0]], (10, 10)) == 55.0


def test_hypervolume_dominated_and_duplicate_points_add_nothing():
    front = [(1, 3), (2, 2), (3, 1)]
    assert hypervolume([*front, (3, 3), (2, 3), (2, 2), (1, 3)], (4, 4)) == 6.0
    assert hypervolume([*front, (math.inf, math.inf)], (4, 4)) == 6.0


def test_hypervolume_ignores_points_outside_the_reference():
    front = [(1, 3), (2, 2), (3, 1)]
    # On the reference's boundary counts as outside: (-inf, 4) would otherwise add inf * 0 = NaN.
    outside = [(5, 0), (0, 4), (4, 0), (-1, 5), (0, 4.5), (4, 4), (-math.inf, 4)]
    assert hypervolume([*front, *outside], (4, 4)) == 6.0
    assert hypervolume(outside, (4, 4)) == 0.0
    assert hypervolume([(1, 1, 1)], (2, 3, 1)) == 0.0
    assert hypervolume([(1, 1, 1), (-math.inf, -math.inf, 2)], (2, 3, 2)) == 2.0  # 1 * 2 * 1, boundary point adds 0


def test_hypervolume_3d_hand_computed():
    assert hypervolume([(1, 1, 1)], (2, 3, 4)) == 6.0  # 1 * 2 * 3
    # Two boxes: A = [1,4]x[2,4]x[3,4] = 3*2*1 = 6, B = [2,4]x[1,4]x[1,4] = 2*3*3 = 18,
    # A and B = [2,4]x[2,4]x[3,4] = 4: 6 + 18 - 4 = 20.
    assert hypervolume([(1, 2, 3), (2, 1, 1)], (4, 4, 4)) == 20.0
    # Three boxes of 3*2*1 = 6 each; every pairwise intersection is 2 (e.g. from (2, 3, 3): 2*1*1), the triple one
    # from (3, 3, 3) is 1: 18 - 6 + 1 = 13.
    assert hypervolume([(1, 2, 3), (2, 3, 1), (3, 1, 2)], (4, 4, 4)) == 13.0
    # Three boxes of 3*1*1 = 3; each pair and the triple meet in [2,3]^3 = 1: 9 - 3 + 1 = 7.
    assert hypervolume([(0, 2, 2), (2, 0, 2), (2, 2, 0)], (3, 3, 3)) == 7.0
    # Adding a dominated point, a duplicate and an outside point changes nothing.
    assert hypervolume([(0, 2, 2), (2, 0, 2), (2, 2, 0), (2, 2, 2), (0, 2, 2), (0, 0, 3)], (3, 3, 3)) == 7.0


def test_hypervolume_3d_with_a_constant_objective_is_an_extruded_area():
    flat = [(1, 3), (2, 2), (3, 1)]
    assert hypervolume([(x, y, 1.5) for x, y in flat], (4, 4, 4)) == 6.0 * 2.5


def test_hypervolume_of_a_point_at_minus_infinity_is_infinite():
    assert hypervolume([(-math.inf, 1)], (2, 2)) == math.inf
    assert hypervolume([(1, 1, -math.inf), (0, 0, 0)], (2, 2, 2)) == math.inf


def _brute_force_fronts(points):
    """The definition: peel off the points no remaining point dominates."""
    remaining = set(range(len(points)))
    fronts = []
    while remaining:
        front = sorted(i for i in remaining if not any(dominates(points[j], points[i]) for j in remaining))
        fronts.append(front)
        remaining -= set(front)
    return fronts


def _unit_cells(points, reference):
    """Exact hypervolume of integer points: count the unit cells [c, c + 1) any point dominates."""
    low = [min(p[k] for p in points) for k in range(len(reference))] if points else list(reference)
    cells = itertools.product(*(range(lo, hi) for lo, hi in zip(low, reference)))
    return sum(1 for cell in cells if any(all(pk <= ck for pk, ck in zip(p, cell)) for p in points))


@pytest.mark.parametrize("objectives", [2, 3])
def test_non_dominated_sort_matches_brute_force(objectives):
    rng = random.Random(objectives)
    for _ in range(40):
        values = [*range(5), math.inf]  # small integers: many ties and duplicates
        points = [tuple(rng.choice(values) for _ in range(objectives)) for _ in range(rng.randint(1, 25))]
        fronts = non_dominated_sort(points)
        assert fronts == _brute_force_fronts(points)
        ranks = front_ranks(points)
        assert all(ranks[i] == r for r, front in enumerate(fronts) for i in front)
        assert sorted(pareto_front(points)) == fronts[0]
        assert pareto_front(points) == sorted(fronts[0], key=lambda i: (points[i], i))


@pytest.mark.parametrize("objectives", [2, 3])
def test_nsga2_select_keeps_the_best_ranked(objectives):
    rng = random.Random(10 + objectives)
    for _ in range(20):
        points = [tuple(float(rng.randint(0, 6)) for _ in range(objectives)) for _ in range(rng.randint(1, 20))]
        ranks = front_ranks(points)
        previous: set[int] = set()
        for count in range(len(points) + 1):
            selected = nsga2_select(points, count)
            assert len(selected) == len(set(selected)) == count
            assert previous <= set(selected)  # selections grow by one point at a time
            unselected = set(range(len(points))) - set(selected)
            assert all(ranks[i] <= ranks[j] for i in selected for j in unselected)
            previous = set(selected)


@pytest.mark.parametrize("objectives", [2, 3])
def test_hypervolume_matches_unit_cell_count(objectives):
    rng = random.Random(20 + objectives)
    for _ in range(30):
        reference = tuple(rng.randint(3, 6) for _ in range(objectives))
        points = [tuple(rng.randint(0, 7) for _ in range(objectives)) for _ in range(rng.randint(0, 8))]
        inside = [p for p in points if all(x < r for x, r in zip(p, reference))]
        assert hypervolume(points, reference) == _unit_cells(inside, reference)


def test_mismatched_objective_counts_name_the_point():
    bad = [(1, 2), (2, 1), (1, 2, 3)]
    for function in (pareto_front, non_dominated_sort, front_ranks):
        with pytest.raises(ValueError, match="point 2 has 3 objectives but point 0 has 2"):
            function(bad)
    with pytest.raises(ValueError, match="point 2 has 3"):
        crowding_distance(bad, [0, 1])
    with pytest.raises(ValueError, match="point 2 has 3"):
        nsga2_select(bad, 1)
    with pytest.raises(ValueError, match="point 2 has 3"):
        hypervolume(bad, (4, 4))
    with pytest.raises(ValueError, match="point 1 has 3 objectives"):
        dominates((1, 2), (1, 2, 3))


def test_nan_is_rejected():
    bad = [(1, 2), (math.nan, 1)]
    for function in (pareto_front, non_dominated_sort, front_ranks):
        with pytest.raises(ValueError, match="point 1 has a NaN"):
            function(bad)
    with pytest.raises(ValueError, match="NaN"):
        dominates((1, 2), (1, math.nan))
    with pytest.raises(ValueError, match="NaN"):
        crowding_distance(bad, [0])
    with pytest.raises(ValueError, match="NaN"):
        nsga2_select(bad, 1)
    with pytest.raises(ValueError, match="NaN"):
        hypervolume(bad, (4, 4))
    with pytest.raises(ValueError, match="the reference has a NaN"):
        hypervolume([(1, 2)], (4, math.nan))


def test_hypervolume_rejects_bad_dimensions():
    with pytest.raises(ValueError, match="reference has 2 objectives but the points have 3"):
        hypervolume([(1, 1, 1)], (4, 4))
    with pytest.raises(ValueError, match="only 2 or 3"):
        hypervolume([(1, 1, 1, 1)], (4, 4, 4, 4))
    with pytest.raises(ValueError, match="only 2 or 3"):
        hypervolume([], (4, 4, 4, 4))
