"""Test metrics, one part of a pose system: the data module chooses one for its test split (COCO
keypoint AP for COCO-format data, PCKh for MPII), the LightningModule feeds it decoded keypoints
and gathers its records across ranks.

A metric is built from the test split (``metric(dataset)``), so a data config names it with
Hydra's ``_partial_`` (and any settings of its own).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.table import Table

from evopose_pl.evaluation import PCKH_COLUMNS, STAT_NAMES, evaluate_coco, pckh, results_records
from evopose_pl.files import temporary_sibling


def _as_list(values: Any) -> list:
    return values.tolist() if torch.is_tensor(values) else list(values)


class Metric(ABC):
    """Scores a test split's predictions."""

    #: The table's title.
    title: str = ""
    #: The key of the figure a run reports (and a sweeper can read), and its direction.
    headline: str = ""
    higher_is_better: bool = True

    @abstractmethod
    def records(
        self, batch: Mapping[str, Any], keypoints: np.ndarray, scores: np.ndarray, person_scores: np.ndarray
    ) -> list[dict]:
        """One picklable record per person of a test batch: ``keypoints`` (B, K, 2) in image pixels,
        their ``scores`` (B, K), and each person's confidence (B,) as the codec scores it."""

    @abstractmethod
    def compute(self, records: list[dict], output_dir: Path | None = None) -> dict[str, float]:
        """Every figure by name; the predictions (and figures) are written under ``output_dir`` when given."""

    def table(self, figures: Mapping[str, float]) -> Table:
        """The figures as one printed row (-1 means the split holds no such case)."""
        table = Table(title=self.title)
        for name in figures:
            table.add_column(name, justify="right")
        table.add_row(*(f"{v:.3f}" if v >= 0 else "n/a" for v in figures.values()))
        return table


class CocoKeypointAP(Metric):
    """COCO keypoint AP and AR with pycocotools, over every image of the split's annotation file.

    People are ranked by the codec's person scores (for heatmaps, the reference's rescoring); the
    results are written to ``keypoints_results.json``.
    """

    title = "COCO keypoints"
    headline = "AP"
    results_file = "keypoints_results.json"

    def __init__(self, dataset: Any) -> None:
        self.annotation_file = Path(dataset.annotation_file)

    def records(
        self, batch: Mapping[str, Any], keypoints: np.ndarray, scores: np.ndarray, person_scores: np.ndarray
    ) -> list[dict]:
        return results_records(_as_list(batch["image_id"]), keypoints, scores, person_scores)

    def compute(self, records: list[dict], output_dir: Path | None = None) -> dict[str, float]:
        out = None if output_dir is None else Path(output_dir) / self.results_file
        figures = evaluate_coco(self.annotation_file, records, out)
        return {name: figures[name] for name in STAT_NAMES}


