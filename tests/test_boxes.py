"""The detector codec's box operations (SPEC-KAPAO sections 3 and 4): formats, IoU, complete IoU and its
gradients, and class-aware greedy NMS against a brute-force reference."""

from __future__ import annotations

import math

import pytest
import torch

from evopose_pl.codecs import boxes as box_ops
from evopose_pl.codecs.boxes import batched_nms, box_iou, complete_iou, xywh_to_xyxy, xyxy_to_xywh


def test_formats_round_trip_with_any_leading_shape():
    xywh = torch.tensor([10.0, 20.0, 4.0, 6.0])
    assert xywh_to_xyxy(xywh).tolist() == [8.0, 17.0, 12.0, 23.0]
    assert xyxy_to_xywh(torch.tensor([8.0, 17.0, 12.0, 23.0])).tolist() == [10.0, 20.0, 4.0, 6.0]
    many = torch.rand(2, 3, 5, 4) * 100
    assert xywh_to_xyxy(many).shape == (2, 3, 5, 4)
    assert torch.allclose(xyxy_to_xywh(xywh_to_xyxy(many)), many, atol=1e-4)


def test_iou_by_hand():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 4.0, 4.0]])
    b = torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 3.0], [5.0, 5.0, 6.0, 6.0], [1.0, 1.0, 2.0, 2.0]])
    expected = [[1.0, 1 / 7, 0.0, 1 / 4], [1 / 4, 4 / 16, 0.0, 1 / 16]]  # identical, overlap, disjoint, nested
    assert box_iou(a, b).flatten().tolist() == pytest.approx(sum(expected, []))
    assert box_iou(a, b[:0]).shape == (2, 0)
    point = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    assert box_iou(point, point).item() == 0.0  # no area: 0, not NaN


def test_complete_iou_by_hand():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]] * 4)
    b = torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 3.0], [4.0, 0.0, 6.0, 2.0], [0.0, 0.0, 4.0, 2.0]])
    ciou = complete_iou(a, b)
    assert ciou[0].item() == pytest.approx(1.0)  # identical
    assert ciou[1].item() == pytest.approx(1 / 7 - 2 / 18)  # same shape: centres sqrt(2) apart, enclosing 3x3
    assert ciou[2].item() == pytest.approx(0 - 16 / 40)  # disjoint: centres 4 apart, enclosing 6x2 (negative)
    v = 4 / math.pi**2 * (math.atan(2) - math.atan(1)) ** 2  # 4x2 against 2x2
    alpha = v / (v - 0.5 + 1)
    assert ciou[3].item() == pytest.approx(0.5 - 1 / 20 - alpha * v)  # IoU 0.5, centres 1 apart, enclosing 4x2
    assert ciou[3] < box_iou(a[3:], b[3:])[0, 0]
    assert complete_iou(a.view(2, 2, 4), b.view(2, 2, 4)).shape == (2, 2)


def test_the_aspect_weight_alpha_passes_no_gradient():
    a = torch.tensor([0.0, 0.0, 2.0, 2.0], dtype=torch.float64)
    b = torch.tensor([0.0, 0.0, 4.0, 2.0], dtype=torch.float64, requires_grad=True)
    complete_iou(a, b).backward()

    def ciou(w: float, alpha: float | None) -> float:  # b = (0, 0, w, 2) against a, w >= 2
        iou = 4 / (2 * w)
        v = 4 / math.pi**2 * (math.atan(w / 2) - math.atan(1)) ** 2
        alpha = v / (v - iou + 1) if alpha is None else alpha
        return iou - (w / 2 - 1) ** 2 / (w**2 + 4) - alpha * v

    v = 4 / math.pi**2 * (math.atan(2) - math.atan(1)) ** 2
    alpha, h = v / (v - 0.5 + 1), 1e-5
    held = (ciou(4 + h, alpha) - ciou(4 - h, alpha)) / (2 * h)
    free = (ciou(4 + h, None) - ciou(4 - h, None)) / (2 * h)
    assert b.grad[2].item() == pytest.approx(held, rel=1e-5)
    assert held != pytest.approx(free, rel=1e-3)  # the test can tell them apart


@pytest.mark.parametrize(
    "box",
    [
        [1.0, 1.0, 3.0, 3.0],  # identical to its target
        [2.0, 2.0, 2.0, 2.0],  # a point
        [1.0, 1.0, 1.0, 3.0],  # no width
        [1.0, 1.0, 3.0, 1.0],  # no height
    ],
)
def test_gradients_stay_finite_for_identical_and_degenerate_boxes(box):
    for target in (box, [1.0, 1.0, 3.0, 3.0], [2.0, 2.0, 2.0, 2.0]):
        a = torch.tensor(box, requires_grad=True)
        b = torch.tensor(target, requires_grad=True)
        loss = 1 - complete_iou(a, b)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all(), (box, target)


