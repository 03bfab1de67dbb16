"""Training a network's architecture parameters (PNFS's alpha and beta; SPEC-PNFS section 5) beside its weights.

Synchronous search needs nothing here (the recipe's optimiser trains every parameter). Random search draws
the architecture and freezes it (``randomise_architecture``). First-order DARTS holds out part of the
training set (``ArchitectureSplit``) and alternates an architecture step on it with a weight step
(``DartsModule``). ``architecture_weights`` and ``describe_derived`` report what a search found.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import CombinedLoader
from torch import nn
from torch.utils.data import Subset

from evopose_pl.data.coco import KeypointInfo
from evopose_pl.datamodule import PoseDataModule
from evopose_pl.metrics import Metric
from evopose_pl.module import PoseModule
from evopose_pl.nets.pnfs import INPUTS


def architecture_parameters(net: nn.Module) -> list[nn.Parameter]:
    """The network's architecture parameters: none for a network without (or a derived PNFS network)."""
    method = getattr(net, "architecture_parameters", None)
    return list(method()) if method is not None else []


def randomise_architecture(net: nn.Module, seed: int) -> None:
    """Random search: every architecture parameter drawn from N(0, 1) by a generator seeded with ``seed``, in
    the network's order, then frozen, so that training changes the weights only."""
    generator = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for param in architecture_parameters(net):
            param.copy_(torch.randn(param.shape, generator=generator))
            param.requires_grad_(False)


class ArchitectureSplit(pl.LightningDataModule):
    """A data module whose training set is split in two for a bilevel search: ``fraction`` of it held out
    for the architecture steps, the rest for the weight steps, drawn by ``seed``. Each training batch is
    ``{"weights": batch, "architecture": batch}`` (Lightning's CombinedLoader; the shorter split cycles);
    validation and test are the wrapped data module's, untouched."""

    def __init__(self, data: PoseDataModule, fraction: float, seed: int) -> None:
        super().__init__()
        if not 0 < fraction < 1:
            raise ValueError(f"architecture fraction {fraction}: must lie strictly between 0 and 1")
        self.data, self.fraction, self.seed = data, float(fraction), int(seed)
        self.splits: dict[str, Subset] | None = None

    @property
    def keypoint_info(self) -> KeypointInfo:
        return self.data.keypoint_info

    @property
    def input_size(self) -> tuple[int, int]:
        return self.data.input_size

    @property
    def batch_size(self) -> int:
        return self.data.batch_size

    def test_metric(self) -> Metric:
        return self.data.test_metric()

    def setup(self, stage: str | None = None) -> None:
        self.data.trainer = self.trainer  # the wrapped module pins memory by the trainer's device
        self.data.setup(stage)
        train_set = self.data.train_set
        if train_set is None or self.splits is not None:
            return
        n = len(train_set)
        if n < 2:
            raise ValueError(f"a training set of {n} image(s) cannot be split for the architecture steps")
        held_out = min(n - 1, max(1, round(n * self.fraction)))
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed)).tolist()
        self.splits = {
            "weights": Subset(train_set, order[held_out:]),
            "architecture": Subset(train_set, order[:held_out]),
        }

    def train_dataloader(self) -> CombinedLoader:
        batch = self.data.batch_size
        loaders = {name: self.data._loader(split, batch, shuffle=True) for name, split in self.splits.items()}
        return CombinedLoader(loaders, mode="max_size_cycle")

    def val_dataloader(self) -> Any:
        return self.data.val_dataloader()

    def test_dataloader(self) -> Any:
        return self.data.test_dataloader()


def _drop_parameters(optimiser: torch.optim.Optimizer, params: Iterable[nn.Parameter]) -> None:
    """Take ``params`` out of an optimiser that has not stepped yet (its groups, and their settings, stay)."""
    ids = {id(p) for p in params}
    for group in optimiser.param_groups:
        group["params"] = [p for p in group["params"] if id(p) not in ids]


