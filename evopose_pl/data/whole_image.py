"""Whole-image samples for single-stage pose detectors (KAPAO, SPEC-KAPAO sections 1 and 3): letterboxed images,
mosaic and scene augmentation, and pose-object and keypoint-object labels.

Coordinates follow the platform's pixel-index convention (``transforms.py``): pixel centres sit at integers, so
an image W pixels wide spans [-0.5, W - 0.5], and a matrix is exactly what ``cv2.warpAffine`` applies; the
``affine`` a sample carries maps predictions back as ``TopDownDataset``'s does.

A sample is built from *pieces*: a source image, its matrix to the input, and the part of the input it shows
(the whole letterboxed image, or its quadrant of a mosaic). Each piece is warped once, straight into its part of
the input, so a mosaic costs four small warps and no 2H x 2W canvas is ever drawn; labels go through the same
matrices and are cut to the same parts, so they cannot drift from the pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from evopose_pl.data.coco import AnnotationError, CocoKeypoints, Instance
from evopose_pl.data.dataset import AnnotatedDataset, check_image_files
from evopose_pl.data.transforms import apply_affine, compose, flip_matrix

PAD_VALUE = 114  # the grey around a letterboxed image and outside a mosaic
STRIDE = 64  # the largest output stride of the P6 detector: input sides must be multiples of it
MIN_KEPT_AREA = 0.1  # a pose box keeping less of its transformed area after clipping is dropped
_IDENTITY = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


@dataclass(frozen=True)
class SceneAugmentation:
    """Whole-image augmentation (SPEC-KAPAO section 3)."""

    mosaic_prob: float = 1.0  # chance of a 4-image mosaic (else the single image)
    scale: float = 0.9  # random scale in [1 - scale, 1 + scale]
    translate: float = 0.1  # random translation, a fraction of the input size
    hsv: tuple[float, float, float] = (0.015, 0.7, 0.4)  # hue, saturation, value gains
    flip_prob: float = 0.5  # left-right flip, swapping left and right keypoints
    min_box_size: float = 2.0  # pose boxes narrower or lower than this (input pixels) after the transforms are dropped


def _fit(image_size: Sequence[int], input_size: Sequence[int]) -> tuple[int, int]:
    """(height, width) of the image scaled to fit the input with its aspect kept, rounded to whole pixels so the
    letterboxed image has clean edges."""
    (h, w), (height, width) = image_size, input_size
    s = min(height / h, width / w)
    return max(1, min(height, round(h * s))), max(1, min(width, round(w * s)))


def _placement(image_size: Sequence[int], size: Sequence[int], origin: Sequence[int]) -> np.ndarray:
    """Image -> canvas: resized to ``size`` (height, width), pixel centres aligned (the image's extent fills
    exactly ``size`` pixels), its top-left pixel at ``origin`` (x, y)."""
    (h, w), (nh, nw), (ox, oy) = image_size, size, origin
    sx, sy = nw / w, nh / h
    return np.array([[sx, 0.0, 0.5 * sx - 0.5 + ox], [0.0, sy, 0.5 * sy - 0.5 + oy]])


def letterbox_matrix(image_size: tuple[int, int], input_size: tuple[int, int]) -> np.ndarray:
    """2x3 affine image -> input: scale to fit (aspect kept), centred, padded."""
    nh, nw = _fit(image_size, input_size)
    return _placement(image_size, (nh, nw), ((input_size[1] - nw) // 2, (input_size[0] - nh) // 2))


def letterbox(image: np.ndarray, input_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """An image (H, W, 3) letterboxed to the input as an unaugmented sample is (``predict`` feeds a network
    whole images this way), and its image -> input matrix."""
    height, width = input_size
    nh, nw = _fit(image.shape[:2], input_size)
    ox, oy = (width - nw) // 2, (height - nh) // 2
    matrix = letterbox_matrix(image.shape[:2], input_size)
    shifted = matrix.copy()
    shifted[:, 2] -= (ox, oy)
    canvas = np.full((height, width, 3), PAD_VALUE, np.uint8)
    # Replicated borders, as ``WholeImageDataset.render``: an edge pixel samples at most half a pixel outside.
    canvas[oy : oy + nh, ox : ox + nw] = cv2.warpAffine(
        image, shifted, (nw, nh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    return canvas, matrix


def object_labels(
    boxes: np.ndarray, keypoints: np.ndarray, input_size: tuple[int, int], keypoint_box: float = 0.05
) -> np.ndarray:
    """Pose-object and keypoint-object labels (M, 5 + 3K) float32: rows [class, x1, y1, x2, y2, then K x (x, y, v)].
    boxes (P, 4) xyxy in input pixels; keypoints (P, K, 3) in input pixels (v > 0 labelled).
    One pose object (class 0, the person box, its keypoints) per person, then one keypoint object per labelled keypoint
    (class 1 + k, a square box of side keypoint_box * max(H, W) centred on it, keypoint columns zero).

    Unlabelled keypoints get zero coordinates, so a row never carries a stale position. Keypoint-object boxes are not
    clipped to the image: their centre is the keypoint, which is what inference reads from them.
    """
    keypoints = np.asarray(keypoints, np.float64)
    if keypoints.ndim != 3 or keypoints.shape[2] != 3:
        raise ValueError(f"object_labels: keypoints must be (P, K, 3), got {keypoints.shape}")
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    people, k = keypoints.shape[:2]
    if len(boxes) != people:
        raise ValueError(f"object_labels: {len(boxes)} boxes for {people} people's keypoints")
    labelled = keypoints[..., 2] > 0
    keypoints = np.where(labelled[..., None], keypoints, 0.0)
    pose = np.zeros((people, 5 + 3 * k))
    pose[:, 1:5] = boxes
    pose[:, 5:] = keypoints.reshape(people, 3 * k)
    person, index = np.nonzero(labelled)
    centres = keypoints[person, index, :2]
    half = keypoint_box * max(input_size) / 2
    points = np.zeros((len(person), 5 + 3 * k))
    points[:, 0] = 1 + index
    points[:, 1:3] = centres - half
    points[:, 3:5] = centres + half
    return np.concatenate([pose, points]).astype(np.float32)


@dataclass(frozen=True)
class ScenePiece:
    """One source image's part of a sample: ``matrix`` maps its pixels to the input; it paints the input pixels
    ``pixels`` (x0, y0, x1, y1, ends excluded), and its labels are cut to ``bounds`` (x1, y1, x2, y2, continuous:
    the part of the input its pixels cover)."""

    index: int  # the source's position in the dataset
    matrix: np.ndarray
    pixels: tuple[int, int, int, int]
    bounds: tuple[float, float, float, float]


@dataclass(frozen=True)
class ScenePlan:
    """Every draw of one sample, so a test or a debugging session can see what was done."""

    pieces: tuple[ScenePiece, ...]
    flip: bool = False
    gains: tuple[float, float, float] = (1.0, 1.0, 1.0)  # hue, saturation, value
    mosaic: bool = False


def _piece(
    index: int, placement: np.ndarray, rect: Sequence[int], scene: np.ndarray, input_size: Sequence[int]
) -> ScenePiece | None:
    """The piece showing canvas pixels ``rect`` (x0, y0, x1, y1, ends excluded) of a source placed on the canvas
    by ``placement``, after ``scene`` (canvas -> input); None when none of it is in the input."""
    height, width = input_size
    x0, y0, x1, y1 = rect
    if x1 <= x0 or y1 <= y0:
        return None
    ends = apply_affine(scene, np.array([[x0 - 0.5, y0 - 0.5], [x1 - 0.5, y1 - 0.5]]))
    lo, hi = ends.min(0), ends.max(0)
    # Input pixel u is painted when lo <= u < hi: two pieces meeting at a seam share its coordinate, so each
    # pixel is painted once, flipped or not.
    u0, v0 = max(0, math.ceil(lo[0])), max(0, math.ceil(lo[1]))
    u1, v1 = min(width, math.ceil(hi[0])), min(height, math.ceil(hi[1]))
    if u1 <= u0 or v1 <= v0:
        return None
    bounds = (max(lo[0], -0.5), max(lo[1], -0.5), min(hi[0], width - 0.5), min(hi[1], height - 0.5))
    return ScenePiece(index, compose(scene, placement), (u0, v0, u1, v1), bounds)


class WholeImageDataset(AnnotatedDataset):
    """One sample per image of a COCO-format annotation file (people or not: COCO evaluation covers every image):
    the image letterboxed to the input, or, for training, augmented as SPEC-KAPAO section 3 says; and its
    pose-object and keypoint-object labels (``object_labels``).

    A sample holds ``image`` (3, H, W) uint8 RGB, ``objects`` (M, 5 + 3K), ``index``, ``image_id``, and ``affine``
    (image -> input of the unaugmented, letterboxed sample) to map predictions back. Draws come from
    ``(seed, epoch, index)``, so a sample is reproducible and each epoch differs. Without augmentation every
    annotated person is a label; with it, a pose box under ``min_box_size`` or keeping under 10% of its transformed
    area is dropped with its keypoints, and a keypoint outside the image becomes unlabelled. A person whose
    keypoints all left the image keeps its pose object: its box is still a person to detect.
    """

    def __init__(
        self,
        annotations: CocoKeypoints,
        input_size: Sequence[int],
        augmentation: SceneAugmentation | None = None,
        seed: int = 0,
        check_images: bool = True,
        keypoint_box: float = 0.05,
    ) -> None:
        size = tuple(int(v) for v in input_size)
        if len(size) != 2 or any(v <= 0 or v % STRIDE for v in size):
            raise ValueError(
                f"WholeImageDataset: input size {tuple(input_size)} (height, width) must be two positive multiples of "
                f"{STRIDE}, the detector's largest stride"
            )
        if not keypoint_box > 0:
            raise ValueError(f"WholeImageDataset: keypoint_box must be positive, got {keypoint_box}")
        super().__init__(annotations, seed)
        self.input_size: tuple[int, int] = (size[0], size[1])
        self.augmentation = augmentation
        self.keypoint_box = keypoint_box
        self.image_ids = list(annotations.images)
        if not self.image_ids:
            raise AnnotationError(f"{annotations.annotation_file}: lists no image: the split would be empty")
        records = [annotations.images[i] for i in self.image_ids]
        self.sizes = [(int(r["height"]), int(r["width"])) for r in records]  # (height, width)
        self.records = [f"{annotations.annotation_file} image id {i}" for i in self.image_ids]
        k = annotations.num_keypoints
        people: dict[int, list[Instance]] = {}
        for inst in annotations.instances:
            people.setdefault(inst.image_id, []).append(inst)
        # Per image: person boxes (P, 4) xyxy and keypoints (P, K, 3), image pixels.
        self.people: list[tuple[np.ndarray, np.ndarray]] = []
        for image_id in self.image_ids:
            found = people.get(image_id, [])
            boxes = np.array([(x, y, x + w, y + h) for x, y, w, h in (p.box for p in found)], np.float64)
            keypoints = np.array([p.keypoints for p in found], np.float64)
            self.people.append((boxes.reshape(-1, 4), keypoints.reshape(-1, k, 3)))
        if check_images:
            empty = np.zeros((k, 3), np.float32)
            check_image_files(
                [Instance(i, self.image_path(n), (0, 0, 0, 0), empty, 1.0, r) for n, (i, r) in enumerate(
                    zip(self.image_ids, self.records))]
            )  # fmt: skip
        self.flip_index = list(annotations.keypoint_info.flip_index)

    def summary(self) -> str:
        """What the split holds and what was left out, for the log."""
        people = sum(len(boxes) for boxes, _ in self.people)
        empty = sum(not len(boxes) for boxes, _ in self.people)
        return (
            f"{len(self)} images ({empty} without people) of {self.annotation_file}, {people} people "
            f"({self.annotations.skip_summary()})"
        )

    def image_path(self, index: int) -> Path:
        return self.annotations.image_path(self.image_ids[index])

    def read_image(self, index: int) -> np.ndarray:
        """The source image, BGR as OpenCV decodes it; one that does not match its annotation's size is refused,
        since its labels would not fit it."""
        path = self.image_path(index)
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            state = "does not exist" if not path.exists() else "cannot be decoded"
            raise FileNotFoundError(f"image {path} {state} (needed by {self.records[index]})")
        if image.shape[:2] != self.sizes[index]:
            h, w = self.sizes[index]
            raise ValueError(
                f"image {path} is {image.shape[1]}x{image.shape[0]} but {self.records[index]} says {w}x{h}: its "
                "labels would not fit it"
            )
        return image

    def plan(self, index: int) -> ScenePlan:
        """The draws of sample ``index`` in the current epoch: its pieces, flip and HSV gains.

        Every draw is made whatever the settings, in a fixed order, so two augmentations that differ in one
        setting (flip_prob 0 or 1, hsv on or off) give the same sample but for that one transform.
        """
        height, width = self.input_size
        aug = self.augmentation
        if aug is None:
            nh, nw = _fit(self.sizes[index], self.input_size)
            ox, oy = (width - nw) // 2, (height - nh) // 2
            placement = _placement(self.sizes[index], (nh, nw), (ox, oy))
            piece = _piece(index, placement, (ox, oy, ox + nw, oy + nh), _IDENTITY, self.input_size)
            return ScenePlan((piece,) if piece is not None else ())
        rng = self.rng(index)
        mosaic = bool(rng.random() < aug.mosaic_prob)
        others = [int(i) for i in rng.integers(0, len(self), 3)]
        centre = rng.uniform(0.5, 1.5, 2)  # in the middle half of the canvas
        scale = float(rng.uniform(1 - aug.scale, 1 + aug.scale))
        shift = rng.uniform(-aug.translate, aug.translate, 2) * (width, height)
        gains = 1 + rng.uniform(-1, 1, 3) * np.asarray(aug.hsv, np.float64)
        flip = bool(rng.random() < aug.flip_prob)
        placed = []  # (source, placement on the canvas, its visible canvas pixels)
        if mosaic:
            canvas_h, canvas_w = 2 * height, 2 * width
            xc, yc = int(centre[0] * width), int(centre[1] * height)
            for (right, below), source in zip(((0, 0), (1, 0), (0, 1), (1, 1)), (index, *others)):
                nh, nw = _fit(self.sizes[source], self.input_size)
                ox, oy = xc if right else xc - nw, yc if below else yc - nh  # touching the centre
                rect = (max(ox, 0), max(oy, 0), min(ox + nw, canvas_w), min(oy + nh, canvas_h))
                placed.append((source, _placement(self.sizes[source], (nh, nw), (ox, oy)), rect))
        else:
            canvas_h, canvas_w = height, width
            nh, nw = _fit(self.sizes[index], self.input_size)
            ox, oy = (width - nw) // 2, (height - nh) // 2
            placed.append((index, _placement(self.sizes[index], (nh, nw), (ox, oy)), (ox, oy, ox + nw, oy + nh)))
        # Canvas -> input: scale about the canvas centre, which lands on the (shifted) input centre.
        scene = np.array(
            [
                [scale, 0.0, (width - 1) / 2 + shift[0] - scale * (canvas_w - 1) / 2],
                [0.0, scale, (height - 1) / 2 + shift[1] - scale * (canvas_h - 1) / 2],
            ]
        )
        if flip:
            scene = compose(flip_matrix(width), scene)
        pieces = (_piece(source, placement, rect, scene, self.input_size) for source, placement, rect in placed)
        return ScenePlan(tuple(p for p in pieces if p is not None), flip, tuple(float(g) for g in gains), mosaic)

    def render(self, plan: ScenePlan) -> tuple[np.ndarray, np.ndarray]:
        """The plan's image (H, W, 3) uint8 RGB and its labels (``object_labels``)."""
        height, width = self.input_size
        image = np.full((height, width, 3), PAD_VALUE, np.uint8)
        sources: dict[int, np.ndarray] = {}
        boxes, keypoints = [], []
        for piece in plan.pieces:
            if piece.index not in sources:
                sources[piece.index] = self.read_image(piece.index)
            u0, v0, u1, v1 = piece.pixels
            matrix = piece.matrix.copy()
            matrix[:, 2] -= (u0, v0)
            # Replicated borders: a painted pixel samples at most half a source pixel outside the image.
            image[v0:v1, u0:u1] = cv2.warpAffine(
                sources[piece.index], matrix, (u1 - u0, v1 - v0), flags=cv2.INTER_LINEAR,
                borderMode=cv2.BORDER_REPLICATE,
            )  # fmt: skip
            b, k = self._piece_labels(piece)
            boxes.append(b)
            keypoints.append(k)
        if plan.gains != (1.0, 1.0, 1.0):
            image = hsv_jitter(image, plan.gains)
        k = self.annotations.num_keypoints
        boxes_all = np.concatenate(boxes) if boxes else np.zeros((0, 4))
        keypoints_all = np.concatenate(keypoints) if keypoints else np.zeros((0, k, 3))
        if plan.flip:  # the mirrored person's left is the original's right
            keypoints_all = keypoints_all[:, self.flip_index]
        labels = object_labels(boxes_all, keypoints_all, self.input_size, self.keypoint_box)
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB), labels

    def _piece_labels(self, piece: ScenePiece) -> tuple[np.ndarray, np.ndarray]:
        """The people of a piece's source in input pixels: boxes through their corners, cut to the piece's bounds
        and the image's pixels; keypoints outside the bounds unlabelled; small or mostly cut boxes dropped."""
        height, width = self.input_size
        boxes, keypoints = self.people[piece.index]
        people = len(boxes)
        x1, y1, x2, y2 = boxes.T
        corners = np.stack([np.stack([x1, y1], 1), np.stack([x2, y1], 1), np.stack([x1, y2], 1),
                            np.stack([x2, y2], 1)], 1)  # fmt: skip
        mapped = apply_affine(piece.matrix, corners.reshape(-1, 2)).reshape(people, 4, 2)
        lo, hi = mapped.min(1), mapped.max(1)
        bounds = np.asarray(piece.bounds)
        pixels = (np.clip(bounds[:2], 0, (width - 1, height - 1)), np.clip(bounds[2:], 0, (width - 1, height - 1)))
        cut_lo, cut_hi = np.clip(lo, *pixels), np.clip(hi, *pixels)
        points = apply_affine(piece.matrix, keypoints[..., :2].reshape(-1, 2)).reshape(keypoints.shape[:2] + (2,))
        inside = (points >= bounds[:2]).all(-1) & (points <= bounds[2:]).all(-1) & (keypoints[..., 2] > 0)
        points = np.clip(points, 0, (width - 1, height - 1))  # at most half a pixel, at the image's edge
        out = np.where(inside[..., None], np.concatenate([points, keypoints[..., 2:]], -1), 0.0)
        if self.augmentation is not None:
            size = cut_hi - cut_lo
            keep = (size >= self.augmentation.min_box_size).all(1)
            keep &= size.prod(1) >= MIN_KEPT_AREA * (hi - lo).prod(1)
        else:
            keep = np.ones(people, bool)
        return np.concatenate([cut_lo, cut_hi], 1)[keep], out[keep]

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        image, labels = self.render(self.plan(index))
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "objects": torch.from_numpy(labels),
            "index": int(index),
            "image_id": self.image_ids[index],
            "affine": torch.from_numpy(letterbox_matrix(self.sizes[index], self.input_size).astype(np.float32)),
        }


