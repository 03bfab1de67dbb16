"""The learning-rate range test (Smith) that picks a cyclical recipe's peak rate: Lightning's tuner sweeps
the rate exponentially over (about) one cycle of training steps and records the smoothed loss; the pick is
the largest rate before that loss diverges (``pick_index``), not Lightning's steepest-descent suggestion.

Lightning's ``lr_find`` needs no learning-rate attribute on the module when it does not write its
suggestion back (``update_attr=False``): it takes the optimiser ``configure_optimizers`` returns, sets
every group's rate to the sweep's start and replaces the recipe's scheduler with its own exponential one,
so the sweep runs the recipe's real optimiser (momentum, weight decay) at the swept rates. It restores
the network's initial weights afterwards.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.tuner import Tuner
from lightning.pytorch.tuner.lr_finder import _LRCallback

# The pick's divergence factor k: the smoothed loss diverges once it exceeds k x the lowest smoothed loss
# before it (4, as Lightning's and fastai's range tests stop at).
DIVERGENCE = 4.0
# Lightning's lr_find records an exponential moving average of the training loss with this beta.
LIGHTNING_BETA = 0.98
SMOOTHING = f"exponential moving average of the training loss, beta {LIGHTNING_BETA}, bias-corrected"


def debias(losses: Sequence[float], beta: float = LIGHTNING_BETA) -> list[float]:
    """Lightning's recorded losses, debiased as intended: it divides the t-th (0-based) average by
    ``1 - beta ** (t + 2)``, counting the step just taken once too often, which halves the first value and
    makes the loss seem to rise at the smallest rates; this divides by ``1 - beta ** (t + 1)`` instead."""
    return [loss * (1 - beta ** (t + 2)) / (1 - beta ** (t + 1)) for t, loss in enumerate(losses)]


def diverged_at(losses: Sequence[float], divergence: float = DIVERGENCE) -> int | None:
    """The first index whose smoothed loss diverges: not finite, or above ``divergence`` x the lowest
    loss before it (index 0 diverges only when not finite); None when the loss never diverges."""
    lowest = math.inf
    for index, loss in enumerate(losses):
        if not math.isfinite(loss) or loss > divergence * lowest:
            return index
        lowest = min(lowest, loss)
    return None


def pick_index(losses: Sequence[float], divergence: float = DIVERGENCE) -> int | None:
    """The range test's pick: the index of the last rate before the smoothed loss diverges (the last
    rate swept when it never does: then the pick is only a lower bound); None when no rate is safe."""
    end = diverged_at(losses, divergence)
    last = len(losses) if end is None else end
    return last - 1 if last > 0 else None


@dataclass(frozen=True)
class RangeTest:
    """A sweep's rates and smoothed losses (non-finite ones recorded as inf), with the pick."""

    rates: list[float]
    losses: list[float]
    divergence: float = DIVERGENCE

    @property
    def diverged_at(self) -> int | None:
        return diverged_at(self.losses, self.divergence)

    @property
    def pick(self) -> int | None:
        return pick_index(self.losses, self.divergence)

    @property
    def rate(self) -> float | None:
        """The picked rate, or None when the loss diverged from the first step."""
        return None if self.pick is None else self.rates[self.pick]


def steps_per_epoch(datamodule: pl.LightningDataModule, trainer: pl.Trainer) -> int:
    """Optimiser steps per training epoch, known before fitting (to size a sweep of one cycle)."""
    datamodule.setup("fit")
    batches = math.ceil(len(datamodule.train_dataloader()) / trainer.world_size)
    return max(1, batches // trainer.accumulate_grad_batches)


def run_sweep(
    module: pl.LightningModule,
    datamodule: pl.LightningDataModule,
    trainer: pl.Trainer,
    min_lr: float,
    max_lr: float,
    steps: int,
    divergence: float = DIVERGENCE,
) -> RangeTest:
    """Sweep the rate from ``min_lr`` to ``max_lr`` exponentially over ``steps`` optimiser steps with
    Lightning's tuner, stopping soon after the smoothed loss diverges."""
    try:
        finder = Tuner(trainer).lr_find(
            module,
            datamodule=datamodule,
            min_lr=min_lr,
            max_lr=max_lr,
            num_training=steps,
            mode="exponential",
            # Lightning stops on its own (biased) record, whose values are at most 1 + beta < 2 times too low:
            # at 2k x its minimum, the debiased loss has passed k x its own, so the sweep holds our divergence.
            early_stop_threshold=2 * divergence,
            update_attr=False,
        )
    except FloatingPointError:
        # The module refuses a non-finite training loss: the rate of that step diverged. Lightning keeps
        # its recording callback in place when a fit fails, so the sweep so far is still there.
        record = next((c for c in trainer.callbacks if isinstance(c, _LRCallback)), None)
        if record is None:
            raise
        losses = [*debias(record.losses), math.inf]
        return RangeTest([float(r) for r in record.lrs[: len(losses)]], losses, divergence)
    if finder is None:
        raise ValueError("the trainer skipped the range test (fast_dev_run is on)")
    losses = [loss if math.isfinite(loss) else math.inf for loss in debias(finder.results["loss"])]
    return RangeTest([float(r) for r in finder.results["lr"]], losses, divergence)


def write_json(result: RangeTest, path: str | os.PathLike, **extra: Any) -> Path:
    """The sweep as JSON: rates, smoothed losses (null where not finite), the rule and the pick, and ``extra``."""
    record = {
        "rates": result.rates,
        "losses": [loss if math.isfinite(loss) else None for loss in result.losses],
        "smoothing": SMOOTHING,
        "rule": f"the last rate before the smoothed loss exceeds {result.divergence:g} x its minimum so far",
        "divergence": result.divergence,
        "diverged_at": result.diverged_at,
        "pick": result.pick,
        "rate": result.rate,
        **extra,
    }
    path = Path(path)
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def plot(result: RangeTest, path: str | os.PathLike) -> Path:
    """Smoothed loss against rate (log axis), with the pick and the first diverged step marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    finite = [(r, loss) for r, loss in zip(result.rates, result.losses) if math.isfinite(loss)]
    ax.plot([r for r, _ in finite], [loss for _, loss in finite], color="tab:blue", lw=1.2, label="smoothed loss")
    if result.pick is not None:
        rate, loss = result.rates[result.pick], result.losses[result.pick]
        ax.axvline(rate, color="tab:red", lw=0.8, ls="--")
        ax.plot([rate], [loss], "o", color="tab:red", label=f"pick {rate:.3g}")
    end = result.diverged_at
    if end is not None and math.isfinite(result.losses[end]):
        ax.plot([result.rates[end]], [result.losses[end]], "x", color="black", label="diverged")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss (smoothed)")
    ax.set_title(f"Range test: last rate before the loss exceeds {result.divergence:g} x its minimum")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
