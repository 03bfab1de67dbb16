"""Pose networks in plain PyTorch (no Lightning): the genotype decoder and its named models."""

from evopose_pl.nets.counting import ParameterCount, count_flops, count_parameters
from evopose_pl.nets.evopose import EvoPoseNet, MBConv, SqueezeExcitation
from evopose_pl.nets.registry import MODELS, NamedModel, build_model

__all__ = [
    "MODELS",
    "EvoPoseNet",
    "MBConv",
    "NamedModel",
    "ParameterCount",
    "SqueezeExcitation",
    "build_model",
    "count_flops",
    "count_parameters",
]
