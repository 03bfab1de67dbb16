"""The paper's baselines (SPEC section 9) and seeding from public pretrained weights."""

from __future__ import annotations

import pytest
import torch

from evopose_pl.nets import BASELINES, build_model, count_flops, count_parameters, rename_pretrained
from evopose_pl.nets.pretrained import detect_naming, seed_from_pretrained
from evopose_pl.transfer import Inheritance

# (expand ratio, kernel, stride, in, out, blocks): EfficientNet-B0's stages, as both public codebases build them.
B0_STAGES = [(1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
             (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1)]  # fmt: skip


def _bn(prefix: str, c: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
            f"{prefix}.running_var": (c,)}  # fmt: skip


def torchvision_efficientnet_b0_shapes() -> dict[str, tuple[int, ...]]:
    """Key -> shape of torchvision's efficientnet_b0 state dict, written from its architecture."""
    shapes = {"features.0.0.weight": (32, 3, 3, 3), **_bn("features.0.1", 32)}
    for s, (ratio, k, _, cin, cout, blocks) in enumerate(B0_STAGES, start=1):
        for j in range(blocks):
            i = cin if j == 0 else cout
            mid, p, n = i * ratio, f"features.{s}.{j}.block", 0
            if ratio != 1:
                shapes |= {f"{p}.0.0.weight": (mid, i, 1, 1), **_bn(f"{p}.0.1", mid)}
                n = 1
            shapes |= {f"{p}.{n}.0.weight": (mid, 1, k, k), **_bn(f"{p}.{n}.1", mid)}
            sq = max(1, i // 4)
            shapes |= {f"{p}.{n + 1}.fc1.weight": (sq, mid, 1, 1), f"{p}.{n + 1}.fc1.bias": (sq,),
                       f"{p}.{n + 1}.fc2.weight": (mid, sq, 1, 1), f"{p}.{n + 1}.fc2.bias": (mid,)}  # fmt: skip
            shapes |= {f"{p}.{n + 2}.0.weight": (cout, mid, 1, 1), **_bn(f"{p}.{n + 2}.1", cout)}
    shapes |= {"features.8.0.weight": (1280, 320, 1, 1), **_bn("features.8.1", 1280)}
    return shapes | {"classifier.1.weight": (1000, 1280), "classifier.1.bias": (1000,)}


def timm_efficientnet_b0_shapes() -> dict[str, tuple[int, ...]]:
    """Key -> shape of timm's efficientnet_b0 state dict, written from its architecture."""
    shapes = {"conv_stem.weight": (32, 3, 3, 3), **_bn("bn1", 32)}
    for s, (ratio, k, _, cin, cout, blocks) in enumerate(B0_STAGES):
        for j in range(blocks):
            i = cin if j == 0 else cout
            mid, p, sq = i * ratio, f"blocks.{s}.{j}", max(1, i // 4)
            se = {f"{p}.se.conv_reduce.weight": (sq, mid, 1, 1), f"{p}.se.conv_reduce.bias": (sq,),
                  f"{p}.se.conv_expand.weight": (mid, sq, 1, 1), f"{p}.se.conv_expand.bias": (mid,)}  # fmt: skip
            if ratio == 1:
                shapes |= {f"{p}.conv_dw.weight": (mid, 1, k, k), **_bn(f"{p}.bn1", mid), **se,
                           f"{p}.conv_pw.weight": (cout, mid, 1, 1), **_bn(f"{p}.bn2", cout)}  # fmt: skip
            else:
                shapes |= {f"{p}.conv_pw.weight": (mid, i, 1, 1), **_bn(f"{p}.bn1", mid),
                           f"{p}.conv_dw.weight": (mid, 1, k, k), **_bn(f"{p}.bn2", mid), **se,
                           f"{p}.conv_pwl.weight": (cout, mid, 1, 1), **_bn(f"{p}.bn3", cout)}  # fmt: skip
    shapes |= {"conv_head.weight": (1280, 320, 1, 1), **_bn("bn2", 1280)}
    return shapes | {"classifier.weight": (1000, 1280), "classifier.bias": (1000,)}


def torchvision_resnet50_shapes() -> dict[str, tuple[int, ...]]:
    shapes = {"conv1.weight": (64, 3, 7, 7), **_bn("bn1", 64)}
    cin = 64
    for layer, (blocks, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512)), start=1):
        for j in range(blocks):
            p = f"layer{layer}.{j}"
            shapes |= {f"{p}.conv1.weight": (width, cin, 1, 1), **_bn(f"{p}.bn1", width),
                       f"{p}.conv2.weight": (width, width, 3, 3), **_bn(f"{p}.bn2", width),
                       f"{p}.conv3.weight": (4 * width, width, 1, 1), **_bn(f"{p}.bn3", 4 * width)}  # fmt: skip
            if j == 0:
                shapes |= {f"{p}.downsample.0.weight": (4 * width, cin, 1, 1), **_bn(f"{p}.downsample.1", 4 * width)}
            cin = 4 * width
    return shapes | {"fc.weight": (1000, 2048), "fc.bias": (1000,)}


def _random_state(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {k: torch.randn(s, generator=g) for k, s in shapes.items()}


@pytest.mark.parametrize(
    "name,kwargs,trainable",
    [
        ("simplebaseline_r50", {}, 33_999_697),  # SimpleBaseline paper: 34.0M
        ("simplebaseline_r50", {"deconv_kernel": 3}, 29_412_177),  # SPEC section 9's 3x3 transposed convs
        ("hrnet_w32", {}, 28_536_113),  # HRNet paper: 28.5M
        ("efficientnet_b0_head", {}, None),
    ],
)
def test_baselines_build_run_at_two_sizes_and_train_a_step(name, kwargs, trainable):
    net = build_model(name, num_keypoints=17, **kwargs)
    params = count_parameters(net)
    if trainable is not None:
        assert params.trainable == trainable
    assert count_flops(net, (256, 192)) > 5e8
    net.eval()
    with torch.no_grad():
        assert net(torch.zeros(1, 3, 256, 192)).shape == (1, 17, 64, 48)
        assert net(torch.zeros(1, 3, 128, 96)).shape == (1, 17, 32, 24)
    net.train()
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-3)
    x, target = torch.randn(2, 3, 128, 96), torch.rand(2, 17, 32, 24)
    before = torch.nn.functional.mse_loss(net(x), target)
    before.backward()
    optimiser.step()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


def test_efficientnet_b0_head_is_the_ancestor_with_b0s_top_convolution():
    ancestor, b0 = build_model("ancestor"), build_model("efficientnet_b0_head")
    extra = count_parameters(b0).trainable - count_parameters(ancestor).trainable
    # top conv 320 -> 1280 + BN, and the first head conv now reads 1280 channels instead of 320
    assert extra == 320 * 1280 + 2 * 1280 + (1280 - 320) * 128 * 9
    assert set(BASELINES) == {"simplebaseline_r50", "hrnet_w32", "efficientnet_b0_head"}


@pytest.mark.parametrize(
    "shapes,naming",
    [
        (torchvision_efficientnet_b0_shapes, "torchvision_efficientnet"),
        (timm_efficientnet_b0_shapes, "timm_efficientnet"),
    ],
)
def test_public_efficientnet_b0_weights_seed_every_backbone_layer(shapes, naming):
    state = _random_state(shapes())
    assert detect_naming(state) == naming
    net = build_model("efficientnet_b0_head")
    report = seed_from_pretrained(net, state)
    ours = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    backbone = [k for k in ours if not k.startswith(("head.", "final."))]
    renamed = rename_pretrained(state)
    assert set(renamed) == set(backbone)  # every public tensor has a place, every backbone tensor a source
    for key in backbone:
        assert torch.equal(ours[key], renamed[key]), key
    assert report.counts()[Inheritance.COPIED.value] == len(backbone)
    assert not report.unused_parent_keys


def test_public_resnet50_weights_seed_the_simplebaseline_backbone():
    state = _random_state(torchvision_resnet50_shapes())
    assert detect_naming(state) == "torchvision_resnet"
    net = build_model("simplebaseline_r50")
    report = seed_from_pretrained(net, state)
    ours = net.state_dict()
    assert torch.equal(ours["backbone.layer3.5.conv2.weight"], state["layer3.5.conv2.weight"])
    backbone = [k for k in ours if k.startswith("backbone.") and not k.endswith("num_batches_tracked")]
    assert report.counts()[Inheritance.COPIED.value] == len(backbone) == len(state) - 2  # fc dropped
    assert not report.unused_parent_keys


def test_pretrained_path_seeds_through_build_model(tmp_path):
    path = tmp_path / "resnet50.pth"
    torch.save(_random_state(torchvision_resnet50_shapes()), path)
    net = build_model("simplebaseline_r50", pretrained=path)
    assert torch.equal(net.state_dict()["backbone.conv1.weight"], torch.load(path)["conv1.weight"])
    with pytest.raises(ValueError, match="unknown pretrained naming 'caffe'"):
        build_model("simplebaseline_r50", pretrained=path, pretrained_naming="caffe")
    with pytest.raises(ValueError, match="pretrained_naming=keras: model.pretrained=.*resnet50.pth is not a Keras"):
        build_model("simplebaseline_r50", pretrained=path, pretrained_naming="keras")
