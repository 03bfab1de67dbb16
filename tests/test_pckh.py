"""PCKh by the official MPII protocol (SPEC-MPII section 3), on hand-computed cases, and the PCKh metric."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from rich.console import Console

from evopose_pl.data import Instance
from evopose_pl.evaluation import PCKH_MEAN_JOINTS, pckh
from evopose_pl.metrics import PCKh

COLUMNS = ("Head", "Shoulder", "Elbow", "Wrist", "Hip", "Knee", "Ankle", "Mean")
# Two corners 30 x 40 apart: a diagonal of 50, a head size of 0.6 x 50 = 30 px (exactly, in floats).
HEAD_BOX = [[10.0, 20.0], [40.0, 60.0]]
HEAD_SIZE = 30.0


def _people(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ground truth (n, 16, 2), all visible, and head boxes (n, 2, 2) of head size 30."""
    ground_truth = np.random.default_rng(seed).uniform(0, 500, (n, 16, 2)).round()
    return ground_truth, np.ones((n, 16), bool), np.tile(np.array(HEAD_BOX), (n, 1, 1))


def test_perfect_predictions_score_100_everywhere():
    gt, visible, boxes = _people(5)
    assert pckh(gt, gt, visible, boxes) == dict.fromkeys(COLUMNS, 100.0)
    assert list(pckh(gt, gt, visible, boxes)) == list(COLUMNS)


def test_a_prediction_exactly_at_the_threshold_is_correct():
    gt, visible, boxes = _people(2)
    tie = gt + np.array([9.0, 12.0])  # 15 px = 0.5 x 30: correct (<=, as the official MATLAB; mmpose's < is not)
    assert pckh(tie, gt, visible, boxes, 0.5)["Mean"] == 100.0
    beyond = gt + np.array([9.0, 12.01])  # 15.008 px
    assert pckh(beyond, gt, visible, boxes, 0.5)["Mean"] == 0.0
    at_tenth = gt + np.array([0.0, 3.0])  # 3 px = 0.1 x 30
    assert pckh(at_tenth, gt, visible, boxes, 0.1)["Mean"] == 100.0
    assert pckh(gt + np.array([0.0, 3.01]), gt, visible, boxes, 0.1)["Mean"] == 0.0


def test_a_hand_computed_case():
    """Two people of head sizes 30 and 60: a 20 px error is a miss for the first, a hit for the second."""
    gt, visible, boxes = _people(2)
    boxes[1] = [[0.0, 0.0], [60.0, 80.0]]  # diagonal 100: head size 60
    predictions = gt.copy()
    predictions[:, 9] += [20.0, 0.0]  # head_top: 20/30 > 0.5 misses, 20/60 hits -> 50
    predictions[0, 12] += [0.0, 40.0]  # r_shoulder of the first: a miss -> 50; l_shoulder 100 -> column 75
    visible[1, 15] = False  # l_wrist of the second unannotated: its wild prediction does not count
    predictions[1, 15] += [1000.0, 1000.0]
    predictions[:, 0] += [0.0, 25.0]  # r_ankle: 25/30 misses, 25/60 hits -> 50; l_ankle 100 -> column 75
    figures = pckh(predictions, gt, visible, boxes)
    expected = {"Head": 50.0, "Shoulder": 75.0, "Elbow": 100.0, "Wrist": 100.0, "Hip": 100.0, "Knee": 100.0,
                "Ankle": 75.0}  # fmt: skip
    for name, value in expected.items():
        assert figures[name] == pytest.approx(value), name
    # Mean: 14 joints x 2 people less the unannotated wrist = 27 visible; misses: head_top, r_shoulder, r_ankle of
    # the first person.
    assert figures["Mean"] == pytest.approx(100 * (27 - 3) / 27)
    # At 0.1 head sizes (3 and 6 px), every moved joint misses.
    tight = pckh(predictions, gt, visible, boxes, 0.1)
    assert tight["Head"] == 0.0 and tight["Mean"] == pytest.approx(100 * (27 - 5) / 27)


def test_pelvis_and_thorax_never_move_the_mean():
    gt, visible, boxes = _people(4)
    predictions = gt.copy()
    predictions[:, [6, 7]] += 500.0
    assert pckh(predictions, gt, visible, boxes) == dict.fromkeys(COLUMNS, 100.0)
    assert 6 not in PCKH_MEAN_JOINTS and 7 not in PCKH_MEAN_JOINTS and 8 in PCKH_MEAN_JOINTS


