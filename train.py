"""Train one pose network, then test its best checkpoint with the COCO protocol.

    python train.py                                   # synthetic data, CPU, minutes
    python train.py model=evopose2d_s data=coco data.root=/data/coco trainer=gpu
    python train.py train=false ckpt_path=best.ckpt   # test a checkpoint

The Hydra edge: compose the config, instantiate data, network, module, callbacks, loggers and
trainer, fit, test, and return the metric a sweeper reads.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("EVOPOSE_ROOT", str(Path(__file__).resolve().parent))

import cv2  # noqa: E402
import hydra  # noqa: E402
import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402
from lightning.pytorch.loggers import Logger, WandbLogger  # noqa: E402
from omegaconf import DictConfig, OmegaConf, open_dict  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from evopose_pl.checkpoint import CheckpointError, load_checkpoint  # noqa: E402
from evopose_pl.data import AnnotationError, ImageFileError  # noqa: E402
from evopose_pl.evaluation import STAT_NAMES  # noqa: E402
from evopose_pl.files import FileFormatError  # noqa: E402
from evopose_pl.module import PoseModule, default_precision  # noqa: E402
from evopose_pl.report import wandb_key_configured  # noqa: E402

log = logging.getLogger(__name__)

# Errors that name the file or setting at fault: printed as one line rather than a traceback.
BAD_INPUT = (CheckpointError, AnnotationError, ImageFileError, FileFormatError, FileNotFoundError, PermissionError)


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


def print_metrics(metrics: dict[str, float], title: str) -> None:
    table = Table(title=title)
    for name in STAT_NAMES:
        table.add_column(name, justify="right")
    table.add_row(*(f"{metrics[n]:.3f}" if metrics[n] >= 0 else "n/a" for n in STAT_NAMES))  # -1: no such people
    Console().print(table)


@dataclass
class Session:
    """Everything a fit needs, instantiated from the config."""

    datamodule: pl.LightningDataModule
    module: PoseModule
    trainer: pl.Trainer
    callbacks: list[pl.Callback]
    loggers: list[Logger]

    @property
    def best_checkpoint(self) -> str | None:
        checkpoint = next((c for c in self.callbacks if isinstance(c, ModelCheckpoint)), None)
        return checkpoint.best_model_path if checkpoint and checkpoint.best_model_path else None


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


def build(cfg: DictConfig) -> Session:
    """Take the run's share of the cores, seed, then instantiate data, network, LightningModule,
    callbacks, loggers and trainer."""
    share_cores(cfg)
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    info = datamodule.keypoint_info
    net = instantiate(cfg.model, num_keypoints=info.num_keypoints)
    module = PoseModule(
        net=net,
        input_size=datamodule.input_size,
        batch_size=datamodule.batch_size,
        flip_index=info.flip_index,
        keypoint_names=info.names,
        skeleton=info.skeleton,
        results_dir=cfg.paths.output_dir,
        **OmegaConf.to_container(cfg.module),
    )
    if cfg.trainer.get("precision") is None:
        with open_dict(cfg):  # resolved here, so that loggers record the precision used
            cfg.trainer.precision = default_precision(cfg.trainer.get("accelerator", "auto"), datamodule.input_size)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    loggers = build_loggers(cfg.get("logger"))
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    return Session(datamodule, module, trainer, callbacks, loggers)


def run(cfg: DictConfig) -> dict[str, float]:
    """Fit and/or test as the config says; return the test metrics and the best validation loss."""
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path is not None:  # refused before anything is built if it would run code (Lightning reads it later)
        load_checkpoint(ckpt_path, "ckpt_path=")
    session = build(cfg)
    module, trainer = session.module, session.trainer
    metrics: dict[str, float] = {}
    if cfg.train:
        trainer.fit(module, session.datamodule, ckpt_path=ckpt_path, weights_only=True)
        metrics["val/loss_best"] = module.best_val_loss
        ckpt_path = session.best_checkpoint
    if cfg.test:
        if not cfg.train and not ckpt_path:
            raise ValueError("train=false needs ckpt_path=<checkpoint to test>")
        trainer.test(module, session.datamodule, ckpt_path=ckpt_path, weights_only=True)
        metrics.update({f"test/{k}": v for k, v in module.test_metrics.items()})
        print_metrics(module.test_metrics, "COCO keypoints")
        print(f"Tested: {ckpt_path or 'the final weights'}")
        print(f"COCO AP: {module.test_metrics['AP']:.4f}")
    for logger in session.loggers:
        if isinstance(logger, WandbLogger) and logger._offline:
            print(f"W&B ran offline; upload with: wandb sync {logger.experiment.dir.rsplit('/files', 1)[0]}")
    return metrics


def bad_input(error: BaseException) -> BaseException | None:
    """The bad-input error behind ``error``, if any (Hydra's ``instantiate`` wraps what a constructor raises)."""
    while error is not None and not isinstance(error, BAD_INPUT):
        error = error.__cause__
    return error


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        metrics = run(cfg)
    except Exception as error:
        cause = bad_input(error)
        if cause is None:
            raise
        raise SystemExit(f"error: {cause}") from None  # a file or setting at fault: one line, no traceback
    return metrics.get("test/AP", metrics.get("val/loss_best"))


if __name__ == "__main__":
    main()