class DartsModule(PoseModule):
    """First-order DARTS (SPEC-PNFS section 5) with Lightning's manual optimisation: each training batch
    (``ArchitectureSplit``'s pair) makes one architecture step on the held-out batch, then one weight step
    on the training batch. The weights follow the recipe's optimiser and schedule, with the architecture
    parameters taken out of it; the architecture, Adam at ``architecture_lr`` with DARTS' betas and
    ``architecture_weight_decay``. Each step toggles its optimiser, so the other's parameters get no gradient.

    Two optimiser steps per batch: the trainer's ``global_step`` (and ``max_steps``) counts both.
    """

    def __init__(
        self,
        *args: Any,
        architecture_lr: float = 3e-3,
        architecture_weight_decay: float = 1e-3,
        architecture_betas: Sequence[float] = (0.5, 0.999),
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.automatic_optimization = False
        self.architecture_lr, self.architecture_weight_decay = float(architecture_lr), float(architecture_weight_decay)
        self.architecture_betas = (float(architecture_betas[0]), float(architecture_betas[1]))

    def configure_optimizers(self) -> list[dict[str, Any]]:
        weights = super().configure_optimizers()
        arch = architecture_parameters(self.net)
        _drop_parameters(weights["optimizer"], arch)
        architecture = torch.optim.Adam(
            arch, lr=self.architecture_lr, betas=self.architecture_betas, weight_decay=self.architecture_weight_decay
        )
        return [weights, {"optimizer": architecture}]

    def batches_done(self) -> int:
        return self.global_step // 2  # two optimiser steps per batch

    def training_datasets(self) -> list[Any]:
        return [loader.dataset.dataset for loader in self.trainer.train_dataloader.values()]  # Subsets of one set

    def _step(self, optimiser: pl.core.optimizer.LightningOptimizer, batch: dict, stage: str) -> torch.Tensor:
        with self.toggled_optimizer(optimiser):
            loss = self._losses(batch, stage)
            optimiser.zero_grad()
            self.manual_backward(loss)
            optimiser.step()
        return loss

    def _step_schedulers(self, interval: str, index: int) -> None:
        """Step the recipe's schedulers of ``interval`` as Lightning's automatic optimisation would."""
        for config in self.trainer.lr_scheduler_configs:
            if config.interval == interval and (index + 1) % config.frequency == 0:
                config.scheduler.step()

    def training_step(self, batch: dict[str, dict], batch_idx: int) -> torch.Tensor:
        weights, architecture = self.optimizers()
        self._step(architecture, batch["architecture"], "architecture")
        loss = self._step(weights, batch["weights"], "train")
        self._step_schedulers("step", batch_idx)
        return loss

    def on_train_epoch_end(self) -> None:
        self._step_schedulers("epoch", self.current_epoch)


def architecture_weights(net: nn.Module) -> dict[str, float]:
    """Each part's softmax(alpha) per edge and operation, and softmax(beta) per cell and input, by name:
    ``architecture/<part>/alpha/edge<e>/<operation>``, ``architecture/<part>/beta/cell<layer>.<scale>/<input>``."""
    weights: dict[str, float] = {}
    for part in net.parts:
        if part.alpha is None:
            continue
        for e, row in enumerate(part.alpha.detach().softmax(-1).tolist()):
            for name, value in zip(part.operations, row):
                weights[f"architecture/{part.name}/alpha/edge{e}/{name}"] = value
        rows = iter(part.betas.detach().softmax(-1).tolist())
        for layer, cells in enumerate(part.layers):
            for scale in range(len(cells)):
                for name, value in zip(INPUTS, next(rows)):
                    weights[f"architecture/{part.name}/beta/cell{layer}.{scale}/{name}"] = value
    return weights


def describe_derived(derived: dict[str, Any]) -> str:
    """A derived architecture (``PNFSNet.derive()``) as lines: per part, its edges' operations and, layer by
    layer, each cell's input (from the finest scale up)."""
    lines = []
    for part in derived["parts"]:
        layers = " | ".join(" ".join(layer) for layer in part["inputs"])
        lines.append(f"  {part['name']}: edges {', '.join(part['edges'])}; cell inputs by layer: {layers}")
    return "\n".join(lines)
