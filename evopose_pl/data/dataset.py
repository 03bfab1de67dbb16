"""The top-down dataset: one sample per person instance, cropped to the network input."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from evopose_pl.data.coco import AnnotationError, CocoKeypoints, Instance, KeypointInfo
from evopose_pl.data.transforms import Augmentation, sample_matrix, transform_keypoints, warp

# A JPEG ends with the end-of-image marker FF D9. Inside a scan's entropy-coded data an FF byte is
# always followed by 00 (byte stuffing) or a restart marker (D0-D7), so neither FF D9 nor the
# start-of-scan marker FF DA can occur there: a file cut mid-scan has no FF D9 after its last FF DA.
# The last 4 KiB settle almost every file (about 20 us per image when cached). A file they do not
# settle (cut, or with padding, a thumbnail's marker or a trailer such as a phone's motion-photo
# video after its end) is walked from its start, segment by segment and scan by scan, to its own end
# marker: a trailer's bytes can hold FF DA or FF D9 by chance, the walk never reads them.
_JPEG_TAIL = 4 * 1024
_PROBLEMS_SHOWN = 20


class ImageFileError(ValueError):
    """An image file that would be read wrongly (a truncated JPEG) or not at all (a folder); the message
    names it and the annotation record that needs it."""


def truncated_jpeg(path: Path) -> bool:
    """Whether ``path`` is a JPEG (by its magic bytes) cut before its end: OpenCV would decode it, grey
    below the cut, with only a libjpeg warning on stderr. Reads the first two bytes and the tail, and
    the whole file only when the tail does not settle it."""
    with open(path, "rb") as f:
        if f.read(2) != b"\xff\xd8":
            return False
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - _JPEG_TAIL))
        tail = f.read()
        if tail.rfind(b"\xff\xd9") > tail.rfind(b"\xff\xda"):
            return False
        f.seek(0)
        return not _reaches_end_marker(f.read())


def _reaches_end_marker(data: bytes) -> bool:
    """Whether the JPEG in ``data`` reaches its end-of-image marker: each segment is skipped by its length,
    each scan's entropy-coded data up to the next marker that is neither byte stuffing nor a restart."""
    i, n = 2, len(data)
    while i + 1 < n:
        if data[i] != 0xFF:
            return False  # not at a marker: the file is damaged
        marker = data[i + 1]
        if marker == 0xD9:
            return True
        if marker == 0xFF or 0xD0 <= marker <= 0xD7 or marker == 0x01:  # fill byte; markers without a length
            i += 1 if marker == 0xFF else 2
            continue
        if i + 4 > n:
            return False
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
        while marker == 0xDA:  # a scan's data runs to the next real marker
            i = data.find(b"\xff", i)
            if i < 0 or i + 1 >= n:
                return False
            following = data[i + 1]
            if following == 0x00 or 0xD0 <= following <= 0xD7:
                i += 2
            elif following == 0xFF:
                i += 1
            else:
                break
    return False


def check_image_files(instances: Sequence[Instance]) -> None:
    """Refuse, before training starts, images that are missing, unreadable or truncated JPEGs, naming each
    and a record that needs it: found mid-epoch they would stop a run hours in, or train on grey pixels.

    Each distinct image is checked once. A missing image raises ``FileNotFoundError``, the others
    ``ImageFileError``; the message lists every bad image (the first 20).
    """
    records: dict[Path, list[str]] = {}
    for inst in instances:
        records.setdefault(inst.image_path, []).append(inst.record)
    missing, unusable = [], []
    for path, needed in records.items():
        by = f"(needed by {needed[0]}{f' and {len(needed) - 1} more' if len(needed) > 1 else ''})"
        try:
            if truncated_jpeg(path):
                unusable.append(
                    f"image {path} is a truncated JPEG: no end-of-image marker after its last scan, so it would be "
                    f"decoded grey below the cut; restore the file {by}"
                )
        except FileNotFoundError:
            missing.append(f"image {path} does not exist {by}")
        except OSError as error:
            unusable.append(f"image {path} cannot be read ({error.strerror}) {by}")
    problems = missing + unusable
    if problems:
        more = len(problems) - _PROBLEMS_SHOWN
        message = "\n".join(problems[:_PROBLEMS_SHOWN] + ([f"... and {more} more bad images"] if more > 0 else []))
        raise (FileNotFoundError if missing else ImageFileError)(message)


class KeypointAnnotations(Protocol):
    """An annotation source ``TopDownDataset`` crops people from: ``CocoKeypoints`` or ``MpiiAnnotations``."""

    annotation_file: Path
    images_dir: Path
    keypoint_info: KeypointInfo
    instances: list[Instance]

    @property
    def files(self) -> tuple[Path, ...]:
        """The files the instances are read from."""

    def skip_summary(self) -> str:
        """The annotations left out, by reason, for the log."""

    def detections(self, detections_file: str | os.PathLike, box_threshold: float = 0.0) -> list[Instance]:
        """A detector's person boxes as test instances."""


