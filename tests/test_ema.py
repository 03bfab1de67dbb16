"""The weights' exponential moving average with a ramped decay (callbacks.ExponentialMovingAverage, SPEC-KAPAO
section 3): its formula, and Lightning's handling of it in validation, checkpoints and resumes."""

from __future__ import annotations

import math
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from callbacks import ExponentialMovingAverage


class _Scalar(pl.LightningModule):
    """One parameter and a batch-norm layer's buffers."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.bn = nn.BatchNorm1d(1)


def test_the_average_follows_the_ramped_formula_by_hand():
    module = _Scalar()
    ema = ExponentialMovingAverage(decay=0.9, ramp=2.0)
    ema.setup(SimpleNamespace(), module, "fit")
    values = [1.0, 2.0, 3.0, 4.0]
    for step, value in enumerate(values, start=1):
        module.w.data.fill_(value)
        module.bn.running_mean.fill_(10 * value)
        module.bn.num_batches_tracked.fill_(step)
        ema.on_train_batch_end(SimpleNamespace(global_step=step), module, None, None, step - 1)
    # update 1 copies (d_0 = 0); update k + 1 decays by d_k = 0.9 (1 - exp(-k / 2))
    d1, d2, d3 = (0.9 * (1 - math.exp(-k / 2)) for k in (1, 2, 3))
    expected = 1.0
    expected = d1 * expected + (1 - d1) * 2.0
    expected = d2 * expected + (1 - d2) * 3.0
    expected = d3 * expected + (1 - d3) * 4.0
    assert ema.decay_at(0) == 0 and ema.decay_at(1) == pytest.approx(d1)
    average = ema._average_model
    assert average.module.w.item() == pytest.approx(expected, rel=1e-6)
    assert average.module.bn.running_mean.item() == pytest.approx(10 * expected, rel=1e-6)  # buffers too
    assert average.module.bn.num_batches_tracked.item() == 4  # an integer buffer is copied
    assert average.n_averaged.item() == 4
    # with the ramp spent, the decay is the configured one
    assert ExponentialMovingAverage(decay=0.9999).decay_at(100_000) == pytest.approx(0.9999)


@pytest.mark.parametrize("setting", [{"decay": 1.0}, {"decay": -0.1}, {"ramp": 0.0}])
def test_impossible_settings_are_refused(setting):
    with pytest.raises(ValueError):
        ExponentialMovingAverage(**setting)


class _Linear(pl.LightningModule):
    """A linear map trained by plain SGD; validation records the weights it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(3, 1)
        self.seen: list[torch.Tensor] = []

    def training_step(self, batch, batch_idx):
        inputs, targets = batch
        return nn.functional.mse_loss(self.layer(inputs), targets)

    def validation_step(self, batch, batch_idx):
        if batch_idx == 0:
            self.seen.append(self.layer.weight.detach().clone())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class _Steps(pl.Callback):
    """The raw weights after each optimiser step."""

    def __init__(self) -> None:
        self.weights: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.weights.append(pl_module.layer.weight.detach().clone())


def _by_formula(weights: list[torch.Tensor], decay: float, ramp: float) -> torch.Tensor:
    average = weights[0].clone()
    for n, weight in enumerate(weights[1:], start=1):
        d = decay * (1 - math.exp(-n / ramp))
        average = d * average + (1 - d) * weight
    return average


def _loader() -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(16, 3, generator=generator), torch.randn(16, 1, generator=generator))
    return DataLoader(data, batch_size=4)  # 4 steps an epoch


def _fit(root, callbacks: list[pl.Callback], ckpt_path: str | None = None) -> tuple[_Linear, pl.Trainer]:
    torch.manual_seed(0)
    module = _Linear()
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=root, num_sanity_val_steps=0,
                         callbacks=callbacks,
                         enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks))  # fmt: skip
    trainer.fit(module, _loader(), _loader(), ckpt_path=ckpt_path)
    return module, trainer


def test_validation_checkpoints_and_resumes_use_the_average(tmp_path):
    decay, ramp = 0.9, 3.0
    steps = _Steps()
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_top_k=-1, every_n_epochs=1)
    module, _ = _fit(tmp_path, [ExponentialMovingAverage(decay, ramp), steps, checkpoints])
    assert len(steps.weights) == 8
    first, second = _by_formula(steps.weights[:4], decay, ramp), _by_formula(steps.weights, decay, ramp)
    assert not torch.allclose(first, steps.weights[3])  # the average differs from the raw weights

    # validation saw the average, after each epoch
    assert len(module.seen) == 2
    torch.testing.assert_close(module.seen[0], first)
    torch.testing.assert_close(module.seen[1], second)

    # a checkpoint's state_dict holds the average; the raw weights ride along for resuming
    checkpoint = torch.load(tmp_path / "checkpoints" / "epoch=0-step=4.ckpt", weights_only=True)
    torch.testing.assert_close(checkpoint["state_dict"]["layer.weight"], first)
    torch.testing.assert_close(checkpoint["current_model_state"]["layer.weight"], steps.weights[3])
    assert checkpoint["averaging_state"]["n_averaged"].item() == 4

    # training ends with the average in the module
    torch.testing.assert_close(module.layer.weight.detach(), second)

    # resuming after the first epoch continues both the training and the average
    resumed_steps = _Steps()
    ema = ExponentialMovingAverage(decay, ramp)
    path = str(tmp_path / "checkpoints" / "epoch=0-step=4.ckpt")
    resumed, _ = _fit(tmp_path / "resumed", [ema, resumed_steps], ckpt_path=path)
    torch.testing.assert_close(torch.stack(resumed_steps.weights), torch.stack(steps.weights[4:]))
    assert ema._average_model.n_averaged.item() == 8
    torch.testing.assert_close(resumed.seen[-1], second)
    torch.testing.assert_close(resumed.layer.weight.detach(), second)


def test_testing_a_checkpoint_after_fitting_tests_its_average(tmp_path):
    """train.py tests the best checkpoint with the trainer that fitted it: the average must stay loaded (Lightning's
    callback alone would restore the raw weights beside it)."""
    steps = _Steps()
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_top_k=-1, every_n_epochs=1)
    module, trainer = _fit(tmp_path, [ExponentialMovingAverage(0.9, 3.0), steps, checkpoints])
    path = tmp_path / "checkpoints" / "epoch=0-step=4.ckpt"
    seen = []
    module.test_step = lambda batch, batch_idx: seen.append(module.layer.weight.detach().clone())
    trainer.test(module, _loader(), ckpt_path=str(path), weights_only=True, verbose=False)
    torch.testing.assert_close(seen[0], _by_formula(steps.weights[:4], 0.9, 3.0))