def hsv_jitter(image: np.ndarray, gains: Sequence[float]) -> np.ndarray:
    """Hue, saturation and value of a BGR uint8 image times ``gains``: hue wraps around (OpenCV's 0-179),
    saturation and value saturate. Lookup tables keep it a few passes over the image."""
    values = np.arange(256, dtype=np.float64)
    tables = (
        np.mod(values * gains[0], 180).astype(np.uint8),
        np.clip(values * gains[1], 0, 255).astype(np.uint8),
        np.clip(values * gains[2], 0, 255).astype(np.uint8),
    )
    hue, sat, val = cv2.split(cv2.cvtColor(image, cv2.COLOR_BGR2HSV))
    hsv = cv2.merge([cv2.LUT(channel, table) for channel, table in zip((hue, sat, val), tables)])
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)


def collate_objects(samples: list[dict]) -> dict:
    """A batch: images stacked, and every sample's objects in one ``targets`` (N, 6 + 3K) tensor whose column 0 is
    the sample's position in the batch (samples hold different numbers of objects)."""
    targets = [
        torch.cat([torch.full((len(s["objects"]), 1), float(b)), s["objects"]], 1) for b, s in enumerate(samples)
    ]
    return {
        "image": torch.stack([s["image"] for s in samples]),
        "targets": torch.cat(targets),
        "index": torch.tensor([int(s["index"]) for s in samples], dtype=torch.int64),
        "image_id": torch.tensor([int(s["image_id"]) for s in samples], dtype=torch.int64),
        "affine": torch.stack([s["affine"] for s in samples]),
    }


