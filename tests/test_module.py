"""The LightningModule's recipe: rate scaling, warm-up then cosine, L2 on the right kernels."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader

from evopose_pl.module import PoseModule, l2_parameters, warmup_cosine
from evopose_pl.nets import EvoPoseNet
from evopose_pl.search import EVOPOSE2D_S
from evopose_pl.transfer import rename_keys, transfer_weights


def test_warmup_then_cosine_at_chosen_steps():
    total, warmup, factor = 1000, 100, 32 / 256
    assert warmup_cosine(0, total, warmup, factor) == pytest.approx(factor)  # the base rate
    assert warmup_cosine(50, total, warmup, factor) == pytest.approx(factor + (1 - factor) * 0.5)
    assert warmup_cosine(100, total, warmup, factor) == pytest.approx(1.0)  # the scaled rate
    assert warmup_cosine(550, total, warmup, factor) == pytest.approx(0.5)
    assert warmup_cosine(1000, total, warmup, factor) == pytest.approx(0.0)
    assert warmup_cosine(325, total, 100, factor) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.25)))
    assert warmup_cosine(10, 1000, 0, factor) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.01)))


def _batches(n: int, batch: int) -> DataLoader:
    samples = [
        {"image": torch.randint(0, 255, (3, 64, 48), dtype=torch.uint8),
         "keypoints": torch.rand(17, 3) * torch.tensor([48.0, 64.0, 2.0])}
        for _ in range(n)
    ]  # fmt: skip
    return DataLoader(samples, batch_size=batch)


class _Rates(pl.Callback):
    def __init__(self) -> None:
        self.rates: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.rates.append(trainer.optimizers[0].param_groups[0]["lr"])


@pytest.mark.parametrize("accumulate", [1, 2])
def test_rate_scales_with_the_global_batch_and_warms_up_per_step(tmp_path, accumulate):
    net = EvoPoseNet(EVOPOSE2D_S, num_keypoints=17)
    module = PoseModule(net, (64, 48), batch_size=8, flip_index=range(17), lr=1e-3, warmup_epochs=1)
    rates = _Rates()
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                         accumulate_grad_batches=accumulate, callbacks=[rates])  # fmt: skip
    trainer.fit(module, _batches(64, 8), _batches(8, 8))
    global_batch = 8 * accumulate
    peak = 1e-3 * global_batch / 32
    steps = 8 // accumulate  # optimiser steps per epoch
    by_step = rates.rates[::accumulate]
    expected = [peak * warmup_cosine(s, 2 * steps, steps, 32 / global_batch) for s in range(2 * steps)]
    assert by_step == pytest.approx(expected)
    assert by_step[0] == pytest.approx(1e-3) and by_step[steps] == pytest.approx(peak)  # base rate -> scaled rate
    decayed, _ = l2_parameters(net)
    group = trainer.optimizers[0].param_groups[0]
    assert group["weight_decay"] == pytest.approx(2e-5) and len(group["params"]) == len(decayed)


def test_l2_covers_convolution_kernels_but_not_depthwise_bn_or_bias():
    net = EvoPoseNet(EVOPOSE2D_S)
    decayed, other = l2_parameters(net)
    names = {id(p): n for n, p in net.named_parameters()}
    decayed_names = {names[id(p)] for p in decayed}
    assert "stem.conv.weight" in decayed_names and "head.0.conv.weight" in decayed_names
    assert "final.weight" in decayed_names and "modules.3.blocks.0.se.reduce.weight" in decayed_names
    assert not any("depthwise" in n or n.endswith("bias") or ".bn." in n for n in decayed_names)
    assert len(decayed) + len(other) == len(list(net.parameters()))


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


def test_non_finite_loss_fails_loudly(tmp_path):
    net = EvoPoseNet(EVOPOSE2D_S, num_keypoints=17)
    with torch.no_grad():
        net.final.bias.fill_(float("nan"))
    module = PoseModule(net, (64, 48), batch_size=8, flip_index=range(17))
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)  # fmt: skip
    with pytest.raises(FloatingPointError, match="training loss is nan"):
        trainer.fit(module, _batches(8, 8))


def test_channels_last_runs_the_same_network_in_nhwc_memory():
    net = EvoPoseNet(EVOPOSE2D_S, num_keypoints=17).eval()
    reference = EvoPoseNet(EVOPOSE2D_S, num_keypoints=17).eval()
    reference.load_state_dict(net.state_dict())
    module = PoseModule(net, (64, 48), batch_size=8, flip_index=range(17))
    plain = PoseModule(reference, (64, 48), batch_size=8, flip_index=range(17), channels_last=False)
    assert module.net.stem.conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert plain.net.stem.conv.weight.is_contiguous()
    images = torch.randint(0, 256, (2, 3, 64, 48), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(module(images), plain(images), atol=1e-4, rtol=1e-4)
    assert module.normalise(images).is_contiguous(memory_format=torch.channels_last)


def test_the_optimiser_steps_every_tensor_at_once_on_the_cpu(tmp_path):
    module = PoseModule(EvoPoseNet(EVOPOSE2D_S, num_keypoints=17), (64, 48), batch_size=8, flip_index=range(17))
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(module, _batches(16, 8))
    assert trainer.optimizers[0].defaults["fused"] is True


@pytest.mark.parametrize("accelerator,size,native,expected", [
    ("cpu", (64, 48), True, "32-true"),        # bf16 autocast costs more than it saves on small inputs
    ("cpu", (128, 96), True, "32-true"),
    ("cpu", (256, 192), True, "bf16-mixed"),
    ("cpu", (256, 192), False, "32-true"),     # emulated bf16 is slow
    ("auto", (256, 192), True, "bf16-mixed"),  # no GPU here: auto is the CPU
    ("tpu", (256, 192), False, "bf16-true"),
])  # fmt: skip
def test_default_precision_is_the_fastest_measured(monkeypatch, accelerator, size, native, expected):
    import evopose_pl.module as module

    monkeypatch.setattr(module.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(module, "cpu_has_native_bf16", lambda: native)
    assert module.default_precision(accelerator, size) == expected
