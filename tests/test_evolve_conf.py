"""evolve.py's configs compose for every experiment and launcher; the sweeper's job overrides, how it
records what its jobs return, and what it logs of each child."""

from __future__ import annotations

import json
import math
import os
from dataclasses import fields

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from evopose_pl.evolution import COMPLETED, FAILED, RESULT_FILE, Evolution, SearchStopped, Settings
from hydra_plugins.evopose2d_sweeper.evolution_sweeper import EvolutionSweeper


@pytest.fixture
def evolve_config(compose):
    """``compose("evolve", *overrides)``."""
    return lambda *overrides: compose("evolve", *overrides)


def _settings(cfg) -> Settings:
    knobs = OmegaConf.masked_copy(cfg, [f.name for f in fields(Settings) if f.name in cfg])
    return Settings.from_config(OmegaConf.to_container(knobs, resolve=True))


def test_default_is_a_small_multirun_demo_on_synthetic_data(evolve_config):
    cfg = evolve_config()
    assert cfg.hydra.mode.name == "MULTIRUN" and cfg.hydra.sweeper._target_.endswith("EvolutionSweeper")
    assert cfg.data._target_.endswith("SyntheticDataModule") and cfg.recipe.warmup_epochs == 0
    assert cfg.recipe.lr == 1e-3 and cfg.flip_test is False and cfg.channels_last is True and "module" not in cfg
    assert cfg.data.augmentation.rotation_prob == 0 and cfg.data.augmentation.scale_factor == 0
    settings = _settings(cfg)
    assert settings.population == 4 and settings.parents == 2 and settings.generations == 3


@pytest.mark.parametrize(
    "experiment,population,gamma,transfer",
    [("e1", 64, -0.05, True), ("e2", 32, -0.07, True), ("e3", 64, -0.07, True), ("e3_no_transfer", 64, -0.07, False)],
)
def test_paper_experiments_compose_at_paper_scale(evolve_config, experiment, population, gamma, transfer):
    cfg = evolve_config(f"experiment={experiment}", "data.root=/data/coco")
    settings = _settings(cfg)
    assert (settings.population, settings.parents, settings.gamma) == (population, 4, gamma)
    assert settings.weight_transfer is transfer and settings.target_params == 5e6
    assert (settings.epochs, settings.ancestor_epochs, settings.generations) == (5, 30, None)
    assert cfg.data.batch_size == 512 and list(cfg.data.input_size) == [256, 192]
    assert cfg.trainer.precision == "bf16-mixed" and cfg.data._target_.endswith("PoseDataModule")
    assert list(cfg.model.resolution) == [256, 192] and cfg.recipe.lr == 2.5e-4 and cfg.recipe.warmup_epochs == 0


def test_the_search_space_group_names_its_bounds_and_the_ancestor_is_where_the_search_starts(evolve_config):
    cfg = evolve_config("ancestor=evopose2d_s")
    assert "ancestor" not in cfg.search_space and cfg.search_space.bounds.startswith("k3r1c2s1-k3r2c3s2")
    settings = _settings(cfg)
    assert str(settings.search_space.bounds) == cfg.search_space.bounds
    assert str(settings.ancestor) != cfg.search_space.bounds  # starts from evopose2d_s, within the same bounds


LAUNCHERS = {
    "basic": "BasicLauncher",
    "joblib": "JoblibLauncher",
    "local_gpus": "JoblibLauncher",
    "submitit_local": "LocalLauncher",
    "submitit_slurm": "SlurmLauncher",
}


def test_every_launcher_composes(evolve_config, conf_dir):
    assert {p.stem for p in (conf_dir / "launcher").glob("*.yaml")} == set(LAUNCHERS)
    for launcher, target in LAUNCHERS.items():
        assert evolve_config(f"launcher={launcher}").hydra.launcher._target_.endswith(target)


def test_local_gpus_runs_one_child_per_gpu(evolve_config):
    cfg = evolve_config("launcher=local_gpus", "gpus=4")
    assert cfg.hydra.launcher.n_jobs == 4 and cfg.hydra.sweeper.gpus == 4 and cfg.hydra.sweeper.max_batch_size == 4


def _measured(ind, **fields) -> dict:
    """What a child returns: its measurements."""
    return {"id": ind.id, "genotype": ind.genotype, "params": 5, "params_trainable": 4, "flops": 1, "val_loss": 1.0,
            "wall_time": 1.0, "transfer": None, "checkpoint": None, **fields}  # fmt: skip


