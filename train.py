"""Train one pose network, then test its best checkpoint with the data's metric (COCO AP, MPII PCKh).

    python train.py                                   # synthetic data, CPU, minutes
    python train.py model=evopose2d_s data=coco data.root=/data/coco trainer=gpu
    python train.py train=false ckpt_path=best.ckpt   # test a checkpoint
    python train.py train=false experiment=efficientpose_rt model.pretrained=EfficientPoseRT.h5 data.root=/data/mpii

The Hydra edge: compose the config, instantiate data, network, module, callbacks, loggers and
trainer, fit, test, and return the configured objective (``objective.metric``, ``objective.direction``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

os.environ.setdefault("EVOPOSE_ROOT", str(Path(__file__).resolve().parent))

import hydra  # noqa: E402
from lightning.pytorch.loggers import WandbLogger  # noqa: E402
from omegaconf import DictConfig  # noqa: E402
from rich.console import Console  # noqa: E402

from evopose_pl.checkpoint import load_checkpoint  # noqa: E402
from evopose_pl.evolution import RESULT_FILE  # noqa: E402
from evopose_pl.files import write_json_atomic  # noqa: E402
from session import ConfigError, build, report_bad_input  # noqa: E402

DIRECTIONS = ("minimize", "maximize")


def check_objective(cfg: DictConfig) -> tuple[str, str]:
    """The configured objective (metric, direction), refused before any training when it cannot be measured."""
    metric, direction = str(cfg.objective.metric), str(cfg.objective.direction)
    if direction not in DIRECTIONS:
        raise ConfigError(f"objective.direction={direction}: must be one of {', '.join(DIRECTIONS)}")
    stage = metric.split("/", 1)[0]
    if stage not in ("val", "test") or (stage == "test" and not cfg.test):
        raise ConfigError(
            f"objective.metric={metric}: this run (test={cfg.test}) does not measure it; "
            "val/loss_best is measured by training, test/<figure> (test/AP, test/Mean) by test=true"
        )
    return metric, direction


def run(cfg: DictConfig) -> dict[str, float]:
    """Fit and/or test as the config says; write the run's record (``result.json``, read by ``report compare``);
    return the best validation loss and the test figures."""
    started = time.time()
    check_objective(cfg)
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
        if not cfg.train and not ckpt_path and not cfg.model.get("pretrained"):
            raise ConfigError("train=false needs ckpt_path=<checkpoint to test> or model.pretrained=<weights>")
        session.test(ckpt_path)
        metrics.update({f"test/{k}": v for k, v in module.test_metrics.items()})
        metric = module.metric
        Console().print(metric.table(module.test_metrics))
        tested = ckpt_path or ("the final weights" if cfg.train else f"model.pretrained={cfg.model.pretrained}")
        print(f"Tested: {tested}")
        print(f"{metric.title} {metric.headline}: {module.test_metrics[metric.headline]:.4f}")
    if trainer.is_global_zero:
        search = cfg.get("search")
        record = {
            "network": type(module.net).__name__,
            "search": search.method if search is not None else None,
            "derived": cfg.model.get("derived") is not None,
            "input_size": list(module.input_size),
            "epochs": trainer.current_epoch,
            **session.measurements(time.time() - started),
        }
        write_json_atomic(Path(cfg.paths.output_dir) / RESULT_FILE, record)
    for logger in session.loggers:
        if isinstance(logger, WandbLogger) and logger._offline:
            print(f"W&B ran offline; upload with: wandb sync {logger.experiment.dir.rsplit('/files', 1)[0]}")
    return metrics


def objective(cfg: DictConfig, metrics: dict[str, float]) -> float | None:
    """The configured objective's value, printed with its direction (None for a test-only run
    whose objective is a training figure: there is nothing to optimise)."""
    metric, direction = check_objective(cfg)
    if metric not in metrics:
        if metric.startswith("val/") and not cfg.train:
            return None
        raise ConfigError(f"objective.metric={metric}: not measured; this run measured {', '.join(sorted(metrics))}")
    print(f"Objective: {metric} = {metrics[metric]:.4f} ({direction})")
    return metrics[metric]


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return report_bad_input(lambda: objective(cfg, run(cfg)))


if __name__ == "__main__":
    main()
