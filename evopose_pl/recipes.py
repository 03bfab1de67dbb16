"""Training recipes, one part of a pose system: the optimiser, its learning-rate schedule and their
scaling rules. A config group (``recipe=evopose2d``) instantiates one; the LightningModule asks it
for Lightning's optimiser configuration once the trainer knows the global batch and step count.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from functools import partial
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


def decaying_triangle(step: int, cycle_steps: int, ratio: float, peak_decay: float) -> float:
    """Learning-rate multiplier of ``lr_max`` at ``step``: Smith's triangular cycle, linear from ``1 / ratio``
    at the cycle's start up to its peak at mid-cycle and back down, with cycle ``c``'s peak
    ``ratio ** (-(1 - peak_decay ** c) / 2)``: its log-distance to the geometric midpoint ``ratio ** -0.5``
    of 1 and ``1 / ratio`` shrinks by ``peak_decay`` each cycle (1: no decay; 0: at the midpoint from cycle 1)."""
    cycle, position = divmod(step, cycle_steps)
    low = 1 / ratio
    peak = ratio ** (-(1 - peak_decay**cycle) / 2)
    rise = 1 - abs(2 * position / cycle_steps - 1)  # 0 at the cycle's start and end, 1 at mid-cycle
    return low + (peak - low) * rise


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


def steps_per_epoch(trainer: pl.Trainer) -> float:
    """Optimiser steps per training epoch, from the trainer's count of training batches (also when
    ``max_steps`` rather than ``max_epochs`` bounds the run)."""
    trainer.estimated_stepping_batches  # noqa: B018 (sets up the training data, so the count is known)
    return max(1.0, trainer.num_training_batches / trainer.accumulate_grad_batches)


def global_batch(trainer: pl.Trainer, batch_size: int) -> int:
    """Images per optimiser step: the per-device batch x devices x gradient accumulation."""
    return batch_size * trainer.world_size * trainer.accumulate_grad_batches


def scaled_rate(rate: float, batch: int, base_batch: int, scale: bool) -> float:
    """A rate set for a global batch of ``base_batch``, scaled linearly to the global ``batch`` when ``scale``
    (Goyal et al.'s rule); unchanged otherwise."""
    return rate * batch / base_batch if scale else rate


def fusable(net: nn.Module) -> bool:
    """Whether a fused optimiser kernel can step every parameter (CPU or CUDA floats): it steps all tensors
    at once, about 4x faster than one by one on the CPU."""
    return all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in net.parameters())


