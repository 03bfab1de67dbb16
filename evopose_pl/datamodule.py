"""LightningDataModules: keypoint datasets in COCO's or MPII's format, and the embedded synthetic one
(in either format), served as person crops (top-down systems) or whole images (single-stage systems)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset

from evopose_pl.data.coco import CocoKeypoints, KeypointInfo
from evopose_pl.data.crop_cache import ensure_crop_cache
from evopose_pl.data.dataset import KeypointAnnotations, TopDownDataset
from evopose_pl.data.mpii import MpiiAnnotations
from evopose_pl.data.synthetic import SyntheticConfig, ensure_synthetic
from evopose_pl.data.transforms import Augmentation
from evopose_pl.data.whole_image import SceneAugmentation, WholeImageDataset, collate_objects
from evopose_pl.metrics import CocoKeypointAP, Metric, PCKh

#: The annotation formats, and the metric each is scored with unless ``metric`` says otherwise.
DEFAULT_METRICS: dict[str, Callable[[TopDownDataset], Metric]] = {"coco": CocoKeypointAP, "mpii": PCKh}
#: How samples are served: person crops, or whole images with every person's object labels.
LAYOUTS = ("top_down", "whole_image")


class PoseDataModule(pl.LightningDataModule):
    """Top-down keypoint data: ground-truth boxes for training and validation, a detections file (or
    ground-truth boxes when none is given) for testing. Relative paths are taken relative to ``root``.

    ``format`` is ``"coco"`` (COCO keypoint files) or ``"mpii"`` (the MPII json of the SimpleBaseline,
    HRNet and mmpose tools, ``evopose_pl.data.mpii``): MPII is tested on its annotated people, with the
    official ground truth ``head_boxes`` (``gt_valid.mat``) for the validation annotations, unless they
    carry inline head boxes. ``metric`` builds the test metric from the test split
    (``metric(test_dataset)``: a ``Metric`` class, a ``functools.partial``, Hydra's ``_partial_``); by
    default COCO keypoint AP for COCO-format data and PCKh for MPII. ``box_threshold`` is the lowest
    detection box score tested.

    ``crop_cache`` (a folder) serves training and validation from pre-decoded, memory-mapped
    crops (``evopose_pl.data.crop_cache``), which needs flip-only augmentation: the search-time
    recipe, where every child of a search reads the same crops. ``pin_memory`` None pins batches
    when the trainer runs on a GPU.

    ``layout`` is the codec's (``Codec.layout``; train.py passes it): ``top_down`` serves person crops at
    ``input_size``, ``whole_image`` serves whole COCO-format images letterboxed to ``whole_image.input_size``
    (multiples of 64) with every person's object labels (``data.whole_image``), in batches of
    ``whole_image.batch_size``, augmented by ``whole_image.augmentation`` (``SceneAugmentation``: mosaic, scale,
    translation, HSV, flip) for training; they are tested on every image of the annotation file, with no
    detections file.
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
        box_threshold: float = 0.0,
        pin_memory: bool | None = None,
        seed: int = 0,
        root: str | os.PathLike | None = None,
        crop_cache: str | os.PathLike | None = None,
        format: str = "coco",
        head_boxes: str | os.PathLike | None = None,
        metric: Callable[[Dataset], Metric] | None = None,
        layout: str = "top_down",
        whole_image: Mapping | None = None,
    ) -> None:
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"data layout {layout!r}: must be one of {', '.join(map(repr, LAYOUTS))}")
        if format not in DEFAULT_METRICS:
            raise ValueError(f"data.format={format!r}: must be one of {', '.join(map(repr, DEFAULT_METRICS))}")
        if format != "mpii" and head_boxes is not None:
            raise ValueError(f"data.head_boxes={head_boxes}: head boxes are MPII's (data.format=mpii), not {format}'s")
        if format == "mpii" and test_detections is not None:
            raise ValueError(
                f"data.test_detections={test_detections}: MPII is tested on its annotated people (centre and scale), "
                "not on a detector's boxes: set it to null"
            )
        if metric is not None and not callable(metric):
            raise TypeError(f"data.metric must build a Metric from the test split (a class or partial), not {metric!r}")
        self.format = format
        self.metric = metric

        def under_root(path: str | os.PathLike | None) -> Path | None:
            return None if path is None else Path(root or "") / path

        self.train_annotations, self.train_images = under_root(train_annotations), under_root(train_images)
        self.val_annotations, self.val_images = under_root(val_annotations), under_root(val_images)
        self.test_detections = under_root(test_detections)
        self.head_boxes = under_root(head_boxes)
        self.layout = layout
        if layout == "whole_image":
            input_size, batch_size, val_batch_size = self._whole_image_settings(whole_image or {}, crop_cache)
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
        self.box_threshold = box_threshold
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
        self.test_set: TopDownDataset | WholeImageDataset | None = None

    def _whole_image_settings(self, settings: Mapping, crop_cache: object) -> tuple[Sequence[int], int, int]:
        """Input size and batch sizes of the whole-image layout, checked; keeps its augmentation."""
        known = {"input_size", "batch_size", "val_batch_size", "augmentation", "keypoint_box"}
        unknown = set(settings) - known
        if unknown:
            raise ValueError(f"data.whole_image: unknown fields {sorted(unknown)} (known: {sorted(known)})")
        if self.format != "coco":
            raise ValueError(
                f"data.format={self.format}: whole images (a single-stage system such as KAPAO) are read from "
                "COCO-format annotations: use a COCO-format dataset"
            )
        if crop_cache is not None:
            raise ValueError("data.crop_cache holds person crops; whole images (codec=kapao) need data.crop_cache=null")
        size = [int(s) for s in settings.get("input_size", (256, 320))]
        if len(size) != 2 or any(s <= 0 or s % 64 for s in size):
            raise ValueError(f"data.whole_image.input_size={size}: height and width must be positive multiples of 64")
        augmentation = settings.get("augmentation")
        if isinstance(augmentation, Mapping):
            unknown = set(augmentation) - {f.name for f in fields(SceneAugmentation)}
            if unknown:
                raise ValueError(f"data.whole_image.augmentation: unknown fields {sorted(unknown)}")
            augmentation = SceneAugmentation(**augmentation)
        self.scene_augmentation = augmentation if augmentation is not None else SceneAugmentation()
        self.keypoint_box = float(settings.get("keypoint_box", 0.05))
        batch = int(settings.get("batch_size", 16))
        return size, batch, int(settings.get("val_batch_size") or batch)

    def read_annotations(
        self, annotation_file: Path, images: Path, head_boxes: Path | None = None
    ) -> KeypointAnnotations:
        """An annotation file of the data's format, read."""
        if self.format == "mpii":
            return MpiiAnnotations(annotation_file, images, head_boxes)
        return CocoKeypoints(annotation_file, images)

    def _dataset(self, split: str, annotations: KeypointAnnotations, cached: bool = False, **kwargs) -> Dataset:
        """One split, its kept and skipped instances logged; served from the crop cache when ``cached``.

        A split served from a crop cache reads no image, so its images are checked only when the
        cache is built from them (``ensure_crop_cache``).
        """
        from_cache = cached and self.crop_cache is not None
        dataset = TopDownDataset(
            annotations, input_size=self.input_size, seed=self.seed, check_images=not from_cache, **kwargs
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

    def _whole_images(self, split: str, annotations: CocoKeypoints, train: bool = False) -> WholeImageDataset:
        """One split of whole images, logged."""
        dataset = WholeImageDataset(
            annotations,
            self.input_size,
            self.scene_augmentation if train else None,
            seed=self.seed,
            keypoint_box=self.keypoint_box,
        )
        rank_zero_info(f"{split}: {dataset.summary()}")
        return dataset

    def setup(self, stage: str | None = None) -> None:
        if self.layout == "whole_image":
            self._setup_whole_images(stage)
            return
        if stage in (None, "fit") and self.train_set is None:
            if self.train_annotations is None:
                raise ValueError("data.train_annotations is not set: training needs a training split")
            train = self.read_annotations(self.train_annotations, self.train_images)
            self.train_set = self._dataset("train", train, cached=True, augmentation=self.augmentation)
        if stage in (None, "fit", "validate") and self.val_set is None:
            val = self.read_annotations(self.val_annotations, self.val_images, self.head_boxes)
            self.val_set = self._dataset("val", val, cached=True)
        if stage in (None, "test", "predict") and self.test_set is None:
            test = self.read_annotations(self.val_annotations, self.val_images, self.head_boxes)
            self.test_set = self._dataset(
                "test", test, detections=self.test_detections, box_threshold=self.box_threshold
            )

    def _setup_whole_images(self, stage: str | None) -> None:
        if stage in (None, "fit") and self.train_set is None:
            if self.train_annotations is None:
                raise ValueError("data.train_annotations is not set: training needs a training split")
            train = CocoKeypoints(self.train_annotations, self.train_images)
            self.train_set = self._whole_images("train", train, train=True)
        if self.val_set is None and stage in (None, "fit", "validate", "test", "predict"):
            self.val_set = self._whole_images("val", CocoKeypoints(self.val_annotations, self.val_images))
        if stage in (None, "test", "predict"):
            self.test_set = self.val_set  # every image of the annotation file: no detections file

    @property
    def keypoint_info(self) -> KeypointInfo:
        """The keypoint set of the data (from the validation annotations)."""
        dataset = self.val_set or self.train_set or self.test_set
        if dataset is None:
            self.setup("validate")
            dataset = self.val_set
        return dataset.keypoint_info

    def test_metric(self) -> Metric:
        """The metric of the test split (set up on first use): ``metric`` when given, else the format's
        default (COCO keypoint AP, or PCKh for MPII)."""
        if self.test_set is None:
            self.setup("test")
        return (self.metric or DEFAULT_METRICS[self.format])(self.test_set)

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
            collate_fn=collate_objects if self.layout == "whole_image" else None,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.val_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, self.val_batch_size, shuffle=False)


