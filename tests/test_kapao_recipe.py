"""KAPAO's recipe (recipe=kapao, SPEC-KAPAO section 3): SGD with Nesterov momentum, three parameter groups with the
weight decay scaled to a nominal batch of 64, a warm-up of the rates and momentum into a cosine to 0.2 x, per step
inside Lightning, and its state through a resume."""

from __future__ import annotations

import math
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from evopose_pl.recipes import Recipe, SgdNesterovCosine, WarmupCosineMomentum, cosine_to, decay_groups


def _net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1, groups=4),  # depthwise: decayed here (unlike EvoPose2D's L2)
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 2),
    )


def _trainer(batches_per_epoch: int = 10, epochs: int = 100, world_size: int = 1, accumulate: int = 1):
    """What a recipe reads of a trainer."""
    return SimpleNamespace(
        world_size=world_size,
        accumulate_grad_batches=accumulate,
        num_training_batches=batches_per_epoch,
        max_epochs=epochs,
        estimated_stepping_batches=batches_per_epoch * epochs // accumulate,
    )


def test_three_groups_and_the_decay_scaled_to_the_nominal_batch():
    net = _net()
    decayed, weights, biases = decay_groups(net)
    names = {id(p): n for n, p in net.named_parameters()}
    assert [names[id(p)] for p in decayed] == ["0.weight", "3.weight", "6.weight"]  # conv, depthwise, linear
    assert [names[id(p)] for p in weights] == ["1.weight"]  # batch norm
    assert [names[id(p)] for p in biases] == ["1.bias", "3.bias", "6.bias"]
    for batch_size, world_size, accumulate, decay in ((16, 1, 1, 1.25e-4), (32, 2, 2, 1e-3)):  # global 16, 128
        config = SgdNesterovCosine().configure(net, _trainer(world_size=world_size, accumulate=accumulate), batch_size)
        optimiser = config["optimizer"]
        assert type(optimiser) is torch.optim.SGD and config["lr_scheduler"]["interval"] == "step"
        assert [group["weight_decay"] for group in optimiser.param_groups] == pytest.approx([decay, 0, 0])
        assert [len(group["params"]) for group in optimiser.param_groups] == [3, 1, 3]
        assert all(group["nesterov"] and group["dampening"] == 0 for group in optimiser.param_groups)


def test_the_schedule_at_key_steps():
    net = _net()
    # 10 steps an epoch, 100 epochs: 1000 steps, a warm-up of 30
    config = SgdNesterovCosine().configure(net, _trainer(), 64)
    schedule = config["lr_scheduler"]["scheduler"]
    assert isinstance(schedule, torch.optim.lr_scheduler.LRScheduler)
    assert (schedule.total_steps, schedule.warmup_steps) == (1000, 30)
    lr = 0.01

    def cosine(step: int) -> float:
        return lr * (0.2 + 0.8 * (1 + math.cos(math.pi * step / 1000)) / 2)

    # start: weights from 0, biases from 0.1, momentum from 0.8
    assert schedule.rates_at(0) == pytest.approx([0.0, 0.0, 0.1])
    assert schedule.momentum_at(0) == pytest.approx(0.8)
    # half-way through the warm-up: half-way to the cosine underneath
    assert schedule.rates_at(15) == pytest.approx([cosine(15) / 2, cosine(15) / 2, (0.1 + cosine(15)) / 2])
    assert schedule.momentum_at(15) == pytest.approx((0.8 + 0.937) / 2)
    # end of the warm-up: on the cosine
    assert schedule.rates_at(30) == pytest.approx([cosine(30)] * 3)
    assert schedule.momentum_at(30) == pytest.approx(0.937) and schedule.momentum_at(500) == pytest.approx(0.937)
    assert schedule.rates_at(500) == pytest.approx([lr * 0.6] * 3)  # the middle: half-way from 1 to 0.2
    assert schedule.rates_at(1000) == pytest.approx([lr * 0.2] * 3)  # the end: 0.2 x lr
    assert schedule.rates_at(1200) == pytest.approx([lr * 0.2] * 3)
    assert cosine_to(250, 1000, 0.2) == pytest.approx(0.2 + 0.8 * (1 + math.cos(math.pi / 4)) / 2)
    # the optimiser's groups follow as it steps
    optimiser = config["optimizer"]
    assert [g["lr"] for g in optimiser.param_groups] == pytest.approx([0, 0, 0.1])
    assert all(g["momentum"] == pytest.approx(0.8) for g in optimiser.param_groups)
    for _ in range(30):
        optimiser.step()
        schedule.step()
    assert [g["lr"] for g in optimiser.param_groups] == pytest.approx([cosine(30)] * 3)
    assert all(g["momentum"] == pytest.approx(0.937) for g in optimiser.param_groups)


