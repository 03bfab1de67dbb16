"""The named models: EvoPose2D's (a genotype and the resolution it is decoded for), the baselines,
EfficientPose's variants (``nets.efficientpose.VARIANTS``), PNFS (``nets.pnfs.PNFSNet``) and KAPAO's sizes
(``nets.kapao.SIZES``)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from functools import partial
from typing import NamedTuple

from torch import nn

from evopose_pl.nets.baselines import HRNet, SimpleBaseline
from evopose_pl.nets.efficientpose import VARIANTS, EfficientPoseNet
from evopose_pl.nets.evopose import EvoPoseNet
from evopose_pl.nets.kapao import SIZES as KAPAO_SIZES
from evopose_pl.nets.kapao import KapaoNet
from evopose_pl.nets.keras import is_hdf5
from evopose_pl.nets.pnfs import PNFSNet
from evopose_pl.nets.pretrained import seed_from_pretrained
from evopose_pl.search import ANCESTOR, EVOPOSE2D_S, EVOPOSE2D_XS, CompoundScaling, Genotype

log = logging.getLogger(__name__)


class NamedModel(NamedTuple):
    genotype: Genotype
    resolution: tuple[int, int]  # what the compound scaling is decoded for


MODELS: dict[str, NamedModel] = {
    "ancestor": NamedModel(ANCESTOR, (256, 192)),
    "evopose2d_xs": NamedModel(EVOPOSE2D_XS, (256, 192)),
    "evopose2d_s": NamedModel(EVOPOSE2D_S, (256, 192)),
    "evopose2d_m": NamedModel(EVOPOSE2D_S, (384, 288)),
    "evopose2d_l": NamedModel(EVOPOSE2D_S, (512, 384)),
}

# The paper's baselines (SPEC section 9): built as f(num_keypoints=, resolution=, **kwargs).
BASELINES: dict[str, Callable[..., nn.Module]] = {
    "simplebaseline_r50": SimpleBaseline,
    "hrnet_w32": partial(HRNet, width=32),
    "efficientnet_b0_head": partial(EvoPoseNet, ANCESTOR, top_channels=1280),  # B0's blocks, top conv, our head
}


ARCHITECTURES: dict[str, type[nn.Module]] = {
    cls.__name__: cls for cls in (EvoPoseNet, SimpleBaseline, HRNet, EfficientPoseNet, PNFSNet, KapaoNet)
}


def describe(net: nn.Module) -> dict:
    """What rebuilds ``net`` without its config files: its class and constructor arguments (JSON)."""
    if type(net).__name__ not in ARCHITECTURES:
        raise TypeError(f"{type(net).__name__} is not one of the architectures {sorted(ARCHITECTURES)}")
    return {"architecture": type(net).__name__, "config": dict(net.config)}


def from_description(description: dict) -> nn.Module:
    """The network ``describe`` described, freshly initialised.

    Descriptions written before the networks' ``input_size`` argument became ``resolution`` (older
    checkpoints) are read with that key renamed.
    """
    try:
        cls = ARCHITECTURES[description["architecture"]]
        config = dict(description["config"])
    except (KeyError, TypeError) as e:
        raise ValueError(f"not a network description ({e!r}): {description!r:.200}") from None
    if "input_size" in config:
        config.setdefault("resolution", config.pop("input_size"))
    if cls is EvoPoseNet and config.get("scaling") is not None:
        config["scaling"] = CompoundScaling(**config["scaling"])
    return cls(**config)


def build_model(
    name: str,
    num_keypoints: int = 17,
    resolution: Sequence[int] | None = None,
    scaling: CompoundScaling | None = None,
    pretrained: str | os.PathLike | None = None,
    pretrained_naming: str = "auto",
    pretrained_exclude: Sequence[str] = (),
    padding: str | None = None,
    **kwargs,
) -> nn.Module:
    """Build a named model; ``resolution`` overrides its own (and so an EvoPose2D model's compound scaling).

    ``pretrained`` seeds it from a checkpoint through weight transfer (see ``nets.pretrained``);
    layers named in ``pretrained_exclude`` (prefixes, e.g. ``final``) keep their initialisation.
    ``padding`` (EvoPose2D and EfficientPose networks: ``same`` or ``tf_same``) defaults to ``tf_same``
    for weights from a Keras file, which were trained with TensorFlow's padding, and ``same`` otherwise.
    """
    keras_file = isinstance(pretrained, (str, os.PathLike)) and is_hdf5(pretrained)
    if padding is None and keras_file and (name in MODELS or name in VARIANTS or name == "efficientnet_b0_head"):
        padding = "tf_same"  # the networks with the option (EvoPose2D's decoder and EfficientPose)
    if padding is not None:
        kwargs["padding"] = padding
    net = _build(name, num_keypoints, resolution, scaling, **kwargs)
    if pretrained is not None:
        report = seed_from_pretrained(net, pretrained, pretrained_naming, pretrained_exclude)
        log.info(f"{name}: {report} (pretrained: {os.fspath(pretrained)})")
    return net


def _build(
    name: str, num_keypoints: int, resolution: Sequence[int] | None, scaling: CompoundScaling | None, **kwargs
) -> nn.Module:
    if name in VARIANTS:
        if scaling is not None:
            raise ValueError(f"model {name!r} has no compound scaling; drop model.scaling")
        variant = VARIANTS[name]._asdict()
        variant["resolution"] = resolution or variant["resolution"]
        return EfficientPoseNet(**{**variant, **kwargs}, num_keypoints=num_keypoints)
    if name in BASELINES:
        if scaling is not None and name != "efficientnet_b0_head":
            raise ValueError(f"model {name!r} has no compound scaling; drop model.scaling")
        extra = {"scaling": scaling} if scaling is not None else {}
        return BASELINES[name](num_keypoints=num_keypoints, resolution=resolution or (256, 192), **extra, **kwargs)
    if name == "pnfs":
        if scaling is not None:
            raise ValueError("model 'pnfs' has no compound scaling; drop model.scaling")
        return PNFSNet(num_keypoints=num_keypoints, resolution=resolution or (256, 256), **kwargs)
    if name in KAPAO_SIZES:
        if scaling is not None:
            raise ValueError(f"model {name!r} has no compound scaling; drop model.scaling")
        depth, width = KAPAO_SIZES[name]
        size = {"depth": depth, "width": width, **kwargs}  # kwargs may override the size's multipliers
        return KapaoNet(num_keypoints=num_keypoints, resolution=resolution or (1280, 1280), **size)
    if name not in MODELS:
        known = sorted(MODELS) + sorted(BASELINES) + sorted(VARIANTS) + ["pnfs"] + sorted(KAPAO_SIZES)
        raise ValueError(f"unknown model name {name!r}; the named models are {known}")
    model = MODELS[name]
    return EvoPoseNet(model.genotype, resolution or model.resolution, num_keypoints, scaling=scaling, **kwargs)
