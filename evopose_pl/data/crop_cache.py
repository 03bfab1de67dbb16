"""A pre-decoded, memory-mapped crop cache for search-time training.

With flip-only augmentation (the search-time recipe) a training crop depends on nothing but a
flip draw, so the crops are the same for every child of a search: decode and warp each instance
once, store the crops in one uint8 array on disk, and let every child, and every loader worker,
read them through a memory map. An epoch then reads no JPEG.

A crop is stored one column wider than the input. The unflipped sample is its columns 0..W-1;
the flipped one (the crop of the mirrored image, as the uncached pipeline cuts it) is its
columns W..1. Cached samples therefore equal the uncached ones, flipped or not, up to OpenCV's
fixed-point rounding.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from evopose_pl.data.coco import Instance, KeypointInfo
from evopose_pl.data.dataset import KeypointAnnotations, TopDownDataset, check_image_files, sample
from evopose_pl.data.transforms import (
    box_to_center_scale,
    compose,
    crop_matrix,
    mask_outside,
    mirror_crop_matrix,
    project_keypoints,
    warp,
)  # fmt: skip

CACHE_VERSION = 1
_ARRAYS = ("crops", "keypoints", "affines")


def cache_key(dataset: TopDownDataset) -> str:
    """What the crops depend on: the annotation files (path, size, time), the images, the input size."""
    annotations = Path(dataset.annotation_file).resolve()
    stat = annotations.stat()
    # Files besides the annotation file (MPII's official ground truth: its joints replace the json's).
    others = [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in dataset.annotations.files[1:]]
    blob = json.dumps(
        [
            CACHE_VERSION,
            str(annotations),
            stat.st_size,
            stat.st_mtime_ns,
            str(dataset.annotations.images_dir.resolve()),
            list(dataset.input_size),
            len(dataset),
        ]  # fmt: skip
        + others
    )
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


class _Crops(Dataset):
    """The wide, unaugmented crop of each instance, for building the cache with loader workers."""

    def __init__(self, dataset: TopDownDataset) -> None:
        self.dataset = dataset
        height, width = dataset.input_size
        self.size = (height, width + 1)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
        inst = self.dataset.instances[index]
        matrix = crop_matrix(*box_to_center_scale(inst.box, self.dataset.input_size), self.dataset.input_size)
        crop = cv2.cvtColor(warp(self.dataset.read_image(inst), matrix, self.size), cv2.COLOR_BGR2RGB)
        keypoints = project_keypoints(inst.keypoints, matrix)
        return index, crop.transpose(2, 0, 1), keypoints, matrix.astype(np.float32)


def _build(dataset: TopDownDataset, root: Path, num_workers: int) -> None:
    """Write the cache of ``dataset`` under ``root`` (a fresh folder)."""
    root.mkdir(parents=True)
    crops = _Crops(dataset)
    n, k = len(dataset), dataset.keypoint_info.num_keypoints
    shapes = {"crops": (n, 3, *crops.size), "keypoints": (n, k, 3), "affines": (n, 2, 3)}
    dtypes = {"crops": np.uint8, "keypoints": np.float32, "affines": np.float32}
    arrays = {
        name: np.lib.format.open_memmap(root / f"{name}.npy", "w+", dtypes[name], shapes[name]) for name in _ARRAYS
    }
    # Its own generator: a loader draws its workers' base seed from the global one otherwise, and a search
    # that builds the cache must train exactly like one that finds it built.
    loader = DataLoader(crops, batch_size=64, num_workers=num_workers, generator=torch.Generator())
    for index, *values in loader:
        for name, value in zip(_ARRAYS, values):
            arrays[name][index.numpy()] = value.numpy()
    for array in arrays.values():
        array.flush()
    meta = {"version": CACHE_VERSION, "annotations": str(dataset.annotation_file), "count": n,
            "input_size": list(dataset.input_size)}  # fmt: skip
    (root / "meta.json").write_text(json.dumps(meta, indent=1))


class CachedCrops(Dataset):
    """A ``TopDownDataset`` served from its crop cache: the same samples, flips drawn the same way.

    The arrays are memory-mapped on first access in each process, never pickled to workers.
    """

    def __init__(self, dataset: TopDownDataset, root: str | os.PathLike) -> None:
        augmentation = dataset.augmentation
        if augmentation is not None and not augmentation.flip_only:
            raise ValueError(
                f"a crop cache serves flip-only augmentation, but the augmentation is {augmentation}: "
                "set scale_factor, rotation_prob and half_body_prob to 0, or turn the cache off"
            )
        self.dataset = dataset
        self.root = Path(root)
        self._arrays: dict[str, np.ndarray] | None = None
        self.input_size = dataset.input_size
        self.arrays()  # fail here, not in a worker, on a cache that does not fit the dataset

    @property
    def annotations(self) -> KeypointAnnotations:
        return self.dataset.annotations

    @property
    def annotation_file(self) -> Path:
        return self.dataset.annotation_file

    @property
    def keypoint_info(self) -> KeypointInfo:
        return self.dataset.keypoint_info

    @property
    def instances(self) -> list[Instance]:
        return self.dataset.instances

    @property
    def nbytes(self) -> int:
        return sum((self.root / f"{name}.npy").stat().st_size for name in _ARRAYS)

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def arrays(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            arrays = {name: np.load(self.root / f"{name}.npy", mmap_mode="r") for name in _ARRAYS}
            height, width = self.input_size
            expected = (len(self.dataset), 3, height, width + 1)
            if arrays["crops"].shape != expected:
                raise ValueError(
                    f"crop cache {self.root} holds crops {arrays['crops'].shape}, not {expected} for "
                    f"{self.annotation_file}: delete the folder to rebuild it"
                )
            self._arrays = arrays
        return self._arrays

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_arrays": None}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        arrays = self.arrays()
        width = self.input_size[1]
        keypoints, matrix = arrays["keypoints"][index].copy(), arrays["affines"][index].astype(np.float64)
        augmentation = self.dataset.augmentation
        if augmentation is not None and augmentation.draw_flip(self.dataset.rng(index)):
            crop = arrays["crops"][index, :, :, width:0:-1]
            keypoints[:, 0] = width - keypoints[:, 0]
            keypoints = keypoints[list(self.dataset.flip_index)]
            matrix = compose(mirror_crop_matrix(width), matrix)
        else:
            crop = arrays["crops"][index, :, :, :width]
        return sample(crop, mask_outside(keypoints, self.input_size), matrix, self.dataset.instances[index], index)


def ensure_crop_cache(dataset: TopDownDataset, cache_dir: str | os.PathLike, num_workers: int = 0) -> CachedCrops:
    """``dataset`` served from its crop cache under ``cache_dir``, built on first use.

    One process builds (the others wait on a lock file); it checks the images first, then writes a
    temporary folder renamed into place when complete, so an interrupted build never leaves a
    half-written cache. Building draws nothing from global random state.
    """
    cache_dir = Path(cache_dir)
    root = cache_dir / f"crops-{cache_key(dataset)}"
    if not (root / "meta.json").exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        with open(cache_dir / f"{root.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (root / "meta.json").exists():
                for stale in cache_dir.glob(f"{root.name}.tmp*"):  # left by a build that was killed
                    shutil.rmtree(stale, ignore_errors=True)
                check_image_files(dataset.instances)  # a missing image or truncated JPEG is named before the build
                tmp = root.with_name(f"{root.name}.tmp{os.getpid()}")
                _build(dataset, tmp, num_workers)
                shutil.rmtree(root, ignore_errors=True)  # a folder without meta.json is incomplete
                tmp.rename(root)
    return CachedCrops(dataset, root)
