"""Pose Neural Fabrics Search (SPEC-PNFS): a shared backbone, then one cell-based neural fabric per body
part whose architecture weights (``alpha`` inside the cells, ``betas`` between them) are ordinary
parameters, and a vector-in-pixel head per part.

Structural details follow the authors' MIT-licensed reference code (``yangsenius/PoseNFS``), read for
facts and rewritten here:

- a mixed edge is ``|O| * sum_o softmax(alpha_edge)_o * o(x)``, one ``alpha`` per part shared by its cells;
- a fabric cell's input node is ``ReLU(3 * sum_k softmax(beta_cell)_k * T_k(x_k))`` over the previous
  layer's cells at the same scale (identity), the finer scale (stride-2 3x3 conv with bias + BN) and the
  coarser scale (1x1 conv with bias + BN, bilinear upsampling with aligned corners). A cell at the edge of
  the fabric, with no finer or coarser neighbour, takes its same-scale input in that place;
- a cell's hidden nodes are concatenated, then a 1x1 convolution with bias brings them to the cell's width
  (also when there is one hidden node);
- a part keeps the layers ``3 .. depth - 1`` of a fabric whose layer ``j`` holds ``min(j + 2, 4, depth - j)``
  cells: the backbone's four features stand for layer 2, through per-part 1x1 adapters (with bias);
- the head is ReLU -> 1x1 conv (with bias) to ``J_p x d`` channels, read keypoint-major (channel
  ``j * d + t`` is component ``t`` of keypoint ``j``'s vector); the heatmap is the squashed length.

Layer names are structural: ``backbone.*``, ``parts.<p>.adapters.<s>``, ``parts.<p>.layers.<l>.<i>`` (a
fabric cell: ``inputs.<same|finer|coarser>`` and ``cell.edges.<e>[.ops.<o>]``, ``cell.keep``),
``parts.<p>.head.conv``; the architecture weights are ``parts.<p>.alpha`` and ``parts.<p>.betas``.
"""

from __future__ import annotations

import itertools
import math
import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from evopose_pl.checkpoint import load_checkpoint
from evopose_pl.files import FileFormatError, read_json
from evopose_pl.nets.baselines import RESNET50_BLOCKS, Bottleneck, HRModule, ResNet50, _layer, _transition
from evopose_pl.nets.evopose import DepthwiseConv2d

#: The candidate operations (SPEC-PNFS section 1), in the order of alpha's columns.
OPERATIONS = ("zero", "skip", "sep_conv_3x3", "dil_conv_3x3", "avg_pool_3x3", "max_pool_3x3")
#: The part fabrics' candidates: the spec drops the two poolings.
PART_OPERATIONS = OPERATIONS[:4]
#: A fabric cell's inputs from the previous layer, in the order of beta's columns.
INPUTS = ("same", "finer", "coarser")
#: Fabric widths per scale (1/4, 1/8, 1/16, 1/32), in units of the channel factor C.
SCALE_WIDTHS = (4, 8, 16, 32)
#: Fabric layers a part drops; the backbone's features stand for the last of them.
DROPPED_LAYERS = 3


class Part(NamedTuple):
    name: str
    keypoints: tuple[int, ...]


def _parts(*parts: tuple[str, Sequence[int]]) -> tuple[Part, ...]:
    return tuple(Part(name, tuple(keypoints)) for name, keypoints in parts)


