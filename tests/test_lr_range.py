"""The learning-rate range test: the pick rule, the sweep through Lightning's tuner, and lr_range_test.py."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from evopose_pl.codecs import HeatmapCodec
from evopose_pl.data import KeypointInfo
from evopose_pl.lr_range import LIGHTNING_BETA, debias, diverged_at, pick_index, plot, run_sweep, write_json
from evopose_pl.module import PoseModule
from evopose_pl.nets import EvoPoseNet
from evopose_pl.recipes import SgdCyclical
from lr_range_test import check_settings, sweep_steps
from session import ConfigError

KEYPOINTS = KeypointInfo(tuple(f"k{i}" for i in range(17)))
PNG = b"\x89PNG\r\n\x1a\n"


def test_the_pick_is_the_last_rate_before_the_loss_exceeds_k_times_its_minimum():
    losses = [5.0, 4.0, 3.0, 2.0, 2.5, 7.9, 8.1, 50.0]
    assert diverged_at(losses) == 6 and pick_index(losses) == 5  # 8.1 > 4 x 2; 7.9 is not
    assert diverged_at(losses, divergence=2) == 5 and pick_index(losses, divergence=2) == 4


def test_a_loss_that_never_diverges_picks_the_last_rate():
    losses = [3.0, 2.0, 1.0, 1.5, 3.9]
    assert diverged_at(losses) is None and pick_index(losses) == 4


def test_a_loss_that_diverges_immediately_picks_the_first_rate_or_none():
    assert diverged_at([1.0, 5.0, 2.0]) == 1 and pick_index([1.0, 5.0, 2.0]) == 0
    assert diverged_at([math.inf, 1.0]) == 0 and pick_index([math.inf, 1.0]) is None
    assert pick_index([]) is None


def test_a_non_finite_loss_diverges():
    assert diverged_at([2.0, 1.0, math.nan, 1.0]) == 2 and pick_index([2.0, 1.0, math.inf]) == 1


def test_debias_undoes_lightnings_exponent_off_by_one():
    raw = [10.0, 8.0, 9.0, 7.0, 6.0]
    beta, average, recorded, expected = LIGHTNING_BETA, 0.0, [], []
    for t, loss in enumerate(raw):
        average = beta * average + (1 - beta) * loss
        recorded.append(average / (1 - beta ** (t + 2)))  # Lightning: the step count after the step, plus one
        expected.append(average / (1 - beta ** (t + 1)))
    assert debias(recorded) == pytest.approx(expected)
    assert debias(recorded)[0] == pytest.approx(raw[0])


def _module(genotype: str) -> PoseModule:
    net = EvoPoseNet(genotype, num_keypoints=17, head_channels=32, drop_connect=0.0)  # deterministic in training
    return PoseModule(net, HeatmapCodec(), SgdCyclical(), KEYPOINTS, (64, 48), batch_size=4)


class _Copies(pl.LightningDataModule):
    """``n`` copies of one random crop, in batches of 4: every batch is the same, so the first recorded loss
    is known."""

    def __init__(self, random_crops, n: int = 16) -> None:
        super().__init__()
        self.samples = [random_crops(1, 1).dataset[0]] * n

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.samples, batch_size=4)


def _trainer(tmp_path, max_epochs: int) -> pl.Trainer:
    return pl.Trainer(max_epochs=max_epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)  # fmt: skip


def test_the_sweep_runs_through_lightnings_tuner_and_writes_the_plot_and_json(tmp_path, random_crops, test_genotype):
    module, data = _module(test_genotype), _Copies(random_crops)
    trainer = _trainer(tmp_path, max_epochs=20)
    batch = next(iter(data.train_dataloader()))
    with torch.no_grad():
        first_loss = module.codec.loss(module(batch["image"]), batch["keypoints"], module.input_size)["loss"].item()
    initial = {k: v.clone() for k, v in module.net.state_dict().items()}

    result = run_sweep(module, data, trainer, min_lr=1e-4, max_lr=1e4, steps=60)

    assert result.rates[0] == pytest.approx(1e-4) and all(b > a for a, b in zip(result.rates, result.rates[1:]))
    assert result.losses[0] == pytest.approx(first_loss, rel=1e-5)  # the record, debiased, starts at the raw loss
    end = result.diverged_at
    assert end is not None and 0 < result.pick == end - 1 and len(result.losses) < 60  # stopped soon after
    assert result.losses[end] > 4 * min(result.losses[:end]) >= result.losses[result.pick]
    assert all(torch.equal(v, module.net.state_dict()[k]) for k, v in initial.items())  # the weights are restored
    assert type(trainer.optimizers[0]) is torch.optim.SGD  # the recipe's own optimiser was swept

    write_json(result, tmp_path / "sweep.json", lr_max=result.rate)
    record = json.loads((tmp_path / "sweep.json").read_text())
    assert record["rates"] == pytest.approx(result.rates) and record["losses"] == pytest.approx(result.losses)
    assert record["pick"] == result.pick and record["rate"] == record["lr_max"] == result.rate
    assert record["diverged_at"] == end and record["divergence"] == 4.0
    plot(result, tmp_path / "sweep.png")
    assert (tmp_path / "sweep.png").read_bytes().startswith(PNG) and (tmp_path / "sweep.png").stat().st_size > 10_000


class _FailsAfter(nn.Module):
    """A network whose training outputs turn to NaN from its ``calls``-th forward pass on."""

    def __init__(self, net: nn.Module, calls: int) -> None:
        super().__init__()
        self.net, self.calls = net, calls

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.calls -= 1
        return self.net(images) * (math.nan if self.calls < 0 else 1.0)


def test_a_non_finite_loss_ends_the_sweep_as_a_divergence(tmp_path, random_crops, test_genotype):
    net = _FailsAfter(EvoPoseNet(test_genotype, num_keypoints=17, head_channels=32), calls=5)
    module = PoseModule(net, HeatmapCodec(), SgdCyclical(), KEYPOINTS, (64, 48), batch_size=4)
    result = run_sweep(module, _Copies(random_crops), _trainer(tmp_path, max_epochs=5), 1e-7, 1e-6, steps=12)
    assert len(result.rates) == len(result.losses) == 6 and result.losses[5] == math.inf
    assert result.diverged_at == 5 and result.pick == 4 and result.rate == result.rates[4]


def _run(root, tmp_path, *arguments: str) -> subprocess.CompletedProcess:
    """lr_range_test.py with ``arguments``, its outputs and caches under ``tmp_path``."""
    return subprocess.run(
        [sys.executable, str(root / "lr_range_test.py"), *arguments, f"paths.log_dir={tmp_path}/outputs",
         f"paths.cache_dir={tmp_path}/cache"],
        cwd=tmp_path, env={**os.environ, "HOME": str(tmp_path)}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_the_command_prints_the_pick_and_its_override_and_writes_both_files(root, tmp_path, tiny_train):
    """On the tiny synthetic data (12 steps an epoch at batch 4), with the rate scaled from a base batch
    of 2: the override is the pick at a global batch of 4 brought back to the base batch."""
    tiny = [o for o in tiny_train if not o.startswith("model=")]
    run = _run(root, tmp_path, *tiny, "model=demo", "data.batch_size=4", "recipe=efficientpose",
               "recipe.scale_lr=true", "recipe.base_batch=2", "lr_range.min=1e-3", "lr_range.max=1e4",
               "lr_range.steps=12")  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    record = json.loads(next((tmp_path / "outputs").rglob("lr_range_test.json")).read_text())
    assert record["steps"] == 12 and record["global_batch"] == 4 and len(record["rates"]) <= 12
    assert record["rate"] == record["rates"][record["pick"]] and record["lr_max"] == pytest.approx(record["rate"] / 2)
    assert re.search(rf"Pick: {record['rate']:.3g}\b", run.stdout)
    assert f"Train with: recipe.lr_max={record['lr_max']:.3g}\n" in run.stdout
    png = next((tmp_path / "outputs").rglob("lr_range_test.png"))
    assert png.parent.parent.name == "runs" and png.read_bytes().startswith(PNG)


def test_the_command_refuses_a_recipe_without_lr_max_in_one_line(root, tmp_path):
    run = _run(root, tmp_path, "recipe=evopose2d")
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines() == [
        "error: recipe (evopose_pl.recipes.AdamWarmupCosine) has no lr_max for the range test to pick: "
        "use a cyclical recipe, e.g. recipe=efficientpose"
    ]


def test_the_command_composes_train_py_config_with_an_experiment(compose):
    cfg = compose("lr_range_test", "experiment=efficientpose_rt", "data.root=/data")
    check_settings(cfg)
    assert cfg.recipe._target_ == "evopose_pl.recipes.SgdCyclical" and cfg.model.name == "efficientpose_rt"
    assert cfg.data.batch_size == 20 and cfg.task_name == "lr_range_test" and cfg.lr_range.steps is None


@pytest.mark.parametrize("override,message", [
    ("lr_range.min=0", "lr_range.min=0, lr_range.max=1.0: need 0 < min < max"),
    ("lr_range.max=1e-7", "lr_range.min=1e-06, lr_range.max=1e-07: need 0 < min < max"),
    ("lr_range.steps=1", "lr_range.steps=1: a whole number of steps >= 2, or null for one cycle"),
    ("lr_range.divergence=1", "lr_range.divergence=1: must exceed 1"),
    ("callbacks.weight_transfer.parent=parent.ckpt", "callbacks.weight_transfer.parent=parent.ckpt: the tuner stops"),
])  # fmt: skip
def test_sweep_settings_that_cannot_work_are_refused(compose, override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_settings(compose("lr_range_test", "recipe=efficientpose", override))


def test_the_sweep_lasts_one_cycle_unless_told_and_must_fit_the_trainers_epochs():
    assert sweep_steps(None, 3, 1300, 200) == 3900  # MPII at batch 20: the first cycle
    assert sweep_steps(300, 3, 1300, 200) == 300
    assert sweep_steps(None, 3, 12, None) == 36
    with pytest.raises(ConfigError, match=r"null \(one cycle of 3 epochs\): 36 steps, more than trainer.max_epochs=2"):
        sweep_steps(None, 3, 12, 2)
    with pytest.raises(ConfigError, match=r"lr_range.steps=30: 30 steps, more than trainer.max_epochs=2 epochs of 12"):
        sweep_steps(30, 3, 12, 2)
