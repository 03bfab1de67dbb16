"""The heatmap codec of EvoPose2D, SimpleBaseline and HRNet (SPEC sections 5 and 8): Gaussian
targets peaking at 255, the masked MSE, sub-pixel argmax decoding and the shifted flip test."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from evopose_pl.codecs.base import Outputs, TopDownCodec, named_outputs
from evopose_pl.data.heatmaps import PEAK, decode_heatmaps, masked_mse, merge_flipped, render_heatmaps


class HeatmapCodec(TopDownCodec):
    """One Gaussian heatmap per keypoint. ``sigma`` None is the reference's 2 pixels per 64 heatmap rows.
    Targets peak at ``peak`` (EvoPose2D's 255; 1 for networks whose heatmaps are bounded by 1, as PNFS's
    squashed vector lengths). A keypoint's score is its heatmap's maximum / ``peak``; it counts as found
    above ``keypoint_threshold``, and a person's score is its box score x the mean score of its found
    keypoints (SPEC section 8). The loss is ``loss_scale`` x the visibility-masked MSE.

    A network with several heatmap outputs (intermediate supervision) is trained on each (the
    loss is their sum) and decoded from its last.
    """

    name = "heatmap"

    def __init__(
        self, sigma: float | None = None, keypoint_threshold: float = 0.2, peak: float = PEAK, loss_scale: float = 1.0
    ) -> None:
        self.sigma = None if sigma is None else float(sigma)
        self.keypoint_threshold = float(keypoint_threshold)
        self.peak, self.loss_scale = float(peak), float(loss_scale)
        if self.peak <= 0:
            raise ValueError(f"codec.peak={peak}: must be > 0")

    def settings(self) -> dict[str, Any]:
        return {
            "sigma": self.sigma,
            "keypoint_threshold": self.keypoint_threshold,
            "peak": self.peak,
            "loss_scale": self.loss_scale,
        }

    def encode(
        self, keypoints: torch.Tensor, input_size: Sequence[int], heatmap_size: Sequence[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Targets (B, K, h, w) and visibility weights (B, K) for keypoints (B, K, 3) in input pixels."""
        return render_heatmaps(keypoints, input_size, heatmap_size, self.sigma, self.peak)

    def loss(self, outputs: Outputs, keypoints: torch.Tensor, input_size: Sequence[int]) -> dict[str, torch.Tensor]:
        losses = {}
        for name, heatmaps in named_outputs(outputs).items():
            target, visible = self.encode(keypoints, input_size, heatmaps.shape[-2:])
            losses[name] = self.loss_scale * masked_mse(heatmaps, target, visible)
        return {"loss": sum(losses.values()), **losses}

    def decode(self, outputs: Outputs, input_size: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        heatmaps = list(named_outputs(outputs).values())[-1]
        return decode_heatmaps(heatmaps, input_size, self.peak)

    def person_scores(self, box_scores: torch.Tensor, keypoint_scores: torch.Tensor) -> torch.Tensor:
        found = keypoint_scores > self.keypoint_threshold
        mean = (keypoint_scores * found).sum(-1) / found.sum(-1).clamp(min=1)
        return box_scores.float() * mean

    def merge_flip(self, outputs: Outputs, flipped: Outputs, flip_index: Sequence[int]) -> Outputs:
        final = list(named_outputs(outputs).values())[-1]
        final_flipped = list(named_outputs(flipped).values())[-1]
        return merge_flipped(final.float(), final_flipped.float(), flip_index)
