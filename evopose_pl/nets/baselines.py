"""The baselines the paper re-implements (SPEC section 9), in plain PyTorch.

- ``SimpleBaseline``: ResNet-50 and three transposed convolutions of 256 channels, stride 2, then a
  1x1 convolution to the heatmaps (Xiao et al. 2018). The backbone keeps torchvision's layer
  names (``backbone.layer3.2.conv2``) so that public ResNet-50 weights load by prefix.
- ``HRNet``: HRNet-W32 (Sun et al. 2019). Its fuse layers upsample with a strided transposed
  pointwise convolution in place of 1x1 convolution + nearest upsampling, as EvoPose2D's
  re-implementation does; the parameter count is unchanged by that.

Both take ``resolution`` like ``EvoPoseNet``, for one argument name across the model zoo: the
(height, width) they are configured for, recorded in their description; it does not change their
layers (they are not compound-scaled), and they run at any input size.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

RESNET50_BLOCKS = (3, 4, 6, 3)


def _shortcut(in_ch: int, out: int, stride: int) -> nn.Sequential | None:
    """The residual's 1x1 projection (torchvision's ``downsample``) when the shape changes."""
    if stride == 1 and in_ch == out:
        return None
    return nn.Sequential(nn.Conv2d(in_ch, out, 1, stride, bias=False), nn.BatchNorm2d(out))


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck (stride on the 3x3 convolution), torchvision's layer names."""

    expansion = 4

    def __init__(self, in_ch: int, width: int, stride: int = 1) -> None:
        super().__init__()
        out = width * self.expansion
        self.conv1 = nn.Conv2d(in_ch, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_ch, out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        return self.relu(self.bn3(self.conv3(y)) + identity)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual; HRNet's branch block."""

    expansion = 1

    def __init__(self, in_ch: int, width: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_ch, width, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(y)) + identity)


def _layer(block: type[Bottleneck] | type[BasicBlock], in_ch: int, width: int, blocks: int, stride: int = 1):
    layers = [block(in_ch, width, stride)]
    layers += [block(width * block.expansion, width) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class ResNet50(nn.Module):
    """The ResNet-50 trunk (no pooling or classifier), output stride 32, 2048 channels."""

    out_channels = 2048

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        in_ch = 64
        for i, (blocks, width) in enumerate(zip(RESNET50_BLOCKS, (64, 128, 256, 512))):
            self.add_module(f"layer{i + 1}", _layer(Bottleneck, in_ch, width, blocks, stride=1 if i == 0 else 2))
            in_ch = width * Bottleneck.expansion

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def _init_pose(net: nn.Module, final: nn.Conv2d) -> None:
    """The reference pose initialisation: He for convolutions, N(0, 0.001) for transposed convolutions
    and the final layer, BN at identity."""
    for m in net.modules():
        if isinstance(m, nn.ConvTranspose2d) or m is final:
            nn.init.normal_(m.weight, std=0.001)
        elif isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) and m.bias is not None:
            nn.init.zeros_(m.bias)


class SimpleBaseline(nn.Module):
    """ResNet-50 + ``head_blocks`` x [transposed conv 256, stride 2, BN, ReLU] + 1x1 conv; output stride 4.

    ``deconv_kernel`` 4 is the SimpleBaseline paper's (34.0M parameters at 17 keypoints); 3 is the
    EvoPose2D re-implementation's (SPEC section 9; 29.4M).
    """

    output_stride = 4.0

    def __init__(
        self,
        num_keypoints: int = 17,
        resolution: Sequence[int] = (256, 192),
        deconv_kernel: int = 4,
        head_channels: int = 256,
        head_blocks: int = 3,
    ) -> None:
        super().__init__()
        if deconv_kernel not in (2, 3, 4):
            raise ValueError(f"deconv_kernel: 2, 3 or 4 double the size exactly; got {deconv_kernel}")
        self.resolution = (int(resolution[0]), int(resolution[1]))
        self.num_keypoints = num_keypoints
        self.config = {
            "num_keypoints": num_keypoints,
            "resolution": list(self.resolution),
            "deconv_kernel": deconv_kernel,
            "head_channels": head_channels,
            "head_blocks": head_blocks,
        }
        self.backbone = ResNet50()
        padding, output_padding = {2: (0, 0), 3: (1, 1), 4: (1, 0)}[deconv_kernel]
        head, channels = [], self.backbone.out_channels
        for _ in range(head_blocks):
            conv = nn.ConvTranspose2d(channels, head_channels, deconv_kernel, 2, padding, output_padding, bias=False)
            head.append(nn.Sequential(OrderedDict(conv=conv, bn=nn.BatchNorm2d(head_channels), act=nn.ReLU(True))))
            channels = head_channels
        self.head = nn.Sequential(*head)
        self.final = nn.Conv2d(channels, num_keypoints, 1)
        _init_pose(self, self.final)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final(self.head(self.backbone(x)))


