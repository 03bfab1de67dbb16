"""PNFS's search methods (SPEC-PNFS section 5, ``search=sync|random|darts``): the DARTS alternation and its
split, random search's seeded frozen draw, synchronous training, the architecture monitor's outputs, and the
derived architecture trained as a fixed network."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import lightning.pytorch as pl
import pytest
import torch
from omegaconf import OmegaConf, open_dict

from evopose_pl.architecture_search import ArchitectureSplit, DartsModule, architecture_weights
from evopose_pl.checkpoint import load_checkpoint
from evopose_pl.files import FileFormatError
from evopose_pl.nets import build_model
from session import ConfigError, build, prepare_search


def tiny(tmp_path, *overrides: str, model: tuple[str, ...] = ("model=pnfs", "model.channels=2")) -> list[str]:
    """A PNFS network of narrow fabrics (C = 2) on 16 synthetic MPII images at 64x64, one epoch, no logger."""
    return [
        *model, "data=mpii_synthetic", "data.input_size=[64,64]",
        "data.synthetic.train_images=16", "data.synthetic.val_images=6", "data.num_workers=0",
        "trainer.max_epochs=1", "logger=none", f"paths.cache_dir={tmp_path}/cache", *overrides,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def train_py(request):
    """train.py as a module (its ``run``), for the in-process runs."""
    spec = importlib.util.spec_from_file_location("train_entry", request.config.rootpath / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def alphas(state: dict) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k.endswith((".alpha", ".betas"))}


class StepRecorder(pl.Callback):
    """Which parameters each optimiser step changed: ``(optimiser index, architecture changed, weights changed)``."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, bool, bool]] = []

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        net = pl_module.net
        for index, optimiser in enumerate(trainer.optimizers):

            def before(opt, args, kwargs) -> None:
                self._arch = [p.detach().clone() for p in net.architecture_parameters()]
                self._weights = [p.detach().clone() for p in net.weight_parameters()]

            def after(opt, args, kwargs, index=index) -> None:
                arch = any(not torch.equal(a, p) for a, p in zip(self._arch, net.architecture_parameters()))
                weights = any(not torch.equal(w, p) for w, p in zip(self._weights, net.weight_parameters()))
                self.steps.append((index, arch, weights))

            optimiser.register_step_pre_hook(before)
            optimiser.register_step_post_hook(after)


def test_darts_alternates_an_architecture_step_and_a_weight_step(compose, tmp_path):
    cfg = compose("train", *tiny(tmp_path, "search=darts", "data.batch_size=7", "test=false"))
    session = build(cfg)
    assert isinstance(session.module, DartsModule) and isinstance(session.datamodule, ArchitectureSplit)
    recorder = StepRecorder()
    session.trainer.callbacks.append(recorder)
    session.trainer.fit(session.module, session.datamodule)
    # 15 held-out and 15 training people, batches of 4: each batch an architecture step, then a weight step
    batches = session.trainer.num_training_batches
    assert batches == 2 and recorder.steps == [(1, True, False), (0, False, True)] * batches
    weights, architecture = session.trainer.optimizers
    arch = {id(p) for p in session.module.net.architecture_parameters()}
    assert {id(p) for p in architecture.param_groups[0]["params"]} == arch
    assert not arch & {id(p) for group in weights.param_groups for p in group["params"]}
    assert architecture.defaults["lr"] == 3e-3 and architecture.defaults["betas"] == (0.5, 0.999)
    assert architecture.defaults["weight_decay"] == 1e-3
    assert session.trainer.global_step == 2 * batches  # two optimiser steps per batch


def test_the_architecture_split_is_a_seeded_partition_of_the_training_set(compose, tmp_path):
    cfg = compose("train", *tiny(tmp_path))

    def split(seed: int, fraction: float = 0.5) -> dict[str, list[int]]:
        data = ArchitectureSplit(build(cfg).datamodule, fraction, seed)
        data.setup("fit")
        return {name: list(subset.indices) for name, subset in data.splits.items()}

    first = split(0)
    assert len(first["architecture"]) == len(first["weights"]) == 15  # 30 people in 16 images
    assert sorted(first["architecture"] + first["weights"]) == list(range(30))
    assert split(0) == first and split(1) != first
    assert len(split(0, 0.2)["architecture"]) == 6
    with pytest.raises(ConfigError, match="search.architecture_fraction=1.5"):
        build(compose("train", *tiny(tmp_path, "search=darts", "search.architecture_fraction=1.5")))


def test_random_search_draws_a_seeded_architecture_and_freezes_it(compose, tmp_path, train_py, capsys):
    def drawn(seed: int) -> list[torch.Tensor]:
        net = build_model("pnfs", num_keypoints=16, channels=2)
        prepare_search(OmegaConf.create({"method": "random", "seed": seed}), net, None)
        assert all(not p.requires_grad for p in net.architecture_parameters())
        return [p.detach().clone() for p in net.architecture_parameters()]

    first = drawn(3)
    assert all(torch.equal(a, b) for a, b in zip(first, drawn(3)))
    assert not any(torch.equal(a, b) for a, b in zip(first, drawn(4)))
    assert all(abs(float(a.std()) - 1) < 0.6 for a in first if a.numel() > 10)  # N(0, 1), not zero
    train_py.run(compose("train", *tiny(tmp_path, "search=random", "search.seed=3")))
    trained = alphas(load_checkpoint(tmp_path / "output" / "checkpoints" / "last.ckpt")["state_dict"])
    assert [torch.equal(a, b) for a, b in zip(first, trained.values())] == [True] * len(first)
    out = capsys.readouterr().out
    assert "Derived architecture" in out and "PCKh@0.5" in out


