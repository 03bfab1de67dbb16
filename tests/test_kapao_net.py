"""KAPAO's network (SPEC-KAPAO section 2) against the published sizes, its output layout and the registry.

Sizes and costs are counted on the meta device (no memory, no arithmetic), so the 1280x1280 figures are cheap;
real forward passes run at 64x64 and 128x192 only.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from evopose_pl.nets import (
    KAPAO_SIZES,
    KapaoNet,
    build_model,
    count_flops,
    count_parameters,
    describe,
    from_description,
)
from evopose_pl.nets.kapao import C3, SPP, Bottleneck, Focus

# Published parameters and GFLOPs (2 x multiply-accumulates) at 1280x1280, COCO's 17 keypoints.
PUBLISHED = {"kapao_s": (12.6e6, 68e9), "kapao_m": (35.8e6, 208e9), "kapao_l": (77.0e6, 468e9)}


def meta_net(name: str, num_keypoints: int = 17) -> KapaoNet:
    depth, width = KAPAO_SIZES[name]
    with torch.device("meta"):
        return KapaoNet(num_keypoints, depth, width)


@pytest.fixture(scope="module")
def small() -> KapaoNet:
    """KAPAO-S in eval mode (forward passes at small inputs)."""
    torch.manual_seed(0)
    return KapaoNet().eval()


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_parameters_and_flops(name):
    net = meta_net(name)
    params, gflops = PUBLISHED[name]
    assert count_parameters(net).trainable == pytest.approx(params, rel=0.02)
    assert 2 * count_flops(net, (1280, 1280), elementwise=False) == pytest.approx(gflops, rel=0.02)


def test_size_multipliers():
    assert KAPAO_SIZES == {"kapao_s": (0.33, 0.50), "kapao_m": (0.67, 0.75), "kapao_l": (1.0, 1.0)}
    s, m = meta_net("kapao_s"), meta_net("kapao_m")
    # widths: ceil(c * width / 8) * 8; repeats: max(round(n * depth), 1)
    assert s.stem.conv.conv.out_channels == 32 and m.stem.conv.conv.out_channels == 48
    assert s.backbone["11"].conv_out.conv.out_channels == 512 and m.backbone["11"].conv_out.conv.out_channels == 768
    assert [len(s.backbone[str(i)].blocks) for i in (2, 4, 6, 8, 11)] == [1, 3, 3, 1, 1]
    assert [len(m.backbone[str(i)].blocks) for i in (2, 4, 6, 8, 11)] == [2, 6, 6, 2, 2]
    assert len(m.neck.out_p6.blocks) == 2
    assert s.detect.p3.in_channels == 128 and s.detect.p6.in_channels == 512


@pytest.mark.parametrize("num_keypoints", [17, 14, 16])  # COCO, CrowdPose, MPII
def test_output_shapes_per_level(small, num_keypoints):
    net = small if num_keypoints == 17 else KapaoNet(num_keypoints).eval()
    assert net.num_outputs == 5 + (1 + num_keypoints) + 2 * num_keypoints
    assert net.num_outputs == {17: 57, 14: 48, 16: 54}[num_keypoints]
    with torch.no_grad():
        outputs = list(net(torch.randn(2, 3, 128, 192)).values())
    assert len(outputs) == len(KapaoNet.strides) == 4
    grids = [(16, 24), (8, 12), (4, 6), (2, 3)]
    assert [tuple(o.shape) for o in outputs] == [(2, 3 * net.num_outputs, h, w) for h, w in grids]
    assert all(torch.isfinite(o).all() for o in outputs)


def test_inputs_must_be_multiples_of_64(small):
    with pytest.raises(ValueError, match="multiples of 64.*96, 128"):
        small(torch.zeros(1, 3, 96, 128))
    with pytest.raises(ValueError, match="multiples of 64"):
        KapaoNet(resolution=(640, 600))


def test_detect_bias_priors_and_anchor_major_layout(small):
    classes = 1 + small.num_keypoints
    for level, stride in zip(("p3", "p4", "p5", "p6"), KapaoNet.strides):
        conv = small.detect[level]
        bound = 1 / math.sqrt(conv.in_channels)  # PyTorch's default bias initialisation, before the priors
        bias = conv.bias.detach().view(small.num_anchors, small.num_outputs)
        obj = math.log(8 / (640 / stride) ** 2)
        cls = math.log(0.6 / (classes - 0.99))
        assert torch.all((bias[:, 4] - obj).abs() <= bound)
        assert torch.all((bias[:, 5 : 5 + classes] - cls).abs() <= bound)
        assert torch.all(bias[:, :4].abs() <= bound) and torch.all(bias[:, 5 + classes :].abs() <= bound)
    # few confident detections at the start: the mean objectness at P3 is about 8 / 80^2
    with torch.no_grad():
        p3 = small(torch.randn(1, 3, 64, 64))["p3"].view(1, small.num_anchors, small.num_outputs, 8, 8)
    assert p3[:, :, 4].sigmoid().mean() < 0.01


def test_layer_names_are_structural(small):
    keys = small.state_dict().keys()
    for key in (
        "stem.conv.conv.weight",
        "backbone.1.conv.weight",
        "backbone.2.blocks.0.conv2.bn.running_var",
        "backbone.10.conv_in.conv.weight",
        "backbone.11.conv_out.bn.bias",
        "neck.a.conv.weight",
        "neck.top_p5.conv_a.conv.weight",
        "neck.c.bn.weight",
        "neck.down_p6.conv.weight",
        "neck.out_p6.conv_b.conv.weight",
        "detect.p3.weight",
        "detect.p6.bias",
    ):
        assert key in keys, key
    assert {k.split(".")[0] for k in keys} == {"stem", "backbone", "neck", "detect"}
    assert list(small.backbone._modules) == [str(i) for i in range(1, 12)]
    assert isinstance(small.stem, Focus) and isinstance(small.backbone["10"], SPP)


def test_blocks_follow_the_spec(small):
    convs = [m for m in small.modules() if isinstance(m, nn.Conv2d)]
    detect = set(small.detect.values())
    assert all((m.bias is None) != (m in detect) for m in convs)
    assert all(m.padding == (m.kernel_size[0] // 2,) * 2 for m in convs)
    norms = [m for m in small.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(m.eps == 1e-3 and m.momentum == 0.03 for m in norms)
    assert [m.kernel_size for m in small.backbone["10"].pools] == [3, 5, 7]
    # shortcuts in the backbone's C3s but its last, none in the neck
    c3s = {name: m for name, m in small.named_modules() if isinstance(m, C3)}
    for name, block in c3s.items():
        wanted = name.startswith("backbone") and name != "backbone.11"
        assert all(b.shortcut == wanted for b in block.blocks if isinstance(b, Bottleneck)), name


def test_focus_is_lossless_space_to_depth():
    focus = Focus(1, 4, 1)
    captured = {}
    focus.conv.register_forward_pre_hook(lambda m, args: captured.setdefault("x", args[0]))
    x = torch.arange(16.0).view(1, 1, 4, 4)
    focus(x)
    # phases at (row, column) offsets (0, 0), (1, 0), (0, 1), (1, 1)
    assert captured["x"][0, :, 0, 0].tolist() == [0.0, 4.0, 1.0, 5.0]
    assert sorted(captured["x"].flatten().tolist()) == x.flatten().tolist()


def test_trains_end_to_end():
    net = KapaoNet(num_keypoints=2, depth=0.33, width=0.25)
    outputs = net(torch.randn(2, 3, 64, 64)).values()  # BN in training needs two values at P6
    sum(o.square().mean() for o in outputs).backward()
    assert all(p.grad is not None for p in net.parameters())


def test_describe_round_trip():
    net = KapaoNet(num_keypoints=14, depth=0.67, width=0.75, resolution=(640, 512))
    description = describe(net)
    assert description == {
        "architecture": "KapaoNet",
        "config": {"num_keypoints": 14, "depth": 0.67, "width": 0.75, "num_anchors": 3, "resolution": [640, 512]},
    }
    rebuilt = from_description(description)
    assert isinstance(rebuilt, KapaoNet) and rebuilt.config == net.config
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in net.state_dict().items()}


def test_build_model_kapao():
    net = build_model("kapao_m", num_keypoints=14, resolution=(640, 640))
    assert isinstance(net, KapaoNet)
    assert net.config == {"num_keypoints": 14, "depth": 0.67, "width": 0.75, "num_anchors": 3, "resolution": [640, 640]}
    assert build_model("kapao_s").config["resolution"] == [1280, 1280]
    assert build_model("kapao_l", width=0.25, depth=0.33).config["width"] == 0.25
    from evopose_pl.search import CompoundScaling

    with pytest.raises(ValueError, match="no compound scaling"):
        build_model("kapao_s", scaling=CompoundScaling(alpha=1.2, beta=1.1, gamma=1.15))
    with pytest.raises(ValueError, match="kapao_l"):
        build_model("kapao_xl")