class Recipe(ABC):
    """How a network is optimised. ``settings()`` holds the constructor arguments (JSON values)."""

    #: The exponential moving average of the weights a run keeps, used for validation and checkpoints; None: none.
    ema_decay: float | None = None
    #: Updates over which that average's decay ramps up (``callbacks.ExponentialMovingAverage``).
    ema_ramp: float = 2000.0

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
        peak = scaled_rate(self.lr, batch, self.base_batch, self.scale_lr)
        decayed, other = l2_parameters(net)
        optimiser = torch.optim.Adam(
            [{"params": decayed, "weight_decay": 2 * self.l2}, {"params": other, "weight_decay": 0.0}],
            lr=peak,
            fused=fusable(net) or None,
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


class SgdCyclical(Recipe):
    """EfficientPose's recipe (SPEC-EfficientPose section 4), ``recipe=efficientpose``: SGD with momentum
    0.9 and a decaying triangular cyclical rate (Smith's CLR), stepped per optimiser step.

    Each cycle lasts ``cycle_epochs`` (3) and runs linearly from ``lr_min = lr_max / lr_ratio`` (3000)
    up to its peak at mid-cycle and back to ``lr_min``. The paper says only that the peaks decay towards
    the geometric midpoint ``mid = 10 ** ((log10 lr_max + log10 lr_min) / 2)``; our form: the peak's
    log-distance to it shrinks by ``peak_decay`` per cycle, ``log10 peak_c = log10 mid + peak_decay ** c
    * (log10 lr_max - log10 mid)`` (``decaying_triangle``). The default 0.95 spreads the decay over the
    paper's 200 epochs (67 cycles; the last peak is 1.15 x mid).

    ``lr_max`` is the first peak, picked by the learning-rate range test (``lr_range_test.py``). The paper
    publishes none; the default 0.4 is the test's pick for EfficientPose RT on the synthetic MPII-format
    data at 64x64 and a batch of 64 (0.442), rounded down. The paper trains at a fixed batch of 20 and scales
    nothing, so ``scale_lr`` is off by default; with it, the whole schedule scales by ``global_batch /
    base_batch``. ``weight_decay`` (the
    paper gives none) applies, like EvoPose2D's L2, to convolution and dense kernels only.
    """

    def __init__(
        self,
        lr_max: float = 0.4,
        lr_ratio: float = 3000.0,
        cycle_epochs: float = 3.0,
        peak_decay: float = 0.95,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        scale_lr: bool = False,
        base_batch: int = 20,
    ) -> None:
        for setting, value, ok, need in (
            ("lr_max", lr_max, lr_max > 0, "must be > 0"),
            ("lr_ratio", lr_ratio, lr_ratio >= 1, "must be >= 1"),
            ("cycle_epochs", cycle_epochs, cycle_epochs > 0, "must be > 0"),
            ("peak_decay", peak_decay, 0 <= peak_decay <= 1, "must lie in [0, 1]"),
        ):
            if not ok:
                raise ValueError(f"recipe.{setting}={value}: {need}")
        self.lr_max, self.lr_ratio, self.cycle_epochs = float(lr_max), float(lr_ratio), float(cycle_epochs)
        self.peak_decay, self.momentum, self.weight_decay = float(peak_decay), float(momentum), float(weight_decay)
        self.scale_lr, self.base_batch = bool(scale_lr), int(base_batch)

    def settings(self) -> dict[str, Any]:
        return {
            "lr_max": self.lr_max,
            "lr_ratio": self.lr_ratio,
            "cycle_epochs": self.cycle_epochs,
            "peak_decay": self.peak_decay,
            "momentum": self.momentum,
            "weight_decay": self.weight_decay,
            "scale_lr": self.scale_lr,
            "base_batch": self.base_batch,
        }

    def lr_max_for(self, rate: float, batch: int) -> float:
        """The ``lr_max`` setting whose first peak is ``rate`` at a global batch of ``batch`` (the range
        test measures the rate the optimiser uses, after any batch scaling)."""
        return rate / scaled_rate(1.0, batch, self.base_batch, self.scale_lr)

    def configure(self, net: nn.Module, trainer: pl.Trainer, batch_size: int) -> dict[str, Any]:
        batch = global_batch(trainer, batch_size)
        peak = scaled_rate(self.lr_max, batch, self.base_batch, self.scale_lr)
        decayed, other = l2_parameters(net)
        optimiser = torch.optim.SGD(
            [{"params": decayed, "weight_decay": self.weight_decay}, {"params": other, "weight_decay": 0.0}],
            lr=peak,
            momentum=self.momentum,
            fused=fusable(net) or None,
        )
        cycle = max(2, int(round(self.cycle_epochs * steps_per_epoch(trainer))))
        ratio, decay = self.lr_ratio, self.peak_decay
        rate = partial(decaying_triangle, cycle_steps=cycle, ratio=ratio, peak_decay=decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, rate)
        rank_zero_info(
            f"SGD: triangular cycles of {cycle} steps from {peak / ratio:.3g} to a first peak of {peak:.3g} "
            f"(global batch {batch}), peaks decaying x{decay} per cycle towards {peak / math.sqrt(ratio):.3g}"
        )
        return {"optimizer": optimiser, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


class AdamStepDecay(Recipe):
    """PNFS's recipe (SPEC-PNFS section 6), ``recipe=pnfs``: Adam at ``lr`` (1e-3), the rate multiplied by
    ``gamma`` (0.25) at each of the ``milestones`` epochs (90, 120 and 150 of 200), no batch scaling and no
    weight decay (the paper's batch is 24). Every parameter the network has is optimised, architecture
    weights included: PNFS's synchronous search."""

    def __init__(
        self,
        lr: float = 1e-3,
        milestones: tuple[int, ...] | list[int] = (90, 120, 150),
        gamma: float = 0.25,
        weight_decay: float = 0.0,
    ) -> None:
        self.lr, self.gamma, self.weight_decay = float(lr), float(gamma), float(weight_decay)
        self.milestones = [int(m) for m in milestones]
        if self.lr <= 0:
            raise ValueError(f"recipe.lr={lr}: must be > 0")
        if self.milestones != sorted(set(self.milestones)):
            raise ValueError(f"recipe.milestones={self.milestones}: must be increasing epochs")

    def settings(self) -> dict[str, Any]:
        return {"lr": self.lr, "milestones": self.milestones, "gamma": self.gamma, "weight_decay": self.weight_decay}

    def configure(self, net: nn.Module, trainer: pl.Trainer, batch_size: int) -> dict[str, Any]:
        optimiser = torch.optim.Adam(
            net.parameters(), lr=self.lr, weight_decay=self.weight_decay, fused=fusable(net) or None
        )
        schedule = torch.optim.lr_scheduler.MultiStepLR(optimiser, self.milestones, self.gamma)
        rank_zero_info(f"Adam: rate {self.lr:.3g}, x{self.gamma:g} at epochs {self.milestones}")
        return {"optimizer": optimiser, "lr_scheduler": {"scheduler": schedule, "interval": "epoch"}}


def cosine_to(step: int, total_steps: int, final: float) -> float:
    """Learning-rate multiplier: half a cosine from 1 at step 0 down to ``final`` at ``total_steps`` (held after)."""
    done = min(step, total_steps) / max(1, total_steps)
    return final + (1 - final) * (1 + math.cos(math.pi * done)) / 2


def decay_groups(net: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter], list[nn.Parameter]]:
    """(decayed, other weights, biases): KAPAO's (and YOLOv5's) three groups. Convolution and linear weights,
    depthwise included, take weight decay; every bias is apart for its warm-up; the rest (batch-norm weights,
    other norms' and any other parameters) is neither."""
    decayed, weights, biases = [], [], []
    for module in net.modules():
        for name, param in module.named_parameters(recurse=False):
            if name == "bias":
                biases.append(param)
            elif name == "weight" and isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
                decayed.append(param)
            else:
                weights.append(param)
    return decayed, weights, biases


class WarmupCosineMomentum(torch.optim.lr_scheduler.LRScheduler):
    """Per-step schedule of KAPAO's recipe: each group's rate ``base_lr * cosine_to(step, total_steps, final)``
    and the momentum ``momentum``, reached by a linear warm-up over ``warmup_steps``: group ``i``'s rate from
    ``warmup_start[i]`` and the momentum from ``warmup_momentum``. The warm-up aims at the cosine underneath
    it, so the rate joins it without a step.

    An ``LRScheduler`` (Lightning accepts no other) that also sets every group's ``momentum``. Its state
    (``state_dict``: every attribute but the optimiser) carries the step count, so a resumed run goes on."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        total_steps: int,
        warmup_steps: int,
        final: float,
        warmup_start: list[float],
        momentum: float,
        warmup_momentum: float,
    ) -> None:
        if len(warmup_start) != len(optimizer.param_groups):
            raise ValueError(f"{len(warmup_start)} warm-up starts for {len(optimizer.param_groups)} groups")
        self.total_steps, self.warmup_steps, self.final = int(total_steps), max(1, int(warmup_steps)), float(final)
        self.warmup_start = [float(rate) for rate in warmup_start]
        self.momentum, self.warmup_momentum = float(momentum), float(warmup_momentum)
        super().__init__(optimizer)  # steps to 0, which sets the first rates and momentum

    def rates_at(self, step: int) -> list[float]:
        """Every group's rate at optimiser step ``step`` (0: the first)."""
        scheduled = [base * cosine_to(step, self.total_steps, self.final) for base in self.base_lrs]
        if step >= self.warmup_steps:
            return scheduled
        done = step / self.warmup_steps
        return [start + (rate - start) * done for start, rate in zip(self.warmup_start, scheduled)]

    def momentum_at(self, step: int) -> float:
        """The momentum at optimiser step ``step``."""
        done = min(1.0, step / self.warmup_steps)
        return self.warmup_momentum + (self.momentum - self.warmup_momentum) * done

    def get_lr(self) -> list[float]:
        return self.rates_at(self.last_epoch)

    def step(self, epoch: int | None = None) -> None:
        super().step(epoch)
        momentum = self.momentum_at(self.last_epoch)
        for group in self.optimizer.param_groups:
            group["momentum"] = momentum


class SgdNesterovCosine(Recipe):
    """KAPAO's recipe (SPEC-KAPAO section 3), ``recipe=kapao``: SGD with Nesterov momentum 0.937 at a rate of
    ``lr`` (0.01), decayed per step along half a cosine to ``final_lr_fraction`` (0.2) of it over the run.

    The weight decay (5e-4) is set for a global batch of ``nominal_batch`` (64) and scales with the global
    batch (``weight_decay * global_batch / nominal_batch``: the decay per image stays put); it applies to
    convolution and linear weights only. The rate is not scaled. Over the first ``warmup_epochs`` (3) of
    optimiser steps (at least 1) the weights' rates rise linearly from 0, the biases' fall from
    ``warmup_bias_lr`` (0.1) and the momentum rises from ``warmup_momentum`` (0.8), each to its scheduled value.

    ``ema_decay`` and ``ema_ramp`` describe the exponential moving average of the weights the run keeps (the
    ``callbacks.ExponentialMovingAverage`` callback builds it; the recipe only records them).
    """

    def __init__(
        self,
        lr: float = 0.01,
        momentum: float = 0.937,
        weight_decay: float = 5e-4,
        nominal_batch: int = 64,
        warmup_epochs: float = 3.0,
        warmup_momentum: float = 0.8,
        warmup_bias_lr: float = 0.1,
        final_lr_fraction: float = 0.2,
        ema_decay: float | None = 0.9999,
        ema_ramp: float = 2000.0,
    ) -> None:
        for setting, value, ok, need in (
            ("lr", lr, lr > 0, "must be > 0"),
            ("momentum", momentum, 0 < momentum < 1, "must lie in (0, 1) (Nesterov needs momentum)"),
            ("weight_decay", weight_decay, weight_decay >= 0, "must be >= 0"),
            ("nominal_batch", nominal_batch, nominal_batch > 0, "must be > 0"),
            ("warmup_epochs", warmup_epochs, warmup_epochs >= 0, "must be >= 0"),
            ("warmup_momentum", warmup_momentum, 0 <= warmup_momentum < 1, "must lie in [0, 1)"),
            ("warmup_bias_lr", warmup_bias_lr, warmup_bias_lr >= 0, "must be >= 0"),
            ("final_lr_fraction", final_lr_fraction, 0 <= final_lr_fraction <= 1, "must lie in [0, 1]"),
            ("ema_decay", ema_decay, ema_decay is None or 0 <= ema_decay < 1, "must lie in [0, 1) or be null"),
            ("ema_ramp", ema_ramp, ema_ramp > 0, "must be > 0"),
        ):
            if not ok:
                raise ValueError(f"recipe.{setting}={value}: {need}")
        self.lr, self.momentum, self.weight_decay = float(lr), float(momentum), float(weight_decay)
        self.nominal_batch, self.warmup_epochs = int(nominal_batch), float(warmup_epochs)
        self.warmup_momentum, self.warmup_bias_lr = float(warmup_momentum), float(warmup_bias_lr)
        self.final_lr_fraction = float(final_lr_fraction)
        self.ema_decay = None if ema_decay is None else float(ema_decay)
        self.ema_ramp = float(ema_ramp)

    def settings(self) -> dict[str, Any]:
        return {
            "lr": self.lr,
            "momentum": self.momentum,
            "weight_decay": self.weight_decay,
            "nominal_batch": self.nominal_batch,
            "warmup_epochs": self.warmup_epochs,
            "warmup_momentum": self.warmup_momentum,
            "warmup_bias_lr": self.warmup_bias_lr,
            "final_lr_fraction": self.final_lr_fraction,
            "ema_decay": self.ema_decay,
            "ema_ramp": self.ema_ramp,
        }

    def configure(self, net: nn.Module, trainer: pl.Trainer, batch_size: int) -> dict[str, Any]:
        batch = global_batch(trainer, batch_size)
        decay = self.weight_decay * batch / self.nominal_batch
        decayed, weights, biases = decay_groups(net)
        optimiser = torch.optim.SGD(
            [
                {"params": decayed, "weight_decay": decay},
                {"params": weights, "weight_decay": 0.0},
                {"params": biases, "weight_decay": 0.0},
            ],
            lr=self.lr,
            momentum=self.momentum,
            nesterov=True,
            fused=fusable(net) or None,
        )
        total = max(1, int(trainer.estimated_stepping_batches))
        warmup = max(1, int(round(self.warmup_epochs * steps_per_epoch(trainer))))
        schedule = WarmupCosineMomentum(
            optimiser,
            total_steps=total,
            warmup_steps=warmup,
            final=self.final_lr_fraction,
            warmup_start=[0.0, 0.0, self.warmup_bias_lr],
            momentum=self.momentum,
            warmup_momentum=self.warmup_momentum,
        )
        rank_zero_info(
            f"SGD (Nesterov): rate {self.lr:.3g}, warm-up {warmup} of {total} steps, cosine to "
            f"{self.final_lr_fraction:g} x; weight decay {decay:.3g} (global batch {batch})"
        )
        return {"optimizer": optimiser, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
