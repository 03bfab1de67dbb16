"""Evaluation protocols: COCO keypoint AP with pycocotools (SPEC section 8), and MPII's PCKh as the
official MPII evaluation computes it (SPEC-MPII section 3)."""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

STAT_NAMES = ("AP", "AP50", "AP75", "APM", "APL", "AR", "AR50", "AR75", "ARM", "ARL")


def results_records(
    image_ids: Iterable[int], keypoints: np.ndarray, keypoint_scores: np.ndarray, scores: np.ndarray
) -> list[dict]:
    """COCO results entries: ``keypoints`` (N, K, 2) in image pixels, one triplet per keypoint."""
    triplets = np.concatenate([keypoints, keypoint_scores[..., None]], axis=-1).reshape(len(scores), -1)
    return [
        {"image_id": int(i), "category_id": 1, "keypoints": t.astype(float).round(3).tolist(), "score": float(s)}
        for i, t, s in zip(image_ids, triplets, scores)
    ]


def evaluate_coco(
    annotation_file: str | os.PathLike, results: list[dict], results_file: str | os.PathLike | None = None
) -> dict[str, float]:
    """The ten COCOeval keypoint statistics (AP, AP50, ..., ARL) for ``results`` on every image of
    the annotation file; the results are written to ``results_file`` first when given."""
    if results_file is not None:
        path = Path(results_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(results))
        tmp.replace(path)
    if not results:
        return dict.fromkeys(STAT_NAMES, 0.0)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(annotation_file))
        evaluator = COCOeval(gt, iouType="keypoints")
        sigmas = len(evaluator.params.kpt_oks_sigmas)
        if len(results[0]["keypoints"]) != 3 * sigmas:
            raise ValueError(
                f"COCO keypoint AP weighs the {sigmas} COCO keypoints by their OKS sigmas; the results for "
                f"{annotation_file} have {len(results[0]['keypoints']) // 3} keypoints"
            )
        evaluator.cocoDt = gt.loadRes(results)
        evaluator.params.imgIds = sorted(gt.getImgIds())
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(v) for name, v in zip(STAT_NAMES, evaluator.stats)}  # -1: no ground truth of that size


#: PCKh's reported columns: each averages the PCKh of its joints (MPII's 0-based order, SPEC-MPII section 1).
PCKH_COLUMNS = {
    "Head": (9,),
    "Shoulder": (12, 13),
    "Elbow": (11, 14),
    "Wrist": (10, 15),
    "Hip": (2, 3),
    "Knee": (1, 4),
    "Ankle": (0, 5),
}
#: The joints of PCKh's Mean: all but pelvis (6) and thorax (7); upper_neck (8) counts though no column shows it.
PCKH_MEAN_JOINTS = (0, 1, 2, 3, 4, 5, 8, 9, 10, 11, 12, 13, 14, 15)
#: The official head-size factor: head size = 0.6 x the diagonal of the head box.
SC_BIAS = 0.6


def _check_shape(name: str, array: np.ndarray, expected: tuple[int | None, ...], meaning: str) -> None:
    if array.ndim != len(expected) or any(e is not None and s != e for s, e in zip(array.shape, expected)):
        wanted = "(" + ", ".join("N" if e is None else str(e) for e in expected) + ")"
        raise ValueError(f"pckh: {name} has shape {tuple(array.shape)}, expected {wanted}: {meaning}")


def pckh(
    predictions: np.ndarray,
    ground_truth: np.ndarray,
    visible: np.ndarray,
    head_boxes: np.ndarray,
    threshold: float = 0.5,
) -> dict[str, float]:
    """MPII's PCKh in percent, by the official protocol (SPEC-MPII section 3), for N people.

    ``predictions`` and ``ground_truth`` (N, 16, 2) are in the same pixel coordinates (0-based here
    throughout), ``visible`` (N, 16) marks the annotated joints, ``head_boxes`` (N, 2, 2) holds two
    opposite corners of each head box. A joint is correct when visible and at most (``<=``, as the
    official MATLAB code) ``threshold`` x head size from its ground truth, the head size being
    0.6 x the head box's diagonal.

    Returns ``Head, Shoulder, Elbow, Wrist, Hip, Knee, Ankle`` (each the plain average of its two
    joints' PCKh) and ``Mean``: the PCKh of all visible joints pooled over the 14 joints other than
    pelvis and thorax, i.e. each joint's PCKh weighted by its visible count.

    A joint with no visible instance has no PCKh: it is NaN (the official code's mean over an empty
    set, and the 0/0 of the HRNet/SimpleBaseline re-implementation), and so is the column that
    averages it. It weighs nothing in ``Mean``, which stays finite (as the official MATLAB pools the
    joints' distances; HRNet's code would turn it NaN); ``Mean`` is NaN only when no joint is visible.
    """
    predictions = np.asarray(predictions, dtype=np.float64)
    ground_truth = np.asarray(ground_truth, dtype=np.float64)
    visible = np.asarray(visible)
    head_boxes = np.asarray(head_boxes, dtype=np.float64)
    _check_shape("predictions", predictions, (None, 16, 2), "x, y of MPII's 16 joints per person")
    n = len(predictions)
    _check_shape("ground_truth", ground_truth, (n, 16, 2), "x, y of MPII's 16 joints per person, as predictions")
    _check_shape("visible", visible, (n, 16), "whether each joint is annotated")
    _check_shape("head_boxes", head_boxes, (n, 2, 2), "two opposite corners [[x1, y1], [x2, y2]] per person")
    if not 0 < threshold < np.inf:
        raise ValueError(f"pckh: threshold must be a positive number (of head sizes), not {threshold!r}")
    visible = visible.astype(bool)
    head_size = SC_BIAS * np.linalg.norm(head_boxes[:, 1] - head_boxes[:, 0], axis=-1)
    bad = np.nonzero(visible.any(-1) & ~(head_size > 0))[0]  # NaN sizes fail "> 0" too
    if len(bad):
        raise ValueError(f"pckh: people {bad[:10].tolist()} have an empty or non-finite head box: no head size")
    if not np.isfinite(ground_truth[visible]).all():
        raise ValueError("pckh: the ground truth of a visible joint is not finite")
    distance = np.linalg.norm(predictions - ground_truth, axis=-1) / np.where(head_size > 0, head_size, 1)[:, None]
    correct = visible & (distance <= threshold)  # a NaN prediction is a miss
    counts = visible.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_joint = 100.0 * correct.sum(0) / counts  # NaN where no instance is visible
    figures = {name: float(np.mean(per_joint[list(joints)])) for name, joints in PCKH_COLUMNS.items()}
    pooled = list(PCKH_MEAN_JOINTS)
    total = counts[pooled].sum()
    figures["Mean"] = float(100.0 * correct[:, pooled].sum() / total) if total else float("nan")
    return figures
