"""Where a trained network runs for inference: eager PyTorch, onnxruntime or OpenVINO, and which of them is
fastest on a device (``auto``). ``predict`` and the search's latency objective run networks this way.

Side by side on the CPU (BENCHMARKS.md, "Against the reference implementation"), OpenVINO runs EvoPose2D-S
1.3-4.3x faster than eager PyTorch in its faster precision, at 256x192 and at the search's 64x48, at batch 1 and
32, computing in bfloat16 where the CPU does so natively (float32 elsewhere); onnxruntime (float32) comes next.
On CUDA, eager PyTorch with bf16 autocast. The ONNX runtimes take a network exported once (``export_graph``)
and stand in for it (``ExportedNetwork``).
"""

from __future__ import annotations

import importlib.util
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from evopose_pl.codecs import named_outputs
from evopose_pl.module import PoseModule, cpu_has_native_bf16
from evopose_pl.nets import deployed

RUNTIMES = ("torch", "onnxruntime", "openvino")
#: The setting that picks the fastest runtime installed for the device.
AUTO = "auto"
#: The CPU's runtimes, fastest first (BENCHMARKS.md); on CUDA, torch.
CPU_PREFERENCE = ("openvino", "onnxruntime", "torch")
EXTRA = 'pip install -e ".[onnx]"'

Outputs = torch.Tensor | Mapping[str, torch.Tensor] | Sequence[torch.Tensor]


def installed(runtime: str) -> bool:
    return runtime == "torch" or importlib.util.find_spec(runtime) is not None


def fastest_runtime(device: str) -> str:
    """What ``auto`` means on ``device``: on the CPU the fastest installed of ``CPU_PREFERENCE``; on CUDA, torch."""
    if device == "cuda":
        return "torch"
    return next(runtime for runtime in CPU_PREFERENCE if installed(runtime))


def resolve_runtime(runtime: str, device: str, setting: str = "runtime") -> str:
    """``runtime`` checked for ``device``, ``auto`` made the fastest; a bad one is refused naming ``setting``."""
    if runtime == AUTO:
        return fastest_runtime(device)
    if runtime not in RUNTIMES:
        raise ValueError(f"{setting}={runtime!r}: must be one of {AUTO}, {', '.join(RUNTIMES)}")
    if runtime == "openvino" and device != "cpu":
        raise ValueError(f"{setting}=openvino runs networks on the CPU here, not on {device}: use torch there")
    if not installed(runtime):
        raise ValueError(f"{setting}={runtime}: {runtime} is not installed ({EXTRA})")
    return runtime


def precision(runtime: str, device: str) -> str:
    """The precision ``runtime`` computes in on ``device``: bf16 for OpenVINO where the CPU has it natively and
    for torch on CUDA (autocast), fp32 otherwise."""
    if (runtime == "openvino" and cpu_has_native_bf16()) or (runtime == "torch" and device == "cuda"):
        return "bf16"
    return "fp32"


def inference_network(module: PoseModule, runtime: str, device: str) -> nn.Module:
    """``module``'s network as ``runtime`` (resolved) runs it on ``device``: it takes normalised images, as the
    network does, and returns its deployed outputs in float32."""
    if runtime == "torch":
        return EagerNetwork(module.net, device)
    whole_image = getattr(module.codec, "layout", "top_down") == "whole_image"
    return ExportedNetwork(module.net, runtime, device, module.input_size, whole_image)


class EagerNetwork(nn.Module):
    """The network in eager PyTorch, deployed (no training-only outputs), under bf16 autocast on CUDA."""

    def __init__(self, net: nn.Module, device: str) -> None:
        super().__init__()
        self.net = net.to(device).eval()
        self.autocast = torch.device(device).type == "cuda"

    def forward(self, x: torch.Tensor) -> Outputs:
        with deployed(self.net), torch.autocast("cuda", torch.bfloat16, enabled=self.autocast):
            outputs = self.net(x)
        return _as_float(outputs)


def _as_float(outputs: Outputs) -> Outputs:
    if torch.is_tensor(outputs):
        return outputs.float()
    if isinstance(outputs, Mapping):
        return {name: value.float() for name, value in outputs.items()}
    return [value.float() for value in outputs]


