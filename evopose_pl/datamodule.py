"""LightningDataModules: any COCO-format keypoint dataset, and the embedded synthetic one."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path

import lightning.pytorch as pl
from torch.utils.data import DataLoader

from evopose_pl.data.coco import KeypointInfo
from evopose_pl.data.dataset import TopDownDataset
from evopose_pl.data.synthetic import SyntheticConfig, ensure_synthetic
from evopose_pl.data.transforms import Augmentation


class PoseDataModule(pl.LightningDataModule):
    """Top-down COCO-format data: ground-truth boxes for training and validation, a detections
    file (or ground-truth boxes when none is given) for testing. Relative paths are taken
    relative to ``root``."""

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
        pin_memory: bool = True,
        seed: int = 0,
        root: str | os.PathLike | None = None,
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
        self.train_set: TopDownDataset | None = None
        self.val_set: TopDownDataset | None = None
        self.test_set: TopDownDataset | None = None

    def _dataset(self, annotations, images, **kwargs) -> TopDownDataset:
        return TopDownDataset(annotations, images, self.input_size, seed=self.seed, **kwargs)

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_set is None:
            if self.train_annotations is None:
                raise ValueError("data.train_annotations is not set: training needs a training split")
            self.train_set = self._dataset(self.train_annotations, self.train_images, augmentation=self.augmentation)
        if stage in (None, "fit", "validate") and self.val_set is None:
            self.val_set = self._dataset(self.val_annotations, self.val_images)
        if stage in (None, "test", "predict") and self.test_set is None:
            self.test_set = self._dataset(
                self.val_annotations, self.val_images, detections=self.test_detections,
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

    def _loader(self, dataset: TopDownDataset, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=shuffle and len(dataset) >= batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
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
