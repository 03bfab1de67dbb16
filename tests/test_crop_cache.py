"""The search-time crop cache: the same samples as decoding each JPEG, read from one memory map,
built once, and refused where it cannot hold (any augmentation but a flip)."""

from __future__ import annotations

import json
import math
import multiprocessing
import shutil

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from scipy.io import savemat
from torch.utils.data import DataLoader

from evopose_pl.codecs import HeatmapCodec
from evopose_pl.data import Augmentation, MpiiAnnotations, TopDownDataset
from evopose_pl.data.crop_cache import CachedCrops, ensure_crop_cache
from evopose_pl.data.synthetic import SyntheticConfig, ensure_synthetic
from evopose_pl.datamodule import PoseDataModule
from evopose_pl.module import PoseModule
from evopose_pl.nets import EvoPoseNet
from evopose_pl.recipes import AdamWarmupCosine

INPUT = (64, 48)
SEARCH = Augmentation.search()


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return ensure_synthetic(tmp_path_factory.mktemp("data"), SyntheticConfig(train_images=24, val_images=6))


def _dataset(annotations, images, size=INPUT, augmentation=SEARCH) -> TopDownDataset:
    return TopDownDataset(annotations, images, size, augmentation=augmentation, seed=5)


def _assert_same_samples(decoded: TopDownDataset, cached: CachedCrops) -> int:
    """Every sample equal up to OpenCV's fixed-point rounding; returns how many were flipped."""
    flipped = 0
    for i in range(len(decoded)):
        a, b = decoded[i], cached[i]
        difference = (a["image"].int() - b["image"].int()).abs()
        assert a["image"].shape == b["image"].shape and a["image"].dtype == torch.uint8
        assert difference.max() <= 1 and difference.float().mean() < 0.1, i
        assert torch.equal(a["keypoints"][:, 2], b["keypoints"][:, 2]), i
        torch.testing.assert_close(a["keypoints"], b["keypoints"], atol=1e-3, rtol=0)
        torch.testing.assert_close(a["affine"], b["affine"], atol=1e-4, rtol=0)
        assert a["image_id"] == b["image_id"] and a["score"] == b["score"] and a["index"] == b["index"] == i
        flipped += bool(b["affine"][0, 0] < 0)
    return flipped


@pytest.mark.parametrize("size", [(64, 48), (256, 192)])
def test_cached_samples_equal_decoded_ones_flipped_or_not_every_epoch(synthetic, tmp_path, size):
    decoded = _dataset(synthetic.train_annotations, synthetic.images("train"), size)
    cached = ensure_crop_cache(decoded, tmp_path)
    flips = []
    for epoch in range(3):
        cached.set_epoch(epoch)  # shared with the decoded dataset it serves
        flips.append(_assert_same_samples(decoded, cached))
    assert all(0 < f < len(decoded) for f in flips)  # both branches are exercised, draws change per epoch


def test_cached_real_coco_samples_equal_decoded_ones(coco_sample, tmp_path):
    decoded = _dataset(coco_sample / "test_coco.json", coco_sample, (256, 192))
    _assert_same_samples(decoded, ensure_crop_cache(decoded, tmp_path))
    plain = _dataset(coco_sample / "test_coco.json", coco_sample, (256, 192), augmentation=None)
    _assert_same_samples(plain, ensure_crop_cache(plain, tmp_path))  # validation: never flipped


def test_built_once_then_reused_and_rebuilt_after_an_interrupted_build(synthetic, tmp_path):
    dataset = _dataset(synthetic.val_annotations, synthetic.images("val"))
    first = ensure_crop_cache(dataset, tmp_path)
    built = (first.root / "crops.npy").stat().st_mtime_ns
    assert ensure_crop_cache(dataset, tmp_path).root == first.root
    assert (first.root / "crops.npy").stat().st_mtime_ns == built
    meta = json.loads((first.root / "meta.json").read_text())
    assert meta["count"] == len(dataset) and first.nbytes >= len(dataset) * 3 * 64 * 49
    # another input size is another cache
    assert (
        ensure_crop_cache(_dataset(synthetic.val_annotations, synthetic.images("val"), (32, 24)), tmp_path).root
        != first.root
    )
    # a build killed half-way leaves a folder without meta.json, and a temporary folder: both are replaced
    (first.root / "meta.json").unlink()
    (tmp_path / f"{first.root.name}.tmp99999").mkdir()
    rebuilt = ensure_crop_cache(dataset, tmp_path)
    assert (rebuilt.root / "meta.json").exists() and not list(tmp_path.glob("*.tmp*"))
    _assert_same_samples(dataset, rebuilt)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_building_the_cache_leaves_global_random_state_alone(synthetic, tmp_path, num_workers):
    """A search that builds the cache must train exactly like one that finds it built."""
    dataset = _dataset(synthetic.val_annotations, synthetic.images("val"))
    torch.manual_seed(123)
    before = torch.get_rng_state()
    ensure_crop_cache(dataset, tmp_path, num_workers)
    assert torch.equal(torch.get_rng_state(), before)


def _build_in_process(args) -> str:
    annotations, images, cache_dir = args
    cached = ensure_crop_cache(_dataset(annotations, images), cache_dir)
    return str(cached.root)


