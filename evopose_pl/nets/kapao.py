"""KAPAO's network (SPEC-KAPAO section 2): a YOLOv5-style P6 detector of pose objects and keypoint objects.

Written from the specification's layer tables alone. The blocks:

- ``Conv``: convolution without bias -> BatchNorm (eps 1e-3, momentum 0.03, a detector's) -> SiLU, padding k // 2;
- ``Focus``: space-to-depth (phases at row, column offsets (0, 0), (1, 0), (0, 1), (1, 1), 3 -> 12 channels,
  stride 2), then a ``Conv``;
- ``Bottleneck``: 1x1 then 3x3 ``Conv`` at the same width, plus the input when ``shortcut``;
- ``C3``: branch a (1x1 ``Conv`` to half the output width, then n Bottlenecks) beside branch b (1x1 ``Conv``),
  concatenated a then b, then a 1x1 ``Conv`` to the output width;
- ``SPP``: 1x1 ``Conv`` to half the input width, that and its stride-1 max-pools (3, 5, 7) concatenated, 1x1
  ``Conv`` to the output width.

Layer names are structural, for weight transfer and checkpoints:

- ``stem``: the Focus (row 0 of the spec's backbone table), ``stem.conv``;
- ``backbone.<i>``, i = 1..11, the spec's table rows (YOLOv5's layer indices): odd i up to 9 the stride-2
  3x3 ``Conv``, even i up to 8 the ``C3``, 10 the ``SPP``, 11 the last ``C3``; the backbone's P3, P4, P5
  and P6 are the outputs of 4, 6, 8 and 11;
- ``neck.a``, ``neck.b``, ``neck.c``: the spec's 1x1 convs; ``neck.top_p5``, ``neck.top_p4``: the top-down
  C3s; ``neck.out_p3``..``neck.out_p6``: the C3s that give the outputs; ``neck.down_p4``..``neck.down_p6``:
  the bottom-up stride-2 3x3 convs into those levels;
- ``detect.p3``..``detect.p6``: the 1x1 prediction convs (with bias); the anchors and decoding are the codec's
  (``codecs.kapao``), not the network's;
- inside: a ``Conv`` is ``conv`` + ``bn``; a Bottleneck ``conv1``, ``conv2``; a C3 ``conv_a``, ``blocks.<j>``,
  ``conv_b``, ``conv_out``; an SPP ``conv_in``, ``conv_out``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

#: (depth, width) multipliers of the published sizes.
SIZES: dict[str, tuple[float, float]] = {"kapao_s": (0.33, 0.50), "kapao_m": (0.67, 0.75), "kapao_l": (1.0, 1.0)}

LEVELS = ("p3", "p4", "p5", "p6")
#: Objects a 640x640 image is expected to hold per level, for the objectness prior.
PRIOR_OBJECTS = 8
#: Foreground probability mass spread over the classes, for the class prior.
PRIOR_CLASS_MASS = 0.6


def scale_width(channels: int, width: float) -> int:
    """Scaled channels, rounded up to a multiple of 8 (what the published sizes use)."""
    return int(math.ceil(channels * width / 8) * 8)


def scale_depth(repeats: int, depth: float) -> int:
    """Scaled number of bottlenecks, rounded, at least one."""
    return max(round(repeats * depth), 1)


class Conv(nn.Sequential):
    """Convolution without bias (the BatchNorm has one) -> BatchNorm -> SiLU; 'same' padding for odd kernels."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int = 1, stride: int = 1) -> None:
        super().__init__(
            OrderedDict(
                conv=nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, bias=False),
                bn=nn.BatchNorm2d(out_channels, eps=1e-3, momentum=0.03),
                act=nn.SiLU(inplace=True),
            )
        )