def test_upper_neck_counts_in_the_mean_though_no_column_shows_it():
    gt, visible, boxes = _people(4)
    predictions = gt.copy()
    predictions[:, 8] += 500.0
    figures = pckh(predictions, gt, visible, boxes)
    assert all(figures[name] == 100.0 for name in COLUMNS[:-1])
    assert figures["Mean"] == pytest.approx(100 * 13 / 14)


def test_one_joint_moved_away_lowers_its_column_and_the_mean_by_its_count_share():
    gt, visible, boxes = _people(6, seed=1)
    visible[:, [0, 5, 10]] = np.random.default_rng(2).random((6, 3)) < 0.5  # uneven visible counts
    visible[0, 10] = True
    predictions = gt.copy()
    predictions[:, 10] += 300.0  # every r_wrist far away
    figures = pckh(predictions, gt, visible, boxes)
    counts = visible.sum(0)
    share = counts[10] / counts[list(PCKH_MEAN_JOINTS)].sum()
    assert figures["Wrist"] == pytest.approx(50.0)  # r_wrist 0, l_wrist 100
    assert figures["Mean"] == pytest.approx(100 * (1 - share))
    assert all(figures[name] == 100.0 for name in ("Head", "Shoulder", "Elbow", "Hip", "Knee", "Ankle"))


def test_a_joint_with_no_visible_instance_is_nan_and_weighs_nothing_in_the_mean():
    """The official code's PCKh of a joint is a mean over its visible instances: none, NaN (HRNet's 0/0 too).
    The column averaging it is NaN; the Mean pools the visible joints, so it stays finite."""
    gt, visible, boxes = _people(3)
    visible[:, 9] = False  # no head_top anywhere
    predictions = gt.copy()
    predictions[:, 9] += 1000.0
    predictions[:, 13] += 1000.0  # l_shoulder all missed
    figures = pckh(predictions, gt, visible, boxes)
    assert math.isnan(figures["Head"])
    assert figures["Shoulder"] == 50.0
    assert figures["Mean"] == pytest.approx(100 * 12 / 13)
    visible[:] = False
    assert all(math.isnan(v) for v in pckh(predictions, gt, visible, boxes).values())


def test_a_nan_prediction_is_a_miss():
    gt, visible, boxes = _people(2)
    predictions = gt.copy()
    predictions[0, 9] = np.nan
    assert pckh(predictions, gt, visible, boxes)["Head"] == 50.0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda a: {**a, "predictions": a["predictions"][:, :15]},
            r"predictions has shape \(3, 15, 2\), expected "
            r"\(N, 16, 2\)",
        ),  # fmt: skip
        (
            lambda a: {**a, "ground_truth": a["ground_truth"][:2]},
            r"ground_truth has shape \(2, 16, 2\), expected "
            r"\(3, 16, 2\)",
        ),  # fmt: skip
        (lambda a: {**a, "visible": a["visible"][..., None]}, r"visible has shape \(3, 16, 1\), expected \(3, 16\)"),
        (
            lambda a: {**a, "head_boxes": a["head_boxes"].reshape(3, 4)},
            r"head_boxes has shape \(3, 4\), expected "
            r"\(3, 2, 2\)",
        ),  # fmt: skip
        (lambda a: {**a, "threshold": 0.0}, "threshold must be a positive number"),
        (lambda a: {**a, "head_boxes": np.zeros((3, 2, 2))}, r"people \[0, 1, 2\] have an empty or non-finite head"),
    ],
)
def test_wrong_input_is_refused_clearly(change, message):
    gt, visible, boxes = _people(3)
    arguments = {"predictions": gt, "ground_truth": gt, "visible": visible, "head_boxes": boxes}
    with pytest.raises(ValueError, match=message):
        pckh(**change(arguments))


# The PCKh metric: ground truth from a test split's instances.


def _split(n: int = 4, head_box: bool = True, seed: int = 0) -> SimpleNamespace:
    """What the metric reads from a test split: its annotation file and instances."""
    gt, _, _ = _people(n, seed)
    instances = []
    for i in range(n):
        keypoints = np.concatenate([gt[i], np.ones((16, 1))], axis=1).astype(np.float32)
        keypoints[3, 2] = 0 if i == 0 else 1  # one unannotated l_hip
        box = (10.0, 20.0, 40.0, 60.0) if head_box else None
        instances.append(Instance(i, Path(f"{i:09d}.jpg"), (0, 0, 10, 10), keypoints, 1.0, f"valid.json [{i}]", box))
    return SimpleNamespace(annotation_file=Path("annot/valid.json"), instances=instances)


