"""Run an EvoPose2D neuroevolution: a (mu + lambda) search over pose networks (SPEC section 6).

    python evolve.py                                          # synthetic data, CPU, minutes
    python evolve.py population=64 parents=4 gamma=-0.07 experiment=e3 data=coco data.root=/data/coco
    python evolve.py search_name=my-search                    # the same command again resumes it

Hydra multirun is the default mode: the ``evolution`` sweeper (``hydra_plugins/``) plans each
generation and launches its children through the configured launcher; every job runs
``main`` below, which trains one individual and returns what it measured. The sweeper computes
each child's fitness from that record, with the search's settings.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
os.environ.setdefault("EVOPOSE_ROOT", str(ROOT))
# Children launched in fresh interpreters (submitit) import `train` from here.
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)

import hydra  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.loggers import WandbLogger  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from callbacks import StageTimer, WeightTransfer  # noqa: E402
from evopose_pl.evolution import RESULT_FILE  # noqa: E402
from evopose_pl.files import write_json_atomic  # noqa: E402
from evopose_pl.latency import Latency, LatencyCache, LatencySettings  # noqa: E402
from session import Session, build  # noqa: E402

CHILD_DIR_ENV = "EVOPOSE_CHILD_DIR"
log = logging.getLogger(__name__)


def ddp_rank_argv(argv: list[str]) -> list[str]:
    """The command line of another rank of a multi-device child (``trainer=ddp``).

    Lightning starts ranks 1..N-1 by re-running this script with the driver's command line,
    which would start a second search. Such a process (``LOCAL_RANK`` > 0, with the child's
    directory inherited from rank 0) instead runs the child's own composed config, in run mode.
    """
    child_dir = os.environ.get(CHILD_DIR_ENV)
    if not child_dir or int(os.environ.get("LOCAL_RANK", "0")) == 0:
        return argv
    return [
        argv[0],
        f"--config-path={Path(child_dir) / '.hydra'}",
        "--config-name=config",
        f"hydra.run.dir={child_dir}",
        "hydra.output_subdir=null",
        f"hydra.job.name=rank_{os.environ['LOCAL_RANK']}",
    ]


def train_individual(cfg: DictConfig) -> dict:
    """Train the individual the overrides name, measure it, and return (and save) what it measured.

    Raises when training fails or the loss is not finite: the sweeper records the failure.
    """
    if cfg.individual.genotype is None:
        raise ValueError(
            "evolve.py trains the individuals of a search: run it in multirun mode (the default, hydra.mode=MULTIRUN)"
        )
    clock = {"started": time.time()}  # wall-clock times, comparable with the driver's
    os.environ[CHILD_DIR_ENV] = str(cfg.paths.output_dir)  # for the other ranks of a multi-device child
    session = build(cfg)
    environment = os.environ.copy()
    try:
        clock["fit_started"] = time.time()
        session.trainer.fit(session.module, session.datamodule)
        clock["fit_ended"] = time.time()
        if cfg.test:  # the data's metric on the best weights: an accuracy per individual (report compare)
            session.test(session.best_checkpoint, verbose=False)  # the sweeper logs the figure
            clock["test_ended"] = time.time()
        latency = _latency(cfg, session)
        clock["latency_ended"] = time.time()
        return _measure(cfg, session, clock, latency)
    finally:
        # A multi-device fit leaves its process group and rank variables behind; the next child in
        # this process (the basic launcher) must start its own, and its own W&B run.
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        os.environ.clear()
        os.environ.update(environment)
        if session.trainer.is_global_zero:
            for logger in session.loggers:
                if isinstance(logger, WandbLogger):
                    logger.experiment.finish(exit_code=0 if sys.exc_info()[0] is None else 1)


def needs_latency(cfg: DictConfig) -> bool:
    """Whether the child measures its latency: ``latency.measure``, or when null, whether the search's fitness
    or objectives use it."""
    measure = cfg.latency.measure
    return cfg.fitness == "latency" or "latency" in cfg.objectives if measure is None else bool(measure)


def _latency(cfg: DictConfig, session: Session) -> Latency | None:
    """The trained network's latency (``latency.*``), from the cache when this architecture was measured on this
    machine before; rank 0 measures, on the device the settings name."""
    if not needs_latency(cfg) or not session.trainer.is_global_zero:
        return None
    knobs = {k: v for k, v in cfg.latency.items() if k not in ("measure", "cache_dir")}
    latency, cached = LatencyCache(cfg.latency.cache_dir).measure(session.module, LatencySettings(**knobs))
    log.info(f"latency {latency.ms:.3g} ms, {latency.throughput:.4g} images/s ({latency.device}{', cached' * cached})")
    return latency


def _measure(cfg: DictConfig, session: Session, clock: dict[str, float], latency: Latency | None) -> dict:
    """The child's record of what it measured (``Session.measurements``: size, best validation loss, checkpoint,
    wall time, devices, and the test figures when ``test=true``) with its latency when measured, weight
    transfer and timing; logged, and saved by rank 0. The fitness is the driver's, computed from this record."""
    val_loss = session.module.best_val_loss
    if not math.isfinite(val_loss):
        raise FloatingPointError(f"best validation loss is {val_loss}")
    transfer = next((c.report for c in session.callbacks if isinstance(c, WeightTransfer)), None)
    stages = next((c for c in session.callbacks if isinstance(c, StageTimer)), None)
    if stages is not None:
        clock.update(train=stages.train_seconds, val=stages.val_seconds)
    clock["ended"] = time.time()
    record = {
        "id": cfg.individual.id,
        "genotype": cfg.individual.genotype,
        **session.measurements(clock["ended"] - clock["started"]),
        "transfer": transfer.summary() if transfer is not None else None,
        "timing": clock,
    }
    if latency is not None:
        record.update(latency=latency.ms, throughput=latency.throughput, latency_device=latency.device)
    if session.trainer.is_global_zero:
        measured = {"val/loss_best": val_loss}
        if latency is not None:
            measured.update({"latency/ms": latency.ms, "latency/throughput": latency.throughput})
        for logger in session.loggers:
            logger.log_hyperparams({"individual": {k: record[k] for k in ("params", "params_trainable", "flops")}})
            logger.log_metrics(measured, step=session.trainer.global_step)
        write_json_atomic(Path(cfg.paths.output_dir) / RESULT_FILE, record)
    return record


@hydra.main(version_base="1.3", config_path="conf", config_name="evolve")
def main(cfg: DictConfig) -> dict:
    return train_individual(cfg)


if __name__ == "__main__":
    sys.argv = ddp_rank_argv(sys.argv)
    main()