def _reference_nms(boxes: list[list[float]], scores: list[float], classes: list[int], threshold: float) -> list[int]:
    """Greedy NMS by the book, in Python floats."""

    def iou(p: list[float], q: list[float]) -> float:
        w = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
        h = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
        union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - w * h
        return w * h / union if union > 0 else 0.0

    kept: list[int] = []
    for i in sorted(range(len(boxes)), key=lambda i: (-scores[i], i)):
        if all(classes[j] != classes[i] or iou(boxes[i], boxes[j]) <= threshold for j in kept):
            kept.append(i)
    return kept


def _random_candidates(generator: torch.Generator, n: int, classes: int, size: float = 40.0):
    """Clustered boxes (as a detector's candidates are) in float64, with tied scores."""
    centres = torch.rand(max(1, n // 8), 2, generator=generator, dtype=torch.float64) * 100
    which = torch.randint(0, len(centres), (n,), generator=generator)
    xy = centres[which] + torch.randn(n, 2, generator=generator, dtype=torch.float64) * 5
    wh = torch.rand(n, 2, generator=generator, dtype=torch.float64) * size + 1
    scores = (torch.rand(n, generator=generator, dtype=torch.float64) * 20).floor() / 20  # many ties
    return xywh_to_xyxy(torch.cat((xy, wh), dim=1)), scores, torch.randint(0, classes, (n,), generator=generator)


@pytest.mark.parametrize("block", [512, 7])  # one block; many blocks (kept boxes carried across them)
def test_nms_matches_a_brute_force_reference(monkeypatch, block):
    monkeypatch.setattr(box_ops, "NMS_BLOCK", block)
    monkeypatch.setattr(box_ops, "NMS_COLUMNS", 5)
    for seed in range(40):
        generator = torch.Generator().manual_seed(seed)
        boxes, scores, classes = _random_candidates(generator, n=5 + 3 * seed, classes=1 + seed % 4)
        for threshold in (0.0, 0.25, 0.5, 0.65, 0.9):
            kept = batched_nms(boxes, scores, classes, threshold)
            expected = _reference_nms(boxes.tolist(), scores.tolist(), classes.tolist(), threshold)
            assert kept.dtype == torch.long and kept.tolist() == expected, (seed, threshold)


def test_nms_in_float32_on_image_sized_boxes_matches_the_reference():
    generator = torch.Generator().manual_seed(0)
    boxes, scores, classes = _random_candidates(generator, n=300, classes=3)
    boxes = (boxes * 12.8).float()
    scores = scores.float() + torch.rand(300, generator=generator) * 1e-3
    kept = batched_nms(boxes, scores, classes, 0.65)
    assert kept.tolist() == _reference_nms(boxes.double().tolist(), scores.double().tolist(), classes.tolist(), 0.65)


def test_boxes_of_different_classes_never_suppress_each_other():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 3 + [[0.0, 0.0, 10.0, 9.0]])
    scores = torch.tensor([0.5, 0.9, 0.7, 0.8])
    assert batched_nms(boxes, scores, torch.tensor([0, 1, 2, 1]), 0.5).tolist() == [1, 2, 0]
    assert batched_nms(boxes, scores, torch.tensor([0, 0, 0, 0]), 0.5).tolist() == [1]
    assert batched_nms(boxes, scores, torch.tensor([0, 0, 0, 0]), 0.95).tolist() == [1, 3]  # IoU 0.9


def test_equal_scores_keep_the_lower_index_first():
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [5.0, 5.0, 6.0, 6.0], [0.0, 0.0, 1.0, 1.0]])
    assert batched_nms(boxes, torch.ones(3), torch.zeros(3, dtype=torch.long), 0.5).tolist() == [0, 1]


def test_max_output_and_empty_input(monkeypatch):
    generator = torch.Generator().manual_seed(1)
    boxes, scores, classes = _random_candidates(generator, n=200, classes=2)
    everything = batched_nms(boxes, scores, classes, 0.5)
    assert len(everything) > 20
    monkeypatch.setattr(box_ops, "NMS_BLOCK", 8)
    for limit in (0, 1, 8, 9, 20, 10_000):
        assert batched_nms(boxes, scores, classes, 0.5, max_output=limit).tolist() == everything[:limit].tolist()
    empty = batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long), 0.5)
    assert empty.dtype == torch.long and empty.shape == (0,)
    with pytest.raises(ValueError):
        batched_nms(torch.zeros(2, 4), torch.zeros(3), torch.zeros(2, dtype=torch.long), 0.5)
