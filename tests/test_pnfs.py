"""PNFS's network (SPEC-PNFS sections 1-4): the operations, cells and fabrics, the part groupings, the
vector-in-pixel head, the three backbones, the derived architecture and the published ResNet-50 size."""

from __future__ import annotations

import json

import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from evopose_pl.data.mpii import MPII_KEYPOINTS
from evopose_pl.nets import build_model, count_flops, count_parameters, describe, from_description
from evopose_pl.nets.pnfs import (
    BACKBONES,
    GROUPINGS,
    INPUTS,
    OPERATIONS,
    PART_OPERATIONS,
    FabricCell,
    MixedEdge,
    PNFSNet,
    operation,
    resolve_parts,
)


def small(**kwargs) -> PNFSNet:
    """A PNFS network of narrow fabrics (C = 2) on MobileNetV2, MPII's three parts, unless told otherwise."""
    settings = {"backbone": "mobilenetv2", "parts": 3, "channels": 2, "num_keypoints": 16, "resolution": (64, 64)}
    return PNFSNet(**{**settings, **kwargs})


def test_the_candidate_operations_keep_the_shape_and_the_part_fabrics_drop_the_poolings():
    assert OPERATIONS == ("zero", "skip", "sep_conv_3x3", "dil_conv_3x3", "avg_pool_3x3", "max_pool_3x3")
    assert PART_OPERATIONS == ("zero", "skip", "sep_conv_3x3", "dil_conv_3x3")
    x = torch.randn(2, 6, 9, 7)
    for name in OPERATIONS:
        op = operation(name, 6)
        assert op(x).shape == x.shape, name
        norms = [m for m in op.modules() if isinstance(m, nn.BatchNorm2d)]
        assert all(not m.affine for m in norms), name  # every operation's BN is non-affine
        convs = [m for m in op.modules() if isinstance(m, nn.Conv2d)]
        assert len(convs) == {"sep_conv_3x3": 4, "dil_conv_3x3": 2}.get(name, 0), name
        assert len(norms) == {"zero": 0, "skip": 0, "sep_conv_3x3": 2}.get(name, 1), name
    assert not operation("zero", 6)(x).any()
    assert operation("dil_conv_3x3", 6).depthwise.dilation == (2, 2)
    edge = MixedEdge(6, PART_OPERATIONS)
    assert [type(op) for op in edge.ops] == [type(operation(name, 6)) for name in PART_OPERATIONS]
    with pytest.raises(ValueError, match="operations"):
        small(operations=["zero", "conv_5x5"])


@pytest.mark.parametrize("hidden_nodes", [1, 2])
def test_each_part_has_its_own_zero_alpha_and_betas(hidden_nodes):
    net = small(hidden_nodes=hidden_nodes)
    params = dict(net.named_parameters())
    edges = hidden_nodes * (hidden_nodes + 1) // 2
    assert len(net.parts) == 3
    for p, part in enumerate(net.parts):
        assert params[f"parts.{p}.alpha"].shape == (edges, len(PART_OPERATIONS))
        assert params[f"parts.{p}.betas"].shape == (3 + 2 + 1, len(INPUTS))  # one row per cell
        assert not part.alpha.any() and not part.betas.any()
        assert [len(layer) for layer in part.layers] == [3, 2, 1]
        for layer in part.layers:
            for fabric_cell in layer:
                assert len(fabric_cell.cell.edges) == edges and list(fabric_cell.inputs) == list(INPUTS)
    assert len({id(p) for p in net.architecture_parameters()}) == 6  # nothing shared between parts
    assert [len(layer) for layer in small(depth=8).parts[0].layers] == [4, 4, 3, 2, 1]


def test_the_groupings_are_the_spec_table_on_coco_and_cover_every_mpii_joint():
    coco = {
        1: [list(range(17))],
        3: [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16]],
        5: [[0, 1, 2, 3, 4, 5, 6], [7, 9], [8, 10], [11, 12], [13, 14, 15, 16]],
        8: [[0, 1, 2, 3, 4, 5, 6], [5, 7], [7, 9], [6, 8], [8, 10], [11, 12, 13, 14], [13, 15], [14, 16]],
    }
    for p, parts in coco.items():
        assert [list(part.keypoints) for part in GROUPINGS[f"coco{p}"]] == parts
        assert resolve_parts(p, 17) == GROUPINGS[f"coco{p}"]
    mpii = {
        name: [{MPII_KEYPOINTS[k] for k in part.keypoints} for part in parts]
        for name, parts in GROUPINGS.items()
        if name.startswith("mpii")
    }
    for name, parts in mpii.items():
        assert set().union(*parts) == set(MPII_KEYPOINTS) and len(parts) == int(name[-1]), name
        assert resolve_parts(int(name[-1]), 16) == GROUPINGS[name]
    assert mpii["mpii3"][0] == {"head_top", "upper_neck", "thorax"}
    assert mpii["mpii5"][1] == {"l_elbow", "l_wrist"} and mpii["mpii5"][2] == {"r_elbow", "r_wrist"}
    assert mpii["mpii8"][1] == {"l_shoulder", "l_elbow"} and mpii["mpii8"][7] == {"r_knee", "r_ankle"}
    assert [p.keypoints for p in resolve_parts([[0, 2], [1, 2]], 3)] == [(0, 2), (1, 2)]
    with pytest.raises(ValueError, match=r"keypoints \[1\] are in no part"):
        resolve_parts([[0, 2]], 3)
    with pytest.raises(ValueError, match="groupings"):
        resolve_parts("coco4", 17)


