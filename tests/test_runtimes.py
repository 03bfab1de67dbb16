"""Inference runtimes (``evopose_pl.runtimes``): ``auto`` picks the fastest installed for the device, each ONNX
runtime stands in for the network it exported with its outputs as the network returns them, and predict runs in
the runtime asked for."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from evopose_pl import runtimes
from evopose_pl.module import cpu_has_native_bf16
from evopose_pl.nets import EvoPoseNet, build_model, deployed
from evopose_pl.runtimes import EagerNetwork, ExportedNetwork, fastest_runtime, precision, resolve_runtime


def test_auto_is_openvino_on_the_cpu_then_onnxruntime_then_torch(monkeypatch):
    assert fastest_runtime("cpu") == resolve_runtime("auto", "cpu") == "openvino"
    assert fastest_runtime("cuda") == resolve_runtime("auto", "cuda") == "torch"
    missing = {"openvino"}
    monkeypatch.setattr(runtimes, "installed", lambda name: name not in missing)
    assert fastest_runtime("cpu") == "onnxruntime"
    missing.add("onnxruntime")
    assert fastest_runtime("cpu") == "torch"
    with pytest.raises(ValueError, match=r"runtime=onnxruntime: onnxruntime is not installed \(pip install -e"):
        resolve_runtime("onnxruntime", "cpu")


@pytest.mark.parametrize(
    "runtime, device, message",
    [
        ("tensorrt", "cpu", "runtime='tensorrt': must be one of auto, torch, onnxruntime, openvino"),
        ("openvino", "cuda", "runtime=openvino runs networks on the CPU here, not on cuda"),
    ],
)
def test_bad_runtimes_name_the_setting(runtime, device, message):
    with pytest.raises(ValueError) as error:
        resolve_runtime(runtime, device)
    assert message in str(error.value)


def test_precision_is_bf16_where_native_for_openvino_and_on_cuda_for_torch():
    assert precision("openvino", "cpu") == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert precision("onnxruntime", "cpu") == precision("torch", "cpu") == "fp32"
    assert precision("torch", "cuda") == "bf16"


def _close(got: torch.Tensor, expected: torch.Tensor, runtime: str) -> None:
    """fp32 kernels differ in summation order; bf16 keeps 8 bits of mantissa, so OpenVINO on a bf16 CPU is
    compared relative to the outputs' range."""
    assert got.shape == expected.shape and got.dtype == torch.float32
    error = (got - expected).abs().max().item()
    scale = expected.abs().max().item()
    assert error < (1e-4 * max(1.0, scale) if precision(runtime, "cpu") == "fp32" else 0.05 * scale), (error, scale)


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_an_exported_network_returns_the_networks_heatmaps(runtime, test_genotype):
    torch.manual_seed(0)
    net = EvoPoseNet(genotype=test_genotype, num_keypoints=17).eval()
    for module in net.modules():  # trained-like batch-norm statistics, so the outputs are not all near zero
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_var.uniform_(0.5, 2.0)
    network = ExportedNetwork(net, runtime, "cpu", (64, 48), whole_image=False)
    for batch in (1, 3, 1):  # a second batch size, then the first again
        x = torch.randn(batch, 3, 64, 48)
        with torch.no_grad():
            _close(network(x), net(x), runtime)


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_an_exported_network_keeps_named_outputs_at_any_whole_image_size(runtime):
    torch.manual_seed(0)
    net = build_model("kapao_s", num_keypoints=17).eval()
    network = ExportedNetwork(net, runtime, "cpu", (128, 128), whole_image=True)
    assert network.names == ["p3", "p4", "p5", "p6"]
    for size in ((128, 192), (192, 128)):
        x = torch.randn(1, 3, *size)
        with torch.no_grad():
            got, expected = network(x), net(x)
        assert list(got) == list(expected)
        for name in expected:
            _close(got[name], expected[name], runtime)


def test_a_network_with_training_only_outputs_runs_deployed():
    net = build_model("efficientpose_rt", num_keypoints=16).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad(), deployed(net):
        expected = net(x)
    for network in (EagerNetwork(net, "cpu"), ExportedNetwork(net, "onnxruntime", "cpu", (64, 64), False)):
        with torch.no_grad():
            _close(network(x), expected, "onnxruntime")
    assert net.deployed is False  # the network itself is left as it was


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_predict_in_a_runtime_finds_the_keypoints_torch_finds(runtime, trained_checkpoint, coco_sample, tmp_path,
                                                              capsys):  # fmt: skip
    from evopose_pl.predict import run

    detections = coco_sample / "test_coco_det_AP_H_56.json"
    found = {}
    for name in ("torch", runtime):
        out = tmp_path / name
        found[name] = json.loads(run(trained_checkpoint, coco_sample, detections, out, runtime=name).read_text())
        assert f": {name} ({precision(name, 'cpu')}) on cpu" in capsys.readouterr().out
    assert len(found[runtime]) == len(found["torch"]) > 0
    got = np.array([r["keypoints"] for r in found[runtime]]).reshape(-1, 17, 3)[..., :2]
    expected = np.array([r["keypoints"] for r in found["torch"]]).reshape(-1, 17, 3)[..., :2]
    shifts = np.abs(got - expected).max(-1)
    if precision(runtime, "cpu") == "fp32":
        assert shifts.max() < 0.01
    else:  # bf16 may move a flat heatmap's peak; almost every keypoint stays where torch put it
        assert np.median(shifts) < 0.5 and (shifts < 8).mean() > 0.9
