"""Depthwise convolutions trained under CPU bf16 autocast take oneDNN's fastest path for each gradient
(nets.evopose.DepthwiseConv2d): the same outputs as autocast's, gradients of the same function in fp32 or at
autocast's bf16 precision (a larger kernel's weight gradient from bf16 3x3 windows), and the path taken only
where it is meant to be."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from evopose_pl.nets import build_model, evopose
from evopose_pl.nets.evopose import DepthwiseConv2d, TFSameConv2d, TFSameDepthwiseConv2d, conv2d


def _pair(
    cls: type[nn.Conv2d], reference: type[nn.Conv2d], stride: int, padding: int, kernel: int = 5
) -> tuple[nn.Conv2d, nn.Conv2d]:
    ours = cls(16, 16, kernel, stride, padding, groups=16, bias=False)
    plain = reference(16, 16, kernel, stride, padding, groups=16, bias=False)
    plain.load_state_dict(ours.state_dict())
    return ours, plain


BF16, FP32 = torch.bfloat16, torch.float32


@pytest.mark.parametrize(
    ("cls", "reference", "kernel", "stride", "padding", "layout", "input_path", "weight_path"),
    [
        (DepthwiseConv2d, nn.Conv2d, 5, 1, 2, torch.channels_last, [BF16], [BF16] * 4),  # 3x3 windows
        (DepthwiseConv2d, nn.Conv2d, 3, 1, 1, torch.channels_last, [BF16], [BF16]),
        (DepthwiseConv2d, nn.Conv2d, 3, 1, 1, torch.contiguous_format, [BF16], [BF16]),
        (DepthwiseConv2d, nn.Conv2d, 3, 2, 1, torch.channels_last, [FP32], [BF16]),
        (DepthwiseConv2d, nn.Conv2d, 5, 2, 2, torch.channels_last, [FP32], [FP32]),
        (TFSameDepthwiseConv2d, TFSameConv2d, 5, 2, 0, torch.channels_last, [FP32], [FP32]),
        (TFSameDepthwiseConv2d, TFSameConv2d, 5, 1, 0, torch.channels_last, [BF16], [BF16] * 4),
    ],
)
def test_bf16_training_gives_autocasts_outputs_and_gradients_at_least_as_precise(
    cls, reference, kernel, stride, padding, layout, input_path, weight_path, monkeypatch
):
    """Each gradient in the precision the geometry's fastest path has: at autocast's (bf16) or more precise."""
    input_dtypes, weight_dtypes = [], []
    monkeypatch.setattr(evopose, "conv2d_input", _recording(evopose.conv2d_input, input_dtypes))
    monkeypatch.setattr(evopose, "conv2d_weight", _recording(evopose.conv2d_weight, weight_dtypes))
    torch.manual_seed(0)
    ours, plain = _pair(cls, reference, stride, padding, kernel)
    x = torch.randn(4, 16, 21, 15).contiguous(memory_format=layout)
    x_ours, x_plain = x.clone().requires_grad_(), x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_ours, y_plain = ours(x_ours), plain(x_plain)
    assert y_ours.dtype == y_plain.dtype == torch.bfloat16
    torch.testing.assert_close(y_ours, y_plain, atol=0, rtol=0)
    upstream = torch.randn(y_ours.shape)
    (y_ours.float() * upstream).sum().backward()
    (y_plain.float() * upstream).sum().backward()
    assert (input_dtypes, weight_dtypes) == (input_path, weight_path)
    # the exact gradients of the function autocast computed: fp32 on the bf16-rounded input and weight
    x_exact = x.to(torch.bfloat16).float().requires_grad_()
    exact = reference(16, 16, kernel, stride, padding, groups=16, bias=False)
    exact.weight = nn.Parameter(ours.weight.detach().to(torch.bfloat16).float())
    (exact(x_exact) * upstream.to(torch.bfloat16).float()).sum().backward()
    weight_error = (ours.weight.grad - exact.weight.grad).abs().max()
    if weight_path[0] == BF16:  # rounded to bf16, as autocast's own weight gradients
        assert weight_error <= 1.5 * (plain.weight.grad - exact.weight.grad).abs().max()
        assert weight_error < 1e-2 * exact.weight.grad.abs().max()
    else:
        assert weight_error <= (plain.weight.grad - exact.weight.grad).abs().max()
        assert weight_error < 1e-3 * exact.weight.grad.abs().max()
    torch.testing.assert_close(x_ours.grad, x_exact.grad, atol=0.02, rtol=0.01)  # rounded to bf16, as autocast's
    assert x_ours.grad.is_contiguous(memory_format=layout)
    assert ours.weight.grad.dtype == torch.float32 and x_ours.grad.dtype == torch.float32


def test_the_fp32_path_elsewhere(monkeypatch):
    """Without autocast, without gradients, or with a bias, it is nn.Conv2d exactly."""
    calls = []
    monkeypatch.setattr(torch.ops.aten, "convolution_backward", _counting(torch.ops.aten.convolution_backward, calls))
    torch.manual_seed(0)
    ours, plain = _pair(DepthwiseConv2d, nn.Conv2d, 2, 2)
    x = torch.randn(2, 16, 12, 10)
    torch.testing.assert_close(ours(x), plain(x), atol=0, rtol=0)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(ours(x), plain(x), atol=0, rtol=0)
    ours(x.requires_grad_()).sum().backward()
    assert calls == []  # autograd's own convolution backward, not ours
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = ours(x)
    y.float().sum().backward()
    assert calls == [1, 1]  # and ours under CPU bf16 autocast: the input's and the weight's gradients apart


@pytest.mark.parametrize(
    ("kernel", "padding"), [((5, 5), (2, 2)), ((7, 7), (3, 3)), ((3, 5), (1, 2)), ((5, 5), (0, 0))]
)
def test_windowed_weight_gradient_is_the_whole_kernels_to_bf16_rounding(kernel, padding):
    torch.manual_seed(0)
    x = torch.randn(2, 6, 11, 9).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(6, 1, *kernel)
    grad = torch.randn_like(nn.functional.conv2d(x.double(), weight.double(), None, 1, padding, 1, 6)).bfloat16()
    exact = torch.nn.grad.conv2d_weight(x.double(), weight.shape, grad.double(), 1, padding, 1, 6)
    ours = evopose._windowed_weight_gradient(x, grad, weight.shape, list(padding))
    assert ours.dtype == torch.float32 and ours.shape == weight.shape
    assert (ours.double() - exact).abs().max() < 2**-7 * exact.abs().max()  # bf16's 8 significant bits


def _counting(function, calls: list):
    def counted(*args, **kwargs):
        calls.append(1)
        return function(*args, **kwargs)

    return counted


def _recording(gradient, dtypes: list):
    """``torch.nn.grad``'s ``conv2d_input`` or ``conv2d_weight``, recording the dtype it computes in."""

    def recorded(first, second, grad_output, *args, **kwargs):
        dtypes.append(grad_output.dtype)
        return gradient(first, second, grad_output, *args, **kwargs)

    return recorded


def test_the_decoder_builds_depthwise_convolutions_with_the_same_layer_names():
    assert isinstance(conv2d(8, 8, 3, groups=8), DepthwiseConv2d)
    assert isinstance(conv2d(8, 8, 3, 2, groups=8, padding="tf_same"), TFSameDepthwiseConv2d)
    assert type(conv2d(8, 16, 1)) is nn.Conv2d and type(conv2d(8, 8, 3, groups=2)) is nn.Conv2d
    net = build_model("evopose2d_xs")
    depthwise = [name for name, m in net.named_modules() if isinstance(m, DepthwiseConv2d)]
    assert depthwise and all(name.endswith("depthwise.conv") for name in depthwise)
