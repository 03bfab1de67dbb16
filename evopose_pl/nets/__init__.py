"""Pose networks in plain PyTorch (no Lightning): the genotype decoder, the baselines, EfficientPose, PNFS,
KAPAO, named models."""

from evopose_pl.nets.baselines import HRNet, SimpleBaseline
from evopose_pl.nets.counting import ParameterCount, count_flops, count_parameters, deployed
from evopose_pl.nets.efficientpose import VARIANTS as EFFICIENTPOSE_VARIANTS
from evopose_pl.nets.efficientpose import EfficientPoseNet
from evopose_pl.nets.evopose import (
    EvoPoseNet,
    MBConv,
    MBConvConfig,
    MBConvModule,
    SqueezeExcitation,
    decode_backbone,
    decode_module,
    decode_with_head,
)
from evopose_pl.nets.kapao import SIZES as KAPAO_SIZES
from evopose_pl.nets.kapao import KapaoNet
from evopose_pl.nets.pnfs import PNFSNet
from evopose_pl.nets.pretrained import rename_pretrained, seed_from_pretrained
from evopose_pl.nets.registry import BASELINES, MODELS, NamedModel, build_model, describe, from_description

__all__ = [
    "BASELINES",
    "EFFICIENTPOSE_VARIANTS",
    "EfficientPoseNet",
    "KAPAO_SIZES",
    "KapaoNet",
    "MODELS",
    "EvoPoseNet",
    "HRNet",
    "MBConv",
    "MBConvConfig",
    "MBConvModule",
    "NamedModel",
    "PNFSNet",
    "ParameterCount",
    "SimpleBaseline",
    "SqueezeExcitation",
    "build_model",
    "count_flops",
    "count_parameters",
    "decode_backbone",
    "decode_module",
    "decode_with_head",
    "deployed",
    "describe",
    "from_description",
    "rename_pretrained",
    "seed_from_pretrained",
]