#: Body-part groupings by name (SPEC-PNFS section 3). COCO's are the spec's table (COCO's 17 keypoints).
#: MPII's follow the same body regions on MPII's 16 joints in our order (``data.mpii.MPII_KEYPOINTS``:
#: 0 r_ankle, 1 r_knee, 2 r_hip, 3 l_hip, 4 l_knee, 5 l_ankle, 6 pelvis, 7 thorax, 8 upper_neck, 9 head_top,
#: 10 r_wrist, 11 r_elbow, 12 r_shoulder, 13 l_shoulder, 14 l_elbow, 15 l_wrist). MPII has no face points, so
#: its head is head top, upper neck and thorax; pelvis goes with the hips (the reference code's choice).
GROUPINGS: dict[str, tuple[Part, ...]] = {
    "coco1": _parts(("body", range(17))),
    "coco3": _parts(("head", range(0, 5)), ("upper_limbs", range(5, 11)), ("lower_limbs", range(11, 17))),
    "coco5": _parts(
        ("head_shoulders", range(0, 7)),  # face points, shoulders
        ("left_lower_arm", (7, 9)),  # left elbow, wrist
        ("right_lower_arm", (8, 10)),
        ("thighs", (11, 12)),  # hips
        ("lower_legs", range(13, 17)),  # knees, ankles
    ),
    "coco8": _parts(
        ("head_shoulders", range(0, 7)),
        ("left_upper_arm", (5, 7)),  # left shoulder, elbow
        ("left_lower_arm", (7, 9)),  # left elbow, wrist
        ("right_upper_arm", (6, 8)),
        ("right_lower_arm", (8, 10)),
        ("thighs", range(11, 15)),  # hips, knees
        ("left_lower_leg", (13, 15)),  # left knee, ankle
        ("right_lower_leg", (14, 16)),
    ),
    "mpii1": _parts(("body", range(16))),
    "mpii3": _parts(
        ("head", (7, 8, 9)),  # thorax, upper neck, head top
        ("upper_limbs", range(10, 16)),  # wrists, elbows, shoulders
        ("lower_limbs", range(0, 7)),  # ankles, knees, hips, pelvis
    ),
    "mpii5": _parts(
        ("head_shoulders", (7, 8, 9, 12, 13)),  # thorax, upper neck, head top, shoulders
        ("left_lower_arm", (14, 15)),  # left elbow, wrist
        ("right_lower_arm", (10, 11)),  # right wrist, elbow
        ("thighs", (2, 3, 6)),  # hips, pelvis
        ("lower_legs", (0, 1, 4, 5)),  # ankles, knees
    ),
    "mpii8": _parts(
        ("head_shoulders", (7, 8, 9, 12, 13)),
        ("left_upper_arm", (13, 14)),  # left shoulder, elbow
        ("left_lower_arm", (14, 15)),  # left elbow, wrist
        ("right_upper_arm", (11, 12)),  # right elbow, shoulder
        ("right_lower_arm", (10, 11)),  # right wrist, elbow
        ("thighs", (1, 2, 3, 4, 6)),  # hips, pelvis, knees
        ("left_lower_leg", (4, 5)),  # left knee, ankle
        ("right_lower_leg", (0, 1)),  # right ankle, knee
    ),
}
#: The keypoint set a number of parts refers to, by its size.
_DATASETS = {17: "coco", 16: "mpii"}


def resolve_parts(parts: int | str | Sequence[Sequence[int]], num_keypoints: int) -> tuple[Part, ...]:
    """The parts ``parts`` names: a number P (COCO's or MPII's grouping, by ``num_keypoints``), a grouping
    name (``GROUPINGS``) or explicit lists of keypoint indices. Every keypoint must be in some part."""
    if isinstance(parts, int):
        if num_keypoints not in _DATASETS:
            raise ValueError(f"parts={parts}: P needs COCO's 17 or MPII's 16 keypoints, not {num_keypoints}")
        parts = f"{_DATASETS[num_keypoints]}{parts}"
    if isinstance(parts, str):
        if parts not in GROUPINGS:
            raise ValueError(f"parts={parts!r}: the groupings are {', '.join(GROUPINGS)} (or lists of keypoints)")
        resolved = GROUPINGS[parts]
    else:
        resolved = tuple(Part(f"part{p}", tuple(int(k) for k in part)) for p, part in enumerate(parts))
    for part in resolved:
        if not part.keypoints or len(set(part.keypoints)) != len(part.keypoints):
            raise ValueError(f"part {part.name}: {list(part.keypoints)} must be distinct keypoints, at least one")
        if not all(0 <= k < num_keypoints for k in part.keypoints):
            raise ValueError(f"part {part.name}: {list(part.keypoints)} are not all among {num_keypoints} keypoints")
    missing = set(range(num_keypoints)).difference(*(p.keypoints for p in resolved))
    if missing:
        raise ValueError(f"keypoints {sorted(missing)} are in no part; every keypoint needs one")
    return resolved


