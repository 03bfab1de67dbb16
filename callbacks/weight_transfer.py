"""Lightning callback: the network inherits a parent's weights when fitting starts (SPEC section 4)."""

from __future__ import annotations

import os
from collections.abc import Mapping

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info

from evopose_pl.transfer import TransferReport, transfer_weights


class WeightTransfer(pl.Callback):
    """Load ``parent`` (a checkpoint or state-dict file) into ``pl_module.<attribute>`` on fit start.

    ``key_map`` (``{regex: replacement}``) renames the parent's keys first, for pretrained
    weights saved under another naming.

    A run resumed from its own checkpoint (``trainer.fit(ckpt_path=...)``) keeps the restored
    weights: transfer only seeds a fresh network. The report is printed and, when the
    trainer has loggers, logged as ``transfer/*`` numbers.
    """

    def __init__(
        self, parent: str | os.PathLike | None, attribute: str = "net", key_map: Mapping[str, str] | None = None
    ) -> None:
        self.parent = parent
        self.attribute = attribute
        self.key_map = dict(key_map) if key_map else None
        self.report: TransferReport | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.parent is None or trainer.ckpt_path is not None:
            return
        net = getattr(pl_module, self.attribute, None)
        if net is None:
            raise AttributeError(
                f"WeightTransfer: {type(pl_module).__name__} has no attribute {self.attribute!r} holding the network"
            )
        self.report = transfer_weights(self.parent, net, key_map=self.key_map)
        rank_zero_info(f"{self.report} (parent: {os.fspath(self.parent)})")
        for logger in trainer.loggers:
            logger.log_metrics(self.report.summary(), step=0)
