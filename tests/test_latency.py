"""Measured latency (``evopose_pl.latency``): every runtime times the deployed network, the cache keys a
measurement by what changes it and measures again what it cannot read, and bad settings name the key."""

from __future__ import annotations

import json

import pytest

from evopose_pl.codecs import ConfidenceMapCodec, HeatmapCodec
from evopose_pl.data.coco import KeypointInfo
from evopose_pl.latency import LatencyCache, LatencySettings, machine, measure_latency
from evopose_pl.module import PoseModule
from evopose_pl.nets import EvoPoseNet, build_model
from evopose_pl.runtimes import precision

QUICK = {"throughput_batch": 4, "warmup": 1, "repeats": 3}


def module(genotype: str, size=(64, 48)) -> PoseModule:
    keypoints = KeypointInfo(tuple(f"k{i}" for i in range(17)))
    return PoseModule(EvoPoseNet(genotype=genotype, num_keypoints=17), HeatmapCodec(), None, keypoints, size)


@pytest.mark.parametrize("runtime", ["torch", "onnxruntime", "openvino"])
def test_every_runtime_measures_the_deployed_network(runtime, test_genotype):
    latency = measure_latency(module(test_genotype), LatencySettings(runtime=runtime, **QUICK))
    assert 0 < latency.ms < 5000 and latency.throughput > 0
    assert latency.device == f"{machine('cpu')}, {runtime} {precision(runtime, 'cpu')}" and "threads" in latency.device


def test_auto_measures_in_the_fastest_runtime_installed(test_genotype):
    assert LatencySettings().runtime == "auto" and LatencySettings().resolved_runtime() == "openvino"
    latency = measure_latency(module(test_genotype), LatencySettings(**QUICK))
    assert ", openvino " in latency.device


def test_a_network_with_training_only_outputs_is_timed_as_deployed():
    net = build_model("efficientpose_rt", num_keypoints=16)
    keypoints = KeypointInfo(tuple(f"k{i}" for i in range(16)))
    pose = PoseModule(net, ConfidenceMapCodec(), None, keypoints, (64, 64))
    calls = []
    net.register_forward_hook(lambda m, args, out: calls.append(type(out).__name__))
    measure_latency(pose, LatencySettings(runtime="torch", **QUICK))
    assert set(calls) == {"Tensor"}  # the final maps alone, not the training dict of every pass


def test_the_cache_measures_an_architecture_once_per_setting(tmp_path, test_genotype):
    cache = LatencyCache(tmp_path)
    first, cached = cache.measure(module(test_genotype), LatencySettings(**QUICK))
    assert not cached and len(list(tmp_path.glob("*.json"))) == 1
    again, cached = cache.measure(module(test_genotype), LatencySettings(**QUICK))  # new weights, same network
    assert cached and again == first
    # auto is keyed as the runtime it resolves to
    assert cache.measure(module(test_genotype), LatencySettings(runtime="openvino", **QUICK)) == (first, True)
    # what changes the time is a new key: another input size, runtime or throughput batch
    cache.measure(module(test_genotype, (32, 24)), LatencySettings(**QUICK))
    cache.measure(module(test_genotype), LatencySettings(**{**QUICK, "throughput_batch": 2}))
    cache.measure(module(test_genotype), LatencySettings(runtime="onnxruntime", **QUICK))
    assert len(list(tmp_path.glob("*.json"))) == 4


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", json.dumps({"ms": -1, "throughput": 1, "device": "x"})])
def test_a_cache_file_that_is_not_a_latency_is_measured_again(tmp_path, test_genotype, content):
    cache, settings = LatencyCache(tmp_path), LatencySettings(**QUICK)
    net = module(test_genotype)
    path = tmp_path / f"{cache.key(net, settings)}.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    latency, cached = cache.measure(net, settings)
    assert not cached and latency.ms > 0 and json.loads(path.read_text())["ms"] == latency.ms


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"device": "tpu"}, "latency.device='tpu': must be one of cpu, cuda"),
        ({"runtime": "tensorrt"}, "latency.runtime='tensorrt': must be one of auto, torch, onnxruntime, openvino"),
        ({"throughput_batch": 0}, "latency.throughput_batch=0: must be a whole number >= 1"),
        ({"warmup": -1}, "latency.warmup=-1: must be a whole number >= 0"),
    ],
)
def test_bad_settings_name_the_key(settings, message):
    with pytest.raises(ValueError) as error:
        LatencySettings(**settings)
    assert message in str(error.value)
