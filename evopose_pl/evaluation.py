"""COCO keypoint evaluation with pycocotools (SPEC section 8)."""

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


def rescore(box_scores: np.ndarray, keypoint_scores: np.ndarray, threshold: float = 0.2) -> np.ndarray:
    """Instance score: box score x mean of the keypoint scores above ``threshold`` (0 if none are)."""
    above = keypoint_scores > threshold
    mean = np.where(above.any(-1), (keypoint_scores * above).sum(-1) / np.maximum(above.sum(-1), 1), 0.0)
    return box_scores * mean


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