class AnnotatedDataset(Dataset):
    """What the datasets of both layouts (crops, whole images) share: their annotation source, and augmentation
    draws seeded by (seed, epoch, sample), so each sample is reproducible and each epoch differs."""

    def __init__(self, annotations: KeypointAnnotations, seed: int) -> None:
        self.annotations = annotations
        self.seed = seed
        # Shared memory: persistent loader workers hold copies of the dataset made at their start,
        # and must still see the epoch the main process sets.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def annotation_file(self) -> Path:
        return self.annotations.annotation_file

    @property
    def keypoint_info(self) -> KeypointInfo:
        return self.annotations.keypoint_info

    def set_epoch(self, epoch: int) -> None:
        """Reseed augmentation per epoch, so each epoch sees new draws, reproducibly."""
        self._epoch.fill_(epoch)

    def rng(self, index: int) -> np.random.Generator:
        """The augmentation draws of one sample in the current epoch."""
        return np.random.default_rng((self.seed, int(self._epoch), index))


class TopDownDataset(AnnotatedDataset):
    """Person crops from a keypoint dataset: COCO-format (an annotation file and its images folder) or
    any annotation source (``CocoKeypoints``, ``MpiiAnnotations``).

    ``detections`` switches from ground-truth boxes (training, validation) to a detector's boxes
    scoring at least ``box_threshold`` (testing). A sample holds ``image`` (3, H, W) uint8 RGB,
    ``keypoints`` (K, 3) in input pixels with visibility (0 once outside the crop), ``index`` (the
    person's position in the split, where a metric finds its ground truth), and ``image_id``,
    ``affine`` (image -> input, 2x3) and ``score`` (the box score) to map predictions back.

    Construction refuses bad data up front, before any training: an empty split (``AnnotationError``
    with the skip counts), and, unless ``check_images`` is False, missing images and truncated
    JPEGs (``check_image_files``).
    """

    def __init__(
        self,
        annotations: KeypointAnnotations | str | os.PathLike,
        images_dir: str | os.PathLike | None = None,
        input_size: Sequence[int] = (256, 192),
        augmentation: Augmentation | None = None,
        detections: str | os.PathLike | None = None,
        box_threshold: float = 0.0,
        seed: int = 0,
        check_images: bool = True,
    ) -> None:
        if isinstance(annotations, (str, os.PathLike)):
            if images_dir is None:
                raise ValueError(f"TopDownDataset: the COCO annotation file {annotations} needs its images_dir")
            annotations = CocoKeypoints(annotations, images_dir)
        elif images_dir is not None:
            raise ValueError(
                "TopDownDataset: images_dir goes with an annotation file; an annotation source knows its images"
            )
        super().__init__(annotations, seed)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.augmentation = augmentation
        self.detections = None if detections is None else Path(detections)
        self.box_threshold = box_threshold
        self.instances: list[Instance] = (
            annotations.instances if detections is None else annotations.detections(detections, box_threshold)
        )
        if not self.instances:
            raise AnnotationError(
                f"{annotations.annotation_file}: no valid person instance ({annotations.skip_summary()}): the split "
                "would be empty"
                if detections is None
                else f"detections file {detections}: no person detection with score >= {box_threshold} and a "
                f"non-empty box among the images of {annotations.annotation_file}: the test split would be empty"
            )
        if check_images:
            check_image_files(self.instances)
        info = annotations.keypoint_info
        self.flip_index, self.upper_body = info.flip_index, info.upper_body

    def summary(self) -> str:
        """What the split holds and what was left out, for the log: a documented, counted skip."""
        if self.detections is not None:
            return f"{len(self)} person boxes of {self.detections} with score >= {self.box_threshold}"
        return f"{len(self)} person instances of {self.annotation_file} ({self.annotations.skip_summary()})"

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
        return sample(crop, keypoints, matrix, inst, index)


def sample(
    crop: np.ndarray, keypoints: np.ndarray, matrix: np.ndarray, inst: Instance, index: int
) -> dict[str, torch.Tensor]:
    """One training or test sample: the (3, H, W) uint8 RGB crop, its keypoints, the person's index in
    the split, and what maps predictions back to the image."""
    return {
        "image": torch.from_numpy(np.ascontiguousarray(crop)),
        "keypoints": torch.from_numpy(keypoints),
        "index": int(index),
        "image_id": inst.image_id,
        "affine": torch.from_numpy(matrix.astype(np.float32)),
        "score": torch.tensor(inst.score, dtype=torch.float32),
    }