def test_job_overrides_name_the_individual_and_parse_back(evolve_config, tmp_path):
    evolution = Evolution(tmp_path / "sweep it's", _settings(evolve_config()))
    evolution.resume_or_plan()
    checkpoint = str(tmp_path / "sweep it's/individuals/0000/best.ckpt")
    evolution.record(0, _measured(evolution.individual(0), checkpoint=checkpoint))
    assert evolution.individual(0).status == "completed"
    evolution.select(0)
    evolution.resume_or_plan()
    job = next(evolution.jobs(1))
    sweeper = EvolutionSweeper(gpus=2)
    overrides = sweeper._overrides(["seed=1"], job, slot=1)
    parsed = {o.key_or_group: o.value() for o in OverridesParser.create().parse_overrides(overrides)}
    assert parsed["individual.genotype"] == job.individual.genotype and parsed["individual.parent"] == 0
    assert parsed["individual.parent_checkpoint"] == str(tmp_path / "sweep it's/individuals/0000/best.ckpt")
    assert parsed["trainer.max_epochs"] == 2 and parsed["seed"] == 1
    assert parsed["trainer.devices"] == [1] and parsed["trainer.accelerator"] == "gpu"
    assert "trainer.devices" not in " ".join(EvolutionSweeper()._overrides([], job, slot=1))


def test_the_training_settings_of_a_search_are_what_a_childs_fitness_depends_on(evolve_config):
    sweeper = EvolutionSweeper()
    sweeper.config = evolve_config("recipe.lr=0.002", "data.num_workers=3", "codec.sigma=3.0")
    training = sweeper._training()
    assert training["recipe.lr"] == 0.002 and training["recipe.warmup_epochs"] == 0 and training["codec.sigma"] == 3.0
    assert training["data.input_size"] == [64, 48] and training["model.resolution"] == [256, 192]
    assert training["data.batch_size"] == 32 and training["data.augmentation.flip_prob"] == 0.5
    assert training["data.synthetic.train_images"] == 500
    assert training["trainer.precision"] is None and training["trainer.devices"] == 1
    for not_training in ("data.num_workers", "data.pin_memory", "data.crop_cache", "data.cache_dir", "model.genotype",
                         "channels_last", "flip_test", "threads", "population", "data.box_threshold",
                         "codec.keypoint_threshold"):  # fmt: skip
        assert not_training not in training
    outside = ("module.", "hydra", "launcher", "logger", "individual", "search_space", "data.metric")
    assert not any(k.startswith(outside) for k in training)


