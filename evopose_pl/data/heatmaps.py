"""Heatmap encoding and decoding as a symmetric pair (SPEC sections 5 and 8), batched in torch.

Encoding runs on the device inside the LightningModule; decoding is vectorised over batch and
keypoints (no Python loop per keypoint).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

PEAK = 255.0


def default_sigma(heatmap_height: int) -> float:
    """The reference's Gaussian width: 2 pixels per 64 heatmap rows."""
    return 2.0 * heatmap_height / 64.0


def render_heatmaps(
    keypoints: torch.Tensor,
    input_size: Sequence[int],
    heatmap_size: Sequence[int],
    sigma: float | None = None,
    peak: float = PEAK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian targets (B, K, h, w) with peak ``peak`` (255, the reference's), and visibility weights (B, K)
    in {0, 1}.

    ``keypoints`` (B, K, 3) are in input pixels with visibility; each Gaussian is centred on the
    keypoint's heatmap coordinate rounded to the nearest pixel, ``floor(x * w / W + 0.5)``.
    """
    height, width = heatmap_size
    sigma = default_sigma(height) if sigma is None else sigma
    kp = keypoints.float()
    x = torch.floor(kp[..., 0] * width / input_size[1] + 0.5)[..., None, None]
    y = torch.floor(kp[..., 1] * height / input_size[0] + 0.5)[..., None, None]
    xs = torch.arange(width, device=kp.device, dtype=kp.dtype)
    ys = torch.arange(height, device=kp.device, dtype=kp.dtype)[:, None]
    # separable: exp over a row and a column per keypoint, one product per pixel (33 ms to 2 ms per 256x192 batch)
    heatmaps = (peak * torch.exp(-((ys - y) ** 2) / (2 * sigma**2))) * torch.exp(-((xs - x) ** 2) / (2 * sigma**2))
    return heatmaps, (kp[..., 2] > 0).to(kp.dtype)


def masked_mse(predicted: torch.Tensor, target: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """Mean over B, K, h, w of ``v * (pred - target)^2``; masked keypoints stay in the denominator."""
    return ((predicted.float() - target) ** 2 * visible[..., None, None]).mean()


def merge_flipped(heatmaps: torch.Tensor, flipped: torch.Tensor, flip_index: Sequence[int]) -> torch.Tensor:
    """Average with the prediction on the mirrored crop: mirror it back, swap left and right, shift
    it one pixel right to realign (the reference's flip test)."""
    back = flipped.flip(-1)[:, list(flip_index)]
    back = torch.cat([back[..., :1], back[..., :-1]], dim=-1)
    return (heatmaps + back) / 2


def decode_heatmaps(
    heatmaps: torch.Tensor, input_size: Sequence[int], peak: float = PEAK
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keypoints in input pixels (B, K, 2) and scores (B, K) = maximum / ``peak`` (the targets' peak).

    Per channel: the argmax, moved a quarter pixel toward the higher neighbour in x and in y
    away from the border, then scaled by the input / heatmap ratio.
    """
    b, k, h, w = heatmaps.shape
    flat = heatmaps.float().reshape(b, k, -1)
    maxval, index = flat.max(-1)
    x, y = (index % w), (index // w)
    inner = (x > 1) & (x < w - 1) & (y > 1) & (y < h - 1)

    def at(dx: int, dy: int) -> torch.Tensor:
        xi = (x + dx).clamp(0, w - 1)
        yi = (y + dy).clamp(0, h - 1)
        return flat.gather(-1, (yi * w + xi)[..., None])[..., 0]

    dx = torch.sign(at(1, 0) - at(-1, 0))
    dy = torch.sign(at(0, 1) - at(0, -1))
    coords = torch.stack([x.float() + 0.25 * dx * inner, y.float() + 0.25 * dy * inner], dim=-1)
    coords = coords * torch.tensor([input_size[1] / w, input_size[0] / h], device=coords.device)
    return coords, maxval / peak


def invert_affine(matrices: torch.Tensor) -> torch.Tensor:
    """Inverse of (B, 2, 3) affine matrices."""
    linear = torch.linalg.inv(matrices[:, :, :2].double())
    shift = -(linear @ matrices[:, :, 2:].double())
    return torch.cat([linear, shift], dim=-1).to(matrices.dtype)


def to_image(points: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    """Map (B, K, 2) input-pixel points back to the image through the inverse of (B, 2, 3) crops."""
    inverse = invert_affine(matrices.double())  # inverted and applied in double precision
    return (points.double() @ inverse[:, :, :2].transpose(1, 2) + inverse[:, None, :, 2]).to(points.dtype)