def test_the_warm_up_lasts_at_least_one_step():
    config = SgdNesterovCosine(warmup_epochs=0).configure(_net(), _trainer(), 64)
    schedule = config["lr_scheduler"]["scheduler"]
    assert schedule.warmup_steps == 1 and schedule.rates_at(1) == pytest.approx([0.01 * cosine_to(1, 1000, 0.2)] * 3)


class _Net(pl.LightningModule):
    """Two convolutions trained by a recipe, as PoseModule does."""

    def __init__(self, recipe: Recipe, batch_size: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 1, 1))
        self.recipe, self.batch_size = recipe, batch_size

    def training_step(self, batch, batch_idx):
        images, targets = batch
        return nn.functional.mse_loss(self.net(images), targets)

    def configure_optimizers(self):
        return self.recipe.configure(self.net, self.trainer, self.batch_size)


class _Record(pl.Callback):
    """Each step's rates and momentum, as the optimiser uses them."""

    def __init__(self) -> None:
        self.rates: list[list[float]] = []
        self.momenta: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        groups = trainer.optimizers[0].param_groups
        self.rates.append([group["lr"] for group in groups])
        self.momenta.append(groups[0]["momentum"])


def _flat(rows: list[list[float]]) -> list[float]:
    return [value for row in rows for value in row]


def _loader() -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(16, 3, 8, 8, generator=generator), torch.randn(16, 1, 8, 8, generator=generator))
    return DataLoader(data, batch_size=4)  # 4 steps an epoch


def _fit(tmp_path, callbacks: list[pl.Callback], ckpt_path: str | None = None) -> pl.Trainer:
    recipe = SgdNesterovCosine(warmup_epochs=1, final_lr_fraction=0.5)
    trainer = pl.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path, callbacks=callbacks,
                         enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks))  # fmt: skip
    trainer.fit(_Net(recipe, batch_size=4), _loader(), ckpt_path=ckpt_path)
    return trainer


def test_the_schedule_steps_inside_lightning_and_resumes(tmp_path):
    record = _Record()
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_top_k=-1, every_n_epochs=1)
    trainer = _fit(tmp_path, [record, checkpoints])
    schedule = trainer.lr_scheduler_configs[0].scheduler
    assert isinstance(schedule, WarmupCosineMomentum) and schedule.last_epoch == 12
    assert (schedule.total_steps, schedule.warmup_steps) == (12, 4)
    expected = [schedule.rates_at(step) for step in range(12)]
    assert _flat(record.rates) == pytest.approx(_flat(expected))
    assert record.rates[0] == pytest.approx([0, 0, 0.1]) and record.momenta[0] == pytest.approx(0.8)
    assert record.rates[4] == pytest.approx([0.01 * cosine_to(4, 12, 0.5)] * 3)
    assert record.momenta == pytest.approx([schedule.momentum_at(step) for step in range(12)])
    assert record.momenta[4:] == pytest.approx([0.937] * 8)

    # resume after the first epoch: the schedule carries on where it was, step by step
    resumed = _Record()
    trainer = _fit(tmp_path / "resumed", [resumed], ckpt_path=str(tmp_path / "checkpoints" / "epoch=0-step=4.ckpt"))
    assert _flat(resumed.rates) == pytest.approx(_flat(record.rates[4:])) and resumed.momenta == pytest.approx(
        record.momenta[4:]
    )
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 12


def test_recipe_kapao_composes_with_the_papers_settings(compose):
    recipe = instantiate(compose("train", "recipe=kapao").recipe)
    assert isinstance(recipe, SgdNesterovCosine)
    assert recipe.settings() == {"lr": 0.01, "momentum": 0.937, "weight_decay": 5e-4, "nominal_batch": 64,
                                 "warmup_epochs": 3, "warmup_momentum": 0.8, "warmup_bias_lr": 0.1,
                                 "final_lr_fraction": 0.2, "ema_decay": 0.9999, "ema_ramp": 2000}  # fmt: skip
    assert SgdNesterovCosine(**recipe.settings()).settings() == recipe.settings()  # checkpoints rebuild it
    assert recipe.ema_decay == 0.9999 and recipe.ema_ramp == 2000
    assert instantiate(compose("train", "recipe=kapao", "recipe.ema_decay=null").recipe).ema_decay is None
    assert Recipe.ema_decay is None  # other recipes keep no average


@pytest.mark.parametrize(
    "setting", [{"lr": 0}, {"momentum": 0}, {"final_lr_fraction": 1.5}, {"ema_decay": 1.0}, {"ema_ramp": 0}]
)
def test_impossible_settings_are_refused(setting):
    with pytest.raises(ValueError, match=next(iter(setting))):
        SgdNesterovCosine(**setting)