# --- candidate operations ---------------------------------------------------------------------------------


class Zero(nn.Module):
    """The operation that cuts an edge."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


def _depthwise_pointwise(channels: int, dilation: int = 1) -> nn.Sequential:
    """Depthwise 3x3 -> pointwise 1x1 -> non-affine BN -> ReLU (the reference's operators have no BN scale)."""
    return nn.Sequential(
        OrderedDict(
            depthwise=DepthwiseConv2d(channels, channels, 3, 1, dilation, dilation, groups=channels, bias=False),
            pointwise=nn.Conv2d(channels, channels, 1, bias=False),
            bn=nn.BatchNorm2d(channels, affine=False),
            act=nn.ReLU(inplace=True),
        )
    )


def operation(name: str, channels: int) -> nn.Module:
    """Candidate operation ``name`` (``OPERATIONS``) on ``channels``; every one keeps the shape."""
    if name == "zero":
        return Zero()
    if name == "skip":
        return nn.Identity()
    if name == "sep_conv_3x3":
        return nn.Sequential(OrderedDict(first=_depthwise_pointwise(channels), second=_depthwise_pointwise(channels)))
    if name == "dil_conv_3x3":
        return _depthwise_pointwise(channels, dilation=2)
    if name in ("avg_pool_3x3", "max_pool_3x3"):
        pool = nn.AvgPool2d(3, 1, 1, count_include_pad=False) if name == "avg_pool_3x3" else nn.MaxPool2d(3, 1, 1)
        return nn.Sequential(OrderedDict(pool=pool, bn=nn.BatchNorm2d(channels, affine=False)))
    raise ValueError(f"unknown operation {name!r}; the operations are {', '.join(OPERATIONS)}")


class MixedEdge(nn.Module):
    """Every candidate on one edge, weighted ``|O| * softmax(alpha)`` (the reference code's scaling: at
    uniform weights, as at the start, each operation counts fully)."""

    def __init__(self, channels: int, operations: Sequence[str]) -> None:
        super().__init__()
        self.ops = nn.ModuleList(operation(name, channels) for name in operations)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``weights``: softmax(alpha_edge). The zero operation adds nothing (its alpha acts through the softmax)."""
        n = len(self.ops)
        return sum(n * w * op(x) for w, op in zip(weights, self.ops) if not isinstance(op, Zero))


def num_edges(hidden_nodes: int) -> int:
    """Edges of a cell with one input node: hidden node ``i`` has one from each earlier node."""
    return hidden_nodes * (hidden_nodes + 1) // 2


class Cell(nn.Module):
    """One input node and ``hidden_nodes`` hidden nodes; hidden node ``i`` sums an edge from every earlier
    node (edges numbered node by node: 1 <- 0, 2 <- 0, 2 <- 1, ...). The hidden nodes are concatenated and
    ``keep``, a 1x1 convolution with bias, brings them back to the cell's width.

    ``edges`` lists each edge's candidates: several make a mixed edge weighted by the fabric's alpha, one
    a fixed edge (a derived cell, called without weights). The fabric passes softmax(alpha), one row per
    edge: softmax once per forward, and no leaf parameter passed to a module (FlopCounterMode's module
    tracker fails on one under no_grad).
    """

    def __init__(self, channels: int, hidden_nodes: int, edges: Sequence[Sequence[str]]) -> None:
        super().__init__()
        if len(edges) != num_edges(hidden_nodes):
            raise ValueError(f"{hidden_nodes} hidden nodes make {num_edges(hidden_nodes)} edges, not {len(edges)}")
        self.hidden_nodes = hidden_nodes
        self.edges = nn.ModuleList(
            MixedEdge(channels, ops) if len(ops) > 1 else operation(ops[0], channels) for ops in edges
        )
        self.keep = nn.Conv2d(channels * hidden_nodes, channels, 1)

    def forward(self, x: torch.Tensor, edge_weights: torch.Tensor | None = None) -> torch.Tensor:
        nodes, edge = [x], 0
        for _ in range(self.hidden_nodes):
            node = 0
            for source in list(nodes):
                op = self.edges[edge]
                node = node + (op(source, edge_weights[edge]) if isinstance(op, MixedEdge) else op(source))
                edge += 1
            nodes.append(node)
        return self.keep(torch.cat(nodes[1:], 1))


def _input_transform(name: str, channels: int, neighbour: int | None) -> nn.Module:
    """``T_k``: from the finer scale a stride-2 3x3 conv, from the coarser a 1x1 conv (upsampled after), both
    with bias and BN; identity from the same scale, and in place of a neighbour the fabric lacks."""
    if name == "same" or neighbour is None:
        return nn.Identity()
    conv = nn.Conv2d(neighbour, channels, 3, 2, 1) if name == "finer" else nn.Conv2d(neighbour, channels, 1)
    return nn.Sequential(OrderedDict(conv=conv, bn=nn.BatchNorm2d(channels)))


class FabricCell(nn.Module):
    """A cell of the fabric at one scale: its input node mixes the previous layer's cells at the same, finer
    and coarser scales (``inputs``: all three, weighted by the cell's beta, or the one a derived cell keeps)."""

    def __init__(
        self,
        channels: int,
        finer: int | None,
        coarser: int | None,
        hidden_nodes: int,
        edges: Sequence[Sequence[str]],
        inputs: Sequence[str] = INPUTS,
    ) -> None:
        super().__init__()
        neighbours = {"same": channels, "finer": finer, "coarser": coarser}
        self.inputs = nn.ModuleDict({name: _input_transform(name, channels, neighbours[name]) for name in inputs})
        self.cell = Cell(channels, hidden_nodes, edges)

    def forward(
        self,
        same: torch.Tensor,
        finer: torch.Tensor,
        coarser: torch.Tensor,
        edge_weights: torch.Tensor | None = None,
        input_weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        sources = {"same": same, "finer": finer, "coarser": coarser}
        xs = []
        for name, transform in self.inputs.items():
            x = transform(sources[name])
            if x.shape[-2:] != same.shape[-2:]:  # from the coarser scale
                x = F.interpolate(x, size=same.shape[-2:], mode="bilinear", align_corners=True)
            xs.append(x)
        if input_weights is None:
            node = xs[0]
        else:  # softmax(beta_cell)
            node = len(xs) * sum(w * x for w, x in zip(input_weights, xs))
        return self.cell(F.relu(node), edge_weights)


def fabric_layers(depth: int) -> list[int]:
    """Cells in each layer a part keeps: layer ``j`` of the fabric holds ``min(j + 2, 4, depth - j)``."""
    if depth <= DROPPED_LAYERS:
        raise ValueError(f"depth={depth}: the fabric needs more layers than the {DROPPED_LAYERS} a part drops")
    return [min(j + 2, len(SCALE_WIDTHS), depth - j) for j in range(DROPPED_LAYERS, depth)]


class PartFabric(nn.Module):
    """One body part's subnetwork: 1x1 adapters from the backbone's four features, the kept fabric layers,
    and the vector-in-pixel head; its own ``alpha`` [edges, |O|] and ``betas`` [cells, 3], both zero
    (uniform mixing) at the start. ``derived`` (one part's entry of ``PNFSNet.derive``) fixes every edge to
    one operation and every cell to one input, with no alpha or beta."""

    def __init__(
        self,
        part: Part,
        feature_widths: Sequence[int],
        channels: int,
        hidden_nodes: int,
        vector_dim: int,
        depth: int,
        operations: Sequence[str],
        derived: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.name = part.name
        self.vector_dim = vector_dim
        self.operations = tuple(operations)
        widths = [channels * w for w in SCALE_WIDTHS]
        self.adapters = nn.ModuleList(
            nn.Identity() if f == w else nn.Conv2d(f, w, 1) for f, w in zip(feature_widths, widths)
        )
        sizes = fabric_layers(depth)
        if derived is None:
            edges = [self.operations] * num_edges(hidden_nodes)
            inputs = [[INPUTS] * n for n in sizes]
        else:
            edges = [[name] for name in derived["edges"]]
            inputs = [[[name] for name in layer] for layer in derived["inputs"]]
            if [len(layer) for layer in inputs] != sizes:
                raise ValueError(f"part {part.name}: derived cells per layer {[len(x) for x in inputs]} != {sizes}")
        previous = len(widths)  # the backbone's features
        self.layers = nn.ModuleList()
        for n, layer_inputs in zip(sizes, inputs):
            self.layers.append(
                nn.ModuleList(
                    FabricCell(
                        widths[i],
                        widths[i - 1] if i > 0 else None,
                        widths[i + 1] if i + 1 < previous else None,
                        hidden_nodes,
                        edges,
                        layer_inputs[i],
                    )
                    for i in range(n)
                )
            )
            previous = n
        self.head = nn.Sequential(
            OrderedDict(act=nn.ReLU(), conv=nn.Conv2d(widths[0], len(part.keypoints) * vector_dim, 1))
        )
        self.register_buffer("keypoints", torch.tensor(part.keypoints), persistent=False)
        if derived is None:
            self.alpha = nn.Parameter(torch.zeros(num_edges(hidden_nodes), len(self.operations)))
            self.betas = nn.Parameter(torch.zeros(sum(sizes), len(INPUTS)))
        else:
            self.alpha = self.betas = None

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """The part's keypoint heatmaps: squashed lengths ``|v|^2 / (1 + |v|^2)`` of its vectors, in [0, 1)."""
        xs = [adapter(f) for adapter, f in zip(self.adapters, features)]
        edge_weights = self.alpha.softmax(-1) if self.alpha is not None else None
        input_weights = iter(self.betas.softmax(-1)) if self.betas is not None else itertools.repeat(None)
        for layer in self.layers:
            ys = []
            for i, cell in enumerate(layer):
                finer = xs[i - 1] if i > 0 else xs[i]
                coarser = xs[i + 1] if i + 1 < len(xs) else xs[i]
                ys.append(cell(xs[i], finer, coarser, edge_weights, next(input_weights)))
            xs = ys
        v = self.head(xs[0]).unflatten(1, (-1, self.vector_dim))
        length2 = v.float().square().sum(2)  # in float32: in bfloat16 the peaks, near 1, would round to 1/256 steps
        return length2 / (1 + length2)

    def derive(self) -> dict[str, Any]:
        """The strongest operation of each edge (the zero operation excluded, as DARTS derives: with one
        edge per cell it would cut the cell off) and the strongest input of each cell; an input the cell's
        position lacks (finer at 1/4, coarser at the layer's bottom) is its same-scale input, and says so."""
        if self.alpha is None:
            raise ValueError(f"part {self.name} is already derived: it has no alpha or beta")
        alpha = self.alpha.detach().clone()
        if "zero" in self.operations and len(self.operations) > 1:
            alpha[:, self.operations.index("zero")] = -math.inf
        edges = [self.operations[i] for i in alpha.argmax(-1).tolist()]
        strongest = iter(self.betas.detach().argmax(-1).tolist())
        inputs = []
        for layer in self.layers:
            names = []
            for cell in layer:
                name = INPUTS[next(strongest)]
                names.append("same" if isinstance(cell.inputs[name], nn.Identity) else name)
            inputs.append(names)
        return {"name": self.name, "edges": edges, "inputs": inputs}


# --- backbones --------------------------------------------------------------------------------------------

#: MobileNetV2's inverted-residual stages (expansion, width, blocks, stride) up to the 1/32 stage; the
#: reference code takes its 1/32 feature from the 160-channel stage (MobileNetV2's last, 320-channel
#: block and 1280-channel convolution are not part of it).
MOBILENETV2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2))
#: The stages whose outputs are the features at 1/4, 1/8, 1/16 and 1/32.
MOBILENETV2_TAPS = (1, 2, 4, 5)


def _conv_bn_relu6(
    in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True
) -> nn.Sequential:
    layers = OrderedDict(
        conv=(DepthwiseConv2d if groups > 1 and groups == in_ch == out_ch else nn.Conv2d)(
            in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False
        ),
        bn=nn.BatchNorm2d(out_ch),
    )
    if act:
        layers["act"] = nn.ReLU6(inplace=True)
    return nn.Sequential(layers)


class InvertedResidual(nn.Module):
    """MobileNetV2's block: expand 1x1 (absent at expansion 1) -> depthwise 3x3 -> linear project 1x1,
    with a residual when the shape is kept."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expansion: int) -> None:
        super().__init__()
        mid = in_ch * expansion
        self.expand = _conv_bn_relu6(in_ch, mid, 1) if expansion != 1 else nn.Identity()
        self.depthwise = _conv_bn_relu6(mid, mid, 3, stride, groups=mid)
        self.project = _conv_bn_relu6(mid, out_ch, 1, act=False)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.residual else y


class MobileNetV2Features(nn.Module):
    """MobileNetV2 (ImageNet's, width 1.0) from its stem to the 1/32 stage: ``stem``, ``stages.<s>.<b>``."""

    widths = tuple(MOBILENETV2_STAGES[s][1] for s in MOBILENETV2_TAPS)

    def __init__(self) -> None:
        super().__init__()
        self.stem = _conv_bn_relu6(3, 32, 3, 2)
        self.stages = nn.ModuleList()
        in_ch = 32
        for expansion, width, repeats, stride in MOBILENETV2_STAGES:
            blocks = [InvertedResidual(in_ch, width, stride, expansion)]
            blocks += [InvertedResidual(width, width, 1, expansion) for _ in range(repeats - 1)]
            self.stages.append(nn.Sequential(*blocks))
            in_ch = width

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x, features = self.stem(x), []
        for s, stage in enumerate(self.stages):
            x = stage(x)
            if s in MOBILENETV2_TAPS:
                features.append(x)
        return features


class ResNet50Features(ResNet50):
    """The baselines' ResNet-50 trunk (torchvision's layer names) returning ``layer1`` to ``layer4``."""

    widths = tuple(64 * 2**i * Bottleneck.expansion for i in range(len(RESNET50_BLOCKS)))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x, features = self.maxpool(self.relu(self.bn1(self.conv1(x)))), []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            features.append(x)
        return features


def _branch_inputs(transition: nn.ModuleList, xs: list[torch.Tensor]) -> list[torch.Tensor]:
    """HRNet's transition: each branch from its own, a new branch from the lowest resolution."""
    return [t(xs[min(i, len(xs) - 1)]) for i, t in enumerate(transition)]


class HRNetFeatures(nn.Module):
    """HRNet-W32 from its stem through stage 3, built from the baselines' layers under their names
    (``stem``, ``layer1``, ``transitions.<i>``, ``stages.<i>``), then stage 4's transition, whose new branch
    (stride-2 3x3 conv, BN, ReLU from the 1/16 branch) gives the 1/32 feature, as in the reference code:
    32, 64, 128 and 256 channels, 8.13M parameters."""

    def __init__(self, width: int = 32, modules_per_stage: Sequence[int] = (1, 4)) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 3, 2, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(True),
            nn.Conv2d(64, 64, 3, 2, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(True),
        )  # fmt: skip
        self.layer1 = _layer(Bottleneck, 64, 64, 4)
        channels = [64 * Bottleneck.expansion]
        self.transitions = nn.ModuleList()
        self.stages = nn.ModuleList()
        for stage, modules in enumerate(modules_per_stage):
            new = [width * 2**b for b in range(stage + 2)]
            self.transitions.append(_transition(channels, new))
            self.stages.append(nn.Sequential(*(HRModule(new) for _ in range(modules))))
            channels = new
        self.widths = (*channels, 2 * channels[-1])
        self.transitions.append(_transition(channels, self.widths))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        xs = [self.layer1(self.stem(x))]
        for transition, stage in zip(self.transitions, self.stages):
            xs = _branch_inputs(transition, xs)
            for module in stage:
                xs = module(xs)
        return _branch_inputs(self.transitions[-1], xs)


BACKBONES: dict[str, type[nn.Module]] = {
    "mobilenetv2": MobileNetV2Features,
    "resnet50": ResNet50Features,
    "hrnet_w32": HRNetFeatures,
}


# --- the network ------------------------------------------------------------------------------------------


class PNFSNet(nn.Module):
    """PNFS: a backbone's features at 1/4 to 1/32, one ``PartFabric`` per body part, and the parts'
    squashed-length heatmaps, summed where parts share a keypoint: (B, K, H/4, W/4), in [0, P) (below 1
    where a keypoint is in one part).

    ``backbone``: ``BACKBONES``; ``parts``: see ``resolve_parts``; ``channels``: C, the fabric widths are
    ``C * (4, 8, 16, 32)``; ``hidden_nodes``: H per cell; ``vector_dim``: d per keypoint (1: a plain heatmap
    through the squash); ``depth``: L, of which a part keeps layers 3 to L - 1 (3 + 2 + 1 cells at 6);
    ``operations``: the part fabrics' candidates; ``resolution``: the (height, width) it is configured for,
    recorded (it is fully convolutional); ``derived``: None for the search network, or ``derive()``'s
    description of a discretised one (single operations and inputs, no architecture parameters), or the
    path of a file holding one (``read_derived``).
    """

    output_stride = 4.0

    def __init__(
        self,
        backbone: str = "mobilenetv2",
        parts: int | str | Sequence[Sequence[int]] = 3,
        channels: int = 10,
        hidden_nodes: int = 1,
        vector_dim: int = 8,
        num_keypoints: int = 17,
        resolution: Sequence[int] = (256, 256),
        depth: int = 6,
        operations: Sequence[str] = PART_OPERATIONS,
        derived: Mapping[str, Any] | str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        source = None
        if isinstance(derived, (str, os.PathLike)):
            source, derived = os.fspath(derived), read_derived(derived)
        if backbone not in BACKBONES:
            raise ValueError(f"backbone={backbone!r}: one of {', '.join(BACKBONES)}")
        if not isinstance(parts, (int, str)):
            parts = [[int(k) for k in part] for part in parts]
        operations = [str(name) for name in operations]
        if not set(operations) <= set(OPERATIONS) or not set(operations) - {"zero"}:
            raise ValueError(f"operations={operations}: some of {', '.join(OPERATIONS)}, not only zero")
        self.resolution = (int(resolution[0]), int(resolution[1]))
        self.num_keypoints = num_keypoints
        self.part_list = resolve_parts(parts, num_keypoints)
        try:
            self._build(backbone, parts, channels, hidden_nodes, vector_dim, depth, operations, derived)
        except ValueError as error:
            if source is None:
                raise
            raise FileFormatError(f"model.derived={source}: {error}") from None

    def _build(
        self,
        backbone: str,
        parts: int | str | list[list[int]],
        channels: int,
        hidden_nodes: int,
        vector_dim: int,
        depth: int,
        operations: list[str],
        derived: Mapping[str, Any] | None,
    ) -> None:
        """The layers; ``derived`` as given (a bad one raises ValueError)."""
        derived = _plain_derived(derived, len(self.part_list))
        self.config = {
            "backbone": backbone,
            "parts": parts,
            "channels": channels,
            "hidden_nodes": hidden_nodes,
            "vector_dim": vector_dim,
            "num_keypoints": self.num_keypoints,
            "resolution": list(self.resolution),
            "depth": depth,
            "operations": operations,
            "derived": derived,
        }
        self.backbone = BACKBONES[backbone]()
        self.parts = nn.ModuleList()
        for p, part in enumerate(self.part_list):
            part_derived = None
            if derived is not None:
                part_derived = derived["parts"][p]
                if part_derived["name"] != part.name:
                    raise ValueError(f"derived part {p} is {part_derived['name']!r}, the network's is {part.name!r}")
            self.parts.append(
                PartFabric(
                    part, self.backbone.widths, channels, hidden_nodes, vector_dim, depth, operations, part_derived
                )
            )
        for m in self.backbone.modules():
            if isinstance(m, nn.Conv2d):  # He initialisation (torchvision's); the fabrics keep PyTorch's defaults
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone(x)
        heatmaps = None
        for part in self.parts:
            y = part(features)
            if heatmaps is None:
                heatmaps = y.new_zeros(y.shape[0], self.num_keypoints, *y.shape[2:])
            heatmaps = heatmaps.index_add(1, part.keypoints, y)
        return heatmaps

    def architecture_parameters(self) -> list[nn.Parameter]:
        """Each part's alpha and betas (none in a derived network): what a search optimises apart."""
        return [p for part in self.parts if part.alpha is not None for p in (part.alpha, part.betas)]

    def weight_parameters(self) -> list[nn.Parameter]:
        """Every other parameter: the backbone's and the fabrics' weights."""
        arch = {id(p) for p in self.architecture_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def derive(self) -> dict[str, Any]:
        """The discretised architecture (JSON): per part, the strongest operation of each edge and the
        strongest input of each cell (``PartFabric.derive``). ``PNFSNet(..., derived=it)`` builds it."""
        return {"parts": [part.derive() for part in self.parts]}

    def extra_repr(self) -> str:
        c = self.config
        kind = "derived" if c["derived"] is not None else "search"
        parts = ", ".join(p.name for p in self.part_list)
        return (
            f"{kind}, backbone={c['backbone']}, parts=[{parts}], C={c['channels']}, H={c['hidden_nodes']}, "
            f"d={c['vector_dim']}"
        )


#: The key under which checkpoints of a search hold its derived architecture (``callbacks.ArchitectureMonitor``).
DERIVED_KEY = "derived_architecture"


def read_derived(path: str | os.PathLike) -> dict[str, Any]:
    """The derived architecture in ``path``: a JSON file (``derived_architecture.json``) or a checkpoint of a
    search holding one (read without running code); anything else is refused naming ``model.derived=``."""
    if str(path).endswith(".json"):
        try:
            derived = read_json(path)
        except FileNotFoundError:
            raise FileNotFoundError(f"model.derived={os.fspath(path)}: no such file") from None
        except FileFormatError as error:
            raise FileFormatError(f"model.derived={error}") from None
    else:
        checkpoint = load_checkpoint(path, "model.derived=")
        if not isinstance(checkpoint, Mapping) or DERIVED_KEY not in checkpoint:
            raise FileFormatError(f"model.derived={os.fspath(path)}: the checkpoint holds no {DERIVED_KEY}")
        derived = checkpoint[DERIVED_KEY]
    if not isinstance(derived, Mapping) or "parts" not in derived:
        raise FileFormatError(f"model.derived={os.fspath(path)}: not a derived PNFS architecture (PNFSNet.derive())")
    return dict(derived)


def _plain_derived(derived: Mapping[str, Any] | None, num_parts: int) -> dict[str, Any] | None:
    """A derived description as plain JSON values (it may come from a Hydra config), checked for shape."""
    if derived is None:
        return None
    try:
        parts = [
            {
                "name": str(part["name"]),
                "edges": [str(name) for name in part["edges"]],
                "inputs": [[str(name) for name in layer] for layer in part["inputs"]],
            }
            for part in derived["parts"]
        ]
    except (KeyError, TypeError) as e:
        raise ValueError(f"not a derived PNFS architecture ({e!r}): {derived!r:.200}") from None
    if len(parts) != num_parts:
        raise ValueError(f"the derived architecture has {len(parts)} parts, the network {num_parts}")
    for part in parts:
        for name in part["edges"]:
            if name not in OPERATIONS:
                raise ValueError(f"derived part {part['name']}: unknown operation {name!r}")
        for layer in part["inputs"]:
            for name in layer:
                if name not in INPUTS:
                    raise ValueError(f"derived part {part['name']}: unknown input {name!r} (one of {INPUTS})")
    return {"parts": parts}
