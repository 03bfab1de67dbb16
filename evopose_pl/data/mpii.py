"""MPII Human Pose annotations (SPEC-MPII sections 1 and 2), read into the ``Instance`` records the COCO
reader gives, so the top-down dataset, augmentation and the crop cache serve both formats unchanged.

The format is the json of the SimpleBaseline/HRNet/mmpose tools: a list of person records
``{"image", "center", "scale", "joints", "joints_vis"}`` in MATLAB's 1-based pixels, optionally with an
inline ``"head_box": [x1, y1, x2, y2]`` (what the embedded synthetic MPII data writes). Everything is
read 0-based: 1 is subtracted from joints, centres and head boxes, as the common loaders do.

The crop follows MPII's convention: the centre moves down by 15 x scale and the person box is a
square of side 200 x scale; the crop then pads it by 1.25 and fits it to the input's aspect ratio like
any box (``transforms.box_to_center_scale``), so a square input sees 250 x scale pixels.

PCKh needs head boxes, which the json of the validation split does not hold: ``head_boxes`` names the
official ground-truth file (``gt_valid.mat``: ``headboxes_src`` [2 x 2 x N], ``pos_gt_src``
[16 x 2 x N], ``jnt_missing`` [16 x N]), matched to the json's records by order. Its joints and
visibility then replace the json's, as the official evaluation scores against them.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np

from evopose_pl.data.coco import AnnotationError, Instance, KeypointInfo, _finite_number, _read_json

MPII_KEYPOINTS = (
    "r_ankle", "r_knee", "r_hip", "l_hip", "l_knee", "l_ankle", "pelvis", "thorax",
    "upper_neck", "head_top", "r_wrist", "r_elbow", "r_shoulder", "l_shoulder", "l_elbow", "l_wrist",
)  # fmt: skip
# 0-based: ankle-knee-hip on each side, hips-pelvis-thorax-upper_neck-head_top, wrist-elbow-shoulder-thorax.
MPII_SKELETON = (
    (0, 1), (1, 2), (2, 6), (5, 4), (4, 3), (3, 6), (6, 7), (7, 8), (8, 9),
    (10, 11), (11, 12), (12, 7), (15, 14), (14, 13), (13, 7),
)  # fmt: skip
MPII_KEYPOINT_INFO = KeypointInfo(MPII_KEYPOINTS, MPII_SKELETON)
#: MPII's scale is the person's size in units of 200 pixels.
PIXEL_STD = 200.0
#: The loaders move the centre down by 15 x scale, "to avoid cropping limbs".
CENTER_SHIFT = 15.0
_FIELDS = ("image", "center", "scale", "joints", "joints_vis")
_MAT_FIELDS = {"headboxes_src": "(2, 2, N)", "pos_gt_src": "(16, 2, N)", "jnt_missing": "(16, N)"}


def mpii_box(center: tuple[float, float], scale: float) -> tuple[float, float, float, float]:
    """The person box (x, y, w, h) of an MPII centre (0-based) and scale: centre y moved down by
    15 x scale, a square of side 200 x scale (the crop pads it by 1.25)."""
    side = PIXEL_STD * scale
    cx, cy = center[0], center[1] + CENTER_SHIFT * scale
    return (cx - side / 2, cy - side / 2, side, side)


def _numbers(value: object, shape: tuple[int, ...]) -> np.ndarray | None:
    """``value`` as a float array of ``shape`` when it is one, of finite numbers; else None."""
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if array.shape != shape or not np.isfinite(array).all():
        return None
    return array


class MpiiAnnotations:
    """An MPII annotation json (a list of person records) and, optionally, the official head boxes.

    Every record is a person instance, in the file's order (``index`` in a split is the record's index,
    which is also how the official ``.mat`` is matched); nothing is skipped. Malformed records are
    refused with the file and the record's index named; so is a ``.mat`` whose person count differs
    from the json's, or whose people are not the json's (visible joints more than a head size apart).
    """

    def __init__(
        self,
        annotation_file: str | os.PathLike,
        images_dir: str | os.PathLike,
        head_boxes: str | os.PathLike | None = None,
    ) -> None:
        self.annotation_file = Path(annotation_file)
        self.images_dir = Path(images_dir)
        self.head_boxes_file = None if head_boxes is None else Path(head_boxes)
        self.keypoint_info = MPII_KEYPOINT_INFO
        self.skipped: Counter[str] = Counter()  # MPII keeps every record
        data = _read_json(self.annotation_file, "annotation file")
        if not isinstance(data, list):
            raise AnnotationError(
                f"{self.annotation_file}: holds a {type(data).__name__}, not an MPII annotation list (one "
                "{image, center, scale, joints, joints_vis} record per person)"
            )
        self._image_ids: dict[str, int] = {}
        self.instances = [self._instance(i, record) for i, record in enumerate(data)]
        if self.head_boxes_file is not None:
            self.instances = self._official_ground_truth(self.head_boxes_file)

    @property
    def num_keypoints(self) -> int:
        return self.keypoint_info.num_keypoints

    @property
    def files(self) -> tuple[Path, ...]:
        """The files the instances are read from (what a crop cache depends on)."""
        return (self.annotation_file,) + (() if self.head_boxes_file is None else (self.head_boxes_file,))

    def skip_summary(self) -> str:
        return "none skipped"

    def detections(self, detections_file: str | os.PathLike, box_threshold: float = 0.0) -> list[Instance]:
        raise AnnotationError(
            f"detections file {detections_file}: MPII ({self.annotation_file}) is tested on its annotated people "
            "(centre and scale), not on a detector's boxes: set test_detections to null"
        )

    def _instance(self, index: int, record: object) -> Instance:
        where = f"{self.annotation_file} [{index}]"
        if not isinstance(record, dict):
            raise AnnotationError(f"{where}: not an object")
        name = record.get("image")
        where = f"{where} (image {name})" if isinstance(name, str) else where
        missing = [key for key in _FIELDS if key not in record]
        if missing:
            raise AnnotationError(f"{where}: has no {', '.join(map(repr, missing))}; an MPII record needs "
                                  f"{', '.join(_FIELDS)}")  # fmt: skip
        if not isinstance(name, str) or not name:
            raise AnnotationError(f"{where}: 'image' must be a file name, not {name!r}")
        center = _numbers(record["center"], (2,))
        if center is None:
            raise AnnotationError(f"{where}: 'center' must be [x, y], finite numbers, not {record['center']!r}")
        scale = record["scale"]
        if not _finite_number(scale) or scale <= 0:
            raise AnnotationError(f"{where}: 'scale' must be a positive number (person size / 200 px), not {scale!r}")
        joints = _numbers(record["joints"], (self.num_keypoints, 2))
        if joints is None:
            raise AnnotationError(
                f"{where}: 'joints' must hold {self.num_keypoints} [x, y] pairs of finite numbers (MPII's joints)"
            )
        visible = _numbers(record["joints_vis"], (self.num_keypoints,))
        if visible is None:
            raise AnnotationError(f"{where}: 'joints_vis' must hold {self.num_keypoints} numbers (1 annotated, 0 not)")
        head_box = None
        if record.get("head_box") is not None:
            box = _numbers(record["head_box"], (4,))
            if box is None or not math.hypot(box[2] - box[0], box[3] - box[1]) > 0:
                raise AnnotationError(
                    f"{where}: 'head_box' must be [x1, y1, x2, y2], finite numbers, two distinct corners, "
                    f"not {record['head_box']!r}"
                )
            head_box = tuple(float(v) - 1 for v in box)
        keypoints = np.zeros((self.num_keypoints, 3), np.float32)
        keypoints[:, :2] = joints - 1  # MATLAB's 1-based pixels
        keypoints[:, 2] = visible > 0
        image_id = self._image_ids.setdefault(name, len(self._image_ids))
        box = mpii_box((float(center[0]) - 1, float(center[1]) - 1), float(scale))
        return Instance(image_id, self.images_dir / name, box, keypoints, 1.0, where, head_box)

    def _official_ground_truth(self, path: Path) -> list[Instance]:
        """The instances with the official file's head boxes, joints and visibility, matched by order."""
        head_boxes, joints, visible = read_official_ground_truth(path)
        if len(head_boxes) != len(self.instances):
            raise AnnotationError(
                f"head boxes file {path} holds {len(head_boxes)} people but {self.annotation_file} holds "
                f"{len(self.instances)} records: they are matched by order, so both must list the same people"
            )
        instances = []
        for i, inst in enumerate(self.instances):
            head_size = 0.6 * np.linalg.norm(head_boxes[i, 1] - head_boxes[i, 0])
            if visible[i].any() and not head_size > 0:
                raise AnnotationError(f"head boxes file {path}: person {i} has an empty head box")
            both = visible[i] & (inst.keypoints[:, 2] > 0)
            if both.any():
                distance = np.linalg.norm(joints[i][both] - inst.keypoints[both, :2], axis=-1)
                if np.median(distance) > head_size:
                    raise AnnotationError(
                        f"head boxes file {path}: person {i} is not {inst.record} (their joints lie "
                        f"{np.median(distance):.0f} px apart, more than a head size): the file and the annotations "
                        "are matched by order, so both must list the same people in the same order"
                    )
            keypoints = np.zeros_like(inst.keypoints)
            keypoints[:, :2] = np.where(visible[i][:, None], joints[i], inst.keypoints[:, :2])
            keypoints[:, 2] = visible[i]
            head_box = (*head_boxes[i, 0], *head_boxes[i, 1])
            instances.append(replace(inst, keypoints=keypoints, head_box=tuple(float(v) for v in head_box)))
        return instances


