"""EvoPose2D's recipe (recipe=evopose2d): rate scaling, warm-up then cosine, L2 on the right kernels; EfficientPose's
(recipe=efficientpose): SGD with momentum and a decaying triangular cyclical rate; PNFS's (recipe=pnfs): Adam with
step decay."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import pytest
import torch
from hydra.utils import instantiate

from evopose_pl.codecs import HeatmapCodec
from evopose_pl.data import KeypointInfo
from evopose_pl.module import PoseModule
from evopose_pl.nets import EvoPoseNet
from evopose_pl.recipes import (
    AdamStepDecay,
    AdamWarmupCosine,
    SgdCyclical,
    decaying_triangle,
    l2_parameters,
    warmup_cosine,
)
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


def test_a_triangular_cycle_rises_from_lr_min_to_its_peak_at_mid_cycle_and_back():
    cycle, ratio = 100, 3000
    assert decaying_triangle(0, cycle, ratio, 0.95) == pytest.approx(1 / ratio)  # lr_min = lr_max / 3000
    assert decaying_triangle(50, cycle, ratio, 0.95) == pytest.approx(1.0)  # the first peak is lr_max
    assert decaying_triangle(25, cycle, ratio, 0.95) == pytest.approx((1 + 1 / ratio) / 2)  # linear in the rate
    assert decaying_triangle(75, cycle, ratio, 0.95) == pytest.approx((1 + 1 / ratio) / 2)
    assert decaying_triangle(100, cycle, ratio, 0.95) == pytest.approx(1 / ratio)  # the trough starts the next
    rates = [decaying_triangle(s, cycle, ratio, 0.95) for s in range(cycle)]
    assert max(rates) == rates[50] and min(rates) == rates[0]


def test_each_peak_decays_towards_the_geometric_midpoint_by_the_same_factor_in_log_distance():
    cycle, ratio, decay = 10, 3000, 0.9
    midpoint = 10 ** ((math.log10(1) + math.log10(1 / ratio)) / 2)
    peaks = [decaying_triangle(c * cycle + cycle // 2, cycle, ratio, decay) for c in range(60)]
    distances = [math.log10(p / midpoint) for p in peaks]
    assert distances[0] == pytest.approx(math.log10(ratio) / 2)
    assert all(d1 / d0 == pytest.approx(decay) for d0, d1 in zip(distances, distances[1:]))
    assert all(p > midpoint for p in peaks) and peaks[-1] == pytest.approx(midpoint, rel=0.01)
    troughs = [decaying_triangle(c * cycle, cycle, ratio, decay) for c in range(60)]
    assert troughs == pytest.approx([1 / ratio] * 60)  # only the peaks decay
    assert decaying_triangle(cycle + cycle // 2, cycle, ratio, 1.0) == pytest.approx(1.0)  # 1: no decay
    assert decaying_triangle(cycle + cycle // 2, cycle, ratio, 0.0) == pytest.approx(midpoint)  # 0: at once


@pytest.mark.parametrize("scale_lr", [False, True])
def test_sgd_with_momentum_steps_the_cyclical_rate_per_step(tmp_path, random_crops, test_genotype, scale_lr):
    net = EvoPoseNet(test_genotype, num_keypoints=17, head_channels=32)
    recipe = SgdCyclical(lr_max=0.3, cycle_epochs=1, peak_decay=0.5, scale_lr=scale_lr, base_batch=4)
    module = PoseModule(net, HeatmapCodec(), recipe, KEYPOINTS, (64, 48), batch_size=8)
    rates = _Rates()
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                         callbacks=[rates])  # fmt: skip
    trainer.fit(module, random_crops(64, 8))
    peak = 0.3 * 8 / 4 if scale_lr else 0.3  # global batch 8
    assert rates.rates == pytest.approx([peak * decaying_triangle(s, 8, 3000, 0.5) for s in range(16)])
    assert rates.rates[0] == pytest.approx(peak / 3000) and rates.rates[4] == pytest.approx(peak)
    assert rates.rates[12] == pytest.approx(peak / math.sqrt(3000) ** 0.5)  # half-way to the midpoint in log
    optimiser = trainer.optimizers[0]
    assert type(optimiser) is torch.optim.SGD and optimiser.defaults["momentum"] == 0.9
    assert all(group["weight_decay"] == 0 for group in optimiser.param_groups)
    assert recipe.lr_max_for(peak, 8) == pytest.approx(0.3)  # the setting that gives this first peak


def test_recipe_efficientpose_composes_with_the_papers_settings(compose):
    cfg = compose("train", "recipe=efficientpose")
    recipe = instantiate(cfg.recipe)
    assert isinstance(recipe, SgdCyclical)
    assert recipe.settings() == {"lr_max": 0.4, "lr_ratio": 3000, "cycle_epochs": 3, "peak_decay": 0.95,
                                 "momentum": 0.9, "weight_decay": 0, "scale_lr": False, "base_batch": 20}  # fmt: skip
    assert SgdCyclical(**recipe.settings()).settings() == recipe.settings()  # checkpoints rebuild it
    assert instantiate(compose("train", "recipe=efficientpose", "recipe.lr_max=0.02").recipe).lr_max == 0.02


@pytest.mark.parametrize("setting", [{"lr_max": 0}, {"lr_ratio": 0.5}, {"cycle_epochs": 0}, {"peak_decay": 1.5}])
def test_impossible_cyclical_settings_are_refused(setting):
    (key, value), *_ = setting.items()
    with pytest.raises(ValueError, match=rf"^recipe\.{key}={value}: must"):
        SgdCyclical(**setting)


def test_adam_step_decay_multiplies_the_rate_at_its_milestone_epochs(tmp_path, random_crops, test_genotype, compose):
    net = EvoPoseNet(test_genotype, num_keypoints=17, head_channels=32)
    recipe = AdamStepDecay(lr=1e-3, milestones=[1, 3], gamma=0.25)
    module = PoseModule(net, HeatmapCodec(), recipe, KEYPOINTS, (64, 48), batch_size=8)
    rates = _Rates()
    trainer = pl.Trainer(max_epochs=4, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                         callbacks=[rates])  # fmt: skip
    trainer.fit(module, random_crops(16, 8))  # 2 steps an epoch
    assert rates.rates == pytest.approx([1e-3] * 2 + [2.5e-4] * 4 + [6.25e-5] * 2)
    assert type(trainer.optimizers[0]) is torch.optim.Adam
    cfg = compose("train", "recipe=pnfs")
    assert instantiate(cfg.recipe).settings() == {"lr": 1e-3, "milestones": [90, 120, 150], "gamma": 0.25,
                                                  "weight_decay": 0.0}  # fmt: skip
    with pytest.raises(ValueError, match=r"recipe.milestones=\[3, 1\]: must be increasing"):
        AdamStepDecay(milestones=[3, 1])
