"""What the entry scripts share (train.py, evolve.py, the benchmarks): turning a composed config into a
training session (data, network, LightningModule, callbacks, loggers, trainer), and naming bad input.

Hydra's edge, beside the entry scripts: the library (``evopose_pl``) never imports it.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import cv2
import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from callbacks import ArchitectureMonitor, ExponentialMovingAverage
from evopose_pl.allocator import retain_freed_memory
from evopose_pl.architecture_search import (
    ArchitectureSplit,
    DartsModule,
    architecture_parameters,
    randomise_architecture,
)
from evopose_pl.checkpoint import CheckpointError
from evopose_pl.data import AnnotationError, ImageFileError
from evopose_pl.files import FileFormatError
from evopose_pl.module import PoseModule, default_precision
from evopose_pl.report import wandb_key_configured
from evopose_pl.single_stage import module_class

log = logging.getLogger(__name__)


T = TypeVar("T")


class ConfigError(ValueError):
    """A setting that cannot work; the message names the override at fault."""


# Errors that name the file or setting at fault: printed as one line rather than a traceback.
BAD_INPUT = (
    ConfigError,
    CheckpointError,
    AnnotationError,
    ImageFileError,
    FileFormatError,
    FileNotFoundError,
    PermissionError,
)


def build_loggers(cfg: DictConfig | None) -> list[Logger]:
    """Instantiate the logger group; W&B goes offline when no API key is configured."""
    loggers = []
    for conf in (cfg or {}).values():
        if conf is None or "_target_" not in conf:
            continue
        if conf._target_.endswith("WandbLogger") and conf.get("offline") is None:
            with open_dict(conf):
                conf.offline = not wandb_key_configured()
            if conf.offline:
                os.environ.setdefault("WANDB_MODE", "offline")
        loggers.append(instantiate(conf))
    return loggers


@dataclass
class Session:
    """Everything a fit needs, instantiated from the config (``datamodule``: an ``ArchitectureSplit`` of the
    data for ``search=darts``)."""

    datamodule: pl.LightningDataModule
    module: PoseModule
    trainer: pl.Trainer
    callbacks: list[pl.Callback]
    loggers: list[Logger]

    @property
    def best_checkpoint(self) -> str | None:
        checkpoint = next((c for c in self.callbacks if isinstance(c, ModelCheckpoint)), None)
        return checkpoint.best_model_path if checkpoint and checkpoint.best_model_path else None

    def test(self, ckpt_path: str | None, verbose: bool = True) -> dict[str, float]:
        """Test ``ckpt_path`` (the module's own weights when None) with the data's metric; its figures by name
        (printed by Lightning when ``verbose``)."""
        self.trainer.test(self.module, self.datamodule, ckpt_path=ckpt_path, weights_only=True, verbose=verbose)
        return self.module.test_metrics

    def measurements(self, wall_time: float) -> dict[str, Any]:
        """What a run records in its ``result.json``, train.py's runs and evolve.py's children alike: size, best
        validation loss (None when it did not train), best checkpoint, wall time and devices (their product is
        the run's device time, what a search costs), and when it tested, the test figures with the data's
        headline figure as ``accuracy`` (COCO AP, PCKh@0.5 Mean) named by ``accuracy_metric``."""
        module = self.module
        record: dict[str, Any] = {
            **(module.size or module.measure_size()),
            "val_loss": module.best_val_loss if math.isfinite(module.best_val_loss) else None,
            "checkpoint": self.best_checkpoint,
            "wall_time": wall_time,
            "devices": self.trainer.world_size,
        }
        if module.test_metrics:
            metric = module.metric
            record["test_metrics"] = dict(module.test_metrics)
            record["accuracy"] = module.test_metrics[metric.headline]
            record["accuracy_metric"] = f"{metric.title} {metric.headline}"
        return record


def retain_memory(cfg: DictConfig) -> None:
    """With ``retain_freed_memory``, keep freed host memory in the process rather than mapping large blocks
    afresh each training step (``evopose_pl.allocator``: a tenth to a sixth of a CPU training step)."""
    setting = cfg.get("retain_freed_memory", False)
    if not isinstance(setting, bool):
        raise ConfigError(f"retain_freed_memory={setting!r}: must be true or false")
    if setting and not retain_freed_memory():
        log.info("retain_freed_memory=true: this C library's malloc is not glibc's; its own policy stands")


def share_cores(cfg: DictConfig) -> None:
    """Use ``cfg.threads`` CPU threads in torch and OpenCV, and at most as many loader workers: a child
    running beside others keeps to its share of the cores rather than contending for all of them."""
    threads = cfg.get("threads")
    if threads is None:
        return
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise ValueError(f"threads={threads!r}: must be a whole number of CPU threads >= 1, or null")
    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    workers = cfg.data.get("num_workers", 0)
    if workers > threads:
        log.info(f"data.num_workers={workers} exceeds this run's {threads} CPU threads: using {threads} workers")
        with open_dict(cfg):
            cfg.data.num_workers = threads


#: The ``search`` group's methods (SPEC-PNFS section 5).
SEARCH_METHODS = ("sync", "random", "darts")


def prepare_search(
    search: DictConfig, net: nn.Module, datamodule: pl.LightningDataModule
) -> tuple[pl.LightningDataModule, type[PoseModule], dict[str, Any]]:
    """The data module, LightningModule class and its extra arguments for the ``search`` config on ``net``:
    sync changes nothing, random draws and freezes the architecture, darts splits the training set and
    alternates the steps."""
    method = search.get("method")
    if method not in SEARCH_METHODS:
        raise ConfigError(f"search.method={method}: one of {', '.join(SEARCH_METHODS)}")
    if not architecture_parameters(net):
        raise ConfigError(
            f"search={method}: {type(net).__name__} has no architecture parameters to search; "
            "use model=pnfs (without model.derived)"
        )
    if method == "random":
        randomise_architecture(net, search.seed)
    if method != "darts":
        return datamodule, PoseModule, {}
    fraction = search.architecture_fraction
    if not 0 < fraction < 1:
        raise ConfigError(f"search.architecture_fraction={fraction}: must lie strictly between 0 and 1")
    settings = {
        "architecture_lr": search.lr,
        "architecture_weight_decay": search.weight_decay,
        "architecture_betas": tuple(search.betas),
    }
    return ArchitectureSplit(datamodule, fraction, search.seed), DartsModule, settings


def build(cfg: DictConfig) -> Session:
    """Take the run's share of the cores, seed, then instantiate the codec, the data in its layout (crops or
    whole images), the network and recipe, the architecture search when ``search`` is set, the LightningModule
    composing them (the codec's layout chooses it), callbacks (with the recipe's weight average), loggers and
    trainer."""
    share_cores(cfg)
    retain_memory(cfg)
    pl.seed_everything(cfg.seed, workers=True)
    codec = instantiate(cfg.codec)
    datamodule = instantiate(cfg.data, layout=codec.layout)
    info = datamodule.keypoint_info
    net = instantiate(cfg.model, num_keypoints=info.num_keypoints)
    search = cfg.get("search")
    module_type, search_settings = module_class(codec), {}
    if search is not None:
        datamodule, module_type, search_settings = prepare_search(search, net, datamodule)
    recipe = instantiate(cfg.recipe)
    module = module_type(
        net=net,
        codec=codec,
        recipe=recipe,
        keypoints=info,
        input_size=datamodule.input_size,
        batch_size=datamodule.batch_size,
        flip_test=cfg.flip_test,
        channels_last=cfg.channels_last,
        results_dir=cfg.paths.output_dir,
        **search_settings,
    )
    if cfg.trainer.get("precision") is None:
        with open_dict(cfg):  # resolved here, so that loggers record the precision used
            cfg.trainer.precision = default_precision(cfg.trainer.get("accelerator", "auto"))
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    if recipe.ema_decay:
        callbacks.append(ExponentialMovingAverage(recipe.ema_decay, recipe.ema_ramp))
    if search is not None:
        callbacks.append(ArchitectureMonitor(cfg.paths.output_dir))
    loggers = build_loggers(cfg.get("logger"))
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    return Session(datamodule, module, trainer, callbacks, loggers)


def bad_input(error: BaseException) -> BaseException | None:
    """The bad-input error behind ``error``, if any (Hydra's ``instantiate`` wraps what a constructor raises)."""
    while error is not None and not isinstance(error, BAD_INPUT):
        error = error.__cause__
    return error


def report_bad_input(run: Callable[[], T]) -> T:
    """``run()``, ending the script with one line (no traceback) when an error names the file or setting at
    fault; any other error propagates."""
    try:
        return run()
    except Exception as error:
        cause = bad_input(error)
        if cause is None:
            raise
        raise SystemExit(f"error: {cause}") from None