def test_sync_trains_the_architecture_with_the_weights_and_the_monitor_reports_it(compose, tmp_path, train_py, capsys):
    cfg = compose("train", *tiny(tmp_path, "search=sync"))
    metrics = train_py.run(cfg)
    assert "test/Mean" in metrics
    out_dir = tmp_path / "output"
    checkpoint = load_checkpoint(out_dir / "checkpoints" / "last.ckpt")
    trained = alphas(checkpoint["state_dict"])
    assert len(trained) == 6 and all(v.abs().sum() > 0 for v in trained.values())  # moved from zero
    derived = json.loads((out_dir / "derived_architecture.json").read_text())
    assert checkpoint["derived_architecture"] == derived
    assert [part["name"] for part in derived["parts"]] == ["head", "upper_limbs", "lower_limbs"]
    assert (out_dir / "architecture.png").read_bytes().startswith(b"\x89PNG")
    out = capsys.readouterr().out
    assert "Derived architecture" in out and "head: edges " in out
    assert "PCKh@0.5" in out and "MPII PCKh Mean: " in out.splitlines()[-1]
    # the derived architecture trains as a fixed network, from the JSON file or the checkpoint
    for source in (out_dir / "checkpoints" / "last.ckpt", out_dir / "derived_architecture.json"):  # the fit rewrites
        fixed = compose("train", *tiny(tmp_path, f"model.derived={source}", "test=false"))
        session = build(fixed)
        net = session.module.net
        assert not net.architecture_parameters() and net.config["derived"] == derived
        before = [p.detach().clone() for p in net.parameters()]
        session.trainer.fit(session.module, session.datamodule)
        assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))


def test_the_monitor_logs_softmaxed_architecture_weights_to_every_logger(compose, tmp_path):
    cfg = compose("train", *tiny(tmp_path, "search=sync", "logger=csv", "test=false"))
    with open_dict(cfg):
        del cfg.hydra  # train.py's loggers record the config without Hydra's own node
    session = build(cfg)
    session.trainer.fit(session.module, session.datamodule)
    rows = (tmp_path / "output" / "csv").rglob("metrics.csv")
    header = next(rows).read_text().splitlines()[0].split(",")
    assert "architecture/head/alpha/edge0/sep_conv_3x3" in header
    assert "architecture/lower_limbs/beta/cell2.0/coarser" in header
    weights = architecture_weights(session.module.net)
    assert len(weights) == 3 * (4 + 6 * 3)
    assert sum(v for k, v in weights.items() if k.startswith("architecture/head/alpha/edge0/")) == pytest.approx(1)


def test_a_search_needs_architecture_parameters_and_model_derived_a_derived_file(compose, tmp_path):
    with pytest.raises(ConfigError, match="search=darts: .* no architecture parameters"):
        build(compose("train", *tiny(tmp_path, "search=darts", model=("model=demo",))))
    with pytest.raises(ConfigError, match="search.method=grid"):
        build(compose("train", *tiny(tmp_path, "search=sync", "search.method=grid")))
    torch.save({"state_dict": {}}, tmp_path / "plain.ckpt")
    (tmp_path / "bad.json").write_text('{"parts": [{"name": "head", "edges": ["conv_9x9"], "inputs": []}]}')
    (tmp_path / "broken.json").write_text("{")
    for name, message in (("plain.ckpt", "holds no derived_architecture"), ("bad.json", "parts"),
                          ("broken.json", "not valid JSON")):  # fmt: skip
        with pytest.raises(FileFormatError, match=f"model.derived={tmp_path / name}.*{message}"):
            build_model("pnfs", num_keypoints=16, channels=2, derived=str(tmp_path / name))
    with pytest.raises(FileNotFoundError, match="model.derived="):
        build_model("pnfs", num_keypoints=16, channels=2, derived=str(tmp_path / "missing.json"))


def test_train_py_runs_darts_end_to_end(root, tmp_path):
    env = {**os.environ, "HOME": str(tmp_path)}
    run = subprocess.run(
        [sys.executable, str(root / "train.py"), "model=pnfs", "search=darts", "data=mpii_synthetic",
         "data.input_size=[64,64]", "data.synthetic.train_images=16", "data.synthetic.val_images=6",
         "data.num_workers=0", "trainer.max_epochs=1", "logger=none", f"hydra.run.dir={tmp_path}/run",
         f"paths.log_dir={tmp_path}/outputs", f"paths.cache_dir={tmp_path}/cache"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "Derived architecture" in run.stdout and "upper_limbs: edges " in run.stdout
    assert "PCKh@0.5" in run.stdout and (tmp_path / "run" / "derived_architecture.json").is_file()


def test_darts_resumes_from_its_last_checkpoint(compose, tmp_path, train_py, caplog):
    """A stopped DARTS search goes on from ``last.ckpt``: both optimisers' states come back and the step count
    (architecture and weight steps) carries on."""
    train_py.run(compose("train", *tiny(tmp_path, "search=darts")))
    last = tmp_path / "output" / "checkpoints" / "last.ckpt"
    first = load_checkpoint(last)
    assert len(first["optimizer_states"]) == 2 and first["global_step"] == 2  # 1 batch: architecture + weight step
    with caplog.at_level("INFO"):
        train_py.run(compose("train", *tiny(tmp_path, "search=darts", "trainer.max_epochs=2", f"ckpt_path={last}")))
    assert f"Restoring states from the checkpoint path at {last}" in caplog.text
    resumed = load_checkpoint(last)
    assert resumed["global_step"] == 4  # one more epoch, not two
    assert [len(state["state"]) > 0 for state in resumed["optimizer_states"]] == [True, True]
    architecture = alphas(resumed["state_dict"])
    assert any(not torch.equal(architecture[k], v) for k, v in alphas(first["state_dict"]).items())
