"""The codec of EfficientPose (and OpenPose-style networks), SPEC-EfficientPose sections 2 and 4: Gaussian
confidence maps with a sigma that shrinks during training, OpenPose's part affinity fields (PAFs), a per-kind
weighted masked MSE, and the released models' decoding (Gaussian blur, argmax, +0.5 pixel).

Map alignment. Our input pixels have their centres on integer coordinates (cv2.warpAffine; a mirror maps
x to W - 1 - x). A map of w samples over an input of W pixels is pixel-centre aligned: sample i sits at input
coordinate ``(i + 0.5) * W / w - 0.5``. That is the released models' ``(argmax + 0.5) / w`` in our pixels, and
the alignment of the network's fixed bilinear upscaling (4x4 stride-2 transposed convolutions, padding 1), so
the stride-8 targets it upscales land on the full-resolution targets. (HeatmapCodec puts sample i at
``i * W / w`` instead, the reference's convention for EvoPose2D.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from evopose_pl.codecs.base import Outputs, TopDownCodec, named_outputs
from evopose_pl.data.heatmaps import masked_mse

#: OpenPose's 14 MPII limbs in MPII's joint order (OpenPose's neck is MPII's upper_neck, its chest the thorax;
#: the pelvis is in none): head_top-upper_neck, upper_neck-r_shoulder, r_shoulder-r_elbow, r_elbow-r_wrist,
#: upper_neck-l_shoulder, l_shoulder-l_elbow, l_elbow-l_wrist, upper_neck-thorax, thorax-r_hip, r_hip-r_knee,
#: r_knee-r_ankle, thorax-l_hip, l_hip-l_knee, l_knee-l_ankle.
MPII_LIMBS = (
    (9, 8), (8, 12), (12, 11), (11, 10), (8, 13), (13, 14), (14, 15),
    (8, 7), (7, 2), (2, 1), (1, 0), (7, 3), (3, 4), (4, 5),
)  # fmt: skip
#: [fraction of training, sigma as a fraction of the map's width]. The paper shows its schedule only in a
#: figure, so these are ours: wide Gaussians first (dense gradients while the network finds the person), then
#: three steps down to precise ones. In this exp(-d^2 / sigma^2) form, SimpleBaseline's 2 pixels on 48-wide
#: heatmaps is 0.059 of the width (the second step); at R = 256 the last, 0.03, is 7.7 input pixels and about
#: one stride-8 pixel, still wider than one sample there (a neighbour gets exp(-1 / 0.96^2) = 0.34).
SIGMA_SCHEDULE = ((0.0, 0.08), (0.25, 0.06), (0.5, 0.045), (0.75, 0.03))
#: The stride of the maps ``paf_width`` is measured in (EfficientPose's and OpenPose's PAFs are at stride 8).
PAF_STRIDE = 8
#: Output kinds; ``loss_weights`` has one weight for each.
KINDS = ("pafs", "confs", "upscaled")


class ConfidenceMapCodec(TopDownCodec):
    """Confidence maps ``exp(-d^2 / sigma^2)`` (peak 1) per keypoint and OpenPose's PAFs per limb.

    Outputs named ``pafs*`` are PAFs (channel 2l is limb l's x component, 2l+1 its y); ``upscaled`` are the
    full-resolution maps; every other output is confidence maps (``confs*``). Outputs given as a sequence
    (no names) are told apart by shape: 2 x limbs channels are PAFs, maps at the input's size upscaled. Each
    output's loss is its masked MSE against targets at its own resolution; the total weighs them by kind with
    ``loss_weights`` (all 1: the paper trains every pass with the MSE and gives no weights). The last output
    is decoded; a keypoint's score is its blurred map's maximum, and it counts as found above
    ``keypoint_threshold``.
    """

    name = "confidence_maps"

    def __init__(
        self,
        limbs: Sequence[Sequence[int]] | None = None,
        sigma_schedule: Sequence[Sequence[float]] = SIGMA_SCHEDULE,
        paf_width: float = 1.0,
        loss_weights: Mapping[str, float] | None = None,
        blur_sigma: float = 1.0,
        keypoint_threshold: float = 0.1,
    ) -> None:
        self.limbs = [[int(a), int(b)] for a, b in (MPII_LIMBS if limbs is None else limbs)]
        self.sigma_schedule = [[float(start), float(sigma)] for start, sigma in sigma_schedule]
        starts = [start for start, _ in self.sigma_schedule]
        if not starts or starts[0] != 0.0 or starts != sorted(set(starts)):
            raise ValueError(f"codec.sigma_schedule={self.sigma_schedule}: must start at fraction 0 and increase")
        weights = dict.fromkeys(KINDS, 1.0) | {kind: float(w) for kind, w in (loss_weights or {}).items()}
        if set(weights) != set(KINDS):
            raise ValueError(f"codec.loss_weights: {sorted(set(weights) - set(KINDS))} are not among {KINDS}")
        self.loss_weights = weights
        self.paf_width = float(paf_width)
        self.blur_sigma = float(blur_sigma)
        self.keypoint_threshold = float(keypoint_threshold)
        self.sigma = self.sigma_schedule[0][1]

    def settings(self) -> dict[str, Any]:
        return {
            "limbs": self.limbs,
            "sigma_schedule": self.sigma_schedule,
            "paf_width": self.paf_width,
            "loss_weights": self.loss_weights,
            "blur_sigma": self.blur_sigma,
            "keypoint_threshold": self.keypoint_threshold,
        }

    def set_progress(self, fraction: float) -> None:
        """Take the sigma of the last schedule step begun at ``fraction`` of training."""
        self.sigma = [sigma for start, sigma in self.sigma_schedule if start <= fraction][-1]

    def confidence_maps(
        self, keypoints: torch.Tensor, input_size: Sequence[int], map_size: Sequence[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Targets (B, K, h, w) and weights (B, K) for keypoints (B, K, 3) in input pixels with visibility.

        Not rounded to a sample: the Gaussian is centred on the keypoint itself, with sigma the current
        fraction of the width, so each map resolution samples the same Gaussian (in input pixels).
        """
        kp = keypoints.float()
        xs, ys = _samples(map_size, input_size, kp.device)
        sigma = self.sigma * input_size[1]
        gx = torch.exp(-((xs - kp[..., 0, None]) ** 2) / sigma**2)
        gy = torch.exp(-((ys - kp[..., 1, None]) ** 2) / sigma**2)
        return gy[..., :, None] * gx[..., None, :], (kp[..., 2] > 0).float()

    def part_affinity_fields(
        self, keypoints: torch.Tensor, input_size: Sequence[int], map_size: Sequence[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """PAF targets (B, 2L, h, w) and channel weights (B, 2L), OpenPose's: limb (a, b)'s unit vector a -> b
        on the samples within its band (0 <= along <= length, |across| <= ``paf_width`` stride-8 pixels),
        zero elsewhere and wherever an endpoint is unlabelled (whose channels then weigh 0)."""
        kp = keypoints.float()
        limbs = torch.tensor(self.limbs, device=kp.device, dtype=torch.long)
        start, end = kp[:, limbs[:, 0]], kp[:, limbs[:, 1]]  # (B, L, 3)
        labelled = (start[..., 2] > 0) & (end[..., 2] > 0)
        delta = (end[..., :2] - start[..., :2]) * labelled[..., None]
        squared = (delta**2).sum(-1)[..., None, None]
        length = squared.sqrt()
        xs, ys = _samples(map_size, input_size, kp.device)
        dx = (xs - start[..., 0, None])[..., None, :]  # (B, L, 1, w)
        dy = (ys - start[..., 1, None])[..., :, None]  # (B, L, h, 1)
        ex, ey = delta[..., 0, None, None], delta[..., 1, None, None]
        # Along and across the limb times its length: no division, so a sample on an endpoint is on the band.
        along, across = ex * dx + ey * dy, (ex * dy - ey * dx).abs()
        band = (along >= 0) & (along <= squared) & (across <= self.paf_width * PAF_STRIDE * length)
        ux, uy = ex / length.clamp(min=1e-6), ey / length.clamp(min=1e-6)  # zero for a limb of no length
        fields = torch.stack([ux * band, uy * band], dim=2)  # (B, L, 2, h, w): x then y per limb
        return fields.flatten(1, 2), labelled.float().repeat_interleave(2, dim=-1)

    def loss(self, outputs: Outputs, keypoints: torch.Tensor, input_size: Sequence[int]) -> dict[str, torch.Tensor]:
        named = isinstance(outputs, Mapping)
        losses, total = {}, 0.0
        for name, output in named_outputs(outputs).items():
            kind = self._kind(name, output, named, keypoints.shape[1], input_size)
            encode = self.part_affinity_fields if kind == "pafs" else self.confidence_maps
            target, weights = encode(keypoints.to(output.device), input_size, output.shape[-2:])
            if output.shape[1] != target.shape[1]:
                raise ValueError(f"output {name!r} ({kind}) has {output.shape[1]} channels, not {target.shape[1]}")
            losses[name] = masked_mse(output, target, weights)
            total = total + self.loss_weights[kind] * losses[name]
        return {"loss": total, **losses}

    def _kind(self, name: str, output: torch.Tensor, named: bool, num_keypoints: int, input_size: Sequence[int]) -> str:
        """``pafs``, ``upscaled`` or ``confs``: by name, or for unnamed outputs by channels and resolution."""
        channels = output.shape[1]
        if name.startswith("pafs") or (not named and channels == 2 * len(self.limbs) != num_keypoints):
            return "pafs"
        if name == "upscaled" or (not named and tuple(output.shape[-2:]) == tuple(input_size)):
            return "upscaled"
        return "confs"

    def decode(self, outputs: Outputs, input_size: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The released models' decoding: blur, argmax, + 0.5 pixel (the sample's centre), to input pixels."""
        maps = list(named_outputs(outputs).values())[-1].float()
        if self.blur_sigma > 0:
            maps = gaussian_blur(maps, self.blur_sigma)
        b, k, h, w = maps.shape
        scores, index = maps.reshape(b, k, -1).max(-1)
        x = ((index % w) + 0.5) * (input_size[1] / w) - 0.5
        y = ((index // w) + 0.5) * (input_size[0] / h) - 0.5
        return torch.stack([x, y], dim=-1).float(), scores

    def merge_flip(self, outputs: Outputs, flipped: Outputs, flip_index: Sequence[int]) -> Outputs:
        """The final maps averaged with the mirrored pass's final maps, mirrored back and left/right swapped.

        No shift, at any stride: mirroring the input (x -> W - 1 - x) mirrors pixel-centre aligned samples
        exactly (i -> w - 1 - i, as (w - 1 - i + 0.5) * W / w - 0.5 = W - 1 - ((i + 0.5) * W / w - 0.5)).
        HeatmapCodec's alignment (sample i at i * W / w) is off by (s - 1) / s of a pixel after mirroring
        at stride s (0 at full resolution, 7/8 at stride 8), hence its one-pixel shift.
        """
        final = list(named_outputs(outputs).values())[-1].float()
        back = list(named_outputs(flipped).values())[-1].float().flip(-1)[:, list(flip_index)]
        return (final + back) / 2

    def person_scores(self, box_scores: torch.Tensor, keypoint_scores: torch.Tensor) -> torch.Tensor:
        found = keypoint_scores > self.keypoint_threshold
        mean = (keypoint_scores * found).sum(-1) / found.sum(-1).clamp(min=1)
        return box_scores.float() * mean


def _samples(map_size: Sequence[int], input_size: Sequence[int], device: torch.device) -> tuple[torch.Tensor, ...]:
    """The input-pixel x (w,) and y (h,) coordinates of a map's samples (pixel-centre aligned)."""
    return tuple(
        (torch.arange(int(n), device=device, dtype=torch.float32) + 0.5) * (extent / int(n)) - 0.5
        for n, extent in ((map_size[1], input_size[1]), (map_size[0], input_size[0]))
    )


def _reflected(n: int, radius: int, device: torch.device) -> torch.Tensor:
    """Indices of an axis of ``n`` extended by ``radius`` each side as scipy's mode 'reflect' (d c b a | a b c d),
    repeating for a radius beyond ``n``."""
    index = torch.arange(-radius, n + radius, device=device) % (2 * n)
    return torch.where(index < n, index, 2 * n - 1 - index)


def gaussian_blur(maps: torch.Tensor, sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """``scipy.ndimage.gaussian_filter(maps, (0, 0, sigma, sigma), mode='reflect', truncate=4.0)`` in torch: the
    released models' blur before the argmax, on the maps' device. Separable: a 1-D kernel along x, then y."""
    radius = int(truncate * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, device=maps.device, dtype=torch.float64)
    kernel = torch.exp(-0.5 * offsets**2 / sigma**2)
    kernel = (kernel / kernel.sum()).to(maps.dtype)
    b, k, h, w = maps.shape
    x = maps.reshape(b * k, 1, h, w)
    x = F.conv2d(x[..., _reflected(w, radius, maps.device)], kernel.view(1, 1, 1, -1))
    x = F.conv2d(x[..., _reflected(h, radius, maps.device), :], kernel.view(1, 1, -1, 1))
    return x.reshape(b, k, h, w)
