"""Train one pose network, then test its best checkpoint with the COCO protocol.

    python train.py                                   # synthetic data, CPU, minutes
    python train.py model=evopose2d_s data=coco data.root=/data/coco trainer=gpu
    python train.py train=false ckpt_path=best.ckpt   # test a checkpoint

The Hydra edge: compose the config, instantiate data, network, module, callbacks, loggers and
trainer, fit, test, and return the metric a sweeper reads.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("EVOPOSE_ROOT", str(Path(__file__).resolve().parent))

import hydra  # noqa: E402
from lightning.pytorch.loggers import WandbLogger  # noqa: E402
from omegaconf import DictConfig  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from evopose_pl.checkpoint import load_checkpoint  # noqa: E402
from evopose_pl.evaluation import STAT_NAMES  # noqa: E402
from session import bad_input, build  # noqa: E402


def print_metrics(metrics: dict[str, float], title: str) -> None:
    table = Table(title=title)
    for name in STAT_NAMES:
        table.add_column(name, justify="right")
    table.add_row(*(f"{metrics[n]:.3f}" if metrics[n] >= 0 else "n/a" for n in STAT_NAMES))  # -1: no such people
    Console().print(table)


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
