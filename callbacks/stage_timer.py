"""Lightning callback: seconds a fit spends in its training and validation loops proper."""

from __future__ import annotations

import time

import lightning.pytorch as pl


class StageTimer(pl.Callback):
    """Wall seconds inside the training epochs (batches, including waiting for them) and the
    validation epochs, excluding what surrounds them: set-up, weight transfer, sanity checks,
    checkpoint saving. What is left of a child's wall time is the search's overhead
    (``bench/evolution_overhead.py``)."""

    def __init__(self) -> None:
        self.train_seconds = 0.0
        self.val_seconds = 0.0
        self._train_start: float | None = None
        self._val_start = 0.0

    def _stop_train(self) -> None:
        if self._train_start is not None:
            self.train_seconds += time.perf_counter() - self._train_start
            self._train_start = None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._train_start = time.perf_counter()

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stop_train()  # validation runs inside the training epoch, after its last batch

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stop_train()

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._val_start = time.perf_counter()

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.val_seconds += time.perf_counter() - self._val_start
