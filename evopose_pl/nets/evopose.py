"""Genotype -> network: the EvoPose2D decoder (SPEC section 1).

Decoding is two steps, as torchvision's ``efficientnet.py`` builds from ``MBConvConfig`` entries:
``decode_backbone`` turns each gene, compound-scaled for the network's resolution, into a list of
``MBConvConfig`` (one per block), and ``EvoPoseNet`` builds one ``MBConvModule`` from each list.

Layer names are structural and stable (``stem``, ``modules.<i>.blocks.<j>.<layer>``,
``head.<n>``, ``final``) because weight transfer and checkpoints match layers by them.
Batch norm uses Keras' defaults (epsilon 1e-3, momentum 0.99), as the reference code does.
"""

from __future__ import annotations

import itertools
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import nn
from torch.nn.grad import conv2d_input, conv2d_weight

from evopose_pl.search import CompoundScaling, Gene, Genotype, GenotypeLike, HeadGenotype, drop_connect_rate

BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # torch's convention: 1 - Keras' 0.99
TRUNC_NORMAL_STD = 0.87962566103423978  # std of a unit normal truncated at +-2


#: Convolution padding: ``same`` is symmetric (k // 2 each side, PyTorch's usual choice); ``tf_same`` is
#: TensorFlow's ``'same'``, which pads a strided convolution asymmetrically (the extra row and column after),
#: so networks trained in TensorFlow (the released EfficientPose models) give the same outputs here.
PADDINGS = ("same", "tf_same")


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


def swish() -> nn.Module:
    return nn.SiLU(inplace=True)


def check_padding(padding: str) -> str:
    if padding not in PADDINGS:
        raise ValueError(f"model.padding={padding}: must be one of {', '.join(PADDINGS)}")
    return padding


