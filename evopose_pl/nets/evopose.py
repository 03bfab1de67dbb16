"""Genotype -> network: the EvoPose2D decoder (SPEC section 1).

Layer names are structural and stable (``stem``, ``modules.<i>.blocks.<j>.<layer>``,
``head.<n>``, ``final``) because weight transfer and checkpoints match layers by them.
Batch norm uses Keras' defaults (epsilon 1e-3, momentum 0.99), as the reference code does.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict

import torch
from torch import nn

from evopose_pl.search import CompoundScaling, Genotype, GenotypeLike, drop_connect_rate, round_filters

BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # torch's convention: 1 - Keras' 0.99
TRUNC_NORMAL_STD = 0.87962566103423978  # std of a unit normal truncated at +-2


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


def conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    """Conv ("same" padding, no bias) -> BN -> optional swish, named ``conv``, ``bn``, ``act``."""
    layers: OrderedDict[str, nn.Module] = OrderedDict(
        conv=nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False), bn=_bn(out_ch)
    )
    if act:
        layers["act"] = nn.SiLU(inplace=True)
    return nn.Sequential(layers)


def drop_connect(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drop the whole residual branch per sample, rescale the survivors."""
    if not training or rate == 0.0:
        return x
    keep = 1.0 - rate
    mask = torch.empty((x.shape[0], 1, 1, 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
    return x * mask / keep


class SqueezeExcitation(nn.Module):
    """Channel gating; the squeeze width comes from the block's input channels (EfficientNet)."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeeze, 1)
        self.expand = nn.Conv2d(squeeze, channels, 1)
        self.act = nn.SiLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.mean((2, 3), keepdim=True)
        scale = torch.sigmoid(self.expand(self.act(self.reduce(scale))))
        return x * scale


class MBConv(nn.Module):
    """Inverted residual block: expand 1x1 -> depthwise kxk -> squeeze-excite -> project 1x1."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int,
        stride: int,
        expand_ratio: int,
        se_ratio: float = 0.25,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        mid = in_ch * expand_ratio
        self.expand = conv_bn(in_ch, mid, 1) if expand_ratio != 1 else nn.Identity()
        self.depthwise = conv_bn(mid, mid, kernel, stride, groups=mid)
        self.se = SqueezeExcitation(mid, max(1, int(in_ch * se_ratio)))
        self.project = conv_bn(mid, out_ch, 1, act=False)
        self.residual = stride == 1 and in_ch == out_ch
        self.drop_rate = drop_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.se(self.depthwise(self.expand(x))))
        if self.residual:
            y = drop_connect(y, self.drop_rate, self.training) + x
        return y


class Stage(nn.Module):
    """One genotype module: ``repeats`` blocks; the first carries the stride and the width change."""

    def __init__(self, blocks: Sequence[MBConv]) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class EvoPoseNet(nn.Module):
    """An EvoPose2D pose network decoded from a genotype; outputs ``num_keypoints`` heatmaps.

    ``input_size`` (height, width) sets the compound scaling and the drop-connect rate; the
    network is fully convolutional and runs at any size. The heatmaps are the input size
    divided by ``output_stride`` (2 for EvoPose2D-S, 4 for the ancestor and XS).
    ``top_channels`` adds EfficientNet's last 1x1 convolution (``top``: 1280 channels in B0)
    between the backbone and the head; EvoPose2D networks have none.
    """

    def __init__(
        self,
        genotype: GenotypeLike,
        input_size: Sequence[int] = (256, 192),
        num_keypoints: int = 17,
        scaling: CompoundScaling | None = None,
        drop_connect: float | None = None,
        stem_channels: int = 32,
        head_channels: int = 128,
        head_blocks: int = 3,
        se_ratio: float = 0.25,
        top_channels: int | None = None,
    ) -> None:
        super().__init__()
        self.genotype = Genotype.coerce(genotype)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.num_keypoints = num_keypoints
        self.scaling = scaling or CompoundScaling()
        # What rebuilds this network (checkpoints store it; see nets.registry.describe)
        self.config = {
            "genotype": str(self.genotype),
            "input_size": list(self.input_size),
            "num_keypoints": num_keypoints,
            "scaling": asdict(self.scaling),
            "drop_connect": drop_connect,
            "stem_channels": stem_channels,
            "head_channels": head_channels,
            "head_blocks": head_blocks,
            "se_ratio": se_ratio,
            "top_channels": top_channels,
        }
        depth, width = self.scaling.coefficients(self.input_size)
        rate = drop_connect_rate(self.input_size) if drop_connect is None else drop_connect

        def filters(c: int) -> int:
            return round_filters(c, width, self.scaling.divisor)

        repeats = [math.ceil(depth * g.repeats) for g in self.genotype]
        total_blocks = sum(repeats)
        channels = filters(stem_channels)
        self.stem = conv_bn(3, channels, 3, stride=2)
        stages, b = [], 0
        for i, (gene, n) in enumerate(zip(self.genotype, repeats)):
            out = filters(gene.channels)
            blocks = []
            for j in range(n):
                blocks.append(
                    MBConv(
                        channels if j == 0 else out,
                        out,
                        gene.kernel,
                        gene.stride if j == 0 else 1,
                        expand_ratio=1 if i == 0 else 6,
                        se_ratio=se_ratio,
                        drop_rate=rate * b / total_blocks,
                    )
                )
                b += 1
            stages.append(Stage(blocks))
            channels = out
        # ``modules`` is the contracted layer name, but nn.Module.modules() is a method, so
        # add_module would refuse it: register the child directly.
        self._modules["modules"] = nn.ModuleList(stages)
        self.top = None
        if top_channels:
            self.top = conv_bn(channels, filters(top_channels), 1)
            channels = filters(top_channels)
        head = []
        for _ in range(head_blocks):
            out = filters(head_channels)
            head.append(
                nn.Sequential(
                    OrderedDict(
                        conv=nn.ConvTranspose2d(channels, out, 3, 2, padding=1, output_padding=1, bias=False),
                        bn=_bn(out),
                        act=nn.SiLU(inplace=True),
                    )
                )
            )
            channels = out
        self.head = nn.Sequential(*head)
        self.final = nn.Conv2d(channels, num_keypoints, 1)
        # Input pixels per heatmap pixel: stem and stride-2 modules halve, head blocks double.
        self.output_stride = 2.0 ** (1 + self.genotype.num_stride2 - head_blocks)
        self.reset_parameters()

    @property
    def stages(self) -> nn.ModuleList:
        """The backbone modules (``self.modules`` is nn.Module's iterator method)."""
        return self._modules["modules"]

    def reset_parameters(self) -> None:
        """The reference (Keras) initialisation, fan-out computed from Keras' kernel layouts."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                receptive = m.weight[0, 0].numel()
                if m is self.final:
                    bound = math.sqrt(3.0 * (1.0 / 3.0) / (m.out_channels * receptive))
                    nn.init.uniform_(m.weight, -bound, bound)
                else:
                    # Keras' fan_out is the last kernel axis: output channels per group for a
                    # convolution (1 for depthwise), *input* channels for a transposed one.
                    per_kernel = m.in_channels if m.transposed else m.out_channels // m.groups
                    std = math.sqrt(2.0 / (per_kernel * receptive)) / TRUNC_NORMAL_STD
                    nn.init.trunc_normal_(m.weight, 0.0, std, -2 * std, 2 * std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_parameters()

    def heatmap_size(self, input_size: Sequence[int] | None = None) -> tuple[int, int]:
        """Heatmap (height, width) for an input size: "same" convs round up at each stride 2."""
        sizes = []
        for s in input_size or self.input_size:
            for _ in range(1 + self.genotype.num_stride2):
                s = -(-s // 2)
            sizes.append(s * 2 ** len(self.head))
        return sizes[0], sizes[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        if self.top is not None:
            x = self.top(x)
        return self.final(self.head(x))

    def extra_repr(self) -> str:
        return f"genotype={self.genotype}, input_size={self.input_size}, num_keypoints={self.num_keypoints}"
