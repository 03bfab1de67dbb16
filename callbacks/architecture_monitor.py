"""Lightning callback: what an architecture search learns, epoch by epoch, and the architecture it derives."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from matplotlib.figure import Figure

from evopose_pl.architecture_search import architecture_weights, describe_derived
from evopose_pl.nets.pnfs import DERIVED_KEY

ARCHITECTURE_PLOT = "architecture.png"
DERIVED_ARCHITECTURE = "derived_architecture.json"


class ArchitectureMonitor(pl.Callback):
    """After each validation epoch, logs the network's architecture weights (``architecture_weights``:
    softmax(alpha) per edge and operation, softmax(beta) per cell) to every logger and keeps their history.
    At the end of fit, writes ``architecture.png`` (per part, each edge's operation weights over the epochs)
    and ``derived_architecture.json`` (``net.derive()``, which ``model.derived=`` trains as a fixed network)
    in ``output_dir``, and prints the derived architecture. Checkpoints hold it under ``nets.pnfs.DERIVED_KEY``.
    """

    def __init__(self, output_dir: str | os.PathLike) -> None:
        self.output_dir = Path(output_dir)
        self.history: list[dict[str, float]] = []  # one entry per validation epoch, with its "epoch"

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        weights = architecture_weights(pl_module.net)
        for logger in trainer.loggers:
            logger.log_metrics(weights, step=trainer.global_step)
        self.history.append({"epoch": trainer.current_epoch, **weights})

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        derived = pl_module.net.derive()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / DERIVED_ARCHITECTURE).write_text(json.dumps(derived, indent=2) + "\n")
        self.plot(self.output_dir / ARCHITECTURE_PLOT)
        print(f"Derived architecture ({self.output_dir / DERIVED_ARCHITECTURE}):\n{describe_derived(derived)}")

    def plot(self, path: Path) -> None:
        """One panel per part: each edge's operation weights, softmax(alpha), over the validation epochs."""
        last = self.history[-1] if self.history else {}
        parts = list(dict.fromkeys(key.split("/")[1] for key in last if "/alpha/" in key))
        figure = Figure(figsize=(5 * max(1, len(parts)), 3.5), layout="constrained")
        axes = figure.subplots(1, max(1, len(parts)), squeeze=False)[0]
        epochs = [entry["epoch"] for entry in self.history]
        for ax, part in zip(axes, parts):
            prefix = f"architecture/{part}/alpha/"
            for key in (k for k in last if k.startswith(prefix)):
                ax.plot(epochs, [entry[key] for entry in self.history], marker="o", label=key[len(prefix) :])
            ax.set(title=part, xlabel="epoch", ylabel="softmax(alpha)", ylim=(0, 1))
            ax.legend(fontsize="small")
        figure.savefig(path, dpi=100)

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[DERIVED_KEY] = pl_module.net.derive()

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict["history"])