def tf_same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's 'same' padding of one axis (before, after): the output has ceil(size / stride) positions."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class TFSameConv2d(nn.Conv2d):
    """A convolution padded as TensorFlow's ``'same'`` for the input it is given (asymmetric at stride 2)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = tf_same_pads(x.shape[-2], self.kernel_size[0], self.stride[0])
        left, right = tf_same_pads(x.shape[-1], self.kernel_size[1], self.stride[1])
        return super().forward(nn.functional.pad(x, (left, right, top, bottom)))


class _Bf16DepthwiseConv(torch.autograd.Function):
    """A depthwise convolution computed in bfloat16 whose two gradients each take oneDNN's fastest path on the CPU.
    Its bf16 forward is the faster, but its bf16 backward is fast only in some geometries (``bench/profile_step.py``
    found the depthwise backward the largest cost of an EvoPose2D training step; BENCHMARKS.md): a strided input
    gradient runs 6-50x slower in bf16 than in fp32, and the weight gradient of a kernel larger than 3x3 or
    dilated 2.4-5x slower, while elsewhere bf16 is up to 4x the faster. So the input gradient is computed in fp32
    when strided and in bf16 otherwise; the weight gradient in bf16 for an undilated 3x3 kernel, from bf16 3x3
    windows for a larger one at stride 1 (``_windowed_weight_gradient``), and in fp32 otherwise. The result is
    autocast's; each gradient is that of the same function, at autocast's bf16 precision or in fp32."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, weight: torch.Tensor, stride: list[int], padding: list[int], dilation: list[int],
        groups: int,
    ) -> torch.Tensor:  # fmt: skip
        ctx.save_for_backward(x, weight)
        ctx.geometry = (stride, padding, dilation, groups)
        return nn.functional.conv2d(x, weight.to(x.dtype), None, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.geometry
        strided, dilated, kernel = max(stride) > 1, max(dilation) > 1, tuple(weight.shape[-2:])
        grad_x = grad_weight = None
        if ctx.needs_input_grad[0]:
            dtype = torch.float32 if strided else x.dtype
            # the weight in the input's memory format: oneDNN gives the gradient the layout of the weight
            layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else None
            kernel_weight = weight.to(dtype).contiguous(memory_format=layout or torch.contiguous_format)
            grad_x = conv2d_input(x.shape, kernel_weight, grad.to(dtype), stride, padding, dilation, groups)
            grad_x = grad_x.to(x.dtype)
        if ctx.needs_input_grad[1]:
            if kernel == (3, 3) and not dilated:
                grad_weight = conv2d_weight(x, weight.shape, grad, stride, padding, dilation, groups)
            elif min(kernel) >= 3 and not strided and not dilated:
                grad_weight = _windowed_weight_gradient(x, grad, weight.shape, padding)
            else:
                grad_weight = conv2d_weight(x.float(), weight.shape, grad.float(), stride, padding, dilation, groups)
            grad_weight = grad_weight.to(weight.dtype)
        return grad_x, grad_weight, None, None, None, None


def _windowed_weight_gradient(
    x: torch.Tensor, grad: torch.Tensor, shape: torch.Size, padding: list[int]
) -> torch.Tensor:
    """The weight gradient (fp32, of ``shape``) of a stride-1, undilated depthwise convolution of ``x`` whose kernel
    is larger than 3x3, from the bf16 gradients of overlapping 3x3 windows of its kernel, each taken over the input
    shifted by the window's offset: oneDNN computes those 1.3-3x faster than the whole kernel's in fp32. Each tap
    is one window's, rounded to bf16 as autocast's own weight gradients are."""
    height, width = grad.shape[-2:]
    padded = nn.functional.pad(x, (padding[1], padding[1], padding[0], padding[0]))
    windows = [sorted({*range(0, size - 3, 2), size - 3}) for size in shape[-2:]]
    result = torch.empty(shape, dtype=torch.float32, device=x.device)
    for top, left in itertools.product(*windows):
        shifted = padded[..., top : top + height + 2, left : left + width + 2]
        part = conv2d_weight(shifted, (shape[0], 1, 3, 3), grad, groups=shape[0])
        result[..., top : top + 3, left : left + 3] = part
    return result


def _cpu_bf16_training(x: torch.Tensor) -> bool:
    """Whether ``x`` is trained on the CPU under bfloat16 autocast (what the depthwise path is for)."""
    return (
        x.device.type == "cpu"
        and torch.is_grad_enabled()
        and torch.is_autocast_enabled("cpu")
        and torch.get_autocast_dtype("cpu") == torch.bfloat16
    )


class DepthwiseConv2d(nn.Conv2d):
    """A depthwise convolution (``groups == in_channels == out_channels``, no bias) whose training under CPU
    bf16 autocast takes ``_Bf16DepthwiseConv``; elsewhere it is ``nn.Conv2d``."""

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if bias is not None or not _cpu_bf16_training(x) or isinstance(self.padding, str):
            return super()._conv_forward(x, weight, bias)
        return _Bf16DepthwiseConv.apply(
            x.to(torch.bfloat16), weight, list(self.stride), list(self.padding), list(self.dilation), self.groups
        )


class TFSameDepthwiseConv2d(DepthwiseConv2d, TFSameConv2d):
    """``TFSameConv2d``'s padding with ``DepthwiseConv2d``'s training path."""


class TFSameConvTranspose2d(nn.ConvTranspose2d):
    """A transposed convolution as TensorFlow's ``'same'``: ``stride`` times the input, the full output
    cropped from ``(kernel - stride) // 2`` (PyTorch's ``padding``), the remainder cut at the end."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        return y[..., : x.shape[-2] * self.stride[0], : x.shape[-1] * self.stride[1]]


def init_conv_(m: nn.Conv2d | nn.ConvTranspose2d, std: float | None = None) -> None:
    """EfficientNet's (Keras') initialisation: a normal truncated at 2 std, He's variance by fan-out, zero bias.
    Keras' fan-out is the last kernel axis: output channels per group for a convolution (1 for depthwise),
    *input* channels for a transposed one. ``std`` overrides He's."""
    if std is None:
        per_kernel = m.in_channels if m.transposed else m.out_channels // m.groups
        std = math.sqrt(2.0 / (per_kernel * m.weight[0, 0].numel())) / TRUNC_NORMAL_STD
    nn.init.trunc_normal_(m.weight, 0.0, std, -2 * std, 2 * std)
    if m.bias is not None:
        nn.init.zeros_(m.bias)


