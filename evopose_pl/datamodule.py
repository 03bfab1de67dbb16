"""LightningDataModules: any COCO-format keypoint dataset, and the embedded synthetic one."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset

from evopose_pl.data.coco import KeypointInfo
from evopose_pl.data.crop_cache import ensure_crop_cache
from evopose_pl.data.dataset import TopDownDataset
from evopose_pl.data.synthetic import SyntheticConfig, ensure_synthetic
from evopose_pl.data.transforms import Augmentation


class PoseDataModule(pl.LightningDataModule):
    """Top-down COCO-format data: ground-truth boxes for training and validation, a detections
    file (or ground-truth boxes when none is given) for testing. Relative paths are taken
    relative to ``root``.

    ``crop_cache`` (a folder) serves training and validation from pre-decoded, memory-mapped
    crops (``evopose_pl.data.crop_cache``), which needs flip-only augmentation: the search-time
    recipe, where every child of a search reads the same crops. ``pin_memory`` None pins batches
    when the trainer runs on a GPU.
    """

    def __init__(
        self,
        train_annotations: str | os.PathLike | None,
        train_images: str | os.PathLike | None,
        val_annotations: str | os.PathLike,
        val_images: str | os.PathLike,
        test_detections: str | os.PathLike | None = None,
        input_size: Sequence[int] = (256, 192),
        batch_size: int = 32,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        augmentation: Augmentation | Mapping | None = None,
        score_threshold: float = 0.0,
        pin_memory: bool | None = None,
        seed: int = 0,
        root: str | os.PathLike | None = None,
        crop_cache: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()

        def under_root(path: str | os.PathLike | None) -> Path | None:
            return None if path is None else Path(root or "") / path

        self.train_annotations, self.train_images = under_root(train_annotations), under_root(train_images)
        self.val_annotations, self.val_images = under_root(val_annotations), under_root(val_images)
        self.test_detections = under_root(test_detections)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.num_workers = num_workers
        if isinstance(augmentation, Mapping):
            unknown = set(augmentation) - {f.name for f in fields(Augmentation)}
            if unknown:
                raise ValueError(f"data.augmentation: unknown fields {sorted(unknown)}")
            augmentation = Augmentation(**augmentation)
        self.augmentation = augmentation if augmentation is not None else Augmentation()
        self.score_threshold = score_threshold
        self.pin_memory = pin_memory
        self.seed = seed
        self.crop_cache = None if crop_cache is None else Path(crop_cache)
        if self.crop_cache is not None and not self.augmentation.flip_only:
            raise ValueError(
                "data.crop_cache needs flip-only augmentation (the search-time recipe), but data.augmentation has "
                f"scale_factor={self.augmentation.scale_factor}, rotation_prob={self.augmentation.rotation_prob}, "
                f"half_body_prob={self.augmentation.half_body_prob}: set them to 0 or data.crop_cache=null"
            )
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: TopDownDataset | None = None

    def _dataset(self, split: str, annotations, images, cached: bool = False, **kwargs) -> Dataset:
        """One split, its kept and skipped instances logged; served from the crop cache when ``cached``.

        A split served from a crop cache reads no image, so its images are checked only when the
        cache is built from them (``ensure_crop_cache``).
        """
        from_cache = cached and self.crop_cache is not None
        dataset = TopDownDataset(
            annotations, images, self.input_size, seed=self.seed, check_images=not from_cache, **kwargs
        )
        rank_zero_info(f"{split}: {dataset.summary()}")
        if not from_cache:
            return dataset
        cache = ensure_crop_cache(dataset, self.crop_cache, self.num_workers)
        rank_zero_info(
            f"Crop cache: {len(cache)} crops of {dataset.annotation_file}, {cache.nbytes / 2**20:.1f} MiB"
            f" at {cache.root}"
        )
        return cache

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_set is None:
            if self.train_annotations is None:
                raise ValueError("data.train_annotations is not set: training needs a training split")
            self.train_set = self._dataset(
                "train", self.train_annotations, self.train_images, cached=True, augmentation=self.augmentation
            )
        if stage in (None, "fit", "validate") and self.val_set is None:
            self.val_set = self._dataset("val", self.val_annotations, self.val_images, cached=True)
        if stage in (None, "test", "predict") and self.test_set is None:
            self.test_set = self._dataset(
                "test", self.val_annotations, self.val_images, detections=self.test_detections,
                score_threshold=self.score_threshold,
            )  # fmt: skip

    @property
    def keypoint_info(self) -> KeypointInfo:
        """The keypoint set of the data (from the validation annotations' person category)."""
        dataset = self.val_set or self.train_set or self.test_set
        if dataset is None:
            self.setup("validate")
            dataset = self.val_set
        return dataset.coco.keypoint_info

    def _loader(self, dataset: Dataset, batch_size: int, shuffle: bool) -> DataLoader:
        pin_memory = self.pin_memory
        if pin_memory is None:
            pin_memory = self.trainer is not None and self.trainer.strategy.root_device.type == "cuda"
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=shuffle and len(dataset) >= batch_size,
            num_workers=self.num_workers,
            pin_memory=pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.val_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, self.val_batch_size, shuffle=False)


class SyntheticDataModule(PoseDataModule):
    """The embedded synthetic dataset, generated under ``cache_dir`` on first use and reused.

    It is generated on construction rather than in ``prepare_data`` because the keypoint set
    (read from its files) decides the network's output channels before a Trainer exists;
    generation is cached and atomic, so concurrent ranks are safe.
    """

    def __init__(self, cache_dir: str | os.PathLike, synthetic: SyntheticConfig | Mapping | None = None, **kwargs):
        self.synthetic = (
            SyntheticConfig(**synthetic) if isinstance(synthetic, Mapping) else synthetic or SyntheticConfig()
        )
        self.paths = ensure_synthetic(cache_dir, self.synthetic)
        super().__init__(
            train_annotations=self.paths.train_annotations,
            train_images=self.paths.images("train"),
            val_annotations=self.paths.val_annotations,
            val_images=self.paths.images("val"),
            test_detections=self.paths.val_detections,
            **kwargs,
        )
