"""KAPAO's codec (SPEC-KAPAO sections 1-4): people as *pose objects* (a box and its K keypoints) and their
keypoints as *keypoint objects* (a small box per keypoint), predicted per anchor by a four-level detector.

Targets arrive as object labels (``data.whole_image.object_labels``), collated into one tensor
``targets`` (N, 6 + 3K): ``[batch position, class, x1, y1, x2, y2, then K x (x, y, v)]`` in input pixels,
class 0 for pose objects and 1 + k for keypoint k's objects. The network's outputs are one raw tensor per
level, (B, A x (6 + 3K), H / stride, W / stride), each anchor holding ``[x, y, w, h, objectness,
1 + K class scores, 2K keypoint offsets]``.

``loss`` assigns labels to anchors and cells and sums the four terms; ``candidates`` decodes every anchor;
``people`` keeps the confident ones through NMS and fuses each pose with the keypoint objects near its
keypoints. ``encode`` is ``candidates``' inverse on labels (the outputs a perfect network would give), so
the pair is tested as a round trip.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from evopose_pl.codecs.base import Codec, CodecError, Outputs, named_outputs
from evopose_pl.codecs.boxes import batched_nms, complete_iou, xywh_to_xyxy

#: Anchors (width, height in input pixels), three per level P3 to P6 (SPEC-KAPAO section 2).
ANCHORS = (
    ((19, 27), (44, 40), (38, 94)),
    ((96, 68), (86, 152), (180, 137)),
    ((140, 301), (303, 264), (238, 542)),
    ((436, 615), (739, 380), (925, 792)),
)
STRIDES = (8, 16, 32, 64)


@dataclass
class People:
    """The people found in one image: boxes (n, 4) x1 y1 x2 y2, scores (n,), keypoints (n, K, 2) and their
    scores (n, K), in the pixels of the image the network saw, most confident first."""

    boxes: torch.Tensor
    scores: torch.Tensor
    keypoints: torch.Tensor
    keypoint_scores: torch.Tensor

    def __len__(self) -> int:
        return len(self.scores)


@dataclass
class Candidates:
    """Every anchor of a batch, decoded: boxes (B, N, 4) x1 y1 x2 y2 in input pixels, confidence (B, N)
    (objectness x the best class's probability), that class (B, N), keypoints (B, N, K, 2)."""

    boxes: torch.Tensor
    confidence: torch.Tensor
    classes: torch.Tensor
    keypoints: torch.Tensor

    def scaled(self, sx: float, sy: float) -> Candidates:
        """Coordinates divided by the factors the input was resized by: back to the unresized input."""
        box_scale = self.boxes.new_tensor([sx, sy, sx, sy])
        point_scale = self.keypoints.new_tensor([sx, sy])
        return Candidates(self.boxes / box_scale, self.confidence, self.classes, self.keypoints / point_scale)

    def mirrored(self, width: int, flip_index: Sequence[int]) -> Candidates:
        """Candidates of a left-right mirrored input of ``width`` pixels, mapped back to the unmirrored input:
        x -> width - 1 - x, left and right keypoints (and keypoint-object classes) swapped by ``flip_index``."""
        index = torch.as_tensor(list(flip_index), device=self.classes.device)
        boxes = torch.stack([width - 1 - self.boxes[..., 2], self.boxes[..., 1], width - 1 - self.boxes[..., 0],
                             self.boxes[..., 3]], dim=-1)  # fmt: skip
        keypoints = self.keypoints[..., index, :].clone()
        keypoints[..., 0] = width - 1 - keypoints[..., 0]
        class_map = torch.cat([index.new_zeros(1), 1 + index])
        return Candidates(boxes, self.confidence, class_map[self.classes], keypoints)

    @staticmethod
    def cat(parts: Sequence[Candidates]) -> Candidates:
        """The candidates of several passes over the same images, pooled (test-time augmentation)."""
        return Candidates(*(torch.cat([getattr(p, f) for p in parts], dim=1) for f in
                            ("boxes", "confidence", "classes", "keypoints")))  # fmt: skip


@dataclass
class Assignment:
    """Labels assigned to (anchor, cell)s of one level: label row, image, anchor, cell (gx, gy), and the
    label's centre relative to that cell's corner, in grid units."""

    label: torch.Tensor
    image: torch.Tensor
    anchor: torch.Tensor
    gx: torch.Tensor
    gy: torch.Tensor
    offset: torch.Tensor


def _logit(p: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    p = p.clamp(eps, 1 - eps)
    return torch.log(p / (1 - p))


class KapaoCodec(Codec):
    """Anchors, target assignment, loss, decoding, NMS and fusion of KAPAO (SPEC-KAPAO sections 2-4).

    Training: a label goes to every anchor whose width and height ratios to it are both below
    ``anchor_threshold`` (either way), in its centre cell and the horizontal and vertical neighbours nearest
    its centre. Losses (each gain times 3 / levels): objectness BCE against the predicted box's CIoU with its
    label, per level weighted by ``balance`` (gain ``objectness_gain`` x (input / ``reference_size``)^2); box
    1 - CIoU (``box_gain``); class BCE (``class_gain`` x (1 + K) / 80); the mean L2 distance of visible
    keypoints of pose objects, in grid cells (``keypoint_gain``). Their sum is multiplied by the batch size.

    Inference: pose objects above ``pose_threshold`` through NMS at ``pose_iou``, keypoint objects above
    ``keypoint_object_threshold`` through class-aware NMS at ``keypoint_iou`` (at most ``max_candidates``
    of each go into NMS, the most confident); each pose scoring above ``fusion_score`` takes, for each
    keypoint, the most confident keypoint object of that type within ``fusion_distance`` pixels at an input
    of ``fusion_reference`` pixels (scaled to the input's longer side), and that object's confidence as the
    keypoint's score; the other keypoints score their pose's confidence. At most ``max_people`` per image
    (COCO's keypoint AP reads the top 20). Test-time augmentation (SPEC-KAPAO: scales 0.8, 1, 1.2 with flips)
    runs the network at each of ``test_scales`` and, with ``test_flip``, on each mirrored too, and pools the
    candidates before NMS (``SingleStageModule.detect``).
    """

    name = "kapao"
    layout = "whole_image"
    target_key = "targets"

    def __init__(
        self,
        anchors: Sequence[Sequence[Sequence[float]]] = ANCHORS,
        strides: Sequence[int] = STRIDES,
        anchor_threshold: float = 4.0,
        balance: Sequence[float] = (4.0, 1.0, 0.25, 0.06),
        box_gain: float = 0.05,
        objectness_gain: float = 0.7,
        class_gain: float = 0.3,
        keypoint_gain: float = 0.025,
        reference_size: int = 640,
        pose_threshold: float = 0.001,
        pose_iou: float = 0.65,
        keypoint_object_threshold: float = 0.2,
        keypoint_iou: float = 0.25,
        fusion_score: float = 0.3,
        fusion_distance: float = 50.0,
        fusion_reference: int = 1280,
        max_people: int = 20,
        max_candidates: int = 3000,
        test_scales: Sequence[float] = (1.0,),
        test_flip: bool = False,
        keypoint_threshold: float = 0.3,
    ) -> None:
        self.anchors = [[[float(v) for v in anchor] for anchor in level] for level in anchors]
        self.strides = [int(s) for s in strides]
        if len(self.anchors) != len(self.strides) or len({len(level) for level in self.anchors}) != 1:
            raise CodecError(
                f"codec.anchors: one list of equally many (w, h) per level, {len(self.strides)} levels "
                f"(strides {self.strides}), got {len(self.anchors)} levels"
            )
        self.balance = [float(b) for b in balance]
        if len(self.balance) != len(self.strides):
            raise CodecError(f"codec.balance: one weight per level ({len(self.strides)}), got {self.balance}")
        if not test_scales or any(float(s) <= 0 for s in test_scales):
            raise CodecError(f"codec.test_scales={list(test_scales)}: positive input scales, at least one")
        self.anchor_threshold = float(anchor_threshold)
        self.box_gain, self.objectness_gain = float(box_gain), float(objectness_gain)
        self.class_gain, self.keypoint_gain = float(class_gain), float(keypoint_gain)
        self.reference_size = int(reference_size)
        self.pose_threshold, self.pose_iou = float(pose_threshold), float(pose_iou)
        self.keypoint_object_threshold, self.keypoint_iou = float(keypoint_object_threshold), float(keypoint_iou)
        self.fusion_score, self.fusion_distance = float(fusion_score), float(fusion_distance)
        self.fusion_reference = int(fusion_reference)
        self.max_people, self.max_candidates = int(max_people), int(max_candidates)
        self.test_scales = [float(s) for s in test_scales]
        self.test_flip = bool(test_flip)
        self.keypoint_threshold = float(keypoint_threshold)

    def settings(self) -> dict[str, Any]:
        return {
            "anchors": self.anchors,
            "strides": self.strides,
            "anchor_threshold": self.anchor_threshold,
            "balance": self.balance,
            "box_gain": self.box_gain,
            "objectness_gain": self.objectness_gain,
            "class_gain": self.class_gain,
            "keypoint_gain": self.keypoint_gain,
            "reference_size": self.reference_size,
            "pose_threshold": self.pose_threshold,
            "pose_iou": self.pose_iou,
            "keypoint_object_threshold": self.keypoint_object_threshold,
            "keypoint_iou": self.keypoint_iou,
            "fusion_score": self.fusion_score,
            "fusion_distance": self.fusion_distance,
            "fusion_reference": self.fusion_reference,
            "max_people": self.max_people,
            "max_candidates": self.max_candidates,
            "test_scales": self.test_scales,
            "test_flip": self.test_flip,
            "keypoint_threshold": self.keypoint_threshold,
        }

    @property
    def num_anchors(self) -> int:
        return len(self.anchors[0])

    def _anchors(self, level: int, device: torch.device) -> torch.Tensor:
        """The level's anchors (A, 2) in grid cells."""
        return torch.tensor(self.anchors[level], device=device) / self.strides[level]

    def levels(self, outputs: Outputs) -> tuple[list[torch.Tensor], int]:
        """The outputs as (B, A, h, w, 6 + 3K) float tensors per level, and K."""
        tensors = list(named_outputs(outputs).values())
        if len(tensors) != len(self.strides):
            raise CodecError(
                f"KAPAO's codec decodes {len(self.strides)} output levels, the network gave {len(tensors)}"
            )
        b, channels, _, _ = tensors[0].shape
        per_anchor = channels // self.num_anchors
        k = (per_anchor - 6) // 3
        if per_anchor * self.num_anchors != channels or 6 + 3 * k != per_anchor or k < 1:
            raise CodecError(
                f"KAPAO's outputs hold {self.num_anchors} anchors x (6 + 3K) channels per level, got {channels}"
            )
        levels = [
            t.float().reshape(b, self.num_anchors, per_anchor, t.shape[-2], t.shape[-1]).permute(0, 1, 3, 4, 2)
            for t in tensors
        ]
        return levels, k

    def assign(self, targets: torch.Tensor, level: int, grid: Sequence[int]) -> Assignment:
        """The (anchor, cell)s of ``level`` (a ``grid`` of (h, w) cells) that learn each label of ``targets``."""
        h, w = grid
        anchors = self._anchors(level, targets.device)
        boxes = targets[:, 2:6] / self.strides[level]
        centre, size = (boxes[:, :2] + boxes[:, 2:]) / 2, (boxes[:, 2:] - boxes[:, :2]).clamp(min=1e-6)
        ratio = size[:, None, :] / anchors[None]  # (N, A, 2)
        matched = torch.maximum(ratio, 1 / ratio).amax(-1) < self.anchor_threshold
        label, anchor = matched.nonzero(as_tuple=True)
        c = centre[label]
        cell = c.floor()
        frac = c - cell
        cell = cell.long()
        cell[:, 0].clamp_(0, w - 1)
        cell[:, 1].clamp_(0, h - 1)
        side = torch.where(frac < 0.5, -1, 1)  # the neighbour nearest the centre, horizontally and vertically
        zero = torch.zeros_like(side[:, 0])
        offsets = [torch.stack([zero, zero], 1), torch.stack([side[:, 0], zero], 1), torch.stack([zero, side[:, 1]], 1)]
        cells = torch.cat([cell + o for o in offsets])
        keep = (cells[:, 0] >= 0) & (cells[:, 0] < w) & (cells[:, 1] >= 0) & (cells[:, 1] < h)
        label, anchor, c = label.repeat(3)[keep], anchor.repeat(3)[keep], c.repeat(3, 1)[keep]
        cells = cells[keep]
        return Assignment(label, targets[label, 0].long(), anchor, cells[:, 0], cells[:, 1], c - cells)

    def loss(self, outputs: Outputs, targets: torch.Tensor, input_size: Sequence[int]) -> dict[str, torch.Tensor]:
        levels, k = self.levels(outputs)
        if targets.ndim != 2 or targets.shape[1] != 6 + 3 * k:
            raise CodecError(f"KAPAO's targets are (N, {6 + 3 * k}) object labels for {k} keypoints, got "
                             f"{tuple(targets.shape)}")  # fmt: skip
        targets = targets.to(levels[0].device, torch.float32)
        batch = levels[0].shape[0]
        device = levels[0].device
        box, objectness, classes, keypoints = (torch.zeros((), device=device) for _ in range(4))
        for level, out in enumerate(levels):
            target_objectness = torch.zeros(out.shape[:4], device=device)
            found = self.assign(targets, level, out.shape[2:4])
            if len(found.label):
                pred = out[found.image, found.anchor, found.gy, found.gx]
                anchors = self._anchors(level, device)[found.anchor]
                p = pred.sigmoid()
                predicted = torch.cat([p[:, :2] * 2 - 0.5, (p[:, 2:4] * 2) ** 2 * anchors], 1)
                labels = targets[found.label]
                size = (labels[:, 4:6] - labels[:, 2:4]) / self.strides[level]
                iou = complete_iou(xywh_to_xyxy(predicted), xywh_to_xyxy(torch.cat([found.offset, size], 1)))
                box = box + (1 - iou).mean()
                flat = ((found.image * self.num_anchors + found.anchor) * out.shape[2] + found.gy) * out.shape[3]
                target_objectness.view(-1).scatter_reduce_(
                    0, flat + found.gx, iou.detach().clamp(min=0).to(target_objectness.dtype), "amax"
                )
                onehot = F.one_hot(labels[:, 1].long(), 1 + k).to(pred.dtype)
                classes = classes + F.binary_cross_entropy_with_logits(pred[:, 5 : 6 + k], onehot)
                keypoints = keypoints + self._keypoint_loss(p, labels, found, anchors, level, k)
            objectness = objectness + self.balance[level] * F.binary_cross_entropy_with_logits(
                out[..., 4], target_objectness
            )
        per_level = 3 / len(self.strides)
        size_gain = (max(int(input_size[0]), int(input_size[1])) / self.reference_size) ** 2
        parts = {
            "box": box * self.box_gain * per_level,
            "objectness": objectness * self.objectness_gain * size_gain * per_level,
            "class": classes * self.class_gain * (1 + k) / 80 * per_level,
            "keypoints": keypoints * self.keypoint_gain * per_level,
        }
        parts = {name: value * batch for name, value in parts.items()}
        return {"loss": sum(parts.values()), **parts}

    def _keypoint_loss(
        self, p: torch.Tensor, labels: torch.Tensor, found: Assignment, anchors: torch.Tensor, level: int, k: int
    ) -> torch.Tensor:
        """Mean L2 distance (grid cells) between predicted and labelled visible keypoints of pose objects."""
        pose = labels[:, 1] == 0
        points = labels[:, 6:].view(-1, k, 3)
        visible = pose[:, None] & (points[..., 2] > 0)
        if not visible.any():
            return p.new_zeros(())
        corner = torch.stack([found.gx, found.gy], 1).to(p.dtype)
        target = points[..., :2] / self.strides[level] - corner[:, None, :]
        predicted = (p[:, 6 + k :].view(-1, k, 2) * 4 - 2) * anchors[:, None, :]
        return torch.linalg.vector_norm(predicted - target, dim=-1)[visible].mean()

    def candidates(self, outputs: Outputs) -> Candidates:
        """Every anchor decoded (SPEC-KAPAO section 2): box centre (2s - 0.5 + g) x stride, size (2s)^2 x anchor,
        keypoints (4s - 2) x anchor + g x stride, confidence objectness x the best class's probability."""
        levels, k = self.levels(outputs)
        boxes, confidence, classes, keypoints = [], [], [], []
        for level, out in enumerate(levels):
            b, a, h, w, _ = out.shape
            stride = self.strides[level]
            p = out.sigmoid()
            gy, gx = torch.meshgrid(torch.arange(h, device=out.device), torch.arange(w, device=out.device),
                                    indexing="ij")  # fmt: skip
            corner = torch.stack([gx, gy], -1).to(p.dtype) * stride  # (h, w, 2)
            anchors = torch.tensor(self.anchors[level], device=out.device, dtype=p.dtype).view(1, a, 1, 1, 2)
            centre = (p[..., :2] * 2 - 0.5) * stride + corner
            size = (p[..., 2:4] * 2) ** 2 * anchors
            best, cls = (p[..., 5 : 6 + k] * p[..., 4:5]).max(-1)
            points = (p[..., 6 + k :].reshape(b, a, h, w, k, 2) * 4 - 2) * anchors[..., None, :] + corner[..., None, :]
            boxes.append(torch.cat([centre - size / 2, centre + size / 2], -1).reshape(b, -1, 4))
            confidence.append(best.reshape(b, -1))
            classes.append(cls.reshape(b, -1))
            keypoints.append(points.reshape(b, -1, k, 2))
        return Candidates(torch.cat(boxes, 1), torch.cat(confidence, 1), torch.cat(classes, 1),
                          torch.cat(keypoints, 1))  # fmt: skip

    def people(self, candidates: Candidates, input_size: Sequence[int]) -> list[People]:
        """Each image's people: pose objects and keypoint objects through NMS, then fused."""
        distance = self.fusion_distance * max(int(input_size[0]), int(input_size[1])) / self.fusion_reference
        found = []
        for b in range(len(candidates.confidence)):
            conf, cls = candidates.confidence[b], candidates.classes[b]
            pose = self._select(candidates.boxes[b], conf, cls, (cls == 0) & (conf > self.pose_threshold),
                                self.pose_iou, self.max_people)  # fmt: skip
            objects = self._select(candidates.boxes[b], conf, cls, (cls > 0) & (conf > self.keypoint_object_threshold),
                                   self.keypoint_iou, None)  # fmt: skip
            boxes, scores = candidates.boxes[b, pose], conf[pose]
            keypoints = candidates.keypoints[b, pose].clone()
            keypoint_scores = scores[:, None].expand(-1, keypoints.shape[1]).clone()
            centres = (candidates.boxes[b, objects, :2] + candidates.boxes[b, objects, 2:]) / 2
            fuse(keypoints, keypoint_scores, scores > self.fusion_score, centres, cls[objects] - 1, conf[objects],
                 distance)  # fmt: skip
            found.append(People(boxes, scores, keypoints, keypoint_scores))
        return found

    def _select(
        self,
        boxes: torch.Tensor,
        confidence: torch.Tensor,
        classes: torch.Tensor,
        mask: torch.Tensor,
        iou: float,
        limit: int | None,
    ) -> torch.Tensor:
        """Indices of the masked candidates NMS keeps, most confident first (at most ``max_candidates`` enter)."""
        index = mask.nonzero().squeeze(1)
        if len(index) > self.max_candidates:
            index = index[confidence[index].topk(self.max_candidates).indices]
        kept = batched_nms(boxes[index], confidence[index], classes[index], iou, limit)
        return index[kept]

    def detect(self, outputs: Outputs, input_size: Sequence[int]) -> list[People]:
        """Each image's people from one pass of the network (no test-time augmentation)."""
        return self.people(self.candidates(outputs), input_size)

    def encode(self, targets: torch.Tensor, batch_size: int, input_size: Sequence[int]) -> tuple[torch.Tensor, ...]:
        """The raw outputs a perfect network would give for ``targets`` (N, 6 + 3K): each label at the anchor
        closest to its shape, in its centre cell, confident; every other anchor silent. Labels must fit their
        anchor (size within 4x, keypoints within 2 anchors of the cell) and not share a cell and anchor."""
        k = (targets.shape[1] - 6) // 3
        a, per_anchor = self.num_anchors, 6 + 3 * k
        height, width = int(input_size[0]), int(input_size[1])
        outputs = [
            torch.full((batch_size, a, height // s, width // s, per_anchor), -20.0, device=targets.device)
            for s in self.strides
        ]
        size = (targets[:, 4:6] - targets[:, 2:4]).clamp(min=1e-6)
        all_anchors = torch.tensor(self.anchors, device=targets.device)  # (L, A, 2)
        ratio = size[:, None, None, :] / all_anchors[None]
        fit = torch.maximum(ratio, 1 / ratio).amax(-1).flatten(1).argmin(1)  # (N,) over L x A
        for row, choice in zip(targets, fit.tolist()):
            level, anchor = divmod(choice, a)
            stride, anchor_size = self.strides[level], all_anchors[level, anchor]
            centre = (row[2:4] + row[4:6]) / 2
            cell = (centre / stride).floor()
            value = outputs[level][int(row[0]), anchor, int(cell[1]), int(cell[0])]
            value[:2] = _logit((centre / stride - cell + 0.5) / 2)
            value[2:4] = _logit(((row[4:6] - row[2:4]) / anchor_size).sqrt() / 2)
            value[4] = 20.0
            value[5 + int(row[1])] = 20.0
            points = row[6:].view(k, 3)[:, :2]
            value[6 + k :] = _logit((points - cell * stride) / anchor_size / 4 + 0.5).flatten()
        return tuple(o.permute(0, 1, 4, 2, 3).reshape(batch_size, a * per_anchor, o.shape[2], o.shape[3])
                     for o in outputs)  # fmt: skip


def fuse(
    keypoints: torch.Tensor,
    keypoint_scores: torch.Tensor,
    confident: torch.Tensor,
    centres: torch.Tensor,
    types: torch.Tensor,
    confidence: torch.Tensor,
    distance: float,
) -> None:
    """In place: each keypoint k of each ``confident`` pose (keypoints (n, K, 2), scores (n, K)) becomes the
    most confident keypoint object of type k (centres (m, 2), types (m,) in 0..K-1, confidence (m,)) within
    ``distance`` of it, with that object's confidence as its score (SPEC-KAPAO section 4)."""
    n, k = keypoints.shape[:2]
    if n == 0 or len(centres) == 0 or not confident.any():
        return
    own = keypoints[:, types]  # (n, m, 2): each pose's keypoint of each object's type
    near = torch.linalg.vector_norm(own - centres[None], dim=-1) < distance
    same = types[None, :] == torch.arange(k, device=types.device)[:, None]  # (K, m)
    score = torch.where(near[:, None, :] & same[None] & confident[:, None, None], confidence[None, None, :],
                        confidence.new_tensor(-math.inf))  # fmt: skip
    best, which = score.max(-1)  # (n, K)
    fused = torch.isfinite(best)
    keypoints[fused] = centres[which[fused]]
    keypoint_scores[fused] = best[fused].to(keypoint_scores.dtype)
