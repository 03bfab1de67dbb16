"""EfficientPose networks (SPEC-EfficientPose): published sizes, structure, TensorFlow padding, the
released Keras weights, and seeding EvoPose2D from an EfficientPose backbone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from evopose_pl.data.mpii import MPII_KEYPOINTS
from evopose_pl.module import IMAGENET_MEAN, IMAGENET_STD
from evopose_pl.nets import (
    EvoPoseNet,
    build_model,
    count_flops,
    count_parameters,
    deployed,
    describe,
    from_description,
)
from evopose_pl.nets.efficientpose import RELEASED_JOINTS, bilinear_kernel
from evopose_pl.nets.evopose import TFSameConv2d, conv_transpose2d, tf_same_pads
from evopose_pl.nets.keras import keras_layer_name, read_keras_weights
from evopose_pl.nets.pretrained import seed_from_pretrained

FIXTURES = Path(__file__).resolve().parent / "data" / "efficientpose"
# Paper Table 3: parameters (Keras count_params of the deployed graph) and FLOPs.
PUBLISHED = {
    "efficientpose_rt": (0.46, 0.87),
    "efficientpose_i": (0.72, 1.67),
    "efficientpose_ii": (1.73, 7.70),
    "efficientpose_iii": (3.23, 23.35),
    "efficientpose_iv": (6.56, 72.89),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_variants_have_the_published_sizes(name):
    net = build_model(name, num_keypoints=16)
    params, flops = PUBLISHED[name]
    assert round(count_parameters(net).with_bn_stats / 1e6, 2) == params
    # EfficientPose reports TensorFlow's profiler count, twice our multiply-accumulate "FLOPs" (EvoPose2D's convention).
    assert 2 * count_flops(net, net.resolution) / 1e9 == pytest.approx(flops, rel=0.02)


@pytest.mark.parametrize(
    ("name", "settings", "published"),
    [
        ("efficientpose_i", {"detection_passes": 1}, 0.52),
        ("efficientpose_i", {"detection_passes": 3}, 0.92),
        ("efficientpose_ii", {"detection_passes": 1}, 1.24),
        ("efficientpose_ii", {"detection_passes": 3}, 2.22),
        ("efficientpose_i", {"upscale": 0}, 0.71),
    ],
)
def test_ablations_have_the_published_sizes(name, settings, published):
    net = build_model(name, num_keypoints=16, **settings)
    assert round(count_parameters(net).with_bn_stats / 1e6, 2) == published


def test_training_only_layers_are_trained_but_not_counted_or_deployed():
    net = build_model("efficientpose_rt", num_keypoints=16)
    counts = count_parameters(net)
    skipped = sum(p.numel() for layer in net.training_only_layers() for p in layer.parameters())
    upscale = sum(p.numel() for p in net.upscale.parameters())
    assert skipped == (120 * 28 + 28) + (120 * 16 + 16)  # pass 1's PAFs and pass 2's maps (3C = 120)
    assert counts.trainable == sum(p.numel() for p in net.parameters()) - upscale  # the upscaling is fixed
    x = torch.randn(2, 3, 64, 64)
    net.eval()
    outputs = net(x)
    assert list(outputs) == ["pafs1", "confs1", "confs2", "upscaled"]
    assert outputs["pafs1"].shape == (2, 28, 8, 8) and outputs["confs2"].shape == (2, 16, 8, 8)
    assert outputs["upscaled"].shape == (2, 16, 64, 64)
    with deployed(net):
        final = net(x)
    assert torch.equal(final, outputs["upscaled"]) and net.deployed is False


def test_upscaling_is_fixed_bilinear_upsampling():
    net = build_model("efficientpose_i", num_keypoints=16)
    kernel = bilinear_kernel(16)
    assert torch.equal(kernel[0, 0], torch.outer(*[torch.tensor([0.25, 0.75, 0.75, 0.25])] * 2))
    assert kernel[0, 1].abs().sum() == 0
    for layer in net.upscale:
        assert torch.equal(layer.weight, kernel) and not layer.weight.requires_grad
    # A constant map stays constant inside (bilinear), each pass doubling the size.
    y = net.upscale(torch.ones(1, 16, 8, 8))
    assert y.shape == (1, 16, 64, 64) and torch.allclose(y[..., 7:-7, 7:-7], torch.ones(1)), y[0, 0, :6, :6]


def test_layer_names_are_structural():
    names = set(build_model("efficientpose_ii", num_keypoints=16).state_dict())
    for key in (
        "stem.conv.weight",
        "modules.2.blocks.3.depthwise.conv.weight",
        "low.stem.bn.running_mean",
        "low.modules.1.blocks.1.project.bn.weight",
        "skeleton.0.densenets.1.blocks.2.se.reduce.weight",
        "detection.1.densenets.0.blocks.0.expand.conv.weight",
        "detection.1.predict.bias",
        "upscale.2.weight",
    ):
        assert key in names, key
    assert not any(k.startswith("low.modules.2") for k in names)  # the low backbone stops after stage 2


def test_low_backbone_reads_the_last_block_before_its_residual_add():
    net = build_model("efficientpose_i", num_keypoints=16)
    assert net.low.mbconv_modules[-1].blocks[-1].residual is False
    assert net.mbconv_modules[1].blocks[-1].residual is True  # the high backbone keeps EfficientNet's


def test_description_rebuilds_the_network():
    net = build_model("efficientpose_i", num_keypoints=16, detection_passes=3, padding="tf_same")
    rebuilt = from_description(describe(net))
    assert describe(rebuilt) == describe(net)
    assert rebuilt.state_dict().keys() == net.state_dict().keys()


def test_tf_same_padding_is_asymmetric_at_stride_2():
    assert tf_same_pads(224, 3, 2) == (0, 1)
    assert tf_same_pads(224, 5, 2) == (1, 2)
    assert tf_same_pads(225, 3, 2) == (1, 1)
    assert tf_same_pads(224, 5, 1) == (2, 2)
    conv = TFSameConv2d(1, 1, 3, 2, 0, bias=False)
    nn.init.ones_(conv.weight)
    x = torch.arange(16.0).view(1, 1, 4, 4)
    # TensorFlow's 'same' pads only after: the first window covers rows and columns 0-2.
    assert conv(x)[0, 0, 0, 0] == x[0, 0, :3, :3].sum()
    assert conv(x)[0, 0, 1, 1] == x[0, 0, 2:, 2:].sum()
    symmetric = nn.Conv2d(1, 1, 3, 2, 1, bias=False)
    nn.init.ones_(symmetric.weight)
    assert symmetric(x)[0, 0, 0, 0] == x[0, 0, :2, :2].sum()


def test_tf_same_transposed_convolution_starts_at_the_first_pixel():
    """TensorFlow's 'same' transposed 3x3: y[o] = sum over 2j + t = o (no shift), PyTorch's default shifts by one."""
    x = torch.zeros(1, 1, 3, 3)
    x[0, 0, 0, 0] = 1.0
    for padding, corner in (("tf_same", 0), ("same", None)):
        layer = conv_transpose2d(1, 1, 3, padding=padding)
        nn.init.constant_(layer.weight, 0.0)
        with torch.no_grad():
            layer.weight[0, 0, 0, 0] = 1.0  # the kernel's first tap
        y = layer(x)
        assert y.shape == (1, 1, 6, 6)
        if corner is not None:
            assert y[0, 0, 0, 0] == 1.0
        else:
            assert y.sum() == 0.0  # the symmetric crop drops the first row and column


def test_evopose2d_accepts_tf_same_padding_without_changing_shapes():
    same = build_model("evopose2d_xs", resolution=(64, 48))
    tf = build_model("evopose2d_xs", resolution=(64, 48), padding="tf_same")
    assert isinstance(tf, EvoPoseNet) and describe(tf)["config"]["padding"] == "tf_same"
    assert {k: v.shape for k, v in same.state_dict().items()} == {k: v.shape for k, v in tf.state_dict().items()}
    tf.load_state_dict(same.state_dict())
    same.eval(), tf.eval()
    x = torch.randn(1, 3, 64, 48)
    assert same(x).shape == tf(x).shape and not torch.allclose(same(x), tf(x))
    with pytest.raises(ValueError, match="model.padding=valid: must be one of same, tf_same"):
        build_model("evopose2d_xs", padding="valid")


def test_keras_layer_names():
    assert keras_layer_name("stem_conv_res1") == "stem.conv"
    assert keras_layer_name("block2b_se_expand_res2") == "low.modules.1.blocks.1.se.expand"
    assert keras_layer_name("block1a_bn") == "modules.0.blocks.0.depthwise.bn"  # Keras' own EfficientNet
    assert keras_layer_name("pass3_block2_mbconv3_detection2_dconv1_bn") == (
        "detection.1.densenets.1.blocks.2.depthwise.bn"
    )
    assert keras_layer_name("pass1_skeleton_pafs") == "skeleton.0.predict"
    assert keras_layer_name("upscaled_confs") == "upscale.2"
    assert keras_layer_name("lambda_17_res2") is None


@pytest.mark.parametrize(
    ("name", "file"), [("efficientpose_rt", "EfficientPoseRT.h5"), ("efficientpose_i", "EfficientPoseI.h5")]
)
def test_released_weights_fill_every_layer(name, file, efficientpose_weights):
    net = build_model(name, num_keypoints=16, pretrained=efficientpose_weights / file)
    assert net.config["padding"] == "tf_same"  # chosen for a Keras file
    report = seed_from_pretrained(net, efficientpose_weights / file)
    assert report.unused_parent_keys == []
    missing = [t.child_key for t in report.tensors if t.how.value != "copied" and "num_batches" not in t.child_key]
    assert missing == []
    state = read_keras_weights(efficientpose_weights / file)
    for layer in ("upscale.0", "upscale.1", "upscale.2"):  # the released upscaling is exactly bilinear
        assert torch.equal(state[f"{layer}.weight"], bilinear_kernel(16)) and not state[f"{layer}.bias"].any()


def test_released_confidence_maps_are_read_in_mpii_order(efficientpose_weights):
    import h5py

    with h5py.File(efficientpose_weights / "EfficientPoseRT.h5", "r") as f:
        released = f["model_weights/pass3_detection2_confs/pass3_detection2_confs/bias:0"][()]
    ours = read_keras_weights(efficientpose_weights / "EfficientPoseRT.h5")["detection.1.predict.bias"].numpy()
    for i, joint in enumerate(MPII_KEYPOINTS):
        assert ours[i] == released[RELEASED_JOINTS.index(joint)]


def test_a_file_that_is_not_keras_is_refused(tmp_path):
    import h5py

    from evopose_pl.checkpoint import CheckpointError

    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["data"] = np.zeros(3)
    with pytest.raises(CheckpointError, match="other.h5: no Keras layer"):
        build_model("efficientpose_rt", num_keypoints=16, pretrained=tmp_path / "other.h5")


def test_evopose2d_is_seeded_from_an_efficientpose_backbone(tmp_path):
    """Weight transfer carries EfficientPose's EfficientNet stem and stages 1-3 into EvoPose2D's stem and
    first modules (same names), and nothing of its detection passes."""
    source = build_model("efficientpose_rt", num_keypoints=16)
    torch.save({"state_dict": {f"net.{k}": v for k, v in source.state_dict().items()}}, tmp_path / "rt.ckpt")
    net = build_model("evopose2d_xs", resolution=(64, 48), pretrained=tmp_path / "rt.ckpt")
    report = seed_from_pretrained(net, tmp_path / "rt.ckpt")
    inherited = {t.child_key for t in report.tensors if t.parent_key is not None}
    assert "stem.conv.weight" in inherited and "modules.0.blocks.0.depthwise.conv.weight" in inherited
    assert any(k.startswith("modules.2.") for k in inherited)
    assert not any(k.startswith(("head.", "final.")) for k in inherited)
    width = min(net.stem.conv.out_channels, source.stem.conv.out_channels)
    assert torch.equal(net.stem.conv.weight[:width], source.stem.conv.weight[:width])


@pytest.mark.parametrize("name", ["rt", "i"])
def test_released_models_are_reproduced(name, efficientpose_weights):
    """Our network with the released weights gives TensorFlow's outputs (tools/keras_reference.py) within 1e-5."""
    reference = np.load(FIXTURES / f"{name}_reference.npz")
    file = {"rt": "EfficientPoseRT.h5", "i": "EfficientPoseI.h5"}[name]
    net = build_model(f"efficientpose_{name}", num_keypoints=16, pretrained=efficientpose_weights / file).eval()
    image = torch.from_numpy(reference["image"]).permute(2, 0, 1)[None].float()
    mean = 255 * torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = 255 * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        outputs = net((image - mean) / std)
    order = [RELEASED_JOINTS.index(joint) for joint in MPII_KEYPOINTS]
    rows, cols = reference["upscaled_rows"], reference["upscaled_cols"]
    pairs = {
        "pafs1": reference["pafs"],
        "confs1": reference["pass2"][order],
        "confs2": reference["pass3"][order],
    }
    for key, expected in pairs.items():
        np.testing.assert_allclose(outputs[key][0].numpy(), expected, atol=1e-5, rtol=0, err_msg=key)
    upscaled = outputs["upscaled"][0].numpy()[:, rows][:, :, cols]
    np.testing.assert_allclose(upscaled, reference["upscaled"][order], atol=1e-5, rtol=0, err_msg="upscaled")


def test_evopose2d_loads_tensorflow_trained_efficientnet_weights(efficientpose_weights):
    """A Keras file (here the released RT, whose backbone is Keras' EfficientNet-B0 naming) seeds an EvoPose2D
    network's stem and modules, with TensorFlow's padding chosen for it."""
    net = build_model("evopose2d_xs", resolution=(64, 48), pretrained=efficientpose_weights / "EfficientPoseRT.h5")
    assert net.config["padding"] == "tf_same"
    state = read_keras_weights(efficientpose_weights / "EfficientPoseRT.h5")
    width = net.stem.conv.out_channels
    assert torch.equal(net.stem.conv.weight, state["stem.conv.weight"][:width])
    block = "modules.1.blocks.0.depthwise.conv.weight"
    assert torch.equal(net.state_dict()[block], state[block][: net.state_dict()[block].shape[0]])
