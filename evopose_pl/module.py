"""The LightningModule: composes a pose system's parts (network, codec, recipe) and the test metric
the data module chooses, and keeps only what every system shares: normalisation, memory format,
logging, the validation and test loops, and checkpoints that describe themselves."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from evopose_pl.codecs import Codec, HeatmapCodec, codec_from_description
from evopose_pl.data.coco import KeypointInfo
from evopose_pl.data.heatmaps import to_image
from evopose_pl.metrics import CocoKeypointAP, Metric
from evopose_pl.nets import count_flops, count_parameters, deployed, describe
from evopose_pl.recipes import Recipe

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def cpu_has_native_bf16() -> bool:
    """Whether the CPU computes in bfloat16 natively (AMX or AVX-512 BF16); without it bf16 is emulated, slowly."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next(line for line in cpuinfo if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def default_precision(accelerator: str) -> str:
    """The fastest Lightning precision for the accelerator: bf16 mixed on GPUs that have it (the
    paper's precision; fp16 mixed on older GPUs), bf16 on TPUs, and on the CPU bf16 mixed where it
    is native, else fp32. On the CPU, bf16 pays off at every input size since depthwise convolutions
    take each gradient on oneDNN's fastest path (``nets.evopose.DepthwiseConv2d``): EvoPose2D-S trains
    1.2x faster than in fp32 at 64x48 and 2.0x at 256x192 (channels_last both; BENCHMARKS.md)."""
    accelerator = str(accelerator).lower()
    if accelerator == "tpu":
        return "bf16-true"
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    if accelerator in ("auto", "cpu") and cpu_has_native_bf16():
        return "bf16-mixed"
    return "32-true"