def _palette(count: int) -> list[tuple[int, int, int]]:
    """``count`` distinct saturated colours around the hue circle."""
    hues = np.array([[[int(180 * i / max(count, 1)), 255, 255]] for i in range(count)], np.uint8)
    return [tuple(int(c) for c in rgb[0]) for rgb in cv2.cvtColor(hues, cv2.COLOR_HSV2RGB)]


def draw_objects(image: np.ndarray, objects: np.ndarray, skeleton: Sequence[tuple[int, int]] = ()) -> np.ndarray:
    """A copy of ``image`` (H, W, 3) RGB with the labels drawn: pose boxes in green with their skeleton (0-based
    pairs) and keypoints, keypoint-object boxes, both coloured by keypoint index so a left/right swap shows."""
    out = np.ascontiguousarray(image.copy())
    objects = np.asarray(objects, np.float64).reshape(len(objects), -1)
    if not len(objects):
        return out
    k = (objects.shape[1] - 5) // 3
    colours = _palette(k)
    for row in objects:
        cls = int(row[0])
        x1, y1, x2, y2 = (int(round(v)) for v in row[1:5])
        if cls > 0:
            cv2.rectangle(out, (x1, y1), (x2, y2), colours[(cls - 1) % max(k, 1)], 1)
            continue
        cv2.rectangle(out, (x1, y1), (x2, y2), (0, 255, 0), 1)
        keypoints = row[5:].reshape(k, 3)
        points = [(int(round(x)), int(round(y))) for x, y, _ in keypoints]
        for a, b in skeleton:
            if a < k and b < k and keypoints[a, 2] > 0 and keypoints[b, 2] > 0:
                cv2.line(out, points[a], points[b], (255, 255, 255), 1, cv2.LINE_AA)
        for i, (point, (_, _, v)) in enumerate(zip(points, keypoints)):
            if v > 0:
                cv2.circle(out, point, 2, colours[i], -1, cv2.LINE_AA)
    return out
