"""The (mu + lambda) sweeper: ``evopose_pl.evolution`` decides, any Hydra launcher trains.

Per generation: plan the children (mutations of the parents), launch them in batches of
``max_batch_size`` with ``launcher.launch(batch, initial_job_idx=...)``, record each child's
return (or its failure) in ``state.json``, select the next parents, write the table and plots,
and log the generation to the W&B search run when the config has a W&B logger.
"""

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, ListConfig, MissingMandatoryValue, OmegaConf

from evopose_pl.evolution import (
    COMPLETED,
    PENDING,
    Evolution,
    Individual,
    Job,
    SearchLock,
    SearchLocked,
    SearchStopped,
    Settings,
    SettingsError,
    StateError,
)
from evopose_pl.report import SearchRun, write_report

log = logging.getLogger(__name__)

# The job settings a child's fitness depends on besides the search's knobs: a resume must use the
# same (``Settings.training``). This is the one place that says which parts of a child's config do;
# a group listed counts with every key in it, new keys included. Left out are settings that change
# only speed (channels_last, loader workers) or where files live, and testing (test, flip_test): a
# child tested after training (test=true) records an accuracy beside its fitness, which it leaves alone.
TRAINING_SETTINGS = (
    "data",
    "model",
    "recipe",
    "codec",
    "trainer.precision",
    "trainer.accumulate_grad_batches",
    "trainer.gradient_clip_val",
    "trainer.gradient_clip_algorithm",
    "trainer.devices",
    "trainer.num_nodes",
    "trainer.limit_train_batches",
    "trainer.limit_val_batches",
    "trainer.max_steps",
    "trainer.check_val_every_n_epoch",
    "trainer.val_check_interval",
    "callbacks.model_checkpoint.monitor",  # which weights a child keeps, and so what its children inherit
    "callbacks.model_checkpoint.mode",
    "callbacks.weight_transfer.key_map",
    "latency",  # where and how latencies are measured, when the fitness or objectives use them
)
NOT_TRAINING_SETTINGS = (
    "data.num_workers",
    "data.pin_memory",
    "data.val_batch_size",  # the validation loss is a per-sample mean whatever the batch
    "data.crop_cache",
    "data.cache_dir",
    "latency.measure",  # measuring more than the search uses changes no fitness
    "latency.cache_dir",
    "data.metric",  # testing (test=true): it changes no fitness
    "data.box_threshold",
    "codec.keypoint_threshold",
    "model.genotype",  # each child's own
)
# Overrides the search sets for each child, which the command line may not.
SET_BY_THE_SEARCH = {
    "individual.": "individual.* is set by the search for each child",
    "trainer.max_epochs": "the search sets it for each child from epochs= (and ancestor_epochs= for the ancestor)",
}


@dataclass
class EvolutionSweeperConf:
    _target_: str = "hydra_plugins.evopose2d_sweeper.evolution_sweeper.EvolutionSweeper"
    # Children per launcher.launch call; null launches a whole generation at once. The state is
    # saved after every launch, so 1 (the basic launcher's setting) records each child as it ends.
    max_batch_size: Optional[int] = None  # noqa: UP045 (OmegaConf reads typing.Optional)
    # GPUs of this machine to spread parallel children over: child k of a launch trains on GPU
    # k (trainer.devices=[k]) and a launch holds at most this many children. null: leave devices alone.
    gpus: Optional[int] = None  # noqa: UP045


ConfigStore.instance().store(group="hydra/sweeper", name="evolution", node=EvolutionSweeperConf, provider="evopose2d")