def read_official_ground_truth(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The official MPII ground truth (``gt_valid.mat``) 0-based: head boxes (N, 2, 2) as two corners,
    joints (N, 16, 2) and visibility (N, 16) (``1 - jnt_missing``)."""
    path = Path(path)
    try:
        from scipy.io import loadmat
    except ImportError as error:  # pragma: no cover - scipy is a dependency
        raise ImportError(f"reading the head boxes file {path} needs scipy: pip install scipy") from error
    try:
        mat = loadmat(str(path))
    except FileNotFoundError:
        raise FileNotFoundError(f"head boxes file {path} does not exist") from None
    except Exception as error:  # scipy raises ValueError, TypeError, OSError... for what is not a .mat file
        raise AnnotationError(f"head boxes file {path}: not a MATLAB .mat file ({error})") from error
    missing = [key for key in _MAT_FIELDS if key not in mat]
    if missing:
        raise AnnotationError(
            f"head boxes file {path}: has no {', '.join(map(repr, missing))}; the official MPII ground truth holds "
            + ", ".join(f"{key} {shape}" for key, shape in _MAT_FIELDS.items())
        )
    arrays = {}
    for key, trailing in (("headboxes_src", 3), ("pos_gt_src", 3), ("jnt_missing", 2)):
        try:
            array = np.asarray(mat[key], dtype=np.float64)
        except (TypeError, ValueError):
            array = np.zeros(0)
        if array.ndim == trailing - 1:  # MATLAB drops a trailing dimension of 1: a single person
            array = array[..., None]
        arrays[key] = array
    n = arrays["headboxes_src"].shape[-1] if arrays["headboxes_src"].ndim == 3 else -1
    expected = {"headboxes_src": (2, 2, n), "pos_gt_src": (16, 2, n), "jnt_missing": (16, n)}
    for key, shape in expected.items():
        if arrays[key].shape != shape:
            raise AnnotationError(
                f"head boxes file {path}: {key!r} has shape {arrays[key].shape}, expected {_MAT_FIELDS[key]}"
                + (f" with N = {n} (as headboxes_src)" if n >= 0 else "")
            )
    if not np.isfinite(arrays["headboxes_src"]).all():
        raise AnnotationError(f"head boxes file {path}: 'headboxes_src' holds numbers that are not finite")
    visible = arrays["jnt_missing"].T == 0
    joints = arrays["pos_gt_src"].transpose(2, 0, 1) - 1
    bad = np.nonzero((visible & ~np.isfinite(joints).all(-1)).any(-1))[0]
    if len(bad):
        raise AnnotationError(f"head boxes file {path}: 'pos_gt_src' of people {bad[:10].tolist()} is not finite")
    return arrays["headboxes_src"].transpose(2, 0, 1) - 1, np.nan_to_num(joints), visible
