"""A Lightning callback that makes chosen individuals of a search fail, for the failure tests.

Passed on the command line (``+callbacks.fail._target_=tests.failing.FailIndividuals ...``), it
breaks a real child in one of the ways real children break: an exception during training, or
weights that turn the loss into NaN (caught by the module's finite-loss check).
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch


class FailIndividuals(pl.Callback):
    def __init__(self, individual: int, raise_for: list[int] = (), nan_for: list[int] = ()) -> None:
        self.individual = individual
        self.raise_for = set(raise_for)
        self.nan_for = set(nan_for)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.individual in self.raise_for:
            raise RuntimeError(f"injected failure of individual {self.individual}")
        if self.individual in self.nan_for:
            with torch.no_grad():
                pl_module.net.final.weight.fill_(float("nan"))
