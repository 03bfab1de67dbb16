"""The embedded synthetic dataset: deterministic, cached, COCO-schema and MPII-format, honest visibility."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest
from omegaconf import OmegaConf
from pycocotools.coco import COCO

from evopose_pl.data import MpiiAnnotations, TopDownDataset
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


def test_the_embedded_defaults_are_the_yaml_s(compose):
    """SyntheticConfig's defaults are what data=synthetic (and data=mpii_synthetic: the same images) generate."""
    defaults = {
        key: list(value) if isinstance(value, tuple) else value for key, value in asdict(SyntheticConfig()).items()
    }
    for data in ("synthetic", "mpii_synthetic"):
        configured = OmegaConf.to_container(compose("train", f"data={data}").data.synthetic)
        assert configured == {key: defaults[key] for key in configured}, data
    assert (SyntheticConfig().train_images, SyntheticConfig().val_images) == (2000, 100)


def test_mpii_format_holds_the_same_people_in_mpii_s_convention(tmp_path):
    paths = generate(tmp_path, SyntheticConfig(train_images=40, val_images=5))
    coco = json.loads(paths.train_annotations.read_text())
    names = {image["id"]: image["file_name"] for image in coco["images"]}
    w, h = coco["images"][0]["width"], coco["images"][0]["height"]
    records = json.loads(paths.mpii_train_annotations.read_text())
    assert len(records) == len(coco["annotations"])
    assert [r["image"] for r in records] == [names[a["image_id"]] for a in coco["annotations"]]
    # MPII's joints 1-based, its order; the joints both sets have are the COCO keypoints, labelled alike
    shared = {0: 16, 1: 14, 2: 12, 3: 11, 4: 13, 5: 15, 10: 10, 11: 8, 12: 6, 13: 5, 14: 7, 15: 9}
    for record, annotation in zip(records, coco["annotations"]):
        joints, visible = np.array(record["joints"]), np.array(record["joints_vis"])
        keypoints = np.array(annotation["keypoints"]).reshape(17, 3)
        for j, k in shared.items():
            assert visible[j] == (keypoints[k, 2] > 0)
            if visible[j]:
                assert joints[j] - 1 == pytest.approx(keypoints[k, :2], abs=0.02)
        assert np.all(joints[visible == 0] == -1)
        inside = joints[visible > 0] - 1
        assert np.all((inside >= 0) & (inside <= [w - 1, h - 1]))
        x1, y1, x2, y2 = record["head_box"]
        top, neck = joints[9], joints[8]
        if visible[9] and visible[8]:
            # head_top on the box's top edge, upper_neck inside it near its bottom; scale x 200 = 6 head segments
            assert top[1] == pytest.approx(y1) and x1 <= top[0] <= x2 and x1 <= neck[0] <= x2
            assert y2 - 0.25 * (y2 - y1) <= neck[1] <= y2 + 0.01
            assert record["scale"] * 200 == pytest.approx(6 * np.linalg.norm(top - neck), rel=1e-3, abs=0.02)
        if visible[[2, 3, 6]].all():  # pelvis between the hips, thorax between the shoulders
            assert joints[6] == pytest.approx((joints[2] + joints[3]) / 2, abs=0.02)
        if visible.all():  # the loaders' centre (y + 15 x scale) is the middle of the joints
            middle = (joints.min(0) + joints.max(0)) / 2
            shifted = np.array(record["center"]) + [0, 15 * record["scale"]]
            assert shifted == pytest.approx(middle, abs=0.1)
    mpii = MpiiAnnotations(paths.mpii_val_annotations, paths.images("val"))
    assert all(inst.head_box is not None for inst in mpii.instances)
    assert len(mpii.instances) == len(json.loads(paths.val_annotations.read_text())["annotations"])
