"""EfficientPose RT to IV (SPEC-EfficientPose): EfficientNet backbones at two resolutions, detection
passes of Mobile DenseNets predicting part affinity fields then confidence maps, and a fixed bilinear
upscaling to the input resolution, as the released Keras graphs define them.

Layer names are structural, as EvoPose2D's: the high-resolution backbone is ``stem`` and
``modules.<i>.blocks.<j>`` (EfficientNet stages 1-3, EvoPose2D's own names, so weight transfer seeds
an EvoPose2D network's stem and early modules from it), the low-resolution one ``low.stem`` and
``low.modules.<i>``; the passes are ``skeleton.<p>`` (PAFs) and ``detection.<p>`` (confidence maps),
each ``densenets.<d>.blocks.<m>`` and a 1x1 ``predict``; the upscaling ``upscale.<n>``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from evopose_pl.nets.evopose import (
    MBConvConfig,
    MBConvModule,
    SqueezeExcitation,
    check_padding,
    conv_bn,
    conv_transpose2d,
    init_conv_,
)


class EfficientNetStages(NamedTuple):
    """An EfficientNet's stem width and its stages 1-3 as (width, repeats): the backbones' table."""

    stem: int
    stages: tuple[tuple[int, int], tuple[int, int], tuple[int, int]]


#: SPEC-EfficientPose section 1 (B6 is in no variant).
EFFICIENTNETS: dict[str, EfficientNetStages] = {
    "b0": EfficientNetStages(32, ((16, 1), (24, 2), (40, 2))),
    "b1": EfficientNetStages(32, ((16, 2), (24, 3), (40, 3))),
    "b2": EfficientNetStages(32, ((16, 2), (24, 3), (48, 3))),
    "b3": EfficientNetStages(40, ((24, 2), (32, 3), (48, 3))),
    "b4": EfficientNetStages(48, ((24, 2), (32, 4), (56, 4))),
    "b5": EfficientNetStages(48, ((24, 3), (40, 5), (64, 5))),
    "b7": EfficientNetStages(64, ((32, 4), (48, 7), (80, 7))),
}
#: Kernel, stride and expansion of EfficientNet's stages 1-3.
_STAGE_SHAPES = ((3, 1, 1), (3, 2, 6), (5, 2, 6))


class EfficientPoseVariant(NamedTuple):
    resolution: int
    high: str
    low: str | None
    channels: int  # C: each E-MBConv's output width (the high backbone's stage-3 width)
    densenets: int  # D: Mobile DenseNets per detection pass


#: SPEC-EfficientPose section 2.
VARIANTS: dict[str, EfficientPoseVariant] = {
    "efficientpose_rt": EfficientPoseVariant(224, "b0", None, 40, 1),
    "efficientpose_i": EfficientPoseVariant(256, "b2", "b0", 48, 1),
    "efficientpose_ii": EfficientPoseVariant(368, "b4", "b0", 56, 2),
    "efficientpose_iii": EfficientPoseVariant(480, "b5", "b1", 64, 3),
    "efficientpose_iv": EfficientPoseVariant(600, "b7", "b3", 80, 4),
}

#: The released models' joint order, and where each of MPII's joints is in it: our networks predict in
#: MPII's order (``data.mpii.MPII_KEYPOINTS``); released weights are permuted on loading (``nets.keras``).
RELEASED_JOINTS = (
    "head_top", "upper_neck", "r_shoulder", "r_elbow", "r_wrist", "thorax", "l_shoulder", "l_elbow",
    "l_wrist", "pelvis", "r_hip", "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle",
)  # fmt: skip


def efficientnet_stages(name: str, stages: int, padding: str) -> tuple[nn.Sequential, nn.ModuleList, int]:
    """EfficientNet ``name``'s stem and first ``stages`` stages (``MBConvModule`` each), and their output width."""
    if name not in EFFICIENTNETS:
        raise ValueError(f"EfficientNet {name!r} is not one of {sorted(EFFICIENTNETS)} (model.high, model.low)")
    width = EFFICIENTNETS[name].stem
    blocks = stage_blocks(name, stages, width)
    modules = nn.ModuleList(MBConvModule(module, padding) for module in blocks)
    return conv_bn(3, width, 3, stride=2, padding=padding), modules, blocks[-1][-1].out_channels


def stage_blocks(name: str, stages: int, in_channels: int) -> list[list[MBConvConfig]]:
    """EfficientNet ``name``'s first ``stages`` stages as MBConv block configurations, from ``in_channels``."""
    table = EFFICIENTNETS[name]
    modules = []
    for (width, repeats), (kernel, stride, expand) in list(zip(table.stages, _STAGE_SHAPES))[:stages]:
        modules.append(
            [
                MBConvConfig(in_channels if j == 0 else width, width, kernel, stride if j == 0 else 1, expand)
                for j in range(repeats)
            ]  # fmt: skip
        )
        in_channels = width
    return modules


