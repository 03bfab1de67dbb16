"""EfficientPose as a whole system: its paper configs compose, train.py trains it on MPII-format data and
ends with PCKh, and predict and ONNX export work from its checkpoint alone."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from evopose_pl.codecs import ConfidenceMapCodec
from evopose_pl.data.mpii import MPII_KEYPOINTS
from evopose_pl.nets import EfficientPoseNet, count_parameters, deployed
from evopose_pl.predict import load_pose_module
from evopose_pl.recipes import SgdCyclical

# experiment -> (input size, batch, published parameters)
PAPER = {
    "efficientpose_rt": (224, 20, 0.46),
    "efficientpose_i": (256, 20, 0.72),
    "efficientpose_ii": (368, 20, 1.73),
    "efficientpose_iii": (480, 10, 3.23),
    "efficientpose_iv": (600, 5, 6.56),
    "efficientpose_i_passes1": (256, 20, 0.52),
    "efficientpose_i_passes3": (256, 20, 0.92),
    "efficientpose_ii_passes1": (368, 20, 1.24),
    "efficientpose_ii_passes3": (368, 20, 2.22),
    "efficientpose_i_no_upscaling": (256, 20, 0.71),
}
# A run of seconds: RT at 64x64 on a few synthetic MPII-format images.
TINY = [
    "data=mpii_synthetic", "data.input_size=[64,64]", "data.batch_size=8", "data.synthetic.train_images=16",
    "data.synthetic.val_images=6", "data.num_workers=0", "trainer.max_epochs=1", "logger=none",
]  # fmt: skip


@pytest.mark.parametrize("experiment", sorted(PAPER))
def test_paper_experiments_compose_with_the_paper_settings(compose, experiment):
    size, batch, params = PAPER[experiment]
    cfg = compose("train", f"experiment={experiment}", "data.root=/data/mpii")
    assert cfg.data.format == "mpii" and list(cfg.data.input_size) == [size, size] and cfg.data.batch_size == batch
    assert cfg.trainer.max_epochs == 200 and cfg.data.augmentation.rotation_factor * 2 == 45
    assert cfg.data.augmentation.scale_factor == 0.25 and cfg.data.augmentation.flip_prob == 0.5
    assert isinstance(instantiate(cfg.codec), ConfidenceMapCodec) and isinstance(instantiate(cfg.recipe), SgdCyclical)
    net = instantiate(cfg.model, num_keypoints=16)
    assert isinstance(net, EfficientPoseNet) and round(count_parameters(net).with_bn_stats / 1e6, 2) == params


@pytest.fixture(scope="module")
def efficientpose_run(tmp_path_factory, root) -> tuple[Path, str]:
    """`python train.py experiment=efficientpose_rt data=mpii_synthetic ...`: the run directory and its output."""
    run = tmp_path_factory.mktemp("efficientpose")
    result = subprocess.run(
        [sys.executable, "train.py", "experiment=efficientpose_rt", *TINY, f"hydra.run.dir={run}"],
        cwd=root, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return run, result.stdout


def test_train_ends_with_a_pckh_table(efficientpose_run):
    run, out = efficientpose_run
    assert "MPII PCKh" in out and "PCKh@0.5" in out and "PCKh@0.1" in out
    assert re.search(r"MPII PCKh Mean: \d+\.\d+", out)
    predictions = json.loads((run / "pckh_predictions.json").read_text())
    assert predictions


def test_the_checkpoint_rebuilds_the_system(efficientpose_run):
    run, _ = efficientpose_run
    module = load_pose_module(run / "checkpoints" / "best.ckpt")
    assert isinstance(module.net, EfficientPoseNet) and module.net.config["high"] == "b0"
    assert isinstance(module.codec, ConfidenceMapCodec) and module.keypoint_info.names == MPII_KEYPOINTS
    assert module.input_size == (64, 64)


def test_predict_on_an_mpii_image(efficientpose_run, mpii_sample, tmp_path):
    from evopose_pl.predict import run as predict

    run, _ = efficientpose_run
    image = next(p for p in sorted(mpii_sample.iterdir()) if p.suffix == ".jpg")
    results = json.loads(predict(run / "checkpoints" / "best.ckpt", image, output=tmp_path).read_text())
    assert len(results) == 1 and len(results[0]["keypoints"]) == 16 * 3
    assert all(np.isfinite(results[0]["keypoints"]))


def test_onnx_export_is_the_deployed_network(efficientpose_run, tmp_path, onnx_export):
    run, _ = efficientpose_run
    session, metadata = onnx_export(run / "checkpoints" / "best.ckpt", tmp_path / "efficientpose.onnx")
    assert [o.name for o in session.get_outputs()] == ["heatmaps"]  # no training-only outputs
    assert metadata["codec"]["name"] == "confidence_maps" and metadata["keypoint_names"] == list(MPII_KEYPOINTS)
    module = load_pose_module(run / "checkpoints" / "best.ckpt", flip_test=False)
    images = torch.rand(3, 3, 64, 64) * 255
    with torch.no_grad(), deployed(module.net):
        expected = module(images).numpy()
    (got,) = session.run(["heatmaps"], {"images": images.numpy()})
    assert got.shape == (3, 16, 64, 64) and np.abs(got - expected).max() < 1e-4


@pytest.mark.parametrize(
    ("name", "file"), [("efficientpose_rt", "EfficientPoseRT.h5"), ("efficientpose_i", "EfficientPoseI.h5")]
)
def test_the_released_models_find_the_joints_of_real_mpii_people(mpii_sample, efficientpose_weights, name, file):
    """The whole chain on real images: MPII crops, the released weights (joint order mapped), decoding, the
    flip test and the inverse crop put most joints within half the head segment of MPII's annotation."""
    from evopose_pl.data.dataset import TopDownDataset
    from evopose_pl.data.mpii import MPII_KEYPOINT_INFO, MpiiAnnotations
    from evopose_pl.module import PoseModule
    from evopose_pl.nets import build_model

    weights = efficientpose_weights / file
    net = build_model(name, num_keypoints=16, pretrained=weights)
    size = net.resolution
    module = PoseModule(net, ConfidenceMapCodec(), None, MPII_KEYPOINT_INFO, size, channels_last=False).eval()
    annotations = MpiiAnnotations(mpii_sample / "test_mpii.json", mpii_sample)
    samples = [TopDownDataset(annotations, input_size=size)[i] for i in range(len(annotations.instances))]
    with torch.no_grad():
        found, _ = module.keypoints(
            torch.stack([s["image"] for s in samples]), torch.stack([s["affine"] for s in samples])
        )
    hits = total = 0
    for instance, joints in zip(annotations.instances, found.numpy()):
        truth = instance.keypoints
        head = np.linalg.norm(
            truth[MPII_KEYPOINTS.index("head_top"), :2] - truth[MPII_KEYPOINTS.index("upper_neck"), :2]
        )
        visible = truth[:, 2] > 0
        hits += int((np.linalg.norm(joints - truth[:, :2], axis=1)[visible] <= 0.5 * head).sum())
        total += int(visible.sum())
    # Measured: 75 of 76 for both (with the symmetric padding instead of TensorFlow's: 62 and 70).
    assert hits / total >= 0.9, f"{hits} of {total} joints within half a head segment"


