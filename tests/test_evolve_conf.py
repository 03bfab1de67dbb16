"""evolve.py's configs compose for every experiment and launcher; the sweeper's job overrides."""

from __future__ import annotations

import os

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from evopose_pl.evolution import Evolution, Settings
from hydra_plugins.evopose2d_sweeper.evolution_sweeper import EvolutionSweeper

from .conftest import CONF_DIR, ROOT


def _compose(*overrides: str):
    os.environ.setdefault("EVOPOSE_ROOT", str(ROOT))
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="evolve", overrides=list(overrides), return_hydra_config=True)


def _settings(cfg) -> Settings:
    knobs = OmegaConf.masked_copy(cfg, [k for k in Settings.__dataclass_fields__ if k in cfg])
    return Settings.from_config(OmegaConf.to_container(knobs, resolve=True))


def test_default_is_a_small_multirun_demo_on_synthetic_data():
    cfg = _compose()
    assert cfg.hydra.mode.name == "MULTIRUN" and cfg.hydra.sweeper._target_.endswith("EvolutionSweeper")
    assert cfg.data._target_.endswith("SyntheticDataModule") and cfg.module.warmup_epochs == 0
    assert cfg.data.augmentation.rotation_prob == 0 and cfg.data.augmentation.scale_factor == 0
    settings = _settings(cfg)
    assert settings.population == 4 and settings.parents == 2 and settings.generations == 3


@pytest.mark.parametrize(
    "experiment,population,gamma,transfer",
    [("e1", 64, -0.05, True), ("e2", 32, -0.07, True), ("e3", 64, -0.07, True), ("e3_no_transfer", 64, -0.07, False)],
)
def test_paper_experiments_compose_at_paper_scale(experiment, population, gamma, transfer):
    cfg = _compose(f"experiment={experiment}", "data.root=/data/coco")
    settings = _settings(cfg)
    assert (settings.population, settings.parents, settings.gamma) == (population, 4, gamma)
    assert settings.weight_transfer is transfer and settings.target_params == 5e6
    assert (settings.epochs, settings.ancestor_epochs, settings.generations) == (5, 30, None)
    assert cfg.data.batch_size == 512 and list(cfg.data.input_size) == [256, 192]
    assert cfg.trainer.precision == "bf16-mixed" and cfg.data._target_.endswith("PoseDataModule")


LAUNCHERS = {
    "basic": "BasicLauncher",
    "joblib": "JoblibLauncher",
    "local_gpus": "JoblibLauncher",
    "submitit_local": "LocalLauncher",
    "submitit_slurm": "SlurmLauncher",
}


def test_every_launcher_composes():
    assert {p.stem for p in (CONF_DIR / "launcher").glob("*.yaml")} == set(LAUNCHERS)
    for launcher, target in LAUNCHERS.items():
        assert _compose(f"launcher={launcher}").hydra.launcher._target_.endswith(target)


def test_local_gpus_runs_one_child_per_gpu():
    cfg = _compose("launcher=local_gpus", "gpus=4")
    assert cfg.hydra.launcher.n_jobs == 4 and cfg.hydra.sweeper.gpus == 4 and cfg.hydra.sweeper.max_batch_size == 4


def test_job_overrides_name_the_individual_and_parse_back(tmp_path):
    evolution = Evolution(tmp_path / "sweep it's", _settings(_compose()))
    evolution.next_generation()
    evolution.record(0, {"id": 0, "genotype": evolution.individual(0).genotype, "params": 5, "params_trainable": 4,
                         "flops": 1, "val_loss": 1.0, "fitness": 1.0, "wall_time": 1.0, "transfer": None,
                         "checkpoint": str(tmp_path / "sweep it's/individuals/0000/best.ckpt")})  # fmt: skip
    assert evolution.individual(0).status == "completed"
    evolution.select(0)
    evolution.next_generation()
    job = next(evolution.jobs(1))
    sweeper = EvolutionSweeper(gpus=2)
    overrides = sweeper._overrides(["seed=1"], job, slot=1)
    parsed = {o.key_or_group: o.value() for o in OverridesParser.create().parse_overrides(overrides)}
    assert parsed["individual.genotype"] == job.individual.genotype and parsed["individual.parent"] == 0
    assert parsed["individual.parent_checkpoint"] == str(tmp_path / "sweep it's/individuals/0000/best.ckpt")
    assert parsed["trainer.max_epochs"] == 2 and parsed["seed"] == 1
    assert parsed["trainer.devices"] == [1] and parsed["trainer.accelerator"] == "gpu"
    assert "trainer.devices" not in " ".join(EvolutionSweeper()._overrides([], job, slot=1))


def test_the_training_settings_of_a_search_are_what_a_childs_fitness_depends_on():
    sweeper = EvolutionSweeper()
    sweeper.config = _compose("module.lr=0.002", "data.num_workers=3")
    training = sweeper._training()
    assert training["module.lr"] == 0.002 and training["data.input_size"] == [64, 48]
    assert training["data.batch_size"] == 32 and training["data.augmentation.flip_prob"] == 0.5
    assert training["data.synthetic.train_images"] == 500 and training["model.input_size"] == [256, 192]
    assert training["trainer.precision"] is None and training["trainer.devices"] == 1
    for speed_or_place in ("data.num_workers", "data.pin_memory", "data.crop_cache", "data.cache_dir",
                           "module.channels_last", "model.genotype"):  # fmt: skip
        assert speed_or_place not in training
    assert all(isinstance(k, str) and not k.startswith(("hydra", "launcher", "logger")) for k in training)


def test_slurm_children_use_the_cpus_of_their_task():
    """The driver shares its cores only among children on this machine, and never resolves an
    interpolation that needs a job's Hydra config (the driver has none)."""
    from hydra.core.hydra_config import HydraConfig

    HydraConfig.instance().cfg = None  # as in the driver: Hydra's multirun sets it only for jobs
    sweeper = EvolutionSweeper()
    sweeper.config = _compose("launcher=submitit_slurm", "hydra.launcher.cpus_per_task=6")
    assert sweeper._cores_share(4) is None
    sweeper.config = _compose()
    assert sweeper._cores_share(2) == max(1, len(os.sched_getaffinity(0)) // 2)
    assert sweeper._cores_share(1) == len(os.sched_getaffinity(0))
    sweeper.config = _compose("threads=3")
    assert sweeper._cores_share(2) is None
    cfg = _compose("launcher=submitit_slurm", "hydra.launcher.cpus_per_task=6")
    HydraConfig.instance().set_config(cfg)  # as in a job
    assert cfg.threads == 6
