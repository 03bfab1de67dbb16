"""COCO-format keypoint annotations: the keypoint set, valid person instances, and detections."""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from evopose_pl.files import FileFormatError, read_json

_LOWER_BODY = {"hip", "knee", "ankle", "pelvis", "foot", "heel", "toe", "hips", "knees", "ankles"}
_SIDES = {"left": "right", "right": "left", "l": "r", "r": "l"}


class AnnotationError(ValueError):
    """A malformed annotation or detections file; the message names the file and the record."""


#: Why a well-formed annotation is not a training instance, as ``CocoKeypoints.skipped`` counts it.
SKIP_REASONS = ("crowd", "no labelled keypoint", "empty box or area <= 0")


def _finite_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _read_json(path: Path, what: str) -> object:
    """``read_json`` with this module's errors: a missing file named as ``what``, any other bad file
    as an ``AnnotationError`` (so callers catching it, or ValueError, see binary data and folders too)."""
    try:
        return read_json(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {path} does not exist") from None
    except FileFormatError as error:
        raise AnnotationError(f"{what} {error}") from error


@dataclass(frozen=True)
class KeypointInfo:
    """The dataset's keypoint set, read from its person category."""

    names: tuple[str, ...]
    skeleton: tuple[tuple[int, int], ...] = ()

    @property
    def num_keypoints(self) -> int:
        return len(self.names)

    @property
    def flip_index(self) -> tuple[int, ...]:
        """For each keypoint, its mirror image's index (itself when it has no side)."""
        index = {name: i for i, name in enumerate(self.names)}
        return tuple(index.get(_mirror(name), i) for i, name in enumerate(self.names))

    @property
    def upper_body(self) -> tuple[int, ...]:
        """Keypoints above the hips, for half-body augmentation."""
        return tuple(i for i, n in enumerate(self.names) if not set(_tokens(n)) & _LOWER_BODY)


def _tokens(name: str) -> list[str]:
    return [t for t in re.split(r"[^a-z0-9]+", name.lower()) if t]


def _mirror(name: str) -> str:
    """``left_eye`` -> ``right_eye``, ``l_ankle`` -> ``r_ankle``; separators are kept."""
    parts = re.split(r"([^A-Za-z0-9]+)", name)
    return "".join(_SIDES.get(p.lower(), p) for p in parts)


@dataclass(frozen=True)
class Instance:
    """One person to crop: its image, box, keypoints (K, 3) in image pixels (0-based; visibility > 0 where
    labelled), and box score; MPII people also carry their head box."""

    image_id: int
    image_path: Path
    box: tuple[float, float, float, float]  # x, y, w, h
    keypoints: np.ndarray
    score: float = 1.0
    record: str = ""  # where it came from, for error messages
    head_box: tuple[float, float, float, float] | None = None  # x1, y1, x2, y2 in image pixels (MPII's PCKh)


class CocoKeypoints:
    """A COCO keypoint annotation file: images, the person category and valid instances.

    Valid instances follow the reference pipeline: not crowd, at least one labelled keypoint,
    and a box that is non-empty once clipped to the image. The others are counted by reason in
    ``skipped``, so a user sees what was left out. Malformed records are refused, not skipped:
    a missing or non-finite ``area`` (COCO evaluation needs it), a negative or non-finite box, a
    non-finite keypoint.
    """

    def __init__(self, annotation_file: str | os.PathLike, images_dir: str | os.PathLike) -> None:
        self.annotation_file = Path(annotation_file)
        self.images_dir = Path(images_dir)
        data = _read_json(self.annotation_file, "annotation file")
        if not isinstance(data, dict):
            raise AnnotationError(
                f"{self.annotation_file}: holds a {type(data).__name__}, not a COCO object (images, annotations, ...)"
            )
        for key in ("images", "annotations", "categories"):
            if not isinstance(data.get(key), list):
                raise AnnotationError(f"{self.annotation_file}: the COCO field {key!r} is missing or not a list")
        self.keypoint_info = self._person_category(data["categories"])
        self.images: dict[int, dict] = {}
        for i, image in enumerate(data["images"]):
            if not isinstance(image, dict) or not {"id", "file_name", "width", "height"} <= image.keys():
                raise AnnotationError(
                    f"{self.annotation_file}: images[{i}] needs id, file_name, width and height, got {image!r}"
                )
            self.images[int(image["id"])] = image
        self.skipped: Counter[str] = Counter()
        self.instances = [
            inst for i, ann in enumerate(data["annotations"]) if (inst := self._instance(i, ann)) is not None
        ]

    @property
    def num_keypoints(self) -> int:
        return self.keypoint_info.num_keypoints

    def skip_summary(self) -> str:
        """The skipped annotations by reason, for logs and errors: ``skipped 3 crowd, 2 no labelled keypoint``."""
        counts = [f"{self.skipped[reason]} {reason}" for reason in SKIP_REASONS if self.skipped[reason]]
        return f"skipped {', '.join(counts)}" if counts else "none skipped"

    def image_path(self, image_id: int) -> Path:
        return self.images_dir / self.images[image_id]["file_name"]

    def _person_category(self, categories: list) -> KeypointInfo:
        for category in categories:
            if isinstance(category, dict) and category.get("keypoints"):
                skeleton = tuple(tuple(int(j) - 1 for j in pair) for pair in category.get("skeleton", []))
                return KeypointInfo(tuple(str(n) for n in category["keypoints"]), skeleton)
        raise AnnotationError(f"{self.annotation_file}: no category lists keypoint names")

    def _instance(self, index: int, ann: dict) -> Instance | None:
        k = self.num_keypoints
        record = (
            f"{self.annotation_file} annotations[{index}] (id {ann.get('id', '?') if isinstance(ann, dict) else '?'})"
        )
        if not isinstance(ann, dict):
            raise AnnotationError(f"{record}: not an object")
        if not _finite_number(ann.get("area")):
            found = f": 'area' is {ann['area']!r}" if "area" in ann else " has no 'area'"
            raise AnnotationError(
                f"{record}{found}; every annotation needs a finite number 'area': pycocotools' COCO evaluation reads "
                "it for every ground-truth annotation, crowd ones included (OKS divides by it)"
            )
        if ann.get("iscrowd", 0):
            self.skipped["crowd"] += 1
            return None
        keypoints, box = ann.get("keypoints"), ann.get("bbox")
        if not isinstance(keypoints, list) or len(keypoints) != 3 * k:
            raise AnnotationError(f"{record}: 'keypoints' must hold {3 * k} numbers (x, y, v per keypoint)")
        if not isinstance(box, list) or len(box) != 4:
            raise AnnotationError(f"{record}: 'bbox' must be [x, y, width, height]")
        image = self.images.get(ann.get("image_id"))
        if image is None:
            raise AnnotationError(f"{record}: image_id {ann.get('image_id')!r} is not in 'images'")
        try:
            kp = np.asarray(keypoints, dtype=np.float32).reshape(k, 3)
            x, y, w, h = (float(v) for v in box)
        except (TypeError, ValueError) as error:
            raise AnnotationError(f"{record}: non-numeric keypoints or bbox ({error})") from error
        if not all(math.isfinite(v) for v in (x, y, w, h)):
            raise AnnotationError(f"{record}: 'bbox' {box} holds a number that is not finite")
        if w < 0 or h < 0:
            raise AnnotationError(f"{record}: 'bbox' {box} has a negative width or height")
        if not np.isfinite(kp).all():
            bad = sorted({int(i) for i in np.nonzero(~np.isfinite(kp))[0]})
            raise AnnotationError(f"{record}: 'keypoints' holds numbers that are not finite (keypoints {bad})")
        if kp[:, 2].max() <= 0:
            self.skipped["no labelled keypoint"] += 1
            return None
        width, height = float(image["width"]), float(image["height"])
        x1, y1 = max(0.0, x), max(0.0, y)
        x2, y2 = min(width - 1, x1 + max(0.0, w - 1)), min(height - 1, y1 + max(0.0, h - 1))
        if ann["area"] <= 0 or x2 < x1 or y2 < y1:
            self.skipped["empty box or area <= 0"] += 1
            return None
        return Instance(int(image["id"]), self.image_path(image["id"]), (x1, y1, x2 - x1, y2 - y1), kp, 1.0, record)

    @property
    def files(self) -> tuple[Path, ...]:
        """The files the instances are read from (what a crop cache depends on)."""
        return (self.annotation_file,)

    def detections(self, detections_file: str | os.PathLike, box_threshold: float = 0.0) -> list[Instance]:
        """Person boxes from a detections JSON (COCO results format) scoring at least ``box_threshold``,
        as test instances."""
        empty = np.zeros((self.num_keypoints, 3), np.float32)
        instances = []
        for det in read_detections(detections_file, box_threshold):
            if det.image_id not in self.images:
                raise AnnotationError(f"{det.record}: image_id {det.image_id} is not in {self.annotation_file}")
            instances.append(
                Instance(det.image_id, self.image_path(det.image_id), det.box, empty, det.score, det.record)
            )
        return instances


class Detection(NamedTuple):
    image_id: int
    box: tuple[float, float, float, float]  # x, y, w, h
    score: float
    record: str  # file and index, for error messages


def read_detections(detections_file: str | os.PathLike, box_threshold: float = 0.0) -> list[Detection]:
    """Person boxes of a detections JSON (COCO results format: image_id, bbox, score), above the threshold."""
    path = Path(detections_file)
    detections = _read_json(path, "detections file")
    if not isinstance(detections, list):
        raise AnnotationError(f"{path}: a detections file is a list of {{image_id, bbox, score}}")
    found = []
    for i, det in enumerate(detections):
        record = f"{path} [{i}]"
        if not isinstance(det, dict) or not {"image_id", "bbox", "score"} <= det.keys():
            raise AnnotationError(f"{record}: needs image_id, bbox and score")
        if det.get("category_id", 1) != 1:
            continue
        box, score = det["bbox"], det["score"]
        if not isinstance(box, list) or len(box) != 4 or not all(_finite_number(v) for v in box):
            raise AnnotationError(f"{record}: 'bbox' must be [x, y, width, height], finite numbers, not {box!r}")
        if not _finite_number(score):
            raise AnnotationError(f"{record}: 'score' must be a finite number, not {score!r}")
        if score >= box_threshold and box[2] > 0 and box[3] > 0:
            found.append(Detection(int(det["image_id"]), tuple(float(v) for v in box), float(score), record))
    return found
