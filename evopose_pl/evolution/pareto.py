"""Multi-objective selection (NSGA-II): Pareto dominance, fronts, crowding distance and hypervolume.

Pure Python, no torch and no Hydra. A point is one individual's objectives (e.g. its error and its
size or latency); every objective is minimised. Infinite values are allowed, so a failed individual
scored ``inf`` is simply dominated; NaN is rejected because it compares false with everything and
would make dominance, and so every front, silently wrong.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Point = Sequence[float]


def _point(values: Point, name: str) -> tuple[float, ...]:
    """``values`` as a tuple of floats; NaN would compare false with everything, so it is refused."""
    point = tuple(float(v) for v in values)
    if not point:
        raise ValueError(f"{name} has no objectives")
    if any(math.isnan(v) for v in point):
        raise ValueError(f"{name} has a NaN objective: {point}")
    return point


def _validated(points: Sequence[Point]) -> list[tuple[float, ...]]:
    """``points`` as tuples of floats, all with as many objectives as the first, none NaN."""
    checked = [_point(p, f"point {i}") for i, p in enumerate(points)]
    for i, point in enumerate(checked):
        if len(point) != len(checked[0]):
            raise ValueError(f"point {i} has {len(point)} objectives but point 0 has {len(checked[0])}")
    return checked


def _dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def dominates(a: Point, b: Point) -> bool:
    """Whether ``a`` is no worse than ``b`` in every objective and better in one: equal points do not
    dominate each other, so duplicates share a front."""
    first, second = _validated([a, b])
    return _dominates(first, second)


def pareto_front(points: Sequence[Point]) -> list[int]:
    """Indices of the points no other point dominates (duplicates included), ordered by their objectives
    (the first, then the second, ...) and then by index, so the front reads as a trade-off curve."""
    pts = _validated(points)
    front = [i for i, p in enumerate(pts) if not any(_dominates(q, p) for q in pts)]
    return sorted(front, key=lambda i: (pts[i], i))


def non_dominated_sort(points: Sequence[Point]) -> list[list[int]]:
    """Deb's fast non-dominated sorting: front 0 is the non-dominated points, front k those dominated only
    by points of fronts before k; each front's indices in ascending order, so results are deterministic."""
    pts = _validated(points)
    dominated = [[] for _ in pts]  # dominated[i]: the points i dominates
    dominators = [0] * len(pts)  # how many points dominate each point
    for i in range(len(pts)):
        for j in range(i + 1, len(pts)):
            if _dominates(pts[i], pts[j]):
                dominated[i].append(j)
                dominators[j] += 1
            elif _dominates(pts[j], pts[i]):
                dominated[j].append(i)
                dominators[i] += 1
    fronts = []
    front = [i for i, count in enumerate(dominators) if count == 0]
    while front:
        fronts.append(front)
        following = []
        for i in front:
            for j in dominated[i]:
                dominators[j] -= 1
                if dominators[j] == 0:
                    following.append(j)
        front = sorted(following)
    return fronts


def front_ranks(points: Sequence[Point]) -> list[int]:
    """Each point's front number (0 = non-dominated), the first key of NSGA-II's ranking."""
    ranks = [0] * len(points)
    for rank, front in enumerate(non_dominated_sort(points)):
        for i in front:
            ranks[i] = rank
    return ranks


def crowding_distance(points: Sequence[Point], front: Sequence[int]) -> dict[int, float]:
    """NSGA-II's crowding distance of the points of one ``front`` (indices into ``points``), which keeps a
    cut front spread out: per objective, the front's two extremes get ``inf`` and every other point adds the
    gap between its neighbours over the objective's range. An objective whose range is 0, or infinite (no
    finite scale), adds nothing; ties in an objective are ordered by index. Fronts of 1 or 2 points: all inf.
    """
    pts = _validated(points)
    members = list(front)
    for i in members:
        if not 0 <= i < len(pts):
            raise ValueError(f"front index {i} is not a point index (there are {len(pts)} points)")
    if len(set(members)) != len(members):
        raise ValueError(f"front {members} repeats an index")
    if len(members) <= 2:
        return {i: math.inf for i in members}
    distance = dict.fromkeys(members, 0.0)
    for k in range(len(pts[members[0]])):
        ordered = sorted(members, key=lambda i: (pts[i][k], i))
        distance[ordered[0]] = distance[ordered[-1]] = math.inf
        span = pts[ordered[-1]][k] - pts[ordered[0]][k]  # NaN when every value is inf
        if not 0 < span < math.inf:
            continue
        for previous, i, following in zip(ordered, ordered[1:], ordered[2:]):
            distance[i] += (pts[following][k] - pts[previous][k]) / span
    return distance


def nsga2_select(points: Sequence[Point], count: int) -> list[int]:
    """NSGA-II's environmental selection of ``count`` points: whole fronts from front 0 onward, then the
    front that does not fit cut by descending crowding distance (ties by ascending index), so the survivors
    are the best ranked and, among equals, the most spread out. Indices in selection order: the whole fronts
    in ascending index order, then the cut front's chosen points by crowding."""
    pts = _validated(points)
    if not 0 <= count <= len(pts):
        raise ValueError(f"count must be between 0 and {len(pts)} (the number of points), got {count}")
    selected: list[int] = []
    for front in non_dominated_sort(pts):
        room = count - len(selected)
        if len(front) > room:
            distance = crowding_distance(pts, front)
            selected += sorted(front, key=lambda i: (-distance[i], i))[:room]
            break
        selected += front
    return selected


def _area(points: Sequence[tuple[float, ...]], reference: tuple[float, ...]) -> float:
    """The 2-D hypervolume of ``points``, all strictly inside ``reference``: a sweep along the first objective
    over the staircase of points that improve the second."""
    staircase: list[tuple[float, ...]] = []
    for point in sorted(points):
        if not staircase or point[1] < staircase[-1][1]:
            staircase.append(point)
    rights = [p[0] for p in staircase[1:]] + [reference[0]]
    return sum(((right - p[0]) * (reference[1] - p[1]) for p, right in zip(staircase, rights)), 0.0)


def _volume(points: Sequence[tuple[float, ...]], reference: tuple[float, ...]) -> float:
    """The 3-D hypervolume of ``points``, all strictly inside ``reference``: slices along the third objective,
    each the 2-D area of the points at or below the slice's bottom times the slice's thickness."""
    levels = sorted({p[2] for p in points})
    tops = levels[1:] + [reference[2]]
    return sum(
        (_area([p for p in points if p[2] <= level], reference) * (top - level) for level, top in zip(levels, tops)),
        0.0,
    )


def hypervolume(points: Sequence[Point], reference: Point) -> float:
    """The volume dominated by ``points`` and bounded by ``reference``, a front's quality in one number
    (higher is better). Points not strictly better than the reference in every objective add nothing.
    Exact, for 2 objectives (a sweep) or 3 (slices of 2-D sweeps); an empty set has volume 0.0."""
    pts = _validated(points)
    ref = _point(reference, "the reference")
    if pts and len(pts[0]) != len(ref):
        raise ValueError(f"the reference has {len(ref)} objectives but the points have {len(pts[0])}")
    if len(ref) not in (2, 3):
        raise ValueError(f"hypervolume supports only 2 or 3 objectives, got {len(ref)}")
    inside = [p for p in pts if all(x < r for x, r in zip(p, ref))]
    return _area(inside, ref) if len(ref) == 2 else _volume(inside, ref)