def conv2d(
    in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1, bias: bool = False, padding: str = "same"
) -> nn.Conv2d:
    """A convolution that keeps ``ceil(size / stride)`` positions, padded as ``padding`` says (``PADDINGS``)."""
    depthwise = groups > 1 and groups == in_ch == out_ch and not bias
    if check_padding(padding) == "tf_same" and stride > 1:
        return (TFSameDepthwiseConv2d if depthwise else TFSameConv2d)(in_ch, out_ch, kernel, stride, 0, groups=groups,
                                                                      bias=bias)  # fmt: skip
    return (DepthwiseConv2d if depthwise else nn.Conv2d)(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups,
                                                         bias=bias)  # fmt: skip


def conv_transpose2d(in_ch: int, out_ch: int, kernel: int, bias: bool = False, padding: str = "same") -> nn.Module:
    """A stride-2 transposed convolution that doubles H and W. ``same``: PyTorch's symmetric cropping of
    the full output (``padding=(kernel - 1) // 2`` with the remainder restored by ``output_padding``);
    ``tf_same``: TensorFlow's, which crops ``(kernel - 2) // 2`` before and the rest after."""
    if check_padding(padding) == "tf_same":
        return TFSameConvTranspose2d(in_ch, out_ch, kernel, 2, padding=max(kernel - 2, 0) // 2, bias=bias)
    pad = (kernel - 1) // 2
    return nn.ConvTranspose2d(in_ch, out_ch, kernel, 2, padding=pad, output_padding=2 * pad + 2 - kernel, bias=bias)


def conv_bn(
    in_ch: int,
    out_ch: int,
    kernel: int,
    stride: int = 1,
    groups: int = 1,
    activation: Callable[[], nn.Module] | None = swish,
    padding: str = "same",
) -> nn.Sequential:
    """Conv (no bias) -> BN -> optional activation (swish by default), named ``conv``, ``bn``, ``act``."""
    layers: OrderedDict[str, nn.Module] = OrderedDict(
        conv=conv2d(in_ch, out_ch, kernel, stride, groups, padding=padding), bn=_bn(out_ch)
    )
    if activation is not None:
        layers["act"] = activation()
    return nn.Sequential(layers)


def upsample_bn(in_ch: int, out_ch: int, padding: str = "same") -> nn.Sequential:
    """A head block: transposed 3x3 conv, stride 2 (doubles H and W), no bias -> BN -> swish."""
    conv = conv_transpose2d(in_ch, out_ch, 3, padding=padding)
    return nn.Sequential(OrderedDict(conv=conv, bn=_bn(out_ch), act=swish()))


def drop_connect(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drop the whole residual branch per sample, rescale the survivors."""
    if not training or rate == 0.0:
        return x
    keep = 1.0 - rate
    mask = torch.empty((x.shape[0], 1, 1, 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
    return x * mask / keep


@dataclass(frozen=True)
class MBConvConfig:
    """One MBConv block as built: widths after compound scaling, kernel, stride and stochastic depth."""

    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    expand_ratio: int
    se_ratio: float = 0.25
    drop_rate: float = 0.0

    @property
    def mid_channels(self) -> int:
        """The expanded width the depthwise convolution and squeeze-excitation run at."""
        return self.in_channels * self.expand_ratio

    @property
    def squeeze_channels(self) -> int:
        """EfficientNet's squeeze width: from the block's *input* channels, not the expanded ones."""
        return max(1, int(self.in_channels * self.se_ratio))

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.in_channels == self.out_channels


def decode_module(
    gene: Gene,
    index: int,
    in_channels: int,
    resolution: Sequence[int],
    scaling: CompoundScaling,
    se_ratio: float = 0.25,
) -> list[MBConvConfig]:
    """The blocks of genotype module ``index`` at ``resolution``: ``repeats`` and channels compound-scaled;
    the first block carries the gene's stride and the width change. Module 1 does not expand (the code
    seeds it from EfficientNet-B0), the others expand 6 times. Drop rates are left at 0 (see ``decode_backbone``).
    """
    out = scaling.filters(gene.channels, resolution)
    expand_ratio = 1 if index == 0 else 6
    return [
        MBConvConfig(in_channels, out, gene.kernel, gene.stride, expand_ratio, se_ratio)
        if j == 0
        else MBConvConfig(out, out, gene.kernel, 1, expand_ratio, se_ratio)
        for j in range(scaling.repeats(gene.repeats, resolution))
    ]


def decode_backbone(
    genotype: Genotype,
    resolution: Sequence[int],
    scaling: CompoundScaling,
    in_channels: int,
    se_ratio: float = 0.25,
    drop_connect: float | None = None,
) -> list[list[MBConvConfig]]:
    """Every module's blocks, chained from ``in_channels`` (the stem's width). Block ``b`` of ``total`` drops
    its residual branch at ``drop_connect * b / total``; ``drop_connect`` defaults to the resolution's rate."""
    modules = []
    for index, gene in enumerate(genotype):
        modules.append(decode_module(gene, index, in_channels, resolution, scaling, se_ratio))
        in_channels = modules[-1][-1].out_channels
    total = sum(len(blocks) for blocks in modules)
    rate = drop_connect_rate(resolution) if drop_connect is None else drop_connect
    b = itertools.count()  # the global block index
    return [[replace(block, drop_rate=rate * next(b) / total) for block in blocks] for blocks in modules]


