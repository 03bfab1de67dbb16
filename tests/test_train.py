"""train.py and its configs: every group composes, and the real command line trains and tests."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from hydra.utils import instantiate

from evopose_pl.codecs import HeatmapCodec
from evopose_pl.recipes import AdamWarmupCosine


@pytest.mark.parametrize("group,options", [
    ("trainer", ["default", "cpu", "gpu", "ddp", "tpu"]),
    ("logger", ["csv", "wandb", "tensorboard", "none"]),
    ("data", ["synthetic", "synthetic_search", "coco", "mpii", "mpii_synthetic"]),
    ("model", ["demo", "ancestor", "evopose2d_xs", "evopose2d_s", "evopose2d_m", "evopose2d_l", "simplebaseline_r50",
               "hrnet_w32", "efficientnet_b0_head", "efficientpose_rt", "efficientpose_i", "efficientpose_ii",
               "efficientpose_iii", "efficientpose_iv", "pnfs", "kapao_s", "kapao_m", "kapao_l"]),
    ("recipe", ["evopose2d", "demo", "efficientpose", "pnfs", "kapao"]),
    ("codec", ["heatmap", "confidence_maps", "pnfs", "kapao"]),
])  # fmt: skip
def test_every_option_of_every_group_composes(compose, conf_dir, group, options):
    assert {p.stem for p in (conf_dir / group).glob("*.yaml")} == set(options)
    for option in options:
        extra = ["data.root=/data"] if option in ("coco", "mpii") else []
        cfg = compose("train", f"{group}={option}", *extra)
        assert cfg.trainer._target_ == "lightning.pytorch.Trainer"


def test_a_network_names_its_codec_and_recipe_and_both_can_be_overridden(compose):
    cfg = compose("train", "model=simplebaseline_r50")
    assert isinstance(instantiate(cfg.codec), HeatmapCodec) and isinstance(instantiate(cfg.recipe), AdamWarmupCosine)
    assert cfg.hydra.runtime.choices.recipe == "evopose2d" and cfg.hydra.runtime.choices.codec == "heatmap"
    cfg = compose("train", "model=simplebaseline_r50", "codec.sigma=3", "recipe.lr=1e-3")
    assert instantiate(cfg.codec).sigma == 3 and instantiate(cfg.recipe).lr == 1e-3


def test_trainer_and_logger_configs_instantiate_on_cpu(compose, tmp_path):
    trainer = instantiate(compose("train", "trainer=cpu").trainer, default_root_dir=tmp_path, logger=False)
    assert trainer.max_epochs == 28
    cfg = compose("train", "logger=tensorboard")
    cfg.logger.tensorboard.save_dir = str(tmp_path)
    assert instantiate(cfg.logger.tensorboard).save_dir == str(tmp_path)
    cfg = compose("train", "trainer=gpu")
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.accelerator == "gpu"


def test_coco_data_paths_resolve_under_root(compose, coco_sample):
    cfg = compose("train", "experiment=coco_sample")
    dm = instantiate(cfg.data)
    assert dm.val_annotations.resolve() == (coco_sample / "test_coco.json").resolve() and dm.input_size == (128, 96)
    assert dm.test_detections.exists() and dm.keypoint_info.num_keypoints == 17


def _run(root, tmp_path, *arguments: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """train.py with ``arguments``, its outputs and caches under ``tmp_path``, W&B offline."""
    train_py = str(root / "train.py")
    env = {**os.environ, "WANDB_DIR": str(tmp_path), "WANDB_API_KEY": "", "HOME": str(tmp_path)}
    env.pop("WANDB_API_KEY")
    return subprocess.run(
        [sys.executable, train_py, *arguments, f"paths.log_dir={tmp_path}/outputs",
         f"paths.cache_dir={tmp_path}/cache"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def _train(root, tmp_path, *arguments: str) -> subprocess.CompletedProcess:
    run = _run(root, tmp_path, *arguments)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run


def test_command_line_trains_tests_and_prints_ap_then_tests_a_checkpoint(root, tmp_path, tiny_train):
    objective = ["objective.metric=test/AP", "objective.direction=maximize"]
    run = _train(root, tmp_path, *tiny_train, "logger=wandb", *objective)
    assert re.search(r"COCO keypoints AP: \d\.\d{4}", run.stdout)
    assert re.search(r"Objective: test/AP = \d\.\d{4} \(maximize\)", run.stdout)
    assert "wandb sync" in run.stdout  # no API key: offline, with the sync command
    best = next((tmp_path / "outputs").rglob("checkpoints/best.ckpt"))
    results = next((tmp_path / "outputs").rglob("keypoints_results.json"))
    assert results.stat().st_size > 2

    again = _train(root, tmp_path, *tiny_train, "train=false", f"ckpt_path={best}", "logger=none")
    assert re.search(r"COCO keypoints AP: \d\.\d{4}", again.stdout) and str(best) in again.stdout
    assert "Objective" not in again.stdout  # val/loss_best, the default, is not measured by a test-only run


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["objective.direction=up"], "objective.direction=up: must be one of minimize, maximize"),
        (
            ["objective.metric=test/AP", "test=false"],
            "objective.metric=test/AP: this run (test=False) does not measure",
        ),
        (["objective.metric=test/PCK"], "objective.metric=test/PCK: not measured; this run measured"),
    ],
)
def test_an_objective_it_cannot_measure_is_refused_in_one_line(root, tmp_path, tiny_train, overrides, message):
    run = _run(root, tmp_path, *tiny_train, "logger=none", *overrides)
    assert run.returncode != 0 and "Traceback" not in run.stderr and message in run.stderr, run.stderr[-2000:]


def test_command_line_on_the_real_coco_sample(root, tmp_path, short_train, coco_sample):
    """`data=coco` pointed at ../shared/data/coco_val_sample: trains on its 12 people, tests on the
    detector's boxes (those scoring at least 0.5, to keep it quick)."""
    run = _train(
        root, tmp_path, "data=coco", f"data.root={coco_sample}", "data.train_annotations=test_coco.json",
        "data.train_images=.", "data.val_annotations=test_coco.json", "data.val_images=.",
        "data.test_detections=test_coco_det_AP_H_56.json", "data.box_threshold=0.5", "data.batch_size=4",
        "logger=none", *short_train,
    )  # fmt: skip
    assert re.search(r"COCO keypoints AP: \d\.\d{4}", run.stdout)
    results = json.loads(next((tmp_path / "outputs").rglob("keypoints_results.json")).read_text())
    detections = json.loads((coco_sample / "test_coco_det_AP_H_56.json").read_text())
    assert len(results) == sum(d["score"] >= 0.5 for d in detections)
    assert {r["image_id"] for r in results} <= {785, 40083, 196141, 197388}