class HRModule(nn.Module):
    """Parallel branches of BasicBlocks, then every branch fused into each of the first ``outputs``
    branches (all of them, except in the network's last module, which feeds only the heatmaps)."""

    def __init__(self, channels: Sequence[int], blocks: int = 4, outputs: int | None = None) -> None:
        super().__init__()
        n = len(channels)
        self.branches = nn.ModuleList(_layer(BasicBlock, c, c, blocks) for c in channels)
        self.fuse = nn.ModuleList()
        for i in range(n if outputs is None else outputs):
            row = nn.ModuleList()
            for j in range(n):
                if j == i:
                    row.append(nn.Identity())
                elif j > i:  # lower resolution: strided transposed pointwise conv up to branch i
                    s = 2 ** (j - i)
                    up = nn.ConvTranspose2d(channels[j], channels[i], 1, s, output_padding=s - 1, bias=False)
                    row.append(nn.Sequential(up, nn.BatchNorm2d(channels[i])))
                else:  # higher resolution: 3x3 stride-2 convs down to branch i
                    steps = []
                    for k in range(i - j):
                        last = k == i - j - 1
                        out = channels[i] if last else channels[j]
                        step = [nn.Conv2d(channels[j], out, 3, 2, 1, bias=False), nn.BatchNorm2d(out)]
                        steps.append(nn.Sequential(*step) if last else nn.Sequential(*step, nn.ReLU(True)))
                    row.append(nn.Sequential(*steps))
            self.fuse.append(row)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs)]
        return [self.relu(sum(f(x) for f, x in zip(row, xs))) for row in self.fuse]


class HRNet(nn.Module):
    """HRNet (W32 by default): a stride-4 stem and Bottleneck layer, then stages of 2, 3 and 4
    parallel branches; the heatmaps come from the highest-resolution branch (output stride 4)."""

    output_stride = 4.0

    def __init__(
        self,
        num_keypoints: int = 17,
        resolution: Sequence[int] = (256, 192),
        width: int = 32,
        modules_per_stage: Sequence[int] = (1, 4, 3),
    ) -> None:
        super().__init__()
        self.resolution = (int(resolution[0]), int(resolution[1]))
        self.num_keypoints = num_keypoints
        self.config = {
            "num_keypoints": num_keypoints,
            "resolution": list(self.resolution),
            "width": width,
            "modules_per_stage": list(modules_per_stage),
        }
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 3, 2, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(True),
            nn.Conv2d(64, 64, 3, 2, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(True),
        )  # fmt: skip
        self.layer1 = _layer(Bottleneck, 64, 64, 4)
        channels = [256]
        self.transitions = nn.ModuleList()
        self.stages = nn.ModuleList()
        for stage, modules in enumerate(modules_per_stage):
            new = [width * 2**b for b in range(stage + 2)]
            self.transitions.append(_transition(channels, new))
            last = stage == len(modules_per_stage) - 1
            outputs = [1 if last and m == modules - 1 else None for m in range(modules)]
            self.stages.append(nn.Sequential(*(HRModule(new, outputs=o) for o in outputs)))
            channels = new
        self.final = nn.Conv2d(width, num_keypoints, 1)
        _init_pose(self, self.final)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs = [self.layer1(self.stem(x))]
        for transition, stage in zip(self.transitions, self.stages):
            xs = [t(xs[min(i, len(xs) - 1)]) for i, t in enumerate(transition)]
            for module in stage:
                xs = module(xs)
        return self.final(xs[0])


def _transition(old: Sequence[int], new: Sequence[int]) -> nn.ModuleList:
    """Existing branches adapt their width (or pass through); the new branch halves the lowest resolution."""
    layers = nn.ModuleList()
    for i, c in enumerate(new):
        src = old[min(i, len(old) - 1)]
        if i < len(old):
            same = src == c
            conv = [nn.Conv2d(src, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(True)]
            layers.append(nn.Identity() if same else nn.Sequential(*conv))
        else:
            layers.append(nn.Sequential(nn.Conv2d(src, c, 3, 2, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(True)))
    return layers
