"""An embedded synthetic keypoint dataset, COCO- and MPII-format, so everything runs with no download.

Each image holds 1-3 articulated stick figures facing the camera (so a person's left side is
on the image's right, as in most of COCO), with the 17 COCO keypoints in anatomical order and
plausible joint angles, drawn over noisy, textured backgrounds. People vary in scale, position
and colour; some overlap, some are cut by the image border or hidden behind an occluder.
Visibility is honest: 2 where the joint is seen, 1 where something drawn later covers it, 0
(with zero coordinates) outside the image. Generation is deterministic in the seed.

The same people are also written in MPII's format (``mpii_train.json``, ``mpii_val.json``: MPII's 16
joints in its 1-based pixels, ``center`` and ``scale``, and an inline ``head_box``), the four joints
COCO lacks taken from the figure's geometry: pelvis and thorax between the hips and the shoulders,
upper_neck and head_top where the neck line and the vertical meet the drawn head's ellipse, and the
head box around that ellipse. As in the real annotations, ``scale`` x 200 is 6 head segments
(upper_neck to head_top); ``center`` is the middle of the joints less 15 x scale in y (the loaders add
it back), and an MPII joint is annotated (``joints_vis`` 1) wherever it lies in the image, else it is
``[-1, -1]`` with ``joints_vis`` 0.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

COCO_KEYPOINTS = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)  # fmt: skip
COCO_SKELETON = (
    (16, 14),
    (14, 12),
    (17, 15),
    (15, 13),
    (12, 13),
    (6, 12),
    (7, 13),
    (6, 7),
    (6, 8),
    (7, 9),
    (8, 10),
    (9, 11),
    (2, 3),
    (1, 2),
    (1, 3),
    (2, 4),
    (3, 5),
    (4, 6),
    (5, 7),
)  # fmt: skip (1-based, as in COCO)
_LIMBS = ((5, 7), (7, 9), (6, 8), (8, 10), (11, 13), (13, 15), (12, 14), (14, 16))


# COCO keypoint -> MPII joint, for the joints both sets have (MPII's order; -1: from the figure's geometry).
_COCO_FOR_MPII = (16, 14, 12, 11, 13, 15, -1, -1, -1, -1, 10, 8, 6, 5, 7, 9)
#: Bumped whenever the generated files change, so that a cached dataset of an older generator is not reused
#: (2: MPII-format annotations beside the COCO ones).
GENERATOR_VERSION = 2


@dataclass(frozen=True)
class SyntheticConfig:
    """Sizes of the generated dataset; a change of any field generates a new dataset. The defaults are
    those of ``conf/data/synthetic.yaml``."""

    train_images: int = 2000
    val_images: int = 100
    image_size: tuple[int, int] = (256, 320)  # height, width
    min_height: float = 0.35  # person height as a fraction of the image height
    max_height: float = 0.9
    seed: int = 0

    def key(self) -> str:
        blob = json.dumps({**asdict(self), "generator": GENERATOR_VERSION}, sort_keys=True).encode()
        return hashlib.sha1(blob).hexdigest()[:10]


@dataclass(frozen=True)
class SyntheticPaths:
    root: Path

    @property
    def train_annotations(self) -> Path:
        return self.root / "annotations" / "person_keypoints_train.json"

    @property
    def val_annotations(self) -> Path:
        return self.root / "annotations" / "person_keypoints_val.json"

    @property
    def val_detections(self) -> Path:
        return self.root / "annotations" / "person_detections_val.json"

    @property
    def mpii_train_annotations(self) -> Path:
        return self.root / "annotations" / "mpii_train.json"

    @property
    def mpii_val_annotations(self) -> Path:
        return self.root / "annotations" / "mpii_val.json"

    def images(self, split: str) -> Path:
        return self.root / "images" / split


def ensure_synthetic(cache_dir: str | os.PathLike, config: SyntheticConfig | None = None) -> SyntheticPaths:
    """The dataset for ``config`` under ``cache_dir``, generated on first use and reused after.

    Generation writes to a temporary folder renamed into place when complete, so an interrupted
    run never leaves a half-written dataset behind.
    """
    config = config or SyntheticConfig()
    paths = SyntheticPaths(Path(cache_dir) / f"synthetic-{config.key()}")
    if (paths.root / "config.json").exists():
        return paths
    tmp = paths.root.with_name(paths.root.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    generate(tmp, config)
    try:
        tmp.rename(paths.root)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return paths


def generate(root: str | os.PathLike, config: SyntheticConfig) -> SyntheticPaths:
    """Write images, COCO and MPII annotations for train and val, and val person detections under ``root``."""
    paths = SyntheticPaths(Path(root))
    (paths.root / "annotations").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(config.seed)
    categories = [
        {
            "id": 1,
            "name": "person",
            "supercategory": "person",
            "keypoints": list(COCO_KEYPOINTS),
            "skeleton": [list(p) for p in COCO_SKELETON],
        }
    ]
    image_id, ann_id = 1, 1
    for split, count in (("train", config.train_images), ("val", config.val_images)):
        folder = paths.images(split)
        folder.mkdir(parents=True, exist_ok=True)
        images, annotations, detections, mpii = [], [], [], []
        for _ in range(count):
            image, people = _draw_image(rng, config)
            name = f"{image_id:08d}.jpg"
            cv2.imwrite(str(folder / name), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
            h, w = image.shape[:2]
            images.append({"id": image_id, "file_name": name, "width": w, "height": h})
            for keypoints, box, area, figure in people:
                mpii.append(_mpii_record(name, figure, (h, w)))
                annotations.append(
                    {
                        "id": ann_id,
                        "image_id": image_id,
                        "category_id": 1,
                        "keypoints": keypoints.reshape(-1).round(2).tolist(),
                        "num_keypoints": int((keypoints[:, 2] > 0).sum()),
                        "bbox": [round(float(v), 2) for v in box],
                        "area": float(area),
                        "iscrowd": 0,
                    }
                )
                ann_id += 1
                detections.append(_jitter(box, (h, w), rng, image_id))
            for _ in range(rng.poisson(0.3)):  # false positives
                detections.append(_false_positive((h, w), rng, image_id))
            image_id += 1
        data = {"images": images, "annotations": annotations, "categories": categories}
        (paths.root / "annotations" / f"person_keypoints_{split}.json").write_text(json.dumps(data))
        (paths.root / "annotations" / f"mpii_{split}.json").write_text(json.dumps(mpii))
        if split == "val":
            paths.val_detections.write_text(json.dumps(detections))
    (paths.root / "config.json").write_text(json.dumps(asdict(config), indent=2))
    return paths


def _pose(rng: np.random.Generator, height: float, center: np.ndarray) -> np.ndarray:
    """The 17 COCO keypoints (x, y) of a front-facing figure ``height`` pixels tall."""
    u = height / 8.0  # head units
    lean = rng.normal(0, 0.08)
    up = np.array([math.sin(lean), -math.cos(lean)])
    side = np.array([-up[1], up[0]])  # the image's right: the person's left
    pelvis = center + up * 0.2 * u
    neck = pelvis + up * 2.9 * u
    head = neck + up * 0.9 * u + side * rng.normal(0, 0.1) * u
    pts = np.zeros((17, 2))
    tilt = rng.normal(0, 0.1)
    pts[0] = head + np.array([math.sin(tilt), math.cos(tilt)]) * 0.1 * u
    for i, s in ((1, 1), (2, -1)):
        pts[i] = head + side * s * 0.22 * u - up * 0.15 * u
    for i, s in ((3, 1), (4, -1)):
        pts[i] = head + side * s * 0.45 * u - up * 0.05 * u
    shoulder, hip = 0.9 * u, 0.55 * u
    pts[5], pts[6] = neck + side * shoulder - up * 0.2 * u, neck - side * shoulder - up * 0.2 * u
    pts[11], pts[12] = pelvis + side * hip, pelvis - side * hip

    def limb(start: np.ndarray, s: float, base: float, spread: float, bend: float, l1: float, l2: float):
        a1 = base + rng.uniform(-spread, spread)
        d1 = -up * math.cos(a1) + side * s * math.sin(a1)
        joint = start + d1 * l1
        a2 = a1 + s * rng.uniform(0, bend) * rng.choice([-1, 1])
        d2 = -up * math.cos(a2) + side * s * math.sin(a2)
        return joint, joint + d2 * l2

    for s, (sh, el, wr) in ((1, (5, 7, 9)), (-1, (6, 8, 10))):
        pts[el], pts[wr] = limb(pts[sh], s, 0.5, 0.9, 2.0, 1.45 * u, 1.25 * u)
    for s, (hp, kn, an) in ((1, (11, 13, 15)), (-1, (12, 14, 16))):
        pts[kn], pts[an] = limb(pts[hp], s, 0.12, 0.3, 0.9, 1.9 * u, 1.8 * u)
    return pts


def _background(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    t = np.linspace(0, 1, w if rng.random() < 0.5 else h)
    ramp = a + (b - a) * t[:, None]
    image = np.broadcast_to(ramp[None] if len(t) == w else ramp[:, None], (h, w, 3)).copy()
    for _ in range(rng.integers(3, 12)):  # texture: lines, boxes, blobs
        colour = rng.uniform(0, 255, 3).tolist()
        p = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        q = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        kind = rng.integers(3)
        if kind == 0:
            cv2.line(image, p, q, colour, int(rng.integers(1, 6)))
        elif kind == 1:
            cv2.rectangle(image, p, q, colour, -1 if rng.random() < 0.3 else 2)
        else:
            cv2.circle(image, p, int(rng.integers(4, 30)), colour, -1)
    image += rng.normal(0, rng.uniform(3, 18), image.shape)
    return image


def _draw_person(canvas: np.ndarray, mask: np.ndarray, pts: np.ndarray, height: float, rng: np.random.Generator):
    """Draw body parts on ``canvas`` and the silhouette on ``mask``."""
    u = height / 8.0
    skin = rng.uniform(60, 240, 3)
    shirt, trousers = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    thick = max(2, int(0.38 * u))
    torso = np.array([pts[5], pts[6], pts[12], pts[11]]).round().astype(np.int32)
    # The same shapes go on the canvas in colour and on the mask as 1.
    for target, paint in ((canvas, lambda rgb: rgb.tolist()), (mask, lambda rgb: 1)):
        cv2.fillConvexPoly(target, torso, paint(shirt))
        for i, (a, b) in enumerate(_LIMBS):
            part = shirt if i < 4 else trousers
            cv2.line(target, tuple(pts[a].round().astype(int)), tuple(pts[b].round().astype(int)), paint(part), thick)
        neck = tuple(((pts[5] + pts[6]) / 2).round().astype(int))
        head = tuple(((pts[3] + pts[4]) / 2).round().astype(int))
        cv2.line(target, neck, head, paint(skin), thick)
        cv2.ellipse(target, head, (int(0.55 * u), int(0.7 * u)), 0, 0, 360, paint(skin), -1)
    for i in (1, 2):  # eyes and nose give the face a front
        cv2.circle(canvas, tuple(pts[i].round().astype(int)), max(1, int(0.08 * u)), (20, 20, 20), -1)
    cv2.circle(canvas, tuple(pts[0].round().astype(int)), max(1, int(0.07 * u)), (40, 40, 160), -1)
    for i in (9, 10, 15, 16):  # hands and feet
        cv2.circle(canvas, tuple(pts[i].round().astype(int)), max(2, int(0.22 * u)), skin.tolist(), -1)
        cv2.circle(mask, tuple(pts[i].round().astype(int)), max(2, int(0.22 * u)), 1, -1)


def _draw_image(rng: np.random.Generator, config: SyntheticConfig):
    h, w = config.image_size
    canvas = _background(rng, (h, w))
    layers = []  # (keypoints, silhouette mask, height), in drawing order
    for _ in range(rng.integers(1, 4)):
        height = rng.uniform(config.min_height, config.max_height) * h
        center = np.array([rng.uniform(0.05, 0.95) * w, rng.uniform(0.3, 0.75) * h])
        pts = _pose(rng, height, center)
        mask = np.zeros((h, w), np.uint8)
        _draw_person(canvas, mask, pts, height, rng)
        layers.append((pts, mask, height))
    cover = np.zeros((h, w), np.uint8)
    if rng.random() < 0.25:  # an occluder in front of everyone
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        dx, dy = int(rng.integers(20, w // 3)), int(rng.integers(20, h // 3))
        colour = rng.uniform(0, 255, 3).tolist()
        cv2.rectangle(canvas, (x, y), (x + dx, y + dy), colour, -1)
        cv2.rectangle(cover, (x, y), (x + dx, y + dy), 1, -1)
    people = []
    for index, (pts, mask, height) in enumerate(layers):
        hidden = cover.copy()
        for _, later, _ in layers[index + 1 :]:
            hidden |= later
        own = mask & (1 - hidden)
        ys, xs = np.nonzero(own)
        if len(xs) < 50:
            continue
        keypoints = np.zeros((17, 3), np.float32)
        inside = (pts[:, 0] >= 0) & (pts[:, 0] <= w - 1) & (pts[:, 1] >= 0) & (pts[:, 1] <= h - 1)
        for k in np.nonzero(inside)[0]:
            x, y = pts[k]
            keypoints[k] = (x, y, 1 if hidden[int(round(y)), int(round(x))] else 2)
        if not keypoints[:, 2].any():
            continue
        box = (float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1))
        people.append((keypoints, box, int(len(xs)), _mpii_joints(pts, height)))
    return np.clip(canvas, 0, 255).astype(np.uint8), people


def _head(pts: np.ndarray, height: float) -> tuple[np.ndarray, float, float]:
    """The drawn head ellipse: its centre and half-axes (x, y), as ``_draw_person`` draws it."""
    u = height / 8.0
    return ((pts[3] + pts[4]) / 2).round(), float(max(1, int(0.55 * u))), float(max(1, int(0.7 * u)))


def _mpii_joints(pts: np.ndarray, height: float) -> tuple[np.ndarray, np.ndarray]:
    """MPII's 16 joints (x, y) of a figure from its 17 COCO points, and its head box [x1, y1, x2, y2]."""
    head, a, b = _head(pts, height)
    joints = np.zeros((16, 2))
    for j, k in enumerate(_COCO_FOR_MPII):
        if k >= 0:
            joints[j] = pts[k]
    joints[6] = (pts[11] + pts[12]) / 2  # pelvis
    joints[7] = (pts[5] + pts[6]) / 2  # thorax
    down = joints[7] - head
    down = down / max(np.linalg.norm(down), 1e-6)
    joints[8] = head + down / math.hypot(down[0] / a, down[1] / b)  # upper_neck: the neck line meets the head
    joints[9] = head - (0.0, b)  # head_top
    return joints, np.array([head[0] - a, head[1] - b, head[0] + a, head[1] + b])


