"""Inference on images and ONNX export, from a checkpoint that train.py wrote."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from evopose_pl.predict import load_pose_module


@pytest.fixture
def checkpoint(trained_checkpoint):
    return trained_checkpoint


def test_checkpoint_rebuilds_its_network_and_keypoint_set(checkpoint):
    module = load_pose_module(checkpoint)
    assert type(module.net).__name__ == "EvoPoseNet" and module.input_size == (64, 48)
    names, skeleton = module.keypoint_info.names, [list(pair) for pair in module.keypoint_info.skeleton]
    assert len(names) == 17 and names[0] == "nose" and module.flip_index[1] == 2
    assert [5, 6] in skeleton or [6, 5] in skeleton
    settings = {"sigma": None, "keypoint_threshold": 0.2, "peak": 255.0, "loss_scale": 1.0}
    assert module.codec.describe() == {"name": "heatmap", "settings": settings}
    saved = torch.load(checkpoint, weights_only=True)["state_dict"]
    assert torch.equal(module.net.final.weight, saved["net.final.weight"])


def test_predict_on_the_coco_sample_with_its_detections(checkpoint, coco_sample, tmp_path, root):
    out = tmp_path / "predictions"
    result = subprocess.run(
        [sys.executable, "-m", "evopose_pl.predict", f"ckpt={checkpoint}", f"images={coco_sample}",
         f"detections={coco_sample / 'test_coco_det_AP_H_56.json'}", f"output={out}", "device=cpu"],
        cwd=root, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    detections = json.loads((coco_sample / "test_coco_det_AP_H_56.json").read_text())
    images = sorted(p for p in coco_sample.iterdir() if p.suffix == ".jpg")
    expected = sum(1 for d in detections if d.get("category_id", 1) == 1 and d["bbox"][2] > 0 and d["bbox"][3] > 0)
    results = json.loads((out / "keypoints_results.json").read_text())
    assert len(results) == expected > 0
    ids = {int(p.stem) for p in images}
    for r in results:
        assert r["image_id"] in ids and r["category_id"] == 1 and len(r["keypoints"]) == 17 * 3
        assert 0 <= r["score"] <= 1 and all(np.isfinite(r["keypoints"]))
    for image in images:
        drawn = cv2.imread(str(out / f"{image.stem}.jpg"))
        original = cv2.imread(str(image))
        assert drawn.shape == original.shape and (drawn != original).any()  # something was drawn


def test_predict_without_detections_uses_the_whole_image(checkpoint, coco_sample, tmp_path):
    image = next(p for p in sorted(coco_sample.iterdir()) if p.suffix == ".jpg")
    from evopose_pl.predict import run

    results = json.loads(run(checkpoint, image, output=tmp_path, flip_test=False).read_text())
    assert len(results) == 1 and results[0]["image_id"] == int(image.stem)


def test_predict_reports_bad_arguments(checkpoint, tmp_path, root):
    def predict(*args):
        return subprocess.run([sys.executable, "-m", "evopose_pl.predict", *args], cwd=root, capture_output=True,
                              text=True)  # fmt: skip

    assert "ckpt=" in predict(f"images={tmp_path}").stderr
    assert "no images" in predict(f"ckpt={checkpoint}", f"images={tmp_path}").stderr
    assert "flip_test=maybe: expected true or false" in predict(f"ckpt={checkpoint}", "flip_test=maybe").stderr
    assert "no such checkpoint" in predict(f"ckpt={tmp_path / 'x.ckpt'}", f"images={tmp_path}").stderr


def test_onnx_export_matches_pytorch_heatmaps_at_two_batch_sizes(checkpoint, tmp_path, onnx_export):
    session, _ = onnx_export(checkpoint, tmp_path / "model.onnx", "format=onnx")
    module = load_pose_module(checkpoint, flip_test=False)
    for batch in (1, 5):
        images = torch.rand(batch, 3, *module.input_size) * 255
        with torch.no_grad():
            expected = module(images).numpy()
        (got,) = session.run(["heatmaps"], {"images": images.numpy()})
        assert got.shape == expected.shape
        # float32 kernels differ in summation order; heatmaps span about 0-255
        assert np.abs(got - expected).max() < 1e-3
