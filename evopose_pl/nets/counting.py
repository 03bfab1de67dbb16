"""Model size and cost, counted the way the paper reports them."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import NamedTuple

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

aten = torch.ops.aten


class ParameterCount(NamedTuple):
    trainable: int  # what the optimiser updates, training-only layers included
    with_bn_stats: int  # Keras' count_params() of the deployed network: parameters plus BN moving statistics


def training_only_layers(net: nn.Module) -> list[nn.Module]:
    """Layers a network trains but does not deploy (EfficientPose's intermediate predictions)."""
    layers = getattr(net, "training_only_layers", None)
    return list(layers()) if callable(layers) else []


@contextmanager
def deployed(net: nn.Module) -> Iterator[nn.Module]:
    """``net`` as deployed while inside: a network with training-only outputs (``deployed`` attribute)
    returns its final prediction alone, as an exported or measured network should."""
    before = getattr(net, "deployed", None)
    if before is not None:
        net.deployed = True
    try:
        yield net
    finally:
        if before is not None:
            net.deployed = before


def count_parameters(net: nn.Module) -> ParameterCount:
    """Trainable parameters, and the deployed network's parameters plus BatchNorm running statistics
    (the papers' figures: Keras counts the moving statistics, and the deployed graph drops training-only layers)."""
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    skipped = {id(t) for layer in training_only_layers(net) for t in [*layer.parameters(), *layer.buffers()]}
    total = sum(p.numel() for p in net.parameters() if id(p) not in skipped)
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None]
    stats = sum(m.running_mean.numel() + m.running_var.numel() for m in norms if id(m.running_mean) not in skipped)
    return ParameterCount(trainable, total + stats)


def _per_output_element(*args, out_shape, **kwargs) -> int:
    return math.prod(out_shape)


def _per_input_element(x_shape, *args, out_shape, **kwargs) -> int:
    return math.prod(x_shape)


def _convolution_with_bias(
    x_shape, w_shape, bias, stride, padding, dilation, transposed, *args, out_shape, **kwargs
) -> int:
    """TensorFlow counts a convolution's bias as a separate BiasAdd, one op per output element."""
    return conv_flop_count(x_shape, w_shape, out_shape, transposed=transposed) + (
        math.prod(out_shape) if bias is not None else 0
    )


# TensorFlow's profiler (tf.compat.v1.profiler float_operation), which produced the paper's
# figures, also counts one op per element for Mul (swish, squeeze-excitation gating), Add
# (residuals), BiasAdd and Mean (the squeeze pooling); it does not count BatchNorm or Sigmoid.
_TF_PROFILER_OPS = {
    aten.convolution: _convolution_with_bias,
    aten.mul: _per_output_element,
    aten.add: _per_output_element,
    aten.silu: _per_output_element,
    aten.silu_: _per_output_element,
    aten.mean: _per_input_element,
}


def count_flops(net: nn.Module, input_size: Sequence[int], in_channels: int = 3, elementwise: bool = True) -> int:
    """Multiply-accumulates of one forward pass of the deployed network on a single image: the paper's "FLOPs".

    The reference code halves TensorFlow's profiler count, so a convolution counts its
    multiply-accumulates and every elementwise op counts half an op. ``elementwise=False``
    gives the convolution and matmul multiply-accumulates alone.
    """
    param = next(net.parameters())
    x = torch.zeros(1, in_channels, *input_size, dtype=param.dtype, device=param.device)
    counter = FlopCounterMode(display=False, custom_mapping=_TF_PROFILER_OPS if elementwise else None)
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad(), deployed(net), counter:
            net(x)
    finally:
        net.train(was_training)
    return counter.get_total_flops() // 2