def test_concurrent_children_share_one_build(synthetic, tmp_path):
    args = (synthetic.train_annotations, synthetic.images("train"), tmp_path)
    with multiprocessing.get_context("fork").Pool(3) as pool:
        roots = pool.map(_build_in_process, [args] * 3)
    assert len(set(roots)) == 1 and len(list(tmp_path.glob("crops-*"))) == 2  # the cache and its lock file
    dataset = _dataset(synthetic.train_annotations, synthetic.images("train"))
    _assert_same_samples(dataset, CachedCrops(dataset, roots[0]))


def test_an_epoch_with_the_cache_reads_no_jpeg(synthetic, tmp_path, test_genotype):
    images = tmp_path / "images"
    shutil.copytree(synthetic.root / "images", images)

    def fit(cache) -> None:
        data = PoseDataModule(synthetic.train_annotations, images / "train", synthetic.val_annotations,
                              images / "val", input_size=INPUT, batch_size=8, num_workers=1,
                              augmentation=SEARCH, crop_cache=cache)  # fmt: skip
        net = EvoPoseNet(test_genotype, num_keypoints=17)
        module = PoseModule(net, HeatmapCodec(), AdamWarmupCosine(), data.keypoint_info, INPUT, batch_size=8)
        trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
        trainer.fit(module, data)
        assert math.isfinite(module.best_val_loss)

    fit(tmp_path / "crops")  # builds the cache: reads every image once
    shutil.rmtree(images)
    fit(tmp_path / "crops")  # training and validation, no image left to read
    with pytest.raises(FileNotFoundError, match="does not exist"):
        fit(None)


def test_persistent_workers_see_each_new_epoch(synthetic):
    dataset = _dataset(synthetic.train_annotations, synthetic.images("train"))
    loader = DataLoader(dataset, batch_size=len(dataset), num_workers=1, persistent_workers=True)
    for epoch in range(3):
        dataset.set_epoch(epoch)
        (batch,) = list(loader)
        expected = torch.stack([dataset[i]["affine"] for i in range(len(dataset))])
        assert torch.equal(batch["affine"], expected), epoch


def test_the_cache_refuses_augmentation_other_than_a_flip(synthetic, tmp_path):
    with pytest.raises(ValueError, match=r"data.crop_cache needs flip-only augmentation.*scale_factor=0.3"):
        PoseDataModule(synthetic.train_annotations, synthetic.images("train"), synthetic.val_annotations,
                       synthetic.images("val"), augmentation=Augmentation(), crop_cache=tmp_path)  # fmt: skip
    with pytest.raises(ValueError, match="flip-only"):
        CachedCrops(_dataset(synthetic.train_annotations, synthetic.images("train"), augmentation=Augmentation()),
                    tmp_path)  # fmt: skip
    assert not list(tmp_path.iterdir())


def test_a_cache_that_does_not_fit_its_dataset_is_named(synthetic, tmp_path):
    small = ensure_crop_cache(_dataset(synthetic.val_annotations, synthetic.images("val"), (32, 24)), tmp_path)
    with pytest.raises(ValueError, match=rf"crop cache {small.root} holds crops .* delete the folder"):
        CachedCrops(_dataset(synthetic.val_annotations, synthetic.images("val")), small.root)


def test_cached_mpii_samples_equal_decoded_ones(synthetic, tmp_path):
    """MPII's boxes, 16 joints and flip pairs go through the cache as COCO's do; samples keep their index."""
    annotations = MpiiAnnotations(synthetic.mpii_train_annotations, synthetic.images("train"))
    decoded = TopDownDataset(annotations, input_size=(64, 64), augmentation=SEARCH, seed=5)
    cached = ensure_crop_cache(decoded, tmp_path)
    assert cached.keypoint_info.num_keypoints == 16 and cached.instances is decoded.instances
    assert 0 < _assert_same_samples(decoded, cached) < len(decoded)
    assert [cached[i]["index"] for i in range(len(cached))] == list(range(len(cached)))


def test_the_cache_follows_the_official_ground_truth_it_was_built_with(mpii_sample, tmp_path):
    """With gt_valid.mat the joints are the file's: another file is another cache."""
    records = json.loads((mpii_sample / "test_mpii.json").read_text())
    joints = np.array([r["joints"] for r in records], dtype=np.float64)
    boxes = np.stack([joints[:, 8], joints[:, 9]], axis=1)  # a box with upper_neck and head_top as corners

    def official(name: str, shift: float):
        savemat(tmp_path / name, {"headboxes_src": boxes.transpose(1, 2, 0),
                                  "pos_gt_src": (joints + shift).transpose(1, 2, 0),
                                  "jnt_missing": 1 - np.array([r["joints_vis"] for r in records]).T})  # fmt: skip
        annotations = MpiiAnnotations(mpii_sample / "test_mpii.json", mpii_sample, head_boxes=tmp_path / name)
        return TopDownDataset(annotations, input_size=(64, 64))

    first, second = official("a.mat", 0.0), official("b.mat", 2.0)
    cached_first, cached_second = (
        ensure_crop_cache(first, tmp_path / "cache"),
        ensure_crop_cache(second, tmp_path / "cache"),
    )
    assert cached_first.root != cached_second.root
    _assert_same_samples(second, cached_second)