def test_bad_data_ends_train_py_with_one_line_naming_the_file(root, tmp_path, short_train, coco_sample):
    data = tmp_path / "coco"
    shutil.copytree(coco_sample, data)
    jpeg = data / "000000196141.jpg"
    jpeg.write_bytes(jpeg.read_bytes()[: jpeg.stat().st_size // 2])
    run = _run(
        root, tmp_path, *short_train, "data=coco", f"data.root={data}", "data.train_annotations=test_coco.json",
        "data.train_images=.", "data.val_annotations=test_coco.json", "data.val_images=.", "logger=none",
    )  # fmt: skip
    assert run.returncode != 0 and "Traceback" not in run.stderr, run.stderr[-3000:]
    assert f"error: image {jpeg} is a truncated JPEG" in run.stderr


def test_test_only_without_a_checkpoint_is_refused(root, tmp_path, tiny_train):
    run = _run(root, tmp_path, *tiny_train, "train=false", "logger=none")
    assert run.returncode != 0 and "error: train=false needs ckpt_path" in run.stderr and "Traceback" not in run.stderr


def test_threads_give_a_run_its_share_of_the_cores(compose):
    import cv2
    import torch

    from session import share_cores

    before = torch.get_num_threads(), cv2.getNumThreads()
    try:
        cfg = compose("train", "threads=1", "data.num_workers=2")
        share_cores(cfg)
        assert torch.get_num_threads() == 1 and cv2.getNumThreads() == 1 and cfg.data.num_workers == 1
        cfg = compose("train", "data.num_workers=2")  # null: the libraries' defaults, workers as configured
        share_cores(cfg)
        assert cfg.data.num_workers == 2
        with pytest.raises(ValueError, match="threads=0: must be a whole number"):
            share_cores(compose("train", "threads=0"))
    finally:
        torch.set_num_threads(before[0])
        cv2.setNumThreads(before[1])


def test_mpii_synthetic_prints_pckh_then_predicts_the_real_mpii_sample(root, tmp_path, tiny_train, mpii_sample):
    run = _train(root, tmp_path, *tiny_train, "data=mpii_synthetic", "logger=none", "objective.metric=test/Mean",
                 "objective.direction=maximize")  # fmt: skip
    assert "MPII PCKh" in run.stdout and "PCKh@0.1" in run.stdout
    assert re.search(r"Objective: test/Mean = \d+\.\d{4} \(maximize\)", run.stdout)
    predictions = json.loads(next((tmp_path / "outputs").rglob("pckh_predictions.json")).read_text())
    assert predictions  # predictions and figures beside the checkpoints
    best = next((tmp_path / "outputs").rglob("checkpoints/best.ckpt"))
    out = tmp_path / "predictions"
    predict = subprocess.run(
        [sys.executable, "-m", "evopose_pl.predict", f"ckpt={best}", f"images={mpii_sample}",
         f"detections={mpii_sample / 'test_mpii.json'}", f"output={out}", "device=cpu"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert predict.returncode == 0, predict.stderr[-3000:]
    results = json.loads((out / "keypoints_results.json").read_text())
    people = json.loads((mpii_sample / "test_mpii.json").read_text())
    assert len(results) == len(people) and all(len(r["keypoints"]) == 16 * 3 for r in results)
    assert len(list(out.glob("*.jpg"))) == len(list(mpii_sample.glob("*.jpg")))


def test_a_coco_baseline_trains_on_mpii(root, tmp_path, tiny_train):
    tiny = [o for o in tiny_train if not o.startswith("model=")]
    run = _train(root, tmp_path, *tiny, "model=simplebaseline_r50", "data=mpii_synthetic", "logger=none")
    assert "MPII PCKh" in run.stdout and "Mean" in run.stdout