def test_heatmaps_are_squashed_lengths_summed_over_the_parts_sharing_a_keypoint():
    net = small(parts=[[0, 1, 2], [2, 3]], num_keypoints=4, vector_dim=4).eval()
    x = torch.randn(1, 3, 64, 64)
    vectors = []
    net.parts[1].head.register_forward_hook(lambda module, args, out: vectors.append(out))
    with torch.no_grad():
        heatmaps = net(x)
        features = net.backbone(x)
        first, second = (part(features) for part in net.parts)
    assert heatmaps.shape == (1, 4, 16, 16)
    assert 0 <= first.min() and first.max() < 1 and 0 <= second.min() and second.max() < 1
    torch.testing.assert_close(heatmaps[:, :2], first[:, :2])
    torch.testing.assert_close(heatmaps[:, 2], first[:, 2] + second[:, 0])  # keypoint 2 is in both parts
    torch.testing.assert_close(heatmaps[:, 3], second[:, 1])
    v = vectors[-1]  # J_p x d channels, keypoint-major
    assert v.shape == (1, 2 * 4, 16, 16)
    length2 = v[:, 4:].square().sum(1)
    torch.testing.assert_close(second[:, 1], length2 / (1 + length2))


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_every_backbone_feeds_the_fabrics_at_output_stride_4(backbone):
    net = small(backbone=backbone, parts=1, num_keypoints=17)
    features = []
    net.backbone.register_forward_hook(lambda module, args, out: features.extend(out))
    heatmaps = net(torch.randn(1, 3, 64, 48))
    assert heatmaps.shape == (1, 17, 16, 12) and net.output_stride == 4.0
    scales = zip(net.backbone.widths, (4, 8, 16, 32))  # sizes round up: 1/32 of 48 is 2
    assert [f.shape[1:] for f in features] == [(width, 64 // s, -(-48 // s)) for width, s in scales]
    heatmaps.mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.architecture_parameters())


def test_input_sizes_off_the_stride_grid_are_resampled_to_the_finer_scale():
    assert small(parts=1)(torch.randn(1, 3, 72, 56)).shape == (1, 16, 18, 14)  # 1/32 is 3x2, 1/16 is 5x4


def test_architecture_and_weight_parameters_partition_the_parameters():
    net = small(hidden_nodes=2)
    arch, weights = net.architecture_parameters(), net.weight_parameters()
    names = {id(p): n for n, p in net.named_parameters()}
    assert {id(p) for p in arch}.isdisjoint(id(p) for p in weights)
    assert len(arch) + len(weights) == len(list(net.parameters()))
    assert all("alpha" in names[id(p)] or "beta" in names[id(p)] for p in arch)
    assert not any("alpha" in names[id(p)] or "beta" in names[id(p)] for p in weights)


def test_the_derived_architecture_builds_a_fixed_network_that_trains():
    net = small(hidden_nodes=2)
    with torch.no_grad():
        net.parts[0].alpha.copy_(torch.tensor([[9.0, 0, 1, 2], [0, 5, 1, 0], [0, 0, 0, 3]]))
        net.parts[0].betas[0] = torch.tensor([0.0, 4, 0])  # finer, at 1/4: the same-scale input
        net.parts[0].betas[1] = torch.tensor([0.0, 4, 0])
        net.parts[0].betas[5] = torch.tensor([0.0, 0, 4])
    derived = json.loads(json.dumps(net.derive()))
    first = derived["parts"][0]
    assert first["name"] == "head" and len(derived["parts"]) == 3
    assert first["edges"] == ["dil_conv_3x3", "skip", "dil_conv_3x3"]  # zero excluded
    assert first["inputs"] == [["same", "finer", "same"], ["same", "same"], ["coarser"]]
    assert derived["parts"][1]["edges"] == ["skip"] * 3  # a tie: the first of the strongest

    fixed = small(hidden_nodes=2, derived=derived)
    assert fixed.architecture_parameters() == [] and len(fixed.weight_parameters()) == len(list(fixed.parameters()))
    assert not any("alpha" in n or "beta" in n for n, _ in fixed.named_parameters())
    assert not any(isinstance(m, MixedEdge) for m in fixed.modules())
    cells = [m for m in fixed.parts[0].modules() if isinstance(m, FabricCell)]
    assert [list(c.inputs) for c in cells] == [["same"], ["finer"], ["same"], ["same"], ["same"], ["coarser"]]
    optimiser = torch.optim.SGD(fixed.parameters(), lr=0.1)
    x, target = torch.randn(1, 3, 64, 64), torch.zeros(1, 16, 16, 16)
    losses = []
    for _ in range(2):
        loss = (fixed(x) - target).square().mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[1] < losses[0]
    with pytest.raises(ValueError, match="already derived"):
        fixed.derive()
    with pytest.raises(ValueError, match="derived part 0"):
        small(parts=[[0, 1, 2, 3, 4, 5, 6, 7], list(range(8, 16)), [0]], hidden_nodes=2, derived=derived)


def test_description_round_trip_and_the_model_config(compose):
    for net in (small(parts="mpii5", vector_dim=1), small(derived=small().derive())):
        description = json.loads(json.dumps(describe(net)))
        again = from_description(description)
        assert again.config == net.config
        assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in net.state_dict().items()}
    built = build_model("pnfs", backbone="resnet50", parts=[[0, 1], [1, 2]], channels=2, num_keypoints=3)
    assert built.config["parts"] == [[0, 1], [1, 2]] and built.resolution == (256, 256)
    cfg = compose("train", "model=pnfs")
    assert cfg.hydra.runtime.choices.codec == "pnfs" and cfg.hydra.runtime.choices.recipe == "pnfs"
    net = instantiate(cfg.model, num_keypoints=16, channels=2)
    assert isinstance(net, PNFSNet) and [p.name for p in net.part_list] == ["head", "upper_limbs", "lower_limbs"]
    assert net.config["backbone"] == "mobilenetv2" and net.config["vector_dim"] == 8 and net.resolution == (256, 256)


