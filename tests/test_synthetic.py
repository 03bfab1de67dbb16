"""The embedded synthetic dataset: deterministic, cached, COCO-schema, honest visibility."""

from __future__ import annotations

import json

import numpy as np
from pycocotools.coco import COCO

from evopose_pl.data import TopDownDataset
from evopose_pl.data.synthetic import COCO_KEYPOINTS, SyntheticConfig, ensure_synthetic, generate

SMALL = SyntheticConfig(train_images=30, val_images=10)


def test_same_seed_same_dataset_other_seed_other(tmp_path):
    a = generate(tmp_path / "a", SMALL)
    b = generate(tmp_path / "b", SMALL)
    c = generate(tmp_path / "c", SyntheticConfig(train_images=30, val_images=10, seed=1))
    assert a.train_annotations.read_text() == b.train_annotations.read_text()
    assert (a.images("train") / "00000001.jpg").read_bytes() == (b.images("train") / "00000001.jpg").read_bytes()
    assert a.train_annotations.read_text() != c.train_annotations.read_text()


def test_generated_once_then_reused(tmp_path):
    first = ensure_synthetic(tmp_path, SMALL)
    stamp = first.train_annotations.stat().st_mtime_ns
    again = ensure_synthetic(tmp_path, SMALL)
    assert again.root == first.root and again.train_annotations.stat().st_mtime_ns == stamp
    other = ensure_synthetic(tmp_path, SyntheticConfig(train_images=31, val_images=10))
    assert other.root != first.root
    assert not list(tmp_path.glob("*.tmp*"))


def test_coco_schema_and_honest_visibility(tmp_path):
    paths = generate(tmp_path, SyntheticConfig(train_images=120, val_images=20))
    data = json.loads(paths.train_annotations.read_text())
    assert data["categories"][0]["keypoints"] == list(COCO_KEYPOINTS) and len(data["categories"][0]["skeleton"]) == 19
    coco = COCO(str(paths.train_annotations))  # pycocotools accepts it
    per_image = [len(coco.getAnnIds(imgIds=i)) for i in coco.getImgIds()]
    assert 1 <= min(per_image) and max(per_image) <= 3 and len(data["annotations"]) > 1.5 * len(data["images"])
    kp = np.array([a["keypoints"] for a in data["annotations"]]).reshape(-1, 17, 3)
    v = kp[..., 2]
    assert set(np.unique(v)) == {0, 1, 2}
    assert np.all(kp[v == 0][:, :2] == 0)  # unlabelled: outside the image, zero coordinates
    w, h = data["images"][0]["width"], data["images"][0]["height"]
    assert np.all((kp[v > 0][:, 0] >= 0) & (kp[v > 0][:, 0] <= w - 1) & (kp[v > 0][:, 1] <= h - 1))
    assert all(a["num_keypoints"] == int((np.array(a["keypoints"][2::3]) > 0).sum()) for a in data["annotations"])
    for a in data["annotations"]:  # labelled keypoints sit in or near their person's box
        x, y, bw, bh = a["bbox"]
        pts = np.array(a["keypoints"]).reshape(17, 3)
        pts = pts[pts[:, 2] > 0, :2]
        assert np.all((pts[:, 0] >= x - 0.1 * bw - 3) & (pts[:, 0] <= x + 1.1 * bw + 3))
    scale_spread = np.ptp([a["bbox"][3] for a in data["annotations"]])
    assert scale_spread > 0.3 * h


def test_val_detections_jitter_every_person_and_add_false_positives(tmp_path):
    paths = generate(tmp_path, SyntheticConfig(train_images=5, val_images=60))
    annotations = json.loads(paths.val_annotations.read_text())["annotations"]
    detections = json.loads(paths.val_detections.read_text())
    assert len(detections) > len(annotations)
    scores = np.array([d["score"] for d in detections])
    assert (scores < 0.5).sum() == len(detections) - len(annotations)  # the false positives score low
    ds = TopDownDataset(paths.val_annotations, paths.images("val"), (64, 48), detections=paths.val_detections)
    assert len(ds) == len(detections) and ds[0]["image"].shape == (3, 64, 48)