def test_the_released_weights_are_tested_without_training(root, tmp_path, efficientpose_weights):
    """`train=false model.pretrained=<.h5>` tests the released network as loaded (no checkpoint needed)."""
    weights = efficientpose_weights / "EfficientPoseRT.h5"
    result = subprocess.run(
        [sys.executable, "train.py", "model=efficientpose_rt", *TINY, "data.input_size=[224,224]", "train=false",
         f"model.pretrained={weights}", f"hydra.run.dir={tmp_path}"],
        cwd=root, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Tested: model.pretrained={weights}" in result.stdout and "MPII PCKh Mean:" in result.stdout


def test_the_released_model_exports_with_tensorflow_padding(efficientpose_weights, tmp_path):
    """The exported graph keeps TensorFlow's asymmetric padding, and exporting leaves the module in eval mode."""
    import onnxruntime as ort

    from evopose_pl.data.mpii import MPII_KEYPOINT_INFO
    from evopose_pl.export import export_onnx
    from evopose_pl.module import PoseModule
    from evopose_pl.nets import build_model

    net = build_model("efficientpose_rt", num_keypoints=16, pretrained=efficientpose_weights / "EfficientPoseRT.h5")
    module = PoseModule(net, ConfidenceMapCodec(), None, MPII_KEYPOINT_INFO, (224, 224)).eval()
    session = ort.InferenceSession(str(export_onnx(module, tmp_path / "rt.onnx")), providers=["CPUExecutionProvider"])
    assert not module.training and not module.net.training
    images = torch.rand(2, 3, 224, 224) * 255
    with torch.no_grad(), deployed(module.net):
        expected = module(images).numpy()
    (got,) = session.run(["heatmaps"], {"images": images.numpy()})
    assert np.abs(got - expected).max() < 1e-4 and np.abs(expected).max() > 0.05  # released maps peak near 0.5
