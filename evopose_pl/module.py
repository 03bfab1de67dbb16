"""The LightningModule: any pose network, the masked-MSE heatmap loss, the reference optimiser
and schedule, validation loss on ground-truth boxes, and the COCO test protocol (SPEC 5, 7, 8)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from evopose_pl.data.heatmaps import decode_heatmaps, masked_mse, merge_flipped, render_heatmaps, to_image
from evopose_pl.evaluation import STAT_NAMES, evaluate_coco, rescore, results_records
from evopose_pl.nets import count_flops, count_parameters, describe

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# On the CPU, bf16 autocast pays off at the paper's 256x192 (bench/model_speed.py, channels_last: EvoPose2D-S
# trains 1.7x faster with it, the ancestor and XS 1.1x), but costs more than it saves at 128x96 and below
# (1.2x to 1.5x slower for those three networks; BENCHMARKS.md).
BF16_CPU_MIN_PIXELS = 256 * 192


def cpu_has_native_bf16() -> bool:
    """Whether the CPU computes in bfloat16 natively (AMX or AVX-512 BF16); without it bf16 is emulated, slowly."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next(line for line in cpuinfo if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def default_precision(accelerator: str, input_size: Sequence[int]) -> str:
    """The fastest Lightning precision for the accelerator: bf16 mixed on GPUs that have it (the
    paper's precision; fp16 mixed on older GPUs), bf16 on TPUs, and on the CPU bf16 mixed where it
    is native and the input large enough to gain from it, else fp32."""
    accelerator = str(accelerator).lower()
    if accelerator == "tpu":
        return "bf16-true"
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    pixels = int(input_size[0]) * int(input_size[1])
    if accelerator in ("auto", "cpu") and cpu_has_native_bf16() and pixels >= BF16_CPU_MIN_PIXELS:
        return "bf16-mixed"
    return "32-true"


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


