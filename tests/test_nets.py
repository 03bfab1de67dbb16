"""The genotype decoder (SPEC sections 1-2) against the paper's published sizes."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import torch
from torch import nn

from evopose_pl.nets import (
    BASELINES,
    MODELS,
    EvoPoseNet,
    MBConv,
    MBConvConfig,
    MBConvModule,
    build_model,
    count_flops,
    count_parameters,
    decode_backbone,
    describe,
    from_description,
)
from evopose_pl.search import ANCESTOR, EVOPOSE2D_S, CompoundScaling, SearchSpace, mutate, round_filters

# The paper's table: parameters (with BN statistics, Keras' count) and FLOPs (multiply-accumulates).
PUBLISHED = {
    "evopose2d_xs": (2.53e6, 0.47e9),
    "evopose2d_s": (2.53e6, 1.07e9),
    "evopose2d_m": (7.34e6, 5.59e9),
    "evopose2d_l": (14.7e6, 17.7e9),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_named_models_report_the_published_sizes(name):
    net = build_model(name)
    params, flops = PUBLISHED[name]
    digits = 3 - int(math.floor(math.log10(params / 1e6))) - 1  # the paper gives three significant figures
    assert round(count_parameters(net).with_bn_stats / 1e6, digits) == params / 1e6
    assert count_flops(net, net.resolution) == pytest.approx(flops, rel=0.005)


def test_parameter_conventions():
    net = build_model("evopose2d_s")
    count = count_parameters(net)
    bn_channels = sum(m.num_features for m in net.modules() if isinstance(m, nn.BatchNorm2d))
    assert count.trainable == sum(p.numel() for p in net.parameters())
    assert count.with_bn_stats == count.trainable + 2 * bn_channels
    net.final.weight.requires_grad_(False)
    assert count_parameters(net).trainable == count.trainable - net.final.weight.numel()


def test_flops_without_elementwise_ops_are_the_convolutions():
    net = EvoPoseNet([[3, 1, 1, 1]], num_keypoints=2, head_blocks=1)  # unscaled: built for 256x192
    # stem 3->32 3x3 at 16x16; depthwise 32 3x3 at 16x16; SE 32->8->32; project 32->8; head 8->128
    # transposed 3x3 from 16x16; final 128->2 at 32x32.
    macs = 16 * 16 * 27 * 32 + 16 * 16 * 9 * 32 + 32 * 8 * 2 + 16 * 16 * 32 * 8 + 16 * 16 * 9 * 8 * 128 + 32 * 32 * 256
    assert count_flops(net, (32, 32), elementwise=False) == macs
    assert count_flops(net, (32, 32)) > macs
    assert net.training  # restored


@pytest.mark.parametrize("name", sorted(MODELS))
def test_named_models_output_shapes(name):
    net = build_model(name, num_keypoints=5).eval()
    h, w = net.resolution
    stride = {"ancestor": 4, "evopose2d_xs": 4}.get(name, 2)
    with torch.no_grad():
        out = net(torch.zeros(1, 3, 128, 96) if name in ("evopose2d_m", "evopose2d_l") else torch.zeros(1, 3, h, w))
    expected = (128 // stride, 96 // stride) if name in ("evopose2d_m", "evopose2d_l") else (h // stride, w // stride)
    assert tuple(out.shape) == (1, 5, *expected)
    assert net.output_stride == stride


def test_evopose2d_s_heatmaps_are_128x96():
    net = build_model("evopose2d_s")
    assert net.heatmap_size() == (128, 96)


@pytest.mark.parametrize("size", [(64, 48), (96, 64), (75, 57)])
def test_random_genotypes_decode_at_several_sizes(size):
    rng, cache, parent = np.random.default_rng(sum(size)), {ANCESTOR}, ANCESTOR
    for _ in range(4):
        parent = mutate(parent, rng, cache, SearchSpace())
        net = EvoPoseNet(parent, resolution=(256, 192), num_keypoints=3).eval()
        with torch.no_grad():
            out = net(torch.zeros(2, 3, *size))
        assert tuple(out.shape) == (2, 3, *net.heatmap_size(size))


def test_layer_names_are_structural():
    keys = set(build_model("ancestor").state_dict())
    for key in (
        "stem.conv.weight",
        "stem.bn.running_var",
        "modules.0.blocks.0.depthwise.conv.weight",
        "modules.0.blocks.0.se.reduce.bias",
        "modules.3.blocks.1.expand.conv.weight",
        "modules.3.blocks.2.project.bn.weight",
        "modules.6.blocks.0.se.expand.weight",
        "head.2.conv.weight",
        "final.weight",
        "final.bias",
    ):
        assert key in keys, key
    assert not any(k.startswith("modules.0.blocks.0.expand") for k in keys)  # expand ratio 1 in module 1
    assert not any(k.startswith("modules.7") or k.startswith("head.3") for k in keys)


def test_mbconv_structure():
    net = EvoPoseNet(EVOPOSE2D_S)
    block: MBConv = net.mbconv_modules[3].blocks[0]  # 40 -> 80 channels, stride 2, kernel 3
    assert block.expand[0].out_channels == 40 * 6
    assert block.depthwise[0].groups == 240 and block.depthwise[0].kernel_size == (3, 3)
    assert block.depthwise[0].stride == (2, 2)
    assert block.se.reduce.out_channels == int(40 * 0.25)  # squeeze width from the block input
    assert block.project[0].out_channels == 80 and not block.residual
    assert net.mbconv_modules[3].blocks[1].residual and net.mbconv_modules[3].blocks[1].depthwise[0].stride == (1, 1)
    assert net.stem[1].eps == 1e-3 and net.stem[1].momentum == pytest.approx(0.01)


def test_compound_scaling_of_depth_and_width():
    net = build_model("evopose2d_m")
    depth, width = CompoundScaling().coefficients((384, 288))
    for gene, module in zip(EVOPOSE2D_S, net.mbconv_modules):
        assert isinstance(module, MBConvModule)
        assert len(module.blocks) == math.ceil(depth * gene.repeats)
        assert module.blocks[-1].project[0].out_channels == round_filters(gene.channels, width)
    assert net.stem[0].out_channels == round_filters(32, width) == 40
    assert net.head[0][0].out_channels == round_filters(128, width)
    custom = build_model("evopose2d_m", scaling=CompoundScaling(alpha=1.0, beta=1.0, gamma=1.15))
    assert count_parameters(custom) == count_parameters(build_model("evopose2d_s"))


def test_drop_connect_rates_grow_with_depth():
    net = EvoPoseNet(EVOPOSE2D_S, resolution=(256, 192))
    blocks = [b for module in net.mbconv_modules for b in module.blocks]
    assert [b.drop_rate for b in blocks] == pytest.approx([0.2 * i / len(blocks) for i in range(len(blocks))])
    assert EvoPoseNet(EVOPOSE2D_S, resolution=(512, 384)).mbconv_modules[6].blocks[-1].drop_rate > 0.3


def test_drop_connect_is_stochastic_in_training_only():
    net = EvoPoseNet(EVOPOSE2D_S, drop_connect=0.9)
    assert sum(b.residual for module in net.mbconv_modules for b in module.blocks) == 11
    x = torch.randn(4, 3, 64, 48)
    net.train()
    torch.manual_seed(1)
    a = net(x)
    torch.manual_seed(2)
    b = net(x)
    assert not torch.allclose(a, b)
    net.eval()
    assert torch.equal(net(x), net(x))


def test_reference_initialisation():
    net = build_model("ancestor")
    expand = net.mbconv_modules[5].blocks[0].expand[0]  # 1x1, 112 -> 672: Keras fan_out = 672
    std = math.sqrt(2.0 / 672)
    assert expand.weight.std().item() == pytest.approx(std, rel=0.05)
    assert expand.weight.abs().max().item() <= 2 * std / 0.87962566103423978 + 1e-6
    dw = net.mbconv_modules[5].blocks[0].depthwise[0]  # depthwise 5x5: Keras fan_out = 25
    assert dw.weight.std().item() == pytest.approx(math.sqrt(2.0 / 25), rel=0.05)
    head = net.head[1][0]  # transposed 128 -> 128, 3x3: Keras fan_out = 9 * 128 input channels
    assert head.weight.std().item() == pytest.approx(math.sqrt(2.0 / (9 * 128)), rel=0.05)
    bound = math.sqrt(1.0 / 17)  # variance scaling 1/3, fan_out 17, uniform
    assert net.final.weight.abs().max().item() <= bound and net.final.weight.abs().max().item() > 0.9 * bound
    assert torch.count_nonzero(net.final.bias) == 0
    assert torch.all(net.stem[1].weight == 1) and torch.all(net.stem[1].running_var == 1)


def test_genotype_forms_accepted():
    a = EvoPoseNet(str(EVOPOSE2D_S))
    b = EvoPoseNet(EVOPOSE2D_S.to_list())
    assert a.genotype == b.genotype == EVOPOSE2D_S
    with pytest.raises(ValueError, match="unknown model name 'evopose2d_xxl'"):
        build_model("evopose2d_xxl")


# Every named model's state dict, (number of keys, sha256 prefix of its sorted (key, shape) pairs), recorded
# from the decoder before it was rebuilt from MBConvConfig entries: weight transfer, pretrained seeding and
# saved checkpoints match tensors by these names and shapes, so a refactoring must not move any of them.
STATE_DICT_LAYOUT = {
    "ancestor": (372, "ebefb6da1bbaca12"),
    "evopose2d_xs": (416, "fcdbdfb364ada669"),  # XS differs from S only by a stride: same tensors
    "evopose2d_s": (416, "fcdbdfb364ada669"),
    "evopose2d_m": (762, "4ad404764ea74253"),
    "evopose2d_l": (1020, "fe91b9cd8a47b9e4"),
    "efficientnet_b0_head": (378, "7140ae3e63da2eda"),
    "hrnet_w32": (1754, "1f6b9cf0f8d09905"),
    "simplebaseline_r50": (338, "ed5295cc3390f931"),
}


def _layout(net: nn.Module) -> tuple[int, str]:
    """(number of keys, hash of the sorted (key, shape) pairs); built on the meta device, nets cost no init."""
    pairs = sorted((key, tuple(value.shape)) for key, value in net.state_dict().items())
    return len(pairs), hashlib.sha256(repr(pairs).encode()).hexdigest()[:16]


@pytest.mark.parametrize("name", sorted(STATE_DICT_LAYOUT))
def test_named_models_keep_their_state_dict_layout(name):
    assert set(STATE_DICT_LAYOUT) == set(MODELS) | set(BASELINES)  # a new named model gets recorded here
    with torch.device("meta"):
        net = build_model(name)
    assert _layout(net) == STATE_DICT_LAYOUT[name]


def test_decoded_configs_are_what_the_network_builds():
    with torch.device("meta"):
        net = build_model("evopose2d_m")
    backbone = decode_backbone(EVOPOSE2D_S, (384, 288), CompoundScaling(), in_channels=40)
    assert [len(blocks) for blocks in backbone] == [len(module.blocks) for module in net.mbconv_modules]
    first = backbone[3][0]  # module 4: 40 -> 80 channels, width-scaled (x1.32) to 56 -> 104, stride 2
    assert first == MBConvConfig(56, 104, 3, 2, 6, 0.25, first.drop_rate)
    assert first.mid_channels == 336 and first.squeeze_channels == 14 and not first.residual
    built = net.mbconv_modules[3].blocks[0]
    assert built.expand.conv.in_channels == 56 and built.se.reduce.out_channels == 14
    assert built.project.conv.out_channels == 104 and built.depthwise.conv.stride == (2, 2)
    assert all(b.in_channels == b.out_channels and b.stride == 1 for blocks in backbone for b in blocks[1:])
    blocks = [b for module in net.mbconv_modules for b in module.blocks]
    assert [b.drop_rate for blocks in backbone for b in blocks] == [b.drop_rate for b in blocks]


@pytest.mark.parametrize("name", ["evopose2d_m", "efficientnet_b0_head", "simplebaseline_r50", "hrnet_w32"])
def test_description_rebuilds_the_network_and_reads_old_input_size(name):
    with torch.device("meta"):
        net = build_model(name, num_keypoints=5, resolution=(320, 256))
        description = describe(net)
        assert description["config"]["resolution"] == [320, 256] and "input_size" not in description["config"]
        rebuilt = from_description(description)
        config = dict(description["config"])  # as checkpoints written before the rename store it
        config["input_size"] = config.pop("resolution")
        old = from_description({"architecture": description["architecture"], "config": config})
    assert rebuilt.resolution == old.resolution == net.resolution == (320, 256)
    assert _layout(rebuilt) == _layout(old) == _layout(net)
