"""Seed a network from public pretrained weights (the paper's "WT" rows): rename the checkpoint's
keys into our layer names, then apply the weight-transfer rules (SPEC section 4).

Recognised namings (by their keys; no download, the file is yours):

| naming | example key | maps onto |
|---|---|---|
| ``torchvision_resnet`` (= timm's) | ``layer3.2.conv2.weight`` | ``backbone.layer3.2.conv2.weight`` (SimpleBaseline) |
| ``timm_efficientnet`` | ``blocks.1.0.conv_pw.weight`` | ``modules.1.blocks.0.expand.conv.weight`` |
| ``torchvision_efficientnet`` | ``features.2.0.block.0.0.weight`` | ``modules.1.blocks.0.expand.conv.weight`` |
| ours | ``modules.1.blocks.0.expand.conv.weight`` | itself (an EvoPose2D-PL or Lightning checkpoint) |
| ``keras`` (an ``.h5`` file) | ``block2a_expand_conv`` | ``modules.1.blocks.0.expand.conv`` (see ``nets.keras``) |

Classifier weights (``fc``, ``classifier``) are dropped. EfficientNet stage ``i`` is our module
``i`` (timm) or ``i - 1`` (torchvision, whose ``features.0`` is the stem); its top convolution
(1280 channels) maps onto ``top``, which only ``efficientnet_b0_head`` has.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from evopose_pl.nets.keras import is_hdf5, read_keras_weights
from evopose_pl.transfer import TransferReport, load_state_dict, transfer_weights

# MBConv sub-layers: (timm name, torchvision index) -> ours, for blocks without and with expansion.
_TIMM_NO_EXPAND = {"conv_dw": "depthwise.conv", "bn1": "depthwise.bn", "conv_pw": "project.conv", "bn2": "project.bn"}
_TIMM_EXPAND = {
    "conv_pw": "expand.conv",
    "bn1": "expand.bn",
    "conv_dw": "depthwise.conv",
    "bn2": "depthwise.bn",
    "conv_pwl": "project.conv",
    "bn3": "project.bn",
}
_SE = {"conv_reduce": "reduce", "conv_expand": "expand", "fc1": "reduce", "fc2": "expand"}
_TV_NO_EXPAND = {"0": "depthwise", "1": "se", "2": "project"}
_TV_EXPAND = {"0": "expand", "1": "depthwise", "2": "se", "3": "project"}
_CONV_BN = {"0": "conv", "1": "bn"}


def _resnet(key: str) -> str | None:
    if key.startswith("fc."):
        return None
    return f"backbone.{key}"


def _timm_efficientnet(key: str) -> str | None:
    if key.startswith("classifier."):
        return None
    for prefix, ours in (("conv_stem.", "stem.conv."), ("bn1.", "stem.bn."), ("conv_head.", "top.conv."),
                         ("bn2.", "top.bn.")):  # fmt: skip
        if key.startswith(prefix):
            return ours + key[len(prefix) :]
    m = re.fullmatch(r"blocks\.(\d+)\.(\d+)\.(?:se\.(\w+)|(\w+))\.(\w+)", key)
    if m is None:
        return key
    stage, block, se, layer, param = m.groups()
    if se is not None:
        return f"modules.{stage}.blocks.{block}.se.{_SE[se]}.{param}"
    table = _TIMM_NO_EXPAND if stage == "0" else _TIMM_EXPAND
    return f"modules.{stage}.blocks.{block}.{table[layer]}.{param}"


def _torchvision_efficientnet(key: str) -> str | None:
    if key.startswith("classifier."):
        return None
    m = re.fullmatch(r"features\.(\d+)\.(\d+)\.(.+)", key)
    if m is None:
        return key
    feature, index, rest = m.groups()
    if feature == "0":
        return f"stem.{_CONV_BN[index]}.{rest}"
    if feature == "8":
        return f"top.{_CONV_BN[index]}.{rest}"
    sub = re.fullmatch(r"block\.(\d+)\.(\w+)\.(\w+)", rest)
    if sub is None:
        return key
    part, layer, param = sub.groups()
    name = (_TV_NO_EXPAND if feature == "1" else _TV_EXPAND)[part]
    layer = _SE[layer] if name == "se" else _CONV_BN[layer]
    return f"modules.{int(feature) - 1}.blocks.{index}.{name}.{layer}.{param}"


NAMINGS: dict[str, Callable[[str], str | None]] = {
    "torchvision_resnet": _resnet,
    "timm_efficientnet": _timm_efficientnet,
    "torchvision_efficientnet": _torchvision_efficientnet,
    "ours": lambda key: key,
}


def detect_naming(state: Mapping[str, torch.Tensor]) -> str:
    """Which naming a state dict uses, from its keys."""
    keys = set(state)
    if "conv_stem.weight" in keys:
        return "timm_efficientnet"
    if "features.0.0.weight" in keys:
        return "torchvision_efficientnet"
    if "layer1.0.conv1.weight" in keys and "conv1.weight" in keys:
        return "torchvision_resnet"
    return "ours"


def rename_pretrained(state: Mapping[str, torch.Tensor], naming: str = "auto") -> dict[str, torch.Tensor]:
    """The state dict under our layer names; classifier weights dropped."""
    naming = detect_naming(state) if naming == "auto" else naming
    if naming not in NAMINGS:
        raise ValueError(f"unknown pretrained naming {naming!r}; known: auto, {', '.join(NAMINGS)}")
    rename = NAMINGS[naming]
    return {new: value for key, value in state.items() if (new := rename(key)) is not None}


def seed_from_pretrained(
    net: nn.Module,
    weights: str | os.PathLike | Mapping[str, torch.Tensor],
    naming: str = "auto",
    exclude: Sequence[str] = (),
) -> TransferReport:
    """Transfer a pretrained checkpoint into ``net`` (in place) through the weight-transfer rules.

    ``exclude`` lists layer-name prefixes (ours) that keep their fresh initialisation, e.g.
    ``["final"]`` to replace the output layer when fine-tuning on another keypoint set.
    """
    if isinstance(weights, (str, os.PathLike)) and is_hdf5(weights):
        if naming not in ("auto", "keras"):
            raise ValueError(f"model.pretrained_naming={naming}: {os.fspath(weights)} is a Keras file (naming keras)")
        state = read_keras_weights(weights, "model.pretrained=")
    elif naming == "keras":
        raise ValueError(f"model.pretrained_naming=keras: model.pretrained={weights} is not a Keras .h5 file")
    else:
        state = rename_pretrained(load_state_dict(weights, "model.pretrained="), naming)
    prefixes = tuple(f"{p.rstrip('.')}." for p in exclude)
    return transfer_weights({k: v for k, v in state.items() if not k.startswith(prefixes)}, net)