class ESwish(nn.Module):
    """E-swish, ``1.25 * x * sigmoid(x)``: EfficientPose's activation in its detection blocks."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 1.25 * nn.functional.silu(x)


class EMBConv(nn.Module):
    """E-MBConv(M -> C): expansion relative to the *output* (6C), 5x5 depthwise, squeeze-excitation to
    C/4, E-swish; linear output, no residual (as released)."""

    def __init__(self, in_channels: int, out_channels: int, padding: str = "same") -> None:
        super().__init__()
        mid = 6 * out_channels
        self.expand = conv_bn(in_channels, mid, 1, activation=ESwish)
        self.depthwise = conv_bn(mid, mid, 5, groups=mid, activation=ESwish, padding=padding)
        self.se = SqueezeExcitation(mid, max(1, out_channels // 4), activation=ESwish)
        self.project = conv_bn(mid, out_channels, 1, activation=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.se(self.depthwise(self.expand(x))))


class MobileDenseNet(nn.Module):
    """MD(M -> 3C): ``y1 = E(x)``, ``y2 = E(y1)``, ``y3 = E([y2, y1])``; output ``[y3, y2, y1]``."""

    def __init__(self, in_channels: int, channels: int, padding: str = "same") -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            [
                EMBConv(in_channels, channels, padding),
                EMBConv(channels, channels, padding),
                EMBConv(2 * channels, channels, padding),
            ]  # fmt: skip
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y1 = self.blocks[0](x)
        y2 = self.blocks[1](y1)
        y3 = self.blocks[2](torch.cat([y2, y1], 1))
        return torch.cat([y3, y2, y1], 1)


class DetectionPass(nn.Module):
    """D Mobile DenseNets (each after the first adds its input back) and a 1x1 prediction (with bias).

    ``forward`` returns the features the next pass reads; ``predict`` maps them to the pass's output."""

    def __init__(self, in_channels: int, channels: int, densenets: int, outputs: int, padding: str = "same") -> None:
        super().__init__()
        self.densenets = nn.ModuleList(
            MobileDenseNet(in_channels if d == 0 else 3 * channels, channels, padding) for d in range(densenets)
        )
        self.predict = nn.Conv2d(3 * channels, outputs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.densenets[0](x)
        for densenet in self.densenets[1:]:
            x = densenet(x) + x
        return x


def bilinear_kernel(channels: int, kernel: int = 4) -> torch.Tensor:
    """A transposed convolution's weight (in, out, k, k) that upsamples each channel bilinearly by 2."""
    factor = (kernel + 1) // 2
    centre = factor - 1 if kernel % 2 == 1 else factor - 0.5
    steps = 1 - (torch.arange(kernel, dtype=torch.float64) - centre).abs() / factor
    weight = torch.zeros(channels, channels, kernel, kernel, dtype=torch.float64)
    weight[range(channels), range(channels)] = steps[:, None] * steps[None, :]
    return weight.float()


class EfficientNetFeatures(nn.Module):
    """The first stages of an EfficientNet (``stem``, ``modules.<i>``): the low-resolution backbone."""

    def __init__(self, name: str, stages: int, padding: str = "same") -> None:
        super().__init__()
        self.stem, modules, self.out_channels = efficientnet_stages(name, stages, padding)
        # ``modules`` is nn.Module.modules(), a method: register the child directly (as EvoPoseNet does).
        self._modules["modules"] = modules
        # The released graphs read this backbone's last block before its residual add.
        self.mbconv_modules[-1].blocks[-1].residual = False

    @property
    def mbconv_modules(self) -> nn.ModuleList:
        return self._modules["modules"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for module in self.mbconv_modules:
            x = module(x)
        return x


class EfficientPoseNet(nn.Module):
    """An EfficientPose network; ``build_model("efficientpose_rt")`` etc. build the published variants.

    ``high`` and ``low`` name the backbones (EfficientNet ``b0``...``b7``; ``low`` None: RT's single
    backbone), ``channels`` is C and ``densenets`` D. ``skeleton_passes`` predict PAFs (2 x ``num_limbs``
    channels) and ``detection_passes`` confidence maps (``num_keypoints``), all at stride 8; ``upscale``
    transposed convolutions (3: back to the input resolution), fixed to bilinear upsampling, follow the
    last pass. ``resolution`` is the input size the variant was published for (the network runs at any).

    ``forward`` returns every output by name, for training: ``pafs1``..., ``confs1``..., ``upscaled``.
    With ``deployed`` set (``nets.deployed(net)``), it returns the final maps alone and skips the
    prediction layers only training uses (``training_only_layers``), as the released inference graphs.
    """

    def __init__(
        self,
        resolution: int | Sequence[int] = 224,
        high: str = "b0",
        low: str | None = None,
        channels: int = 40,
        densenets: int = 1,
        skeleton_passes: int = 1,
        detection_passes: int = 2,
        upscale: int = 3,
        num_keypoints: int = 16,
        num_limbs: int = 14,
        padding: str = "same",
    ) -> None:
        super().__init__()
        for setting, value, least in (("detection_passes", detection_passes, 1), ("densenets", densenets, 1),
                                      ("skeleton_passes", skeleton_passes, 0), ("upscale", upscale, 0)):  # fmt: skip
            if value < least:
                raise ValueError(f"model.{setting}={value}: must be at least {least}")
        size = [resolution, resolution] if isinstance(resolution, int) else [int(s) for s in resolution]
        self.resolution = (int(size[0]), int(size[1]))
        self.num_keypoints = num_keypoints
        self.config = {
            "resolution": list(self.resolution),
            "high": high,
            "low": low,
            "channels": channels,
            "densenets": densenets,
            "skeleton_passes": skeleton_passes,
            "detection_passes": detection_passes,
            "upscale": upscale,
            "num_keypoints": num_keypoints,
            "num_limbs": num_limbs,
            "padding": check_padding(padding),
        }
        self.stem, modules, features = efficientnet_stages(high, 3, padding)
        self._modules["modules"] = modules
        self.low = EfficientNetFeatures(low, 2, padding) if low is not None else None
        features += self.low.out_channels if self.low is not None else 0

        def passes(count: int, outputs: int, first_input: int) -> nn.ModuleList:
            return nn.ModuleList(
                DetectionPass(first_input if p == 0 else features + 3 * channels, channels, densenets, outputs, padding)
                for p in range(count)
            )

        self.skeleton = passes(skeleton_passes, 2 * num_limbs, features)
        self.detection = passes(detection_passes, num_keypoints, features + 3 * channels * (skeleton_passes > 0))
        self.upscale = nn.Sequential(
            *(conv_transpose2d(num_keypoints, num_keypoints, 4, bias=True, padding=padding) for _ in range(upscale))
        )
        self.deployed = False
        self.output_stride = 8 / 2**upscale
        self.reset_parameters()

    @property
    def mbconv_modules(self) -> nn.ModuleList:
        return self._modules["modules"]

    def training_only_layers(self) -> list[nn.Module]:
        """The prediction layers of every pass but the last: trained (deep supervision), not deployed."""
        return [p.predict for p in [*self.skeleton, *self.detection][:-1]]

    def reset_parameters(self) -> None:
        """EfficientNet's initialisation (as EvoPose2D's decoder), the prediction layers near zero
        (std 0.01, so the first steps do not chase outputs far larger than any target); the upscaling is
        fixed to bilinear upsampling, exactly the released kernels, and is not trained."""
        predictions = {id(p.predict) for p in [*self.skeleton, *self.detection]}
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                init_conv_(m, 0.01 if id(m) in predictions else None)
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_parameters()
        for layer in self.upscale:
            with torch.no_grad():
                layer.weight.copy_(bilinear_kernel(self.num_keypoints, layer.kernel_size[0]))
                layer.bias.zero_()
            layer.requires_grad_(False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """F: the high backbone's stage-3 output beside the low backbone's stage-2 output, both at stride 8."""
        high = self.stem(x)
        for module in self.mbconv_modules:
            high = module(high)
        if self.low is None:
            return high
        pooled = nn.functional.avg_pool2d(x, 2, ceil_mode=True, count_include_pad=False)  # TF's 'same' pooling
        return torch.cat([high, self.low(pooled)], 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor] | torch.Tensor:
        features = self.features(x)
        outputs: OrderedDict[str, torch.Tensor] = OrderedDict()
        passes = [(f"pafs{i + 1}", p) for i, p in enumerate(self.skeleton)]
        passes += [(f"confs{i + 1}", p) for i, p in enumerate(self.detection)]
        previous = None
        for n, (name, detection_pass) in enumerate(passes):
            previous = detection_pass(features if previous is None else torch.cat([previous, features], 1))
            if not self.deployed or n == len(passes) - 1:
                outputs[name] = detection_pass.predict(previous)
        maps = outputs[passes[-1][0]]
        if len(self.upscale):
            maps = outputs["upscaled"] = self.upscale(maps)
        return maps if self.deployed else outputs

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config.items())