def _records(metric: PCKh, split: SimpleNamespace, offset: np.ndarray, indices=None) -> list[dict]:
    """The metric's records of batches of two, predictions at ground truth + offset."""
    indices = list(range(len(split.instances))) if indices is None else indices
    records = []
    for start in range(0, len(indices), 2):
        chunk = indices[start : start + 2]
        keypoints = np.stack([split.instances[i].keypoints[:, :2] for i in chunk]) + offset
        scores = np.full((len(chunk), 16), 0.9)
        records += metric.records({"index": chunk, "image_id": chunk}, keypoints, scores, scores.mean(-1))
    return records


def test_the_metric_scores_at_half_and_a_true_tenth_of_a_head_and_writes_its_predictions(tmp_path):
    split = _split()
    metric = PCKh(split)
    assert metric.headline == "Mean" and metric.higher_is_better
    offset = np.zeros(16 * 2)
    offset = offset.reshape(16, 2)
    offset[9] = [0.0, 3.2]  # head_top 0.107 head sizes away: a miss at a true 0.1 (a hit at HRNet's 0.11)
    offset[10] = [0.0, 16.0]  # r_wrist beyond half a head
    figures = metric.compute(_records(metric, split, offset), tmp_path)
    assert list(figures) == [*COLUMNS, *(f"{name}@0.1" for name in COLUMNS)]
    assert figures["Head"] == 100.0 and figures["Wrist"] == 50.0 and figures["Head@0.1"] == 0.0
    visible = 4 * 14 - 1  # one l_hip unannotated
    assert figures["Mean"] == pytest.approx(100 * (visible - 4) / visible)
    assert figures["Mean@0.1"] == pytest.approx(100 * (visible - 8) / visible)

    written = json.loads((tmp_path / "pckh_predictions.json").read_text())
    assert written["figures"] == pytest.approx(figures)
    assert written["people"] == written["predicted"] == 4
    first = written["predictions"][1]
    assert first["image"] == "000000001.jpg" and first["index"] == 1 and first["scores"] == [0.9] * 16
    assert first["keypoints"][9] == pytest.approx((split.instances[1].keypoints[9, :2] + [0, 3.2]).tolist())


def test_repeated_people_count_once_and_missing_people_count_as_missed():
    split = _split(4)
    metric = PCKh(split)
    zero = np.zeros((16, 2))
    repeated = _records(metric, split, zero) + _records(metric, split, zero + 100, indices=[0, 1])
    assert metric.compute(repeated)["Mean"] == 100.0  # a distributed sampler's padding: the first record counts
    half = metric.compute(_records(metric, split, zero, indices=[0, 1]))
    assert half["Mean"] == pytest.approx(100 * 27 / 55) and half["Head"] == 50.0
    with pytest.raises(ValueError, match="a prediction for person 7, but annot/valid.json holds 4 people"):
        metric.compute([{"index": 7, "keypoints": zero.tolist(), "scores": [0.0] * 16}])


def test_the_metric_refuses_a_split_without_head_boxes_or_of_another_keypoint_set():
    with pytest.raises(ValueError, match=r"PCKh needs every person's head box.*4 people of annot/valid.json have none"):
        PCKh(_split(head_box=False))
    split = _split()
    split.instances[0] = Instance(0, Path("a.jpg"), (0, 0, 1, 1), np.zeros((17, 3), np.float32))
    with pytest.raises(ValueError, match="PCKh scores MPII's 16 joints; annot/valid.json has 17 keypoints"):
        PCKh(split)


def test_the_table_has_a_row_per_threshold():
    split = _split()
    metric = PCKh(split)
    figures = metric.compute(_records(metric, split, np.zeros((16, 2))))
    figures["Hip@0.1"] = math.nan
    console = Console(width=200, record=True)
    console.print(metric.table(figures))
    text = console.export_text()
    assert all(name in text for name in COLUMNS)
    rows = [line for line in text.splitlines() if "PCKh@" in line]
    assert len(rows) == 2 and "PCKh@0.5" in rows[0] and "PCKh@0.1" in rows[1]
    assert rows[0].count("100.0") == 8 and "n/a" in rows[1]