def test_slurm_children_use_the_cpus_of_their_task(evolve_config):
    """The driver shares its cores only among children on this machine, and never resolves an
    interpolation that needs a job's Hydra config (the driver has none)."""
    from hydra.core.hydra_config import HydraConfig

    HydraConfig.instance().cfg = None  # as in the driver: Hydra's multirun sets it only for jobs
    sweeper = EvolutionSweeper()
    sweeper.config = evolve_config("launcher=submitit_slurm", "hydra.launcher.cpus_per_task=6")
    assert sweeper._cores_share(4) is None
    sweeper.config = evolve_config()
    assert sweeper._cores_share(2) == max(1, len(os.sched_getaffinity(0)) // 2)
    assert sweeper._cores_share(1) == len(os.sched_getaffinity(0))
    sweeper.config = evolve_config("threads=3")
    assert sweeper._cores_share(2) is None
    cfg = evolve_config("launcher=submitit_slurm", "hydra.launcher.cpus_per_task=6")
    HydraConfig.instance().set_config(cfg)  # as in a job
    assert cfg.threads == 6


class _LazyJobReturn(JobReturn):
    """A job whose outcome is fetched when read (as a remote launcher's may be): only the public
    ``return_value`` has it, re-raising the job's exception when it failed."""

    def __init__(self, status: JobStatus, outcome) -> None:
        super().__init__(status=status)
        self._outcome = outcome

    @property
    def return_value(self):
        if self.status == JobStatus.FAILED:
            raise self._outcome
        return self._outcome


class _Launcher:
    def __init__(self, returns) -> None:
        self.returns = returns

    def launch(self, batch, initial_job_idx):
        return self.returns(batch)


class _SearchRun:
    def __init__(self) -> None:
        self.logged = []

    def log_individual(self, ind) -> None:
        self.logged.append((ind.id, ind.status, ind.fitness))


def _sweeper(evolve_config, returns) -> EvolutionSweeper:
    sweeper = EvolutionSweeper()
    sweeper.config = evolve_config("threads=1")
    sweeper.launcher = _Launcher(returns)
    sweeper.validate_batch_is_legal = lambda batch: None
    sweeper.search_run = _SearchRun()
    return sweeper


def _generation_one(tmp_path, settings: Settings) -> tuple[Evolution, list]:
    evolution = Evolution(tmp_path, settings)
    evolution.resume_or_plan()
    evolution.record(0, _measured(evolution.individual(0)))
    evolution.select(0)
    evolution.resume_or_plan()
    return evolution, list(evolution.jobs(1))


def test_job_returns_are_read_through_hydras_public_api(evolve_config, tmp_path):
    """A failed job is known by ``JobReturn.status`` and its error read from ``return_value``; a
    completed job's measurements get the driver's fitness; both are logged to the search run."""
    settings = _settings(evolve_config())
    evolution, jobs = _generation_one(tmp_path, settings)

    def returns(batch):
        return [
            _LazyJobReturn(JobStatus.COMPLETED, _measured(jobs[0].individual, val_loss=2.0, params=5_000_000)),
            _LazyJobReturn(JobStatus.FAILED, MemoryError("CUDA out of memory")),
            *[_LazyJobReturn(JobStatus.COMPLETED, _measured(job.individual)) for job in jobs[2:]],
        ]

    sweeper = _sweeper(evolve_config, returns)
    sweeper._launch(evolution, [], jobs)
    first, second = jobs[0].individual, jobs[1].individual
    assert first.status == COMPLETED and first.fitness == pytest.approx(2.0)
    assert second.status == FAILED and second.error == "MemoryError: CUDA out of memory" and math.isinf(second.fitness)
    assert sweeper.search_run.logged[:2] == [(first.id, COMPLETED, first.fitness), (second.id, FAILED, math.inf)]
    # a re-run retries the failure, as before
    resumed = Evolution(tmp_path, settings)
    assert resumed.select(1)["failed"] == 1 and resumed.resume_or_plan() == 2
    evolution, jobs = _generation_one(tmp_path / "stopped", settings)
    boom = _LazyJobReturn(JobStatus.FAILED, RuntimeError("boom"))
    _sweeper(evolve_config, lambda batch: [boom] * len(batch))._launch(evolution, [], jobs)
    with pytest.raises(SearchStopped, match="4 of 4 children failed.*RuntimeError: boom"):
        evolution.select(1)
    retried = Evolution(tmp_path / "stopped", settings)
    assert retried.resume_or_plan() == 1
    assert [j.individual.id for j in retried.jobs(1)] == [j.individual.id for j in jobs]


def test_a_job_without_a_status_is_taken_from_its_result_file_or_failed(evolve_config, tmp_path):
    evolution, jobs = _generation_one(tmp_path, _settings(evolve_config()))
    left = tmp_path / jobs[0].individual.directory / RESULT_FILE

    def returns(batch):  # the child wrote its result, but the launcher lost track of it
        left.parent.mkdir(parents=True, exist_ok=True)
        left.write_text(json.dumps(_measured(jobs[0].individual, val_loss=3.0, params=5_000_000)))
        return [JobReturn(status=JobStatus.UNKNOWN) for _ in batch[:2]]  # and of the others altogether

    _sweeper(evolve_config, returns)._launch(evolution, [], jobs)
    assert jobs[0].individual.status == COMPLETED and jobs[0].individual.fitness == pytest.approx(3.0)
    assert jobs[1].individual.status == FAILED and "returned no status" in jobs[1].individual.error
    assert all(j.individual.status == FAILED and "no return" in j.individual.error for j in jobs[2:])


def test_the_sweeper_logs_each_childs_fitness_to_the_search_run(evolve_config, tmp_path):
    from evopose_pl.report import SearchRun

    evolution, jobs = _generation_one(tmp_path, _settings(evolve_config()))
    evolution.record(jobs[0].individual.id, _measured(jobs[0].individual, val_loss=2.0, params=5_000_000))
    evolution.record_failure(jobs[1].individual.id, "RuntimeError: boom")

    class Run:
        logged = []

        def log(self, metrics):
            self.logged.append(metrics)

    run = SearchRun.__new__(SearchRun)  # without W&B: what it logs of each child
    run.run = Run()
    sweeper = EvolutionSweeper()
    sweeper.search_run = run
    for job in jobs[:2]:
        sweeper._log_child(job.individual, 1.0)
    done, failed = Run.logged
    assert done["individual/id"] == jobs[0].individual.id and done["individual/fitness"] == pytest.approx(2.0)
    assert done["individual/val_loss"] == 2.0 and done["individual/params"] == 5_000_000
    assert done["individual/failed"] == 0
    assert failed["individual/failed"] == 1 and "individual/fitness" not in failed