class Focus(nn.Module):
    """Space-to-depth to stride 2 without losing pixels, then a ``Conv``: a cheap, lossless first downsampling."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int = 3) -> None:
        super().__init__()
        self.conv = Conv(4 * in_channels, out_channels, kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        phases = (x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2])
        return self.conv(torch.cat(phases, 1))


class Bottleneck(nn.Module):
    """1x1 then 3x3 ``Conv`` at one width, with a residual when ``shortcut``."""

    def __init__(self, channels: int, shortcut: bool = True) -> None:
        super().__init__()
        self.conv1 = Conv(channels, channels, 1)
        self.conv2 = Conv(channels, channels, 3)
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(self.conv1(x))
        return x + y if self.shortcut else y


class C3(nn.Module):
    """CSP block: bottlenecks on half the channels (branch a) beside a 1x1 projection (branch b), then fused."""

    def __init__(self, in_channels: int, out_channels: int, repeats: int = 1, shortcut: bool = True) -> None:
        super().__init__()
        hidden = out_channels // 2
        self.conv_a = Conv(in_channels, hidden, 1)
        self.blocks = nn.Sequential(*(Bottleneck(hidden, shortcut) for _ in range(repeats)))
        self.conv_b = Conv(in_channels, hidden, 1)
        self.conv_out = Conv(2 * hidden, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(torch.cat([self.blocks(self.conv_a(x)), self.conv_b(x)], 1))


class SPP(nn.Module):
    """Spatial pyramid pooling: the reduced input beside its max-pools at several kernel sizes (same size)."""

    def __init__(self, in_channels: int, out_channels: int, kernels: Sequence[int] = (3, 5, 7)) -> None:
        super().__init__()
        hidden = in_channels // 2
        self.conv_in = Conv(in_channels, hidden, 1)
        self.pools = nn.ModuleList(nn.MaxPool2d(k, 1, k // 2) for k in kernels)
        self.conv_out = Conv(hidden * (len(kernels) + 1), out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        return self.conv_out(torch.cat([x, *(pool(x) for pool in self.pools)], 1))


class KapaoNet(nn.Module):
    """KAPAO: backbone, four-level neck (P3..P6) and one 1x1 detection conv per level.

    ``forward`` returns the raw outputs by level name, ``p3``, ``p4``, ``p5``, ``p6`` (the names exported models
    give them), each ``(B, num_anchors * num_outputs,
    H / s, W / s)``, anchor-major (``view(B, num_anchors, num_outputs, h, w)``); per anchor ``[x, y, w, h,
    objectness, class 0 (pose object), classes 1..K (keypoint objects), x1, y1, ..., xK, yK]`` (keypoint
    offsets), all before any sigmoid. ``depth`` and ``width`` scale the L model's repeats and channels
    (``SIZES``); ``resolution`` is the (height, width) the network is configured for, recorded in its
    description (it runs at any size whose sides are multiples of 64).
    """

    strides = (8, 16, 32, 64)

    def __init__(
        self,
        num_keypoints: int = 17,
        depth: float = 0.33,
        width: float = 0.50,
        num_anchors: int = 3,
        resolution: Sequence[int] = (1280, 1280),
    ) -> None:
        super().__init__()
        if num_keypoints < 1 or num_anchors < 1:
            raise ValueError(f"KapaoNet needs at least one keypoint and anchor, got {num_keypoints}, {num_anchors}")
        self.resolution = (int(resolution[0]), int(resolution[1]))
        self._check_size(self.resolution, "a resolution")
        self.num_keypoints = num_keypoints
        self.num_anchors = num_anchors
        self.num_classes = 1 + num_keypoints  # the pose object, then one keypoint object per keypoint
        self.num_outputs = 5 + self.num_classes + 2 * num_keypoints
        self.config = {
            "num_keypoints": num_keypoints,
            "depth": depth,
            "width": width,
            "num_anchors": num_anchors,
            "resolution": list(self.resolution),
        }

        def ch(c: int) -> int:
            return scale_width(c, width)

        def n(r: int) -> int:
            return scale_depth(r, depth)

        self.stem = Focus(3, ch(64), 3)
        # a dict, not a Sequential: indexed by the spec's row numbers, never by position (which starts at 0)
        self.backbone = nn.ModuleDict(
            OrderedDict(
                [
                    ("1", Conv(ch(64), ch(128), 3, 2)),
                    ("2", C3(ch(128), ch(128), n(3))),
                    ("3", Conv(ch(128), ch(256), 3, 2)),
                    ("4", C3(ch(256), ch(256), n(9))),
                    ("5", Conv(ch(256), ch(512), 3, 2)),
                    ("6", C3(ch(512), ch(512), n(9))),
                    ("7", Conv(ch(512), ch(768), 3, 2)),
                    ("8", C3(ch(768), ch(768), n(3))),
                    ("9", Conv(ch(768), ch(1024), 3, 2)),
                    ("10", SPP(ch(1024), ch(1024))),
                    ("11", C3(ch(1024), ch(1024), n(3), shortcut=False)),
                ]
            )
        )

        def c3(c_in: int, c_out: int) -> C3:
            return C3(c_in, c_out, n(3), shortcut=False)

        self.neck = nn.ModuleDict(
            OrderedDict(
                a=Conv(ch(1024), ch(768), 1),
                top_p5=c3(ch(768) + ch(768), ch(768)),
                b=Conv(ch(768), ch(512), 1),
                top_p4=c3(ch(512) + ch(512), ch(512)),
                c=Conv(ch(512), ch(256), 1),
                out_p3=c3(ch(256) + ch(256), ch(256)),
                down_p4=Conv(ch(256), ch(256), 3, 2),
                out_p4=c3(ch(256) + ch(256), ch(512)),
                down_p5=Conv(ch(512), ch(512), 3, 2),
                out_p5=c3(ch(512) + ch(512), ch(768)),
                down_p6=Conv(ch(768), ch(768), 3, 2),
                out_p6=c3(ch(768) + ch(768), ch(1024)),
            )
        )
        out = num_anchors * self.num_outputs
        self.detect = nn.ModuleDict(
            {level: nn.Conv2d(ch(c), out, 1) for level, c in zip(LEVELS, (256, 512, 768, 1024))}
        )
        self.init_detect_biases()

    @torch.no_grad()
    def init_detect_biases(self) -> None:
        """Priors on the detection biases, so that training from scratch starts with few, uncertain detections:
        objectness for about ``PRIOR_OBJECTS`` objects per 640x640 image at each level, classes for
        ``PRIOR_CLASS_MASS`` spread over them. Adds to the current biases (call once, on a fresh layer)."""
        for level, stride in zip(LEVELS, self.strides):
            bias = self.detect[level].bias.view(self.num_anchors, self.num_outputs)
            bias[:, 4] += math.log(PRIOR_OBJECTS / (640 / stride) ** 2)
            bias[:, 5 : 5 + self.num_classes] += math.log(PRIOR_CLASS_MASS / (self.num_classes - 0.99))

    @staticmethod
    def _check_size(size: Sequence[int], what: str) -> None:
        if len(size) != 2 or any(s <= 0 or s % 64 for s in size):
            raise ValueError(
                f"KapaoNet needs {what} whose height and width are multiples of 64 (the P6 stride), got {tuple(size)}"
            )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.dim() != 4:
            raise ValueError(f"KapaoNet needs a (B, 3, H, W) input, got shape {tuple(x.shape)}")
        self._check_size(tuple(x.shape[-2:]), "an input")
        features: dict[str, torch.Tensor] = {}
        y = self.stem(x)
        for name, layer in self.backbone.items():
            y = layer(y)
            features[name] = y
        p3, p4, p5 = features["4"], features["6"], features["8"]
        neck = self.neck

        def up_cat(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return torch.cat([nn.functional.interpolate(a, scale_factor=2.0, mode="nearest"), b], 1)

        a = neck.a(y)
        b = neck.b(neck.top_p5(up_cat(a, p5)))
        c = neck.c(neck.top_p4(up_cat(b, p4)))
        out_p3 = neck.out_p3(up_cat(c, p3))
        out_p4 = neck.out_p4(torch.cat([neck.down_p4(out_p3), c], 1))
        out_p5 = neck.out_p5(torch.cat([neck.down_p5(out_p4), b], 1))
        out_p6 = neck.out_p6(torch.cat([neck.down_p6(out_p5), a], 1))
        outs = (out_p3, out_p4, out_p5, out_p6)
        return {level: self.detect[level](o) for level, o in zip(LEVELS, outs)}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config.items())