class ExportedNetwork(nn.Module):
    """A network exported to ONNX and run by onnxruntime or OpenVINO, standing in for it: the same input, and
    its deployed outputs as it returns them (a tensor, a mapping or a sequence), computed outside PyTorch.
    OpenVINO compiles the graph for each input shape it meets (a fraction of a second each)."""

    def __init__(self, net: nn.Module, runtime: str, device: str, input_size: Sequence[int], whole_image: bool) -> None:
        super().__init__()
        net = net.cpu().eval()
        with deployed(net), torch.no_grad():
            outputs = net(torch.randn(1, 3, *input_size))
        self.names = list(named_outputs(outputs))
        self.kind = "tensor" if torch.is_tensor(outputs) else "mapping" if isinstance(outputs, Mapping) else "list"
        with tempfile.TemporaryDirectory() as directory:
            path = Path(directory) / "network.onnx"
            with deployed(net):
                export_graph(net, torch.randn(2, 3, *input_size), path, whole_image)
            self.run = (_openvino if runtime == "openvino" else _onnxruntime)(path, device)

    def forward(self, x: torch.Tensor) -> Outputs:
        arrays = self.run(np.ascontiguousarray(x.detach().float().cpu().numpy()))
        tensors = [torch.from_numpy(array).to(x.device) for array in arrays]
        if self.kind == "tensor":
            return tensors[0]
        return dict(zip(self.names, tensors)) if self.kind == "mapping" else tensors


def _onnxruntime(path: Path, device: str) -> Callable[[np.ndarray], list[np.ndarray]]:
    """An onnxruntime session of the graph at ``path``, with this process's CPU threads (or CUDA)."""
    import onnxruntime

    provider = "CUDAExecutionProvider" if device == "cuda" else "CPUExecutionProvider"
    if provider not in onnxruntime.get_available_providers():
        raise ValueError(f"runtime=onnxruntime on {device}: onnxruntime here lacks {provider}")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = onnxruntime.InferenceSession(str(path), options, providers=[provider])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})


def _openvino(path: Path, device: str) -> Callable[[np.ndarray], list[np.ndarray]]:
    """OpenVINO's CPU plugin on the graph at ``path``: compiled for each input shape it meets, with this process's
    CPU threads, in bf16 where the CPU computes it natively."""
    import openvino

    core = openvino.Core()
    model = core.read_model(str(path))
    config = {
        "INFERENCE_PRECISION_HINT": "bf16" if precision("openvino", device) == "bf16" else "f32",
        "INFERENCE_NUM_THREADS": torch.get_num_threads(),
        "PERFORMANCE_HINT": "LATENCY",
    }
    requests: dict[tuple[int, ...], Any] = {}

    def run(x: np.ndarray) -> list[np.ndarray]:
        request = requests.get(x.shape)
        if request is None:
            shaped = model.clone()
            shaped.reshape({shaped.input(0): list(x.shape)})
            request = requests[x.shape] = core.compile_model(shaped, "CPU", config).create_infer_request()
        request.infer({0: x})
        return [np.array(request.get_output_tensor(i).data) for i in range(len(request.model_outputs))]

    return run


class _NamedOutputs(nn.Module):
    """The exported graph: the network's outputs as a tuple, in ``named_outputs``' order."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(named_outputs(self.net(images)).values())


def export_graph(net: nn.Module, example: torch.Tensor, output: Path, whole_image: bool, opset: int = 17) -> Path:
    """Write ``net`` (deployed by the caller, on the CPU) as one ONNX file: input ``images``, outputs by their
    ``named_outputs`` names; the batch is dynamic, and for whole images (KAPAO) the height and width too."""
    graph = _NamedOutputs(net).eval()  # the wrapper too: the exporter restores its mode afterwards
    with torch.no_grad():
        names = list(named_outputs(net(example)))
    # The TorchScript exporter: torch.export (dynamo=True) resolves parameters by attribute, and the
    # decoder's ``modules`` layer name is shadowed by nn.Module.modules(), the method.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, UserWarning, torch.jit.TracerWarning))
        torch.onnx.export(
            graph,
            (example,),
            output,
            dynamo=False,
            opset_version=opset,
            input_names=["images"],
            output_names=names,
            dynamic_axes=_dynamic_axes(names, whole_image),
        )
    return output


def _dynamic_axes(names: Sequence[str], whole_image: bool) -> dict[str, dict[int, str]]:
    """The batch is dynamic; for whole images (KAPAO), the height and width too."""
    if not whole_image:
        return {name: {0: "batch"} for name in ["images", *names]}
    axes = {"images": {0: "batch", 2: "height", 3: "width"}}
    axes.update({name: {0: "batch", 2: f"{name}_height", 3: f"{name}_width"} for name in names})
    return axes