class SyntheticDataModule(PoseDataModule):
    """The embedded synthetic dataset, generated under ``cache_dir`` on first use and reused.

    ``format="coco"`` reads its COCO files (17 keypoints; tested on its jittered detections),
    ``format="mpii"`` its MPII files (16 joints, inline head boxes; tested on the annotated people
    with PCKh): the same images and people.

    It is generated on construction rather than in ``prepare_data`` because the keypoint set
    (read from its files) decides the network's output channels before a Trainer exists;
    generation is cached and atomic, so concurrent ranks are safe.
    """

    def __init__(
        self,
        cache_dir: str | os.PathLike,
        synthetic: SyntheticConfig | Mapping | None = None,
        format: str = "coco",
        **kwargs,
    ):
        self.synthetic = (
            SyntheticConfig(**synthetic) if isinstance(synthetic, Mapping) else synthetic or SyntheticConfig()
        )
        self.paths = ensure_synthetic(cache_dir, self.synthetic)
        mpii = format == "mpii"
        super().__init__(
            train_annotations=self.paths.mpii_train_annotations if mpii else self.paths.train_annotations,
            train_images=self.paths.images("train"),
            val_annotations=self.paths.mpii_val_annotations if mpii else self.paths.val_annotations,
            val_images=self.paths.images("val"),
            test_detections=None if mpii else self.paths.val_detections,
            format=format,
            **kwargs,
        )
