"""Lightning callback: an exponential moving average of the weights whose decay ramps up (KAPAO's, SPEC-KAPAO
section 3), validated, checkpointed and kept at the end of training in place of the raw weights."""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.trainer.states import TrainerFn


class ExponentialMovingAverage(WeightAveraging):
    """After each optimiser step, ``average = d * average + (1 - d) * weights`` over the module's parameters
    and buffers (batch-norm statistics; integer buffers such as batch counts are copied), with the decay
    ramping up with the number ``n`` of updates made before this one::

        d_n = decay * (1 - exp(-n / ramp))

    so the random initialisation does not dominate the average of an early epoch: with a fixed 0.9999 it would
    hold 37% of the weight after 10,000 steps. The first update (``d_0 = 0``) copies the weights.

    Lightning's ``WeightAveraging`` does the rest: it swaps the average in for validation, saves it as the
    checkpoint's ``state_dict`` (the raw weights under ``current_model_state``, the update count under
    ``averaging_state``), restores both on resume, and copies the average into the module when training ends.
    Testing, validating or predicting from a checkpoint uses its ``state_dict``, the average, as it stands.
    """

    def __init__(self, decay: float = 0.9999, ramp: float = 2000.0, device: torch.device | str | None = None) -> None:
        if not 0 <= decay < 1:
            raise ValueError(f"ExponentialMovingAverage: decay={decay} must lie in [0, 1)")
        if ramp <= 0:
            raise ValueError(f"ExponentialMovingAverage: ramp={ramp} must be > 0")
        self.decay, self.ramp = float(decay), float(ramp)
        super().__init__(device=device, use_buffers=True, multi_avg_fn=self._update)

    def decay_at(self, n: int) -> float:
        """The decay of the update made after ``n`` others."""
        return self.decay * (1 - math.exp(-n / self.ramp))

    @torch.no_grad()
    def _update(self, averages: list[torch.Tensor], currents: list[torch.Tensor], n: torch.Tensor | int) -> None:
        """``AveragedModel``'s update of one device's and dtype's tensors, after ``n`` (>= 1) updates."""
        decay = self.decay_at(int(n))  # AveragedModel reads its count on the host at every update anyway
        if averages[0].is_floating_point() or averages[0].is_complex():
            torch._foreach_lerp_(averages, currents, 1 - decay)
        else:
            torch._foreach_copy_(averages, currents)

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Resuming a fit restores the raw weights and the average (Lightning's); any other stage keeps the
        average the checkpoint's ``state_dict`` loaded (Lightning's would put the raw weights back when the
        callback has already fitted, as in train.py's test of the best checkpoint after training)."""
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
