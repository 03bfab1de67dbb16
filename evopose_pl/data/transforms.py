"""Top-down crops and augmentation (SPEC section 7), with OpenCV affine warps.

An affine matrix ``M`` (2x3) maps image pixels to input pixels. The box centre goes to the
input centre; the box, widened or heightened to the input aspect ratio and padded by 1.25,
fills the input. Augmentation composes a horizontal flip, a scale and a rotation into ``M``,
so the image is warped once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Augmentation:
    """Training augmentation; the defaults are the paper's full-training recipe."""

    flip_prob: float = 0.5
    scale_factor: float = 0.3  # scale *= clip(1 + f N(0,1), 1 - f, 1 + f)
    rotation_prob: float = 0.6
    rotation_factor: float = 40.0  # degrees: clip(r N(0,1), -2r, 2r)
    half_body_prob: float = 0.0  # implemented, off by default
    half_body_min_keypoints: int = 8

    @classmethod
    def search(cls) -> Augmentation:
        """Search-time training: horizontal flip only."""
        return cls(scale_factor=0.0, rotation_prob=0.0)

    @property
    def flip_only(self) -> bool:
        """Whether a crop depends on nothing but a flip draw (what a crop cache needs)."""
        return self.scale_factor == 0 and self.rotation_prob == 0 and self.half_body_prob == 0

    def draw_flip(self, rng: np.random.Generator) -> bool:
        return self.flip_prob > 0 and rng.random() <= self.flip_prob


def box_to_center_scale(
    box: Sequence[float], input_size: Sequence[int], padding: float = 1.25
) -> tuple[np.ndarray, float]:
    """Box centre, and image pixels per input pixel once the box is fitted to the input aspect ratio."""
    x, y, w, h = box
    height, width = input_size
    center = np.array([x + w / 2.0, y + h / 2.0], np.float64)
    return center, max(h, w * height / width) * padding / height


def crop_matrix(center: Sequence[float], scale: float, input_size: Sequence[int], angle_deg: float = 0.0) -> np.ndarray:
    """Image -> input affine: rotate by ``angle`` about the centre, shrink by ``scale``, centre it."""
    height, width = input_size
    a = math.radians(angle_deg)
    cos, sin = math.cos(a) / scale, math.sin(a) / scale
    rot = np.array([[cos, sin], [-sin, cos]])
    shift = np.array([width / 2.0, height / 2.0]) - rot @ np.asarray(center, np.float64)
    return np.hstack([rot, shift[:, None]]).astype(np.float64)


def flip_matrix(image_width: int) -> np.ndarray:
    """Mirror the image: x -> width - 1 - x (the reference's convention)."""
    return np.array([[-1.0, 0.0, image_width - 1.0], [0.0, 1.0, 0.0]])


def mirror_crop_matrix(input_width: int) -> np.ndarray:
    """Mirror a crop: u -> width - u. Composed after an unrotated crop matrix, it equals the crop
    of the mirrored image (``flip_matrix``) around the mirrored centre: the flipped sample."""
    return np.array([[-1.0, 0.0, float(input_width)], [0.0, 1.0, 0.0]])


def compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """The affine map ``outer(inner(p))``."""
    return (np.vstack([outer, [0, 0, 1]]) @ np.vstack([inner, [0, 0, 1]]))[:2]


def apply_affine(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map (N, 2) points through a 2x3 affine matrix."""
    return points @ matrix[:, :2].T + matrix[:, 2]


def half_body(
    keypoints: np.ndarray, upper_body: Sequence[int], input_size: Sequence[int], rng: np.random.Generator
) -> tuple[np.ndarray, float] | None:
    """Centre and scale of a crop around the upper or the lower body (the reference's half-body)."""
    visible = keypoints[:, 2] > 0
    upper = np.zeros(len(keypoints), bool)
    upper[list(upper_body)] = True
    upper_pts, lower_pts = keypoints[visible & upper, :2], keypoints[visible & ~upper, :2]
    if rng.random() < 0.5 and len(upper_pts) > 2:
        chosen = upper_pts
    else:
        chosen = lower_pts if len(upper_pts) > 2 else upper_pts
    if len(chosen) < 2:
        return None
    x1, y1 = chosen.min(0)
    x2, y2 = chosen.max(0)
    center = chosen.mean(0).astype(np.float64)
    _, scale = box_to_center_scale((x1, y1, x2 - x1, y2 - y1), input_size)
    return center, scale * 1.5


def sample_matrix(
    box: Sequence[float],
    keypoints: np.ndarray,
    image_width: int,
    input_size: Sequence[int],
    augmentation: Augmentation | None,
    upper_body: Sequence[int],
    rng: np.random.Generator,
) -> tuple[np.ndarray, bool]:
    """The crop matrix for one instance, augmented when ``augmentation`` is given; and whether it flips."""
    center, scale = box_to_center_scale(box, input_size)
    if augmentation is None:
        return crop_matrix(center, scale, input_size), False
    aug = augmentation
    if aug.half_body_prob > 0 and (keypoints[:, 2] > 0).sum() > aug.half_body_min_keypoints:
        if rng.random() < aug.half_body_prob:
            found = half_body(keypoints, upper_body, input_size, rng)
            if found is not None:
                center, scale = found
    if aug.scale_factor > 0:
        scale *= float(
            np.clip(1 + aug.scale_factor * rng.standard_normal(), 1 - aug.scale_factor, 1 + aug.scale_factor)
        )
    angle = 0.0
    if aug.rotation_prob > 0 and rng.random() <= aug.rotation_prob:
        r = aug.rotation_factor
        angle = float(np.clip(r * rng.standard_normal(), -2 * r, 2 * r))
    if aug.draw_flip(rng):
        mirror = flip_matrix(image_width)
        center = apply_affine(mirror, np.asarray(center)[None])[0]
        return compose(crop_matrix(center, scale, input_size, angle), mirror), True
    return crop_matrix(center, scale, input_size, angle), False


def warp(image: np.ndarray, matrix: np.ndarray, input_size: Sequence[int]) -> np.ndarray:
    height, width = input_size
    return cv2.warpAffine(image, matrix, (int(width), int(height)), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))


def project_keypoints(keypoints: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Keypoints (K, 3) into input pixels, visibility kept."""
    out = keypoints.astype(np.float32).copy()
    out[:, :2] = apply_affine(matrix, keypoints[:, :2].astype(np.float64))
    return out


def mask_outside(keypoints: np.ndarray, input_size: Sequence[int]) -> np.ndarray:
    """Visibility 0 for keypoints (K, 3, input pixels) outside the crop."""
    height, width = input_size
    out = keypoints.copy()
    inside = (out[:, 0] >= 0) & (out[:, 0] < width) & (out[:, 1] >= 0) & (out[:, 1] < height)
    out[:, 2] = np.where(inside & (out[:, 2] > 0), out[:, 2], 0)
    return out


def transform_keypoints(
    keypoints: np.ndarray, matrix: np.ndarray, flipped: bool, flip_index: Sequence[int], input_size: Sequence[int]
) -> np.ndarray:
    """Keypoints (K, 3) into input pixels; left and right swapped on a flip; visibility 0 outside the crop."""
    out = project_keypoints(keypoints, matrix)
    if flipped:
        out = out[list(flip_index)]
    return mask_outside(out, input_size)