class SqueezeExcitation(nn.Module):
    """Channel gating; the squeeze width comes from the block's input channels (EfficientNet)."""

    def __init__(self, channels: int, squeeze: int, activation: Callable[[], nn.Module] = swish) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeeze, 1)
        self.expand = nn.Conv2d(squeeze, channels, 1)
        self.act = activation()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.mean((2, 3), keepdim=True)
        scale = torch.sigmoid(self.expand(self.act(self.reduce(scale))))
        return x * scale


class MBConv(nn.Module):
    """Inverted residual block: expand 1x1 -> depthwise kxk -> squeeze-excite -> project 1x1."""

    def __init__(self, config: MBConvConfig, padding: str = "same") -> None:
        super().__init__()
        mid = config.mid_channels
        self.expand = conv_bn(config.in_channels, mid, 1) if config.expand_ratio != 1 else nn.Identity()
        self.depthwise = conv_bn(mid, mid, config.kernel, config.stride, groups=mid, padding=padding)
        self.se = SqueezeExcitation(mid, config.squeeze_channels)
        self.project = conv_bn(mid, config.out_channels, 1, activation=None)
        self.residual = config.residual
        self.drop_rate = config.drop_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.se(self.depthwise(self.expand(x))))
        if self.residual:
            y = drop_connect(y, self.drop_rate, self.training) + x
        return y