def _flatten(key: str, value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return {k: v for name, item in value.items() for k, v in _flatten(f"{key}.{name}", item).items()}
    return {key: value}


def _quote(value: Any) -> str:
    """A value as Hydra's override grammar reads it back unchanged."""
    if value is None:
        return "null"
    if isinstance(value, (bool, int, float)):
        return str(value).lower() if isinstance(value, bool) else repr(value)
    text = str(value).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{text}'"


def _job_error(ret: JobReturn) -> str:
    """The error of a failed job, as ``JobReturn.return_value`` re-raises it."""
    try:
        outcome = ret.return_value  # a failed job's re-raises its exception
    except Exception as error:
        return f"{type(error).__name__}: {error}"
    return f"the job failed without an exception, returning {outcome!r}"


class EvolutionSweeper(Sweeper):
    """Hydra's side of the search; see ``evopose_pl.evolution.Evolution`` for the logic."""

    def __init__(self, max_batch_size: int | None = None, gpus: int | None = None) -> None:
        if max_batch_size is not None and max_batch_size < 1:
            raise SettingsError(f"hydra.sweeper.max_batch_size={max_batch_size}: must be null or at least 1")
        if gpus is not None and gpus < 1:
            raise SettingsError(f"hydra.sweeper.gpus={gpus}: must be null or at least 1")
        self.max_batch_size = max_batch_size
        self.gpus = gpus
        self.job_idx = 0
        self.search_run: SearchRun | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )

    def sweep(self, arguments: list[str]) -> list[Individual]:
        """Run (or resume) the search, holding its directory's lock throughout; bad settings, a state
        that does not hold together and a directory another driver holds end the run with one line."""
        try:
            arguments = self._check_arguments(arguments)
            knobs = OmegaConf.masked_copy(self.config, [f.name for f in fields(Settings) if f.name in self.config])
            values = OmegaConf.to_container(knobs, resolve=True)
            settings = Settings.from_config(values)  # checked before the training settings are read
            training = self._training()
            if settings.measures_latency:
                self._check_latency()
            else:  # how latencies would be measured means nothing to a search that does not use them
                training = {k: v for k, v in training.items() if not k.startswith("latency.")}
            settings = replace(settings, training=training)
            sweep_dir = Path(self.config.hydra.sweep.dir)
            with SearchLock(sweep_dir):
                return self._search(arguments, settings, sweep_dir)
        except (SettingsError, StateError, SearchLocked) as e:
            raise SystemExit(f"error: {e}") from None

    def _search(self, arguments: list[str], settings: Settings, sweep_dir: Path) -> list[Individual]:
        evolution = Evolution(sweep_dir, settings)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        generation_size = settings.population if settings.strategy == "mu_plus_lambda" else settings.batch
        batch_size = min(self.max_batch_size or generation_size, self.gpus or generation_size)
        action = "Resuming" if evolution.resumed else "Starting"
        log.info(
            f"{action} the search in {sweep_dir}: strategy {settings.strategy}, selection {settings.selection},"
            f" population {settings.population}, parents {settings.parents}, gamma {settings.gamma},"
            f" fitness cost {settings.fitness}, generations"
            f" {settings.generations if settings.generations is not None else 'unlimited'},"
            f" {batch_size} children per launch"
        )
        self.search_run = search_run = self._search_run(sweep_dir)
        try:
            while (generation := evolution.resume_or_plan()) is not None:
                jobs = list(evolution.jobs(generation))
                done = len(evolution.generation_of(generation)) - len(jobs)
                log.info(f"Generation {generation}: {len(jobs)} to train" + (f", {done} done before" if done else ""))
                for start in range(0, len(jobs), batch_size):
                    self._launch(evolution, arguments, jobs[start : start + batch_size])
                summary = evolution.select(generation)
                write_report(sweep_dir, evolution.state)
                if search_run is not None:
                    search_run.log_generation(evolution.state, summary)
                self._log_summary(evolution, summary)
        except SearchStopped as e:
            write_report(sweep_dir, evolution.state)
            log.error(f"The search stopped; its state is saved in {evolution.path}. {e}")
            raise
        finally:
            if search_run is not None:
                search_run.finish()
            self.search_run = None
        write_report(sweep_dir, evolution.state)
        best = min(evolution.parents, key=lambda ind: ind.rank_key)
        front = evolution.state.history[-1].get("front", []) if evolution.state.history else []  # older: none
        log.info(
            f"Search finished after generation {evolution.state.generation}: the fittest network is individual"
            f" {best.id} {best.genotype} (fitness {best.fitness:.4g}, {best.params / 1e6:.2f}M parameters);"
            f" the front over {', '.join(settings.objectives)}: individuals {front}; table and plots in"
            f" {sweep_dir}. Raise generations= and re-run to continue it."
        )
        return evolution.state.individuals

    def _check_arguments(self, arguments: list[str]) -> list[str]:
        """The command line goes to every child unchanged; reject what a search cannot honour."""
        parsed = OverridesParser.create().parse_overrides(arguments)
        for override in parsed:
            if override.is_sweep_override():
                raise SettingsError(
                    f"{override.input_line}: sweeps over values are not part of a search; run one search per value"
                )
            key = override.get_key_element().split("@")[0].lstrip("+~")
            for prefix, reason in SET_BY_THE_SEARCH.items():
                if key.startswith(prefix):
                    raise SettingsError(f"{override.input_line}: {reason}")
        return list(arguments)

    def _check_latency(self) -> None:
        """Refuse latency settings every child would fail on, before the search starts."""
        from evopose_pl.latency import LatencySettings

        knobs = {k: v for k, v in self.config.latency.items() if k not in ("measure", "cache_dir")}
        try:
            LatencySettings(**knobs).resolved_runtime()  # a runtime not installed, or not for the device
        except TypeError as e:  # an unknown key
            known = ["measure", "cache_dir", *LatencySettings.__dataclass_fields__]
            raise SettingsError(f"latency: {e}; its keys are {known}") from None
        except ValueError as e:
            raise SettingsError(str(e)) from None

    def _training(self) -> dict[str, Any]:
        """``TRAINING_SETTINGS`` as the children will see them, flattened to ``{"data.input_size": [64, 48]}``."""
        flat: dict[str, Any] = {}
        for key in TRAINING_SETTINGS:
            try:
                value = OmegaConf.select(self.config, key, default=None, throw_on_missing=True)
                if isinstance(value, (DictConfig, ListConfig)):
                    value = OmegaConf.to_container(value, resolve=True, throw_on_missing=True)
            except MissingMandatoryValue as e:  # every child would fail on it: refuse before the search starts
                raise SettingsError(f"{e.full_key}: has no value; set it ({e.full_key}=...)") from None
            flat.update(_flatten(key, value))
        excluded = tuple(f"{key}." for key in NOT_TRAINING_SETTINGS)
        return {k: v for k, v in flat.items() if k not in NOT_TRAINING_SETTINGS and not k.startswith(excluded)}

    def _cores_share(self, children: int) -> int | None:
        """The CPU threads of each of ``children`` launched together on this machine, or None when the
        config sets ``threads`` itself (a number, or what the child resolves, as SLURM's cpus_per_task)."""
        if "threads" not in self.config or OmegaConf.is_interpolation(self.config, "threads"):
            return None  # an interpolation may need the job's Hydra config: the child resolves it
        if self.config.threads is not None:
            return None
        return max(1, len(os.sched_getaffinity(0)) // children)

    def _overrides(self, arguments: Sequence[str], job: Job, slot: int) -> list[str]:
        ind = job.individual
        overrides = [
            *arguments,
            f"individual.id={ind.id}",
            f"individual.generation={ind.generation}",
            f"individual.parent={_quote(ind.parent)}",
            f"individual.genotype={_quote(ind.genotype)}",
            f"individual.directory={_quote(ind.directory)}",
            f"individual.parent_checkpoint={_quote(job.parent_checkpoint and os.fspath(job.parent_checkpoint))}",
            f"trainer.max_epochs={job.epochs}",
        ]
        if self.gpus is not None:
            overrides += ["trainer.accelerator=gpu", f"trainer.devices=[{slot}]"]
        return overrides

    def _launch(self, evolution: Evolution, arguments: Sequence[str], jobs: list[Job]) -> None:
        batch = [self._overrides(arguments, job, slot) for slot, job in enumerate(jobs)]
        share = self._cores_share(len(jobs))
        if share is not None:
            batch = [[*overrides, f"threads={share}"] for overrides in batch]
        if self.job_idx == 0:
            self.validate_batch_is_legal(batch[:1])  # a config error surfaces before anything trains
        for job in jobs:
            evolution.prepare(job)
        start = time.perf_counter()
        try:
            returns: Sequence[JobReturn | None] = self.launcher.launch(batch, initial_job_idx=self.job_idx)
        except Exception as e:  # a launcher that lost its jobs (a killed SLURM job): results on disk still count
            log.exception("The launcher failed; children that wrote their result are kept")
            returns = [None] * len(jobs)
            launch_error = f"launcher: {type(e).__name__}: {e}"
        else:
            launch_error = "launcher: no return for this job"
            returns = [*returns, *[None] * (len(jobs) - len(returns))]
        self.job_idx += len(batch)
        for job, ret in zip(jobs, returns):
            ind = job.individual
            if ret is not None and ret.status == JobStatus.COMPLETED:
                evolution.record(ind.id, ret.return_value)  # an invalid record gives way to the child's file
            elif ret is not None and ret.status == JobStatus.FAILED:
                evolution.record_failure(ind.id, _job_error(ret))
            elif not evolution.adopt_result(ind.id) and ind.status == PENDING:  # a rejected result is recorded
                lost = launch_error if ret is None else f"launcher: job {ind.directory} returned no status"
                evolution.record_failure(ind.id, lost)
            self._log_child(ind, time.perf_counter() - start)

    def _log_child(self, ind: Individual, elapsed: float) -> None:
        """A line per finished child, with the fitness the driver gave it; and a row in the W&B search run."""
        if self.search_run is not None:
            self.search_run.log_individual(ind)
        where = f"individual {ind.id} (generation {ind.generation}, parent {ind.parent}) {ind.genotype}"
        if ind.status != COMPLETED:
            log.warning(f"{where}: FAILED after {elapsed:.0f} s: {ind.error}")
            return
        inherited = f", {100 * ind.transfer['transfer/inherited_fraction']:.0f}% inherited" if ind.transfer else ""
        tested = f", {ind.accuracy_metric} {ind.accuracy:.4g}" if ind.accuracy is not None else ""
        latency = f", {ind.latency:.3g} ms" if ind.latency is not None else ""
        log.info(
            f"{where}: validation loss {ind.val_loss:.4g}{tested}, {ind.params / 1e6:.2f}M parameters,"
            f" {ind.flops / 1e9:.3f}G FLOPs{latency}, fitness {ind.fitness:.4g}{inherited}, {ind.wall_time:.0f} s"
        )

    def _log_summary(self, evolution: Evolution, summary: dict[str, Any]) -> None:
        parents = ", ".join(f"{p.id} ({p.fitness:.4g})" for p in evolution.parents)
        failed = f", {summary['failed']} failed" if summary["failed"] else ""
        best = (
            f"best fitness {summary['best_fitness']:.4g} (individual {summary['best_id']}),"
            f" median {summary['median_fitness']:.4g}"
            if summary["best_id"] is not None
            else "no child completed"
        )
        volume = summary["hypervolume"]
        front = f"front {summary['front']}" + (f", hypervolume {volume:.4g}" if volume is not None else "")
        log.info(f"Generation {summary['generation']} selected: {best}{failed}; {front}; parents {parents}")

    def _search_run(self, sweep_dir: Path) -> SearchRun | None:
        """A W&B search run when the children log to W&B (same project, grouped by search)."""
        for conf in (self.config.get("logger") or {}).values():
            if conf is not None and str(conf.get("_target_", "")).endswith("WandbLogger"):
                return SearchRun(
                    project=conf.project,
                    name=f"{self.config.search_name}-search",
                    group=str(self.config.search_name),
                    directory=sweep_dir,
                    offline=conf.get("offline"),
                )
        return None