def test_the_resnet50_model_has_the_published_size():
    # The paper's COCO model: ResNet-50, P = 3, C = 10, H = 1, d = 8 at 384x288: 27.5M parameters, 11.4 GMAC.
    with torch.device("meta"):  # shapes alone: counting needs no arithmetic
        net = build_model("pnfs", backbone="resnet50", parts=3, channels=10, hidden_nodes=1, vector_dim=8,
                          num_keypoints=17, resolution=(384, 288))  # fmt: skip
    assert count_parameters(net).trainable / 1e6 == pytest.approx(27.5, rel=0.015)  # 27.47M
    assert count_flops(net, (384, 288), elementwise=False) / 1e9 == pytest.approx(11.4, rel=0.015)  # 11.33G


# experiment -> (data, search method, backbone, P, C, d, input size)
EXPERIMENTS = {
    "pnfs_mpii": ("mpii", "sync", "mobilenetv2", 3, 10, 8, [256, 256]),
    "pnfs_mpii_random": ("mpii", "random", "mobilenetv2", 3, 10, 8, [256, 256]),
    "pnfs_mpii_darts": ("mpii", "darts", "mobilenetv2", 3, 10, 8, [256, 256]),
    **{f"pnfs_mpii_parts{p}": ("mpii", "sync", "mobilenetv2", p, 10, 8, [256, 256]) for p in (1, 3, 5, 8)},
    **{f"pnfs_mpii_vector{d}": ("mpii", "sync", "mobilenetv2", 3, 10, d, [256, 256]) for d in (1, 4, 8, 16)},
    "pnfs_mpii_hrnet": ("mpii", "sync", "hrnet_w32", 5, 16, 8, [256, 256]),
    "pnfs_coco_mobilenetv2": ("coco", "sync", "mobilenetv2", 3, 16, 8, [384, 288]),
    "pnfs_coco_resnet50": ("coco", "sync", "resnet50", 3, 10, 8, [384, 288]),
}


@pytest.mark.parametrize("experiment", sorted(EXPERIMENTS))
def test_paper_experiments_compose_with_the_papers_settings(compose, experiment):
    data, method, backbone, parts, channels, dim, size = EXPERIMENTS[experiment]
    cfg = compose("train", f"experiment={experiment}", "data.root=/data")
    choices = cfg.hydra.runtime.choices
    assert (choices.data, cfg.search.method, choices.codec, choices.recipe) == (data, method, "pnfs", "pnfs")
    model = cfg.model
    assert (model.backbone, model.parts, model.channels, model.vector_dim) == (backbone, parts, channels, dim)
    assert list(cfg.data.input_size) == size and cfg.data.batch_size == 24 and cfg.trainer.max_epochs == 200
    assert cfg.data.augmentation.rotation_factor * 2 == 45 and cfg.data.augmentation.scale_factor == 0.3
