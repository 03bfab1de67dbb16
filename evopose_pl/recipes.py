"""Training recipes, one part of a pose system: the optimiser, its learning-rate schedule and their
scaling rules. A config group (``recipe=evopose2d``) instantiates one; the LightningModule asks it
for Lightning's optimiser configuration once the trainer knows the global batch and step count.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, warmup_factor: float) -> float:
    """Learning-rate multiplier: linear from ``warmup_factor`` to 1 over the warm-up, then cosine to 0."""
    step = min(step, total_steps)
    if step < warmup_steps:
        return warmup_factor + (1 - warmup_factor) * step / warmup_steps
    done = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * done))


def l2_parameters(net: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(decayed, not decayed): the reference regularises convolution and dense kernels, not
    depthwise kernels (Keras' DepthwiseConv2D ignored its kernel_regularizer), BN or biases."""
    decayed, other = [], []
    for module in net.modules():
        for name, param in module.named_parameters(recurse=False):
            depthwise = isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels
            if name == "weight" and isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)) and not depthwise:
                decayed.append(param)
            else:
                other.append(param)
    return decayed, other


def global_batch(trainer: pl.Trainer, batch_size: int) -> int:
    """Images per optimiser step: the per-device batch x devices x gradient accumulation."""
    return batch_size * trainer.world_size * trainer.accumulate_grad_batches


class Recipe(ABC):
    """How a network is optimised. ``settings()`` holds the constructor arguments (JSON values)."""

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """The constructor arguments that rebuild this recipe (recorded in checkpoints)."""

    @abstractmethod
    def configure(self, net: nn.Module, trainer: pl.Trainer, batch_size: int) -> dict[str, Any]:
        """Lightning's ``configure_optimizers`` value for ``net``, trained at ``batch_size`` per device."""

    def describe(self) -> dict[str, Any]:
        return {"name": type(self).__name__, "settings": self.settings()}


class AdamWarmupCosine(Recipe):
    """EvoPose2D's recipe (SPEC section 7), ``recipe=evopose2d``.

    ``lr`` is the base rate for a global batch of ``base_batch`` (32); with ``scale_lr`` the peak is
    ``lr * global_batch / base_batch``, reached by a linear warm-up from ``lr`` over ``warmup_epochs``,
    then a cosine decay to 0 per step. ``l2`` is the reference's ``l2 * sum(w^2)`` added to the loss,
    applied as Adam's ``weight_decay = 2 * l2`` (the gradient of ``l2 * w^2`` is ``2 * l2 * w``).
    """

    def __init__(
        self,
        lr: float = 2.5e-4,
        scale_lr: bool = True,
        warmup_epochs: float = 5.0,
        l2: float = 1e-5,
        base_batch: int = 32,
    ) -> None:
        self.lr, self.scale_lr, self.warmup_epochs = float(lr), bool(scale_lr), float(warmup_epochs)
        self.l2, self.base_batch = float(l2), int(base_batch)

    def settings(self) -> dict[str, Any]:
        return {
            "lr": self.lr,
            "scale_lr": self.scale_lr,
            "warmup_epochs": self.warmup_epochs,
            "l2": self.l2,
            "base_batch": self.base_batch,
        }

    def configure(self, net: nn.Module, trainer: pl.Trainer, batch_size: int) -> dict[str, Any]:
        batch = global_batch(trainer, batch_size)
        peak = self.lr * batch / self.base_batch if self.scale_lr else self.lr
        decayed, other = l2_parameters(net)
        # The fused kernel (CPU and CUDA) steps all tensors at once: about 4x faster than one by one on the CPU.
        fused = all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in net.parameters())
        optimiser = torch.optim.Adam(
            [{"params": decayed, "weight_decay": 2 * self.l2}, {"params": other, "weight_decay": 0.0}],
            lr=peak,
            fused=fused or None,
        )
        total = max(1, int(trainer.estimated_stepping_batches))
        epochs = max(1, trainer.max_epochs or 1)
        warmup = int(round(self.warmup_epochs * total / epochs))
        factor = self.base_batch / batch if self.scale_lr else 1.0  # the warm-up starts at the base rate
        schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: warmup_cosine(step, total, warmup, factor))
        rank_zero_info(
            f"Adam: peak rate {peak:.3g} (global batch {batch}), warm-up {warmup} of {total} steps, cosine to 0"
        )
        return {"optimizer": optimiser, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
