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
        # Shared memory: persistent loader workers hold copies of the dataset made at their start,
        # and must still see the epoch the main process sets.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def annotation_file(self) -> os.PathLike:
        return self.coco.annotation_file

    def set_epoch(self, epoch: int) -> None:
        """Reseed augmentation per epoch, so each epoch sees new draws, reproducibly."""
        self._epoch.fill_(epoch)

    def rng(self, index: int) -> np.random.Generator:
        """The augmentation draws of one sample in the current epoch."""
        return np.random.default_rng((self.seed, int(self._epoch), index))

    def read_image(self, inst: Instance) -> np.ndarray:
        """The instance's image, BGR as OpenCV decodes it."""
        image = cv2.imread(str(inst.image_path), cv2.IMREAD_COLOR)
        if image is None:
            state = "does not exist" if not inst.image_path.exists() else "cannot be decoded"
            raise FileNotFoundError(f"image {inst.image_path} {state} (needed by {inst.record})")
        return image

    def __len__(self) -> int:
        return len(self.instances)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        inst = self.instances[index]
        image = self.read_image(inst)
        matrix, flipped = sample_matrix(
            inst.box, inst.keypoints, image.shape[1], self.input_size, self.augmentation, self.upper_body,
            self.rng(index),
        )  # fmt: skip
        crop = cv2.cvtColor(warp(image, matrix, self.input_size), cv2.COLOR_BGR2RGB).transpose(2, 0, 1)
        keypoints = transform_keypoints(inst.keypoints, matrix, flipped, self.flip_index, self.input_size)
        return sample(crop, keypoints, matrix, inst)


def sample(crop: np.ndarray, keypoints: np.ndarray, matrix: np.ndarray, inst: Instance) -> dict[str, torch.Tensor]:
    """One training or test sample: the (3, H, W) uint8 RGB crop, its keypoints, and what maps
    predictions back to the image."""
    return {
        "image": torch.from_numpy(np.ascontiguousarray(crop)),
        "keypoints": torch.from_numpy(keypoints),
        "image_id": inst.image_id,
        "affine": torch.from_numpy(matrix.astype(np.float32)),
        "score": torch.tensor(inst.score, dtype=torch.float32),
    }