class PCKh(Metric):
    """MPII's PCKh (SPEC-MPII section 3, ``evaluation.pckh``) of the test split's people, at 0.5 and 0.1.

    The ground truth is the split's instances: joints in 0-based image pixels (the predictions are
    in the same coordinates, so nothing is shifted), their visibility and each person's head box (the
    official ``gt_valid.mat``, or inline ``head_box`` fields); a split without head boxes is refused.

    Figures: ``Head, Shoulder, Elbow, Wrist, Hip, Knee, Ankle, Mean`` at 0.5 head sizes (``Mean`` is the
    headline), and the same keys suffixed ``@0.1`` at a true 0.1. The HRNet/SimpleBaseline code reports
    its "Mean@0.1" at 0.11 (index 11 of ``arange(0, 0.51, 0.01)``), so the @0.1 figures published from
    it read a little higher than these. A joint with no visible instance has a NaN PCKh (see
    ``evaluation.pckh``). A person without a prediction counts as missed. The predictions (image, index,
    keypoints, scores) and the figures are written to ``pckh_predictions.json``.
    """

    title = "MPII PCKh"
    headline = "Mean"
    results_file = "pckh_predictions.json"
    #: (threshold, key suffix): PCKh@0.5 (unsuffixed) and PCKh@0.1.
    thresholds = ((0.5, ""), (0.1, "@0.1"))

    def __init__(self, dataset: Any) -> None:
        self.annotation_file = Path(dataset.annotation_file)
        instances = list(dataset.instances)
        wrong = next((inst for inst in instances if inst.keypoints.shape[0] != 16), None)
        if wrong is not None:
            raise ValueError(
                f"PCKh scores MPII's 16 joints; {self.annotation_file} has {wrong.keypoints.shape[0]} keypoints"
            )
        missing = [inst for inst in instances if inst.head_box is None]
        if missing:
            raise ValueError(
                f"PCKh needs every person's head box, but {len(missing)} of the {len(instances)} people of "
                f"{self.annotation_file} have none (the first: {missing[0].record or missing[0].image_path}): give the "
                "official ground truth (data.head_boxes: gt_valid.mat) or 'head_box' fields in the annotations"
            )
        self.images = [inst.image_path.name for inst in instances]
        self.ground_truth = np.array([inst.keypoints[:, :2] for inst in instances], dtype=np.float64).reshape(-1, 16, 2)
        self.visible = np.array([inst.keypoints[:, 2] > 0 for inst in instances], dtype=bool).reshape(-1, 16)
        self.head_boxes = np.array([inst.head_box for inst in instances], dtype=np.float64).reshape(-1, 2, 2)

    def records(
        self, batch: Mapping[str, Any], keypoints: np.ndarray, scores: np.ndarray, person_scores: np.ndarray
    ) -> list[dict]:
        return [
            {"index": int(i), "keypoints": np.asarray(k, float).tolist(), "scores": np.asarray(s, float).tolist()}
            for i, k, s in zip(_as_list(batch["index"]), keypoints, scores)
        ]

    def compute(self, records: list[dict], output_dir: Path | None = None) -> dict[str, float]:
        n = len(self.ground_truth)
        predictions = np.full((n, 16, 2), np.nan)
        scores = np.zeros((n, 16))
        predicted = np.zeros(n, dtype=bool)
        for record in records:
            i = int(record["index"])
            if not 0 <= i < n:
                raise ValueError(f"PCKh: a prediction for person {i}, but {self.annotation_file} holds {n} people")
            if not predicted[i]:  # a distributed sampler repeats people to even out the ranks
                predicted[i] = True
                predictions[i], scores[i] = record["keypoints"], record["scores"]
        figures = {}
        for threshold, suffix in self.thresholds:
            figures.update({f"{name}{suffix}": value for name, value in self._pckh(predictions, threshold).items()})
        if output_dir is not None:
            self._write(Path(output_dir) / self.results_file, figures, predictions, scores, predicted)
        return figures

    def _pckh(self, predictions: np.ndarray, threshold: float) -> dict[str, float]:
        return pckh(predictions, self.ground_truth, self.visible, self.head_boxes, threshold)

    def _write(self, path: Path, figures, predictions, scores, predicted) -> None:
        data = {
            "annotations": str(self.annotation_file),
            "figures": {k: (None if np.isnan(v) else round(v, 4)) for k, v in figures.items()},
            "people": len(predicted),
            "predicted": int(predicted.sum()),
            "predictions": [
                {
                    "image": self.images[i],
                    "index": int(i),
                    "keypoints": predictions[i].round(2).tolist(),
                    "scores": scores[i].round(4).tolist(),
                }  # fmt: skip
                for i in np.nonzero(predicted)[0]
            ],
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary_sibling(path)
        tmp.write_text(json.dumps(data))
        tmp.replace(path)

    def table(self, figures: Mapping[str, float]) -> Table:
        """Two rows, PCKh@0.5 and PCKh@0.1, of the columns Head ... Mean (n/a: no visible instance)."""
        table = Table(title=self.title)
        table.add_column("")
        columns = [*PCKH_COLUMNS, "Mean"]
        for name in columns:
            table.add_column(name, justify="right")
        for threshold, suffix in self.thresholds:
            values = [figures.get(f"{name}{suffix}", float("nan")) for name in columns]
            table.add_row(f"PCKh@{threshold:g}", *("n/a" if np.isnan(v) else f"{v:.1f}" for v in values))
        return table