class PoseModule(pl.LightningModule):
    """Train and evaluate a heatmap pose network.

    ``lr`` is the base rate for a global batch of 32; with ``scale_lr`` it becomes
    ``lr * global_batch / 32`` (global batch = ``batch_size`` x devices x accumulation), reached
    by a linear warm-up from ``lr`` over ``warmup_epochs``, then a cosine decay to 0 per step.
    ``l2`` is the reference's ``l2 * sum(w^2)`` added to the loss, applied as Adam's
    ``weight_decay = 2 * l2`` (the gradient of ``l2 * w^2`` is ``2 * l2 * w``).

    ``channels_last`` keeps the network's weights and activations in NHWC memory, which the
    convolutions run faster in (``bench/model_speed.py``).

    Checkpoints carry what inference needs without the configs: the network's description
    (``checkpoint["net"]``), the input size and the keypoint set (names, flip pairs, skeleton).
    """

    def __init__(
        self,
        net: nn.Module,
        input_size: Sequence[int],
        batch_size: int,
        flip_index: Sequence[int],
        lr: float = 2.5e-4,
        scale_lr: bool = True,
        warmup_epochs: float = 5.0,
        l2: float = 1e-5,
        sigma: float | None = None,
        flip_test: bool = True,
        score_threshold: float = 0.2,
        results_dir: str | os.PathLike | None = None,
        keypoint_names: Sequence[str] | None = None,
        skeleton: Sequence[Sequence[int]] | None = None,
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["net"])
        if keypoint_names is not None:
            self.hparams.keypoint_names = [str(n) for n in keypoint_names]
        if skeleton is not None:
            self.hparams.skeleton = [[int(a), int(b)] for a, b in skeleton]
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.net = net.to(memory_format=self.memory_format)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.flip_index = [int(i) for i in flip_index]
        self.register_buffer("mean", 255 * torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", 255 * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.best_val_loss = math.inf
        self._val_losses: list[torch.Tensor] = []
        self._results: list[dict] = []
        self.test_metrics: dict[str, float] = {}
        self.size: dict[str, int] = {}  # parameters and FLOPs, measured when fitting starts

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 RGB -> ImageNet-normalised float, on the device."""
        return ((images.float() - self.mean) / self.std).contiguous(memory_format=self.memory_format)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalise(images))

    def _loss(self, batch: dict) -> torch.Tensor:
        heatmaps = self(batch["image"])
        target, visible = render_heatmaps(batch["keypoints"], self.input_size, heatmaps.shape[-2:], self.hparams.sigma)
        return masked_mse(heatmaps, target, visible)

    def on_fit_start(self) -> None:
        params = count_parameters(self.net)
        flops = count_flops(self.net, self.input_size)
        self.size = {"params": params.with_bn_stats, "params_trainable": params.trainable, "flops": flops}
        rank_zero_info(
            f"{type(self.net).__name__}: {params.with_bn_stats / 1e6:.2f}M parameters (with BN statistics; "
            f"{params.trainable / 1e6:.2f}M trainable), {flops / 1e9:.2f}G FLOPs at {self.input_size}"
        )
        for logger in self.loggers:
            logger.log_metrics({f"model/{key}": value for key, value in self.size.items()}, step=0)

    def on_train_epoch_start(self) -> None:
        dataset = getattr(self.trainer.train_dataloader, "dataset", None)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(self.current_epoch)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss is {loss.item()} at epoch {self.current_epoch}, step {batch_idx}")
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(batch["image"]))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        loss = self._loss(batch)
        self.log("val/loss", loss, prog_bar=True, on_epoch=True, batch_size=len(batch["image"]), sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        loss = self.trainer.callback_metrics.get("val/loss")
        if loss is not None:
            self.best_val_loss = min(self.best_val_loss, float(loss))
            self.log("val/loss_best", self.best_val_loss, sync_dist=False)

    def keypoints(self, images: torch.Tensor, affine: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keypoints in image pixels (N, K, 2) and their scores (N, K) for uint8 crops and their
        image -> crop affines: the flip test when on, decoding, then the inverse crop."""
        heatmaps = self(images).float()
        if self.hparams.flip_test:
            heatmaps = merge_flipped(heatmaps, self(images.flip(-1)).float(), self.flip_index)
        coords, scores = decode_heatmaps(heatmaps, self.input_size)
        return to_image(coords, affine.float()), scores

    def test_step(self, batch: dict, batch_idx: int) -> None:
        coords, scores = self.keypoints(batch["image"], batch["affine"])
        kp_scores = scores.cpu().numpy()
        box_scores = batch["score"].float().cpu().numpy()
        instance = rescore(box_scores, kp_scores, self.hparams.score_threshold)
        ids = batch["image_id"].tolist() if torch.is_tensor(batch["image_id"]) else list(batch["image_id"])
        self._results.extend(results_records(ids, coords.cpu().numpy(), kp_scores, instance))

    def on_test_epoch_start(self) -> None:
        self._results = []

    def on_test_epoch_end(self) -> None:
        results = self._results
        if self.trainer.world_size > 1:
            gathered = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(gathered, results)
            results = [r for part in gathered for r in part]
        dataset = self.trainer.test_dataloaders.dataset
        out = Path(self.hparams.results_dir or self.trainer.default_root_dir) / "keypoints_results.json"
        self.test_metrics = evaluate_coco(
            dataset.annotation_file, results, out if self.trainer.is_global_zero else None
        )
        for name in STAT_NAMES:
            self.log(f"test/{name}", self.test_metrics[name], rank_zero_only=True)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        try:
            checkpoint["net"] = describe(self.net)
        except TypeError:  # a network of the user's own: checkpoints hold its weights only
            pass

    def configure_optimizers(self):
        hp = self.hparams
        accumulate = self.trainer.accumulate_grad_batches
        global_batch = hp.batch_size * self.trainer.world_size * accumulate
        peak = hp.lr * global_batch / 32 if hp.scale_lr else hp.lr
        decayed, other = l2_parameters(self.net)
        # The fused kernel (CPU and CUDA) steps all tensors at once: about 4x faster than one by one on the CPU.
        fused = all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in self.net.parameters())
        optimiser = torch.optim.Adam(
            [{"params": decayed, "weight_decay": 2 * hp.l2}, {"params": other, "weight_decay": 0.0}],
            lr=peak,
            fused=fused or None,
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        epochs = max(1, self.trainer.max_epochs or 1)
        warmup = int(round(hp.warmup_epochs * total / epochs))
        factor = 32 / global_batch if hp.scale_lr else 1.0  # the warm-up starts at the base rate
        schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: warmup_cosine(step, total, warmup, factor))
        rank_zero_info(
            f"Adam: peak rate {peak:.3g} (global batch {global_batch}), warm-up {warmup} of {total} steps, cosine to 0"
        )
        return {"optimizer": optimiser, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