def _mpii_record(name: str, figure: tuple[np.ndarray, np.ndarray], size: tuple[int, int]) -> dict:
    """One person in MPII's json format (1-based pixels)."""
    joints, head_box = figure
    h, w = size
    inside = (joints[:, 0] >= 0) & (joints[:, 0] <= w - 1) & (joints[:, 1] >= 0) & (joints[:, 1] <= h - 1)
    scale = 6 * float(np.linalg.norm(joints[9] - joints[8])) / 200
    center = (joints.min(0) + joints.max(0)) / 2 - (0.0, 15 * scale)
    written = np.where(inside[:, None], joints + 1, -1.0)
    return {"image": name, "center": (center + 1).round(2).tolist(), "scale": round(scale, 4),
            "joints": written.round(2).tolist(), "joints_vis": inside.astype(int).tolist(),
            "head_box": (head_box + 1).round(2).tolist()}  # fmt: skip


def _jitter(box, size, rng, image_id: int) -> dict:
    x, y, bw, bh = box
    cx, cy = x + bw / 2 + rng.normal(0, 0.05) * bw, y + bh / 2 + rng.normal(0, 0.05) * bh
    s = rng.uniform(0.9, 1.15)
    nw, nh = bw * s, bh * s
    x1, y1 = max(0.0, cx - nw / 2), max(0.0, cy - nh / 2)
    x2, y2 = min(size[1] - 1.0, cx + nw / 2), min(size[0] - 1.0, cy + nh / 2)
    return {"image_id": image_id, "category_id": 1, "bbox": [round(v, 2) for v in (x1, y1, x2 - x1, y2 - y1)],
            "score": round(float(rng.uniform(0.6, 1.0)), 4)}  # fmt: skip


def _false_positive(size, rng, image_id: int) -> dict:
    h, w = size
    bw, bh = rng.uniform(0.1, 0.4) * w, rng.uniform(0.2, 0.6) * h
    x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
    return {"image_id": image_id, "category_id": 1, "bbox": [round(float(v), 2) for v in (x, y, bw, bh)],
            "score": round(float(rng.uniform(0.05, 0.5)), 4)}  # fmt: skip
