"""KAPAO as a whole system: its configs compose (the paper's and the CPU default), train.py trains it on whole
synthetic images and ends with COCO AP from fused poses, and predict (no detections file), test-time
augmentation and ONNX export work from its checkpoint alone."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from callbacks import ExponentialMovingAverage
from evopose_pl.codecs.kapao import KapaoCodec
from evopose_pl.nets import KapaoNet, deployed
from evopose_pl.predict import load_pose_module
from evopose_pl.recipes import SgdNesterovCosine
from evopose_pl.single_stage import SingleStageModule

# experiment -> (batch, published COCO val AP without TTA)
PAPER = {"kapao_s": (128, 63.0), "kapao_m": (72, 68.5), "kapao_l": (48, 70.6)}
# A run of seconds: KAPAO-S at 128x192 on a few synthetic whole images.
TINY = [
    "model=kapao_s", "data.whole_image.input_size=[128,192]", "data.whole_image.batch_size=4",
    "data.synthetic.train_images=12", "data.synthetic.val_images=4", "data.num_workers=0", "trainer.max_epochs=1",
    "logger=none",
]  # fmt: skip


@pytest.mark.parametrize("experiment", sorted(PAPER))
def test_paper_experiments_compose_with_the_paper_settings(compose, experiment):
    batch, _ = PAPER[experiment]
    cfg = compose("train", f"experiment={experiment}", "data.root=/data/coco")
    assert cfg.model.name == experiment and list(cfg.data.whole_image.input_size) == [1280, 1280]
    assert cfg.data.whole_image.batch_size == batch and cfg.trainer.max_epochs == 500
    assert cfg.data.whole_image.augmentation.scale == 0.9 and cfg.data.whole_image.augmentation.mosaic_prob == 1
    assert isinstance(instantiate(cfg.codec), KapaoCodec) and isinstance(instantiate(cfg.recipe), SgdNesterovCosine)


def test_the_cpu_default_is_whole_synthetic_images(compose):
    cfg = compose("train", "model=kapao_s")
    assert cfg.data._target_.endswith("SyntheticDataModule") and list(cfg.data.whole_image.input_size) == [128, 192]
    datamodule = instantiate(cfg.data, synthetic={"train_images": 8, "val_images": 4}, layout="whole_image")
    assert datamodule.input_size == (128, 192) and datamodule.batch_size == cfg.data.whole_image.batch_size


def test_whole_image_data_refuses_what_it_cannot_serve(compose):
    cfg = compose("train", "model=kapao_s", "data.synthetic.train_images=8", "data.synthetic.val_images=4")
    with pytest.raises(Exception, match=r"data.whole_image.input_size=\[100, 320\]"):
        instantiate(cfg.data, layout="whole_image", whole_image={"input_size": [100, 320]})
    with pytest.raises(Exception, match="data.format=mpii"):
        instantiate(cfg.data, layout="whole_image", format="mpii")
    with pytest.raises(Exception, match="data.crop_cache"):
        instantiate(cfg.data, layout="whole_image", crop_cache="/tmp/crops")


@pytest.fixture(scope="module")
def kapao_run(tmp_path_factory, root) -> tuple[Path, str]:
    """`python train.py model=kapao_s ...` on a few whole synthetic images: the run directory and its output."""
    run = tmp_path_factory.mktemp("kapao")
    result = subprocess.run(
        [sys.executable, "train.py", *TINY, f"hydra.run.dir={run}"], cwd=root, capture_output=True, text=True,
        timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return run, result.stdout + result.stderr


def test_train_ends_with_coco_ap_of_fused_poses(kapao_run):
    run, out = kapao_run
    assert re.search(r"COCO keypoints AP: \d+\.\d+", out)
    assert "SGD (Nesterov)" in out
    result = json.loads((run / "result.json").read_text())
    assert result["accuracy_metric"] == "COCO keypoints AP" and result["params"] > 12e6
    assert (run / "keypoints_results.json").exists()


def test_the_checkpoint_holds_the_weight_average_and_rebuilds_the_system(kapao_run):
    run, _ = kapao_run
    ckpt = run / "checkpoints" / "best.ckpt"
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert "current_model_state" in checkpoint  # the average is the state_dict; the raw weights are kept beside it
    assert checkpoint["codec"]["name"] == "kapao" and checkpoint["recipe"]["name"] == "SgdNesterovCosine"
    module = load_pose_module(ckpt)
    assert isinstance(module, SingleStageModule) and isinstance(module.net, KapaoNet)
    assert isinstance(module.codec, KapaoCodec) and module.input_size == (128, 192)
    assert module.keypoint_info.num_keypoints == 17
    average = {k: v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}
    torch.testing.assert_close(module.state_dict()["net.stem.conv.conv.weight"], average["net.stem.conv.conv.weight"])


def test_the_recipe_adds_the_weight_average(compose):
    from session import build

    cfg = compose("train", *TINY[:-1], "logger=none")
    session = build(cfg)
    averages = [c for c in session.callbacks if isinstance(c, ExponentialMovingAverage)]
    assert len(averages) == 1 and averages[0].decay == pytest.approx(0.9999)
    assert isinstance(session.module, SingleStageModule)


def test_predict_draws_poses_on_real_coco_images_without_detections(kapao_run, coco_sample, tmp_path):
    from evopose_pl.predict import run as predict

    run, _ = kapao_run
    ckpt = run / "checkpoints" / "best.ckpt"
    results = json.loads(predict(ckpt, coco_sample, output=tmp_path).read_text())
    images = sorted(coco_sample.glob("*.jpg"))
    assert len(list(tmp_path.glob("*.jpg"))) == len(images)
    sizes = {int(p.stem): cv2.imread(str(p)).shape[:2] for p in images}
    for record in results:
        height, width = sizes[record["image_id"]]
        points = np.array(record["keypoints"]).reshape(17, 3)
        assert np.isfinite(points).all() and 0 <= record["score"] <= 1
        assert (points[:, 0] > -width).all() and (points[:, 0] < 2 * width).all()
    with pytest.raises(ValueError, match="finds people itself"):
        predict(ckpt, coco_sample, detections=coco_sample / "test_coco_det_AP_H_56.json", output=tmp_path)


def test_test_time_augmentation_runs_every_scale_and_mirror(kapao_run):
    run, _ = kapao_run
    module = load_pose_module(run / "checkpoints" / "best.ckpt")
    module.codec = KapaoCodec(**{**module.codec.settings(), "test_scales": [0.8, 1.0, 1.2], "test_flip": True})
    seen = []
    module.net.register_forward_pre_hook(lambda net, args: seen.append(tuple(args[0].shape[-2:])))
    images = torch.randint(0, 255, (2, 3, 128, 192), dtype=torch.uint8)
    people = module.detect(images)
    # 0.8 x (128, 192) = (102, 154) padded to multiples of 64; 1.2 x = (154, 230) -> (192, 256)
    assert sorted(seen) == sorted([(128, 192)] * 2 + [(128, 192)] * 2 + [(192, 256)] * 2)
    assert len(people) == 2 and all(p.keypoints.shape[1:] == (17, 2) for p in people)
    assert module.passes() == [(0.8, False), (0.8, True), (1.0, False), (1.0, True), (1.2, False), (1.2, True)]


def test_onnx_export_takes_any_multiple_of_64_and_decodes_as_the_network(kapao_run, tmp_path, onnx_export):
    run, _ = kapao_run
    ckpt = run / "checkpoints" / "best.ckpt"
    session, metadata = onnx_export(ckpt, tmp_path / "kapao.onnx")
    assert [o.name for o in session.get_outputs()] == ["p3", "p4", "p5", "p6"]
    assert metadata["codec"]["name"] == "kapao" and len(metadata["codec"]["settings"]["anchors"]) == 4
    module = load_pose_module(ckpt)
    for size in ((128, 192), (192, 128)):
        images = torch.rand(1, 3, *size) * 255
        with torch.no_grad(), deployed(module.net):
            expected = [o.numpy() for o in module(images).values()]
        got = session.run(None, {"images": images.numpy()})
        assert [g.shape for g in got] == [e.shape for e in expected]
        assert max(np.abs(g - e).max() for g, e in zip(got, expected)) < 1e-3
        decoded = module.codec.detect([torch.from_numpy(g) for g in got], size)[0]
        reference = module.codec.detect([torch.from_numpy(e) for e in expected], size)[0]
        assert len(decoded) == len(reference)