class PoseModule(pl.LightningModule):
    """Train and evaluate a pose network through its codec and recipe.

    ``input_size`` (height, width) is the size of the images the network is fed; ``batch_size`` the
    per-device batch (recipes scale their rates by the global batch). ``channels_last`` keeps the
    network's weights and activations in NHWC memory, which convolutions run faster in
    (``bench/model_speed.py``). ``recipe`` may be None for a module that only predicts.

    The test loop decodes (with the flip test when ``flip_test``), maps keypoints back to the image
    and feeds the metric of the data module (``test_metric()``; COCO AP when it has none).
    Checkpoints carry what inference needs without the configs: the network's description
    (``checkpoint["net"]``), the codec (``"codec"``), the keypoint set (``"keypoints"``: names and
    skeleton; flip pairs follow from the names) and the input size (``hyper_parameters``).
    """

    def __init__(
        self,
        net: nn.Module,
        codec: Codec,
        recipe: Recipe | None,
        keypoints: KeypointInfo,
        input_size: Sequence[int],
        batch_size: int = 32,
        flip_test: bool = True,
        channels_last: bool = True,
        results_dir: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["net", "codec", "recipe", "keypoints"])
        self.hparams.input_size = [int(s) for s in input_size]
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.net = net.to(memory_format=self.memory_format)
        self.codec, self.recipe, self.keypoint_info = codec, recipe, keypoints
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.flip_index = list(keypoints.flip_index)
        self.register_buffer("mean", 255 * torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", 255 * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.best_val_loss = math.inf
        self.metric: Metric | None = None
        self._records: list[dict] = []
        self.test_metrics: dict[str, float] = {}
        self.size: dict[str, int] = {}  # parameters and FLOPs, measured when fitting starts

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 RGB -> ImageNet-normalised float, on the device."""
        return ((images.float() - self.mean) / self.std).contiguous(memory_format=self.memory_format)

    def forward(self, images: torch.Tensor) -> Any:
        return self.net(self.normalise(images))

    def _losses(self, batch: dict, stage: str) -> torch.Tensor:
        """The codec's losses for a batch, logged as ``<stage>/loss`` and, for several outputs, by output name."""
        losses = self.codec.loss(self(batch["image"]), batch[self.codec.target_key], self.input_size)
        loss = losses.pop("loss")
        if stage == "train" and not torch.isfinite(loss):
            raise FloatingPointError(f"training loss is {loss.item()} at epoch {self.current_epoch}")
        on_step, batch_size = stage == "train", len(batch["image"])
        sync = stage != "train"
        self.log(f"{stage}/loss", loss, prog_bar=True, on_step=on_step, on_epoch=True, batch_size=batch_size,
                 sync_dist=sync)  # fmt: skip
        if len(losses) > 1:
            for name, value in losses.items():
                self.log(f"{stage}/loss_{name}", value, on_step=False, on_epoch=True, batch_size=batch_size,
                         sync_dist=sync)  # fmt: skip
        return loss

    def measure_size(self) -> dict[str, int]:
        """Parameters (with BN statistics, and trainable) and FLOPs at the input size, kept in ``size``."""
        params = count_parameters(self.net)
        self.size = {
            "params": params.with_bn_stats,
            "params_trainable": params.trainable,
            "flops": count_flops(self.net, self.input_size),
        }
        return self.size

    def on_fit_start(self) -> None:
        size = self.measure_size()
        rank_zero_info(
            f"{type(self.net).__name__}: {size['params'] / 1e6:.2f}M parameters (with BN statistics; "
            f"{size['params_trainable'] / 1e6:.2f}M trainable), {size['flops'] / 1e9:.2f}G FLOPs at {self.input_size}"
        )
        for logger in self.loggers:
            logger.log_metrics({f"model/{key}": value for key, value in size.items()}, step=0)

    def batches_done(self) -> int:
        """Training batches done so far: one optimiser step each here."""
        return self.global_step

    def training_datasets(self) -> list[Any]:
        """The datasets the training batches come from (told the epoch, for their augmentation draws)."""
        return [getattr(self.trainer.train_dataloader, "dataset", None)]

    def on_train_epoch_start(self) -> None:
        self.codec.set_progress(self.batches_done() / max(1, self.trainer.estimated_stepping_batches))
        for dataset in self.training_datasets():
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(self.current_epoch)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self._losses(batch, "train")

    def on_validation_epoch_start(self) -> None:
        self.codec.set_progress(1.0)  # the final targets: validation losses compare across epochs

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._losses(batch, "val")

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        loss = self.trainer.callback_metrics.get("val/loss")
        if loss is not None:
            self.best_val_loss = min(self.best_val_loss, float(loss))
            self.log("val/loss_best", self.best_val_loss, sync_dist=False)

    def keypoints(self, images: torch.Tensor, affine: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keypoints in image pixels (N, K, 2) and their scores (N, K) for uint8 crops and their
        image -> crop affines: the flip test when on, decoding, then the inverse crop (the network as
        deployed: no training-only outputs)."""
        with deployed(self.net):
            outputs = self(images)
            if self.hparams.flip_test:
                outputs = self.codec.merge_flip(outputs, self(images.flip(-1)), self.flip_index)
        coords, scores = self.codec.decode(outputs, self.input_size)
        return to_image(coords.float(), affine.float()), scores.float()

    def on_test_epoch_start(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if hasattr(datamodule, "test_metric"):
            self.metric = datamodule.test_metric()
        else:  # test dataloaders without a data module: COCO-format data
            self.metric = CocoKeypointAP(self.trainer.test_dataloaders.dataset)
        self._records = []

    def test_step(self, batch: dict, batch_idx: int) -> None:
        coords, scores = self.keypoints(batch["image"], batch["affine"])
        people = self.codec.person_scores(batch["score"].to(scores.device), scores)
        self._records.extend(
            self.metric.records(batch, coords.cpu().numpy(), scores.cpu().numpy(), people.cpu().numpy())
        )

    def on_test_epoch_end(self) -> None:
        records = self._records
        if self.trainer.world_size > 1:
            gathered = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(gathered, records)
            records = [r for part in gathered for r in part]
        out = Path(self.hparams.results_dir or self.trainer.default_root_dir)
        self.test_metrics = self.metric.compute(records, out if self.trainer.is_global_zero else None)
        for name, value in self.test_metrics.items():
            self.log(f"test/{name}", value, rank_zero_only=True)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["codec"] = self.codec.describe()
        checkpoint["keypoints"] = {
            "names": list(self.keypoint_info.names),
            "skeleton": [list(pair) for pair in self.keypoint_info.skeleton],
        }
        if self.recipe is not None:
            checkpoint["recipe"] = self.recipe.describe()
        try:
            checkpoint["net"] = describe(self.net)
        except TypeError:  # a network of the user's own: checkpoints hold its weights only
            pass

    def configure_optimizers(self) -> Any:
        if self.recipe is None:
            raise ValueError("this PoseModule has no recipe (it was rebuilt for inference): it cannot be trained")
        return self.recipe.configure(self.net, self.trainer, self.hparams.batch_size)


def keypoint_set(checkpoint: Mapping[str, Any]) -> KeypointInfo:
    """The keypoint set a checkpoint describes (older checkpoints kept it among the hyperparameters)."""
    entry = checkpoint.get("keypoints")
    if entry is None:
        hparams = checkpoint.get("hyper_parameters", {})
        entry = {"names": hparams.get("keypoint_names"), "skeleton": hparams.get("skeleton") or ()}
    if not entry.get("names"):
        raise ValueError("the checkpoint does not name its keypoints")
    return KeypointInfo(
        tuple(str(n) for n in entry["names"]), tuple(tuple(int(i) for i in p) for p in entry["skeleton"])
    )


def checkpoint_codec(checkpoint: Mapping[str, Any]) -> Codec:
    """The codec a checkpoint describes (older checkpoints: the heatmap codec with their ``sigma``)."""
    if "codec" in checkpoint:
        return codec_from_description(checkpoint["codec"])
    return HeatmapCodec(checkpoint.get("hyper_parameters", {}).get("sigma"))
