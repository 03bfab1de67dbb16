"""EvoPose2D's recipe (recipe=evopose2d): rate scaling, warm-up then cosine, L2 on the right kernels."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import pytest

from evopose_pl.codecs import HeatmapCodec
from evopose_pl.data import KeypointInfo
from evopose_pl.module import PoseModule
from evopose_pl.nets import EvoPoseNet
from evopose_pl.recipes import AdamWarmupCosine, l2_parameters, warmup_cosine
from evopose_pl.search import EVOPOSE2D_S

KEYPOINTS = KeypointInfo(tuple(f"k{i}" for i in range(17)))


def _module(net, **recipe) -> PoseModule:
    return PoseModule(net, HeatmapCodec(), AdamWarmupCosine(**recipe), KEYPOINTS, (64, 48), batch_size=8)


def test_warmup_then_cosine_at_chosen_steps():
    total, warmup, factor = 1000, 100, 32 / 256
    assert warmup_cosine(0, total, warmup, factor) == pytest.approx(factor)  # the base rate
    assert warmup_cosine(50, total, warmup, factor) == pytest.approx(factor + (1 - factor) * 0.5)
    assert warmup_cosine(100, total, warmup, factor) == pytest.approx(1.0)  # the scaled rate
    assert warmup_cosine(550, total, warmup, factor) == pytest.approx(0.5)
    assert warmup_cosine(1000, total, warmup, factor) == pytest.approx(0.0)
    assert warmup_cosine(325, total, 100, factor) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.25)))
    assert warmup_cosine(10, 1000, 0, factor) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.01)))


class _Rates(pl.Callback):
    def __init__(self) -> None:
        self.rates: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.rates.append(trainer.optimizers[0].param_groups[0]["lr"])


@pytest.mark.parametrize("accumulate", [1, 2])
def test_rate_scales_with_the_global_batch_and_warms_up_per_step(tmp_path, random_crops, test_genotype, accumulate):
    net = EvoPoseNet(test_genotype, num_keypoints=17, head_channels=32)
    module = _module(net, lr=1e-3, warmup_epochs=1)
    rates = _Rates()
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                         accumulate_grad_batches=accumulate, callbacks=[rates])  # fmt: skip
    trainer.fit(module, random_crops(64, 8), random_crops(8, 8))
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


def test_the_optimiser_steps_every_tensor_at_once_on_the_cpu(tmp_path, random_crops, test_genotype):
    module = _module(EvoPoseNet(test_genotype, num_keypoints=17, head_channels=32))
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(module, random_crops(16, 8))
    assert trainer.optimizers[0].defaults["fused"] is True
