"""The LightningModule: what every pose system shares (memory format, loss checks, weight renaming)."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from evopose_pl.codecs import HeatmapCodec
from evopose_pl.data import KeypointInfo
from evopose_pl.module import PoseModule
from evopose_pl.nets import EvoPoseNet
from evopose_pl.recipes import AdamWarmupCosine
from evopose_pl.search import EVOPOSE2D_S
from evopose_pl.transfer import rename_keys, transfer_weights

KEYPOINTS = KeypointInfo(tuple(f"k{i}" for i in range(17)))


def _module(net, **kwargs) -> PoseModule:
    return PoseModule(net, HeatmapCodec(), AdamWarmupCosine(), KEYPOINTS, (64, 48), batch_size=8, **kwargs)


def test_key_map_renames_a_foreign_naming_before_transfer():
    parent = EvoPoseNet(EVOPOSE2D_S)
    foreign = {k.replace("stem.conv", "features.0.0").replace("final", "classifier"): v
               for k, v in parent.state_dict().items()}  # fmt: skip
    assert rename_keys({"features.0.0.weight": 1, "drop.me": 2}, {r"^features\.0\.0": "stem.conv", r"^drop.*": ""}) == {
        "stem.conv.weight": 1
    }
    child = EvoPoseNet(EVOPOSE2D_S)
    transfer_weights(foreign, child, key_map={r"^features\.0\.0\.": "stem.conv.", r"^classifier\.": "final."})
    assert torch.equal(child.stem[0].weight, parent.stem[0].weight) and torch.equal(child.final.bias, parent.final.bias)
    plain = EvoPoseNet(EVOPOSE2D_S)
    report = transfer_weights(foreign, plain)
    assert report.counts()["initialised"] > 0 and not torch.equal(plain.stem[0].weight, parent.stem[0].weight)


def test_non_finite_loss_fails_loudly(tmp_path, random_crops):
    net = EvoPoseNet(EVOPOSE2D_S, num_keypoints=17)
    with torch.no_grad():
        net.final.bias.fill_(float("nan"))
    module = _module(net)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)  # fmt: skip
    with pytest.raises(FloatingPointError, match="training loss is nan"):
        trainer.fit(module, random_crops(8, 8))


def test_channels_last_runs_the_same_network_in_nhwc_memory():
    net = EvoPoseNet(EVOPOSE2D_S, num_keypoints=17).eval()
    reference = EvoPoseNet(EVOPOSE2D_S, num_keypoints=17).eval()
    reference.load_state_dict(net.state_dict())
    module = _module(net)
    plain = _module(reference, channels_last=False)
    assert module.net.stem.conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert plain.net.stem.conv.weight.is_contiguous()
    images = torch.randint(0, 256, (2, 3, 64, 48), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(module(images), plain(images), atol=1e-4, rtol=1e-4)
    assert module.normalise(images).is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("accelerator,native,expected", [
    ("cpu", True, "bf16-mixed"),   # at every input size, with the depthwise convolutions' fp32 gradients
    ("cpu", False, "32-true"),     # emulated bf16 is slow
    ("auto", True, "bf16-mixed"),  # no GPU here: auto is the CPU
    ("tpu", False, "bf16-true"),
])  # fmt: skip
def test_default_precision_is_the_fastest_measured(monkeypatch, accelerator, native, expected):
    import evopose_pl.module as module

    monkeypatch.setattr(module.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(module, "cpu_has_native_bf16", lambda: native)
    assert module.default_precision(accelerator) == expected
