"""The LightningModule of single-stage systems (KAPAO): whole images in, people out, with no person
detector. Training and validation are PoseModule's (the codec's loss on the batch's object labels); testing
and prediction find every person of an image, with test-time augmentation when asked."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from evopose_pl.codecs import Codec
from evopose_pl.codecs.kapao import Candidates, KapaoCodec, People
from evopose_pl.data.heatmaps import to_image
from evopose_pl.data.whole_image import PAD_VALUE, STRIDE
from evopose_pl.module import PoseModule
from evopose_pl.nets import deployed


class SingleStageModule(PoseModule):
    """Train and test a whole-image pose system. Test-time augmentation is the codec's (``test_scales``,
    ``test_flip``: SPEC-KAPAO section 4), part of what a checkpoint's codec records; ``flip_test`` is the
    top-down crops' and plays no part here."""

    codec: KapaoCodec

    def passes(self) -> list[tuple[float, bool]]:
        """(scale, mirrored) of each test pass."""
        flips = (False, True) if self.codec.test_flip else (False,)
        return [(scale, flip) for scale in self.codec.test_scales for flip in flips]

    @torch.no_grad()
    def detect(self, images: torch.Tensor) -> list[People]:
        """The people of each uint8 image (B, 3, H, W), in its pixels: every test pass decoded, pooled, then
        through NMS and fusion (the network as deployed)."""
        height, width = images.shape[-2:]
        found = []
        with deployed(self.net):
            for scale, flip in self.passes():
                size = (max(1, round(height * scale)), max(1, round(width * scale)))
                x = images.float()
                if size != (height, width):
                    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
                if flip:
                    x = x.flip(-1)
                padded = [-(-s // STRIDE) * STRIDE for s in size]
                x = F.pad(x, (0, padded[1] - size[1], 0, padded[0] - size[0]), value=PAD_VALUE)
                candidates = self.codec.candidates(self(x))
                if flip:
                    candidates = candidates.mirrored(size[1], self.flip_index)
                found.append(candidates.scaled(size[1] / width, size[0] / height))
        return self.codec.people(Candidates.cat(found), (height, width))

    def test_step(self, batch: dict, batch_idx: int) -> None:
        for people, image_id, affine in zip(self.detect(batch["image"]), batch["image_id"], batch["affine"]):
            if not len(people):
                continue
            people = in_image(people, affine)
            self._records.extend(
                self.metric.records(
                    {"image_id": [int(image_id)] * len(people)},
                    people.keypoints.cpu().numpy(),
                    people.keypoint_scores.float().cpu().numpy(),
                    people.scores.float().cpu().numpy(),
                )
            )


def module_class(codec: Codec) -> type[PoseModule]:
    """The LightningModule class for a codec's layout: crops (PoseModule) or whole images (SingleStageModule)."""
    return SingleStageModule if codec.layout == "whole_image" else PoseModule


def in_image(people: People, affine: torch.Tensor) -> People:
    """People found in the input, their boxes and keypoints mapped back to the image through its (2, 3)
    image -> input affine (the letterbox)."""
    matrix = affine[None].float()
    corners = to_image(people.boxes.float().reshape(1, -1, 2), matrix).reshape(-1, 4)
    keypoints = to_image(people.keypoints.float().reshape(1, -1, 2), matrix).view_as(people.keypoints)
    return People(corners, people.scores, keypoints, people.keypoint_scores)
