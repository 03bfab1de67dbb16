"""The top-down dataset: one sample per person instance, cropped to the network input."""

from __future__ import annotations

import os
from collections.abc import Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from evopose_pl.data.coco import CocoKeypoints, Instance
from evopose_pl.data.transforms import Augmentation, sample_matrix, transform_keypoints, warp


class TopDownDataset(Dataset):
    """Person crops from a COCO-format keypoint dataset.

    ``detections`` switches from ground-truth boxes (training, validation) to a detector's boxes
    (testing). A sample holds ``image`` (3, H, W) uint8 RGB, ``keypoints`` (K, 3) in input pixels
    with visibility (0 once outside the crop), and ``image_id``, ``affine`` (image -> input,
    2x3) and ``score`` (the box score) to map predictions back.
    """

    def __init__(
        self,
        annotation_file: str | os.PathLike,
        images_dir: str | os.PathLike,
        input_size: Sequence[int] = (256, 192),
        augmentation: Augmentation | None = None,
        detections: str | os.PathLike | None = None,
        score_threshold: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.coco = CocoKeypoints(annotation_file, images_dir)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.augmentation = augmentation
        self.seed = seed
        self.instances: list[Instance] = (
            self.coco.instances if detections is None else self.coco.detections(detections, score_threshold)
        )
        info = self.coco.keypoint_info
        self.flip_index, self.upper_body = info.flip_index, info.upper_body
        self._epoch = 0

    @property
    def annotation_file(self) -> os.PathLike:
        return self.coco.annotation_file

    def set_epoch(self, epoch: int) -> None:
        """Reseed augmentation per epoch, so each epoch sees new draws, reproducibly."""
        self._epoch = epoch

    def __len__(self) -> int:
        return len(self.instances)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        inst = self.instances[index]
        image = cv2.imread(str(inst.image_path), cv2.IMREAD_COLOR)
        if image is None:
            state = "does not exist" if not inst.image_path.exists() else "cannot be decoded"
            raise FileNotFoundError(f"image {inst.image_path} {state} (needed by {inst.record})")
        rng = np.random.default_rng((self.seed, self._epoch, index))
        matrix, flipped = sample_matrix(
            inst.box, inst.keypoints, image.shape[1], self.input_size, self.augmentation, self.upper_body, rng
        )
        crop = cv2.cvtColor(warp(image, matrix, self.input_size), cv2.COLOR_BGR2RGB)
        keypoints = transform_keypoints(inst.keypoints, matrix, flipped, self.flip_index, self.input_size)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1))),
            "keypoints": torch.from_numpy(keypoints),
            "image_id": inst.image_id,
            "affine": torch.from_numpy(matrix.astype(np.float32)),
            "score": torch.tensor(inst.score, dtype=torch.float32),
        }