class MBConvModule(nn.Module):
    """One genotype module (the paper's word; ``modules.<i>``): its MBConv blocks, ``blocks.<j>``."""

    def __init__(self, blocks: Sequence[MBConvConfig], padding: str = "same") -> None:
        super().__init__()
        self.blocks = nn.Sequential(*(MBConv(block, padding) for block in blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class EvoPoseNet(nn.Module):
    """An EvoPose2D pose network decoded from a genotype; outputs ``num_keypoints`` heatmaps.

    ``resolution`` (height, width) is what the genotype is decoded for: it sets the compound
    scaling and the drop-connect rate. The network is fully convolutional and runs at any input
    size; its heatmaps are the input size divided by ``output_stride`` (2 for EvoPose2D-S, 4 for
    the ancestor and XS). ``top_channels`` adds EfficientNet's last 1x1 convolution (``top``: 1280
    channels in B0) between the backbone and the head; EvoPose2D networks have none. ``padding``
    (``PADDINGS``): ``tf_same`` for weights trained in TensorFlow; it changes no layer or weight shape.
    """

    def __init__(
        self,
        genotype: GenotypeLike,
        resolution: Sequence[int] = (256, 192),
        num_keypoints: int = 17,
        scaling: CompoundScaling | None = None,
        drop_connect: float | None = None,
        stem_channels: int = 32,
        head_channels: int = 128,
        head_blocks: int = 3,
        se_ratio: float = 0.25,
        top_channels: int | None = None,
        padding: str = "same",
    ) -> None:
        super().__init__()
        self.genotype = Genotype.coerce(genotype)
        self.resolution = (int(resolution[0]), int(resolution[1]))
        self.num_keypoints = num_keypoints
        self.scaling = scaling or CompoundScaling()
        # What rebuilds this network (checkpoints store it; see nets.registry.describe)
        self.config = {
            "genotype": str(self.genotype),
            "resolution": list(self.resolution),
            "num_keypoints": num_keypoints,
            "scaling": asdict(self.scaling),
            "drop_connect": drop_connect,
            "stem_channels": stem_channels,
            "head_channels": head_channels,
            "head_blocks": head_blocks,
            "se_ratio": se_ratio,
            "top_channels": top_channels,
            "padding": check_padding(padding),
        }
        channels = self.scaling.filters(stem_channels, self.resolution)
        self.stem = conv_bn(3, channels, 3, stride=2, padding=padding)
        backbone = decode_backbone(self.genotype, self.resolution, self.scaling, channels, se_ratio, drop_connect)
        # ``modules`` is the contracted layer name, but nn.Module.modules() is a method, so
        # add_module would refuse it: register the child directly.
        self._modules["modules"] = nn.ModuleList(MBConvModule(blocks, padding) for blocks in backbone)
        channels = backbone[-1][-1].out_channels
        self.top = None
        if top_channels:
            top = self.scaling.filters(top_channels, self.resolution)
            self.top = conv_bn(channels, top, 1)
            channels = top
        width = self.scaling.filters(head_channels, self.resolution)
        self.head = nn.Sequential(
            *(upsample_bn(channels if n == 0 else width, width, padding) for n in range(head_blocks))
        )
        self.final = nn.Conv2d(width if head_blocks else channels, num_keypoints, 1)
        # Input pixels per heatmap pixel: stem and stride-2 modules halve, head blocks double.
        self.output_stride = 2.0 ** (1 + self.genotype.num_stride2 - head_blocks)
        self.reset_parameters()

    @property
    def mbconv_modules(self) -> nn.ModuleList:
        """The backbone's genotype modules, ``modules.<i>`` (``self.modules`` is nn.Module's iterator method)."""
        return self._modules["modules"]

    def reset_parameters(self) -> None:
        """The reference (Keras) initialisation, fan-out computed from Keras' kernel layouts."""
        for m in self.modules():
            if m is self.final:
                bound = math.sqrt(3.0 * (1.0 / 3.0) / (m.out_channels * m.weight[0, 0].numel()))
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                init_conv_(m)
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_parameters()

    def heatmap_size(self, input_size: Sequence[int] | None = None) -> tuple[int, int]:
        """Heatmap (height, width) for an input size (default: the resolution); "same" convs round up at stride 2."""
        sizes = []
        for s in input_size or self.resolution:
            for _ in range(1 + self.genotype.num_stride2):
                s = -(-s // 2)
            sizes.append(s * 2 ** len(self.head))
        return sizes[0], sizes[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for module in self.mbconv_modules:
            x = module(x)
        if self.top is not None:
            x = self.top(x)
        return self.final(self.head(x))

    def extra_repr(self) -> str:
        return f"genotype={self.genotype}, resolution={self.resolution}, num_keypoints={self.num_keypoints}"


def decode_with_head(genotype: str | HeadGenotype, **kwargs: Any) -> EvoPoseNet:
    """A network of the ``e3_head`` search space: the backbone decoded as ever, with the genotype's head
    (``head_blocks`` transposed convolutions of ``head_channels``); ``kwargs`` as ``EvoPoseNet``'s."""
    genotype = genotype if isinstance(genotype, HeadGenotype) else HeadGenotype.from_string(genotype)
    return EvoPoseNet(genotype.backbone, head_blocks=genotype.blocks, head_channels=genotype.channels, **kwargs)
