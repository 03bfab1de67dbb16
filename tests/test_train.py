"""train.py and its configs: every group composes, and the real command line trains and tests."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import open_dict

from .conftest import CONF_DIR, ROOT, SHORT_TRAIN, TINY_TRAIN


def _compose(*overrides: str):
    os.environ.setdefault("EVOPOSE_ROOT", str(ROOT))
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.output_dir = "/tmp/evopose-test-output"
    return cfg


@pytest.mark.parametrize("group,options", [
    ("trainer", ["default", "cpu", "gpu", "ddp", "tpu"]),
    ("logger", ["csv", "wandb", "tensorboard", "none"]),
    ("data", ["synthetic", "coco"]),
    ("model", ["ancestor", "evopose2d_xs", "evopose2d_s", "evopose2d_m", "evopose2d_l", "simplebaseline_r50",
               "hrnet_w32", "efficientnet_b0_head"]),
])  # fmt: skip
def test_every_option_of_every_group_composes(group, options):
    assert {p.stem for p in (CONF_DIR / group).glob("*.yaml")} == set(options)
    for option in options:
        extra = ["data.root=/data/coco"] if option == "coco" else []
        cfg = _compose(f"{group}={option}", *extra)
        assert cfg.trainer._target_ == "lightning.pytorch.Trainer"


def test_trainer_and_logger_configs_instantiate_on_cpu(tmp_path):
    trainer = instantiate(_compose("trainer=cpu").trainer, default_root_dir=tmp_path, logger=False)
    assert trainer.max_epochs == 20
    cfg = _compose("logger=tensorboard")
    cfg.logger.tensorboard.save_dir = str(tmp_path)
    assert instantiate(cfg.logger.tensorboard).save_dir == str(tmp_path)
    cfg = _compose("trainer=gpu")
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.accelerator == "gpu"


def test_coco_data_paths_resolve_under_root(coco_sample):
    cfg = _compose("experiment=coco_sample")
    dm = instantiate(cfg.data)
    assert dm.val_annotations.resolve() == (coco_sample / "test_coco.json").resolve() and dm.input_size == (128, 96)
    assert dm.test_detections.exists() and dm.keypoint_info.num_keypoints == 17


def _train(tmp_path, *overrides: str, base: list[str] = TINY_TRAIN) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_DIR": str(tmp_path), "WANDB_API_KEY": "", "HOME": str(tmp_path)}
    env.pop("WANDB_API_KEY")
    run = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *base, f"paths.log_dir={tmp_path}/outputs",
         f"paths.cache_dir={tmp_path}/cache", *overrides],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run


def test_command_line_trains_tests_and_prints_ap_then_tests_a_checkpoint(tmp_path):
    run = _train(tmp_path, "logger=wandb")
    assert re.search(r"COCO AP: \d\.\d{4}", run.stdout)
    assert "wandb sync" in run.stdout  # no API key: offline, with the sync command
    best = next((tmp_path / "outputs").rglob("checkpoints/best.ckpt"))
    results = next((tmp_path / "outputs").rglob("keypoints_results.json"))
    assert results.stat().st_size > 2

    again = _train(tmp_path, "train=false", f"ckpt_path={best}", "logger=none")
    assert re.search(r"COCO AP: \d\.\d{4}", again.stdout) and str(best) in again.stdout


def test_command_line_on_the_real_coco_sample(tmp_path, coco_sample):
    """`data=coco` pointed at ../shared/data/coco_val_sample: trains on its 12 people, tests on the
    detector's boxes (those scoring at least 0.5, to keep it quick)."""
    run = _train(
        tmp_path, "data=coco", f"data.root={coco_sample}", "data.train_annotations=test_coco.json",
        "data.train_images=.", "data.val_annotations=test_coco.json", "data.val_images=.",
        "data.test_detections=test_coco_det_AP_H_56.json", "data.score_threshold=0.5", "data.batch_size=4",
        "logger=none",
        base=SHORT_TRAIN,
    )  # fmt: skip
    assert re.search(r"COCO AP: \d\.\d{4}", run.stdout)
    results = json.loads(next((tmp_path / "outputs").rglob("keypoints_results.json")).read_text())
    detections = json.loads((coco_sample / "test_coco_det_AP_H_56.json").read_text())
    assert len(results) == sum(d["score"] >= 0.5 for d in detections)
    assert {r["image_id"] for r in results} <= {785, 40083, 196141, 197388}


def test_bad_data_ends_train_py_with_one_line_naming_the_file(tmp_path, coco_sample):
    data = tmp_path / "coco"
    shutil.copytree(coco_sample, data)
    jpeg = data / "000000196141.jpg"
    jpeg.write_bytes(jpeg.read_bytes()[: jpeg.stat().st_size // 2])
    env = {**os.environ, "HOME": str(tmp_path)}
    run = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *SHORT_TRAIN, "data=coco", f"data.root={data}",
         "data.train_annotations=test_coco.json", "data.train_images=.", "data.val_annotations=test_coco.json",
         "data.val_images=.", "logger=none", f"paths.log_dir={tmp_path}/outputs"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode != 0 and "Traceback" not in run.stderr, run.stderr[-3000:]
    assert f"error: image {jpeg} is a truncated JPEG" in run.stderr


def test_test_only_without_a_checkpoint_is_refused(tmp_path):
    env = {**os.environ, "HOME": str(tmp_path)}
    run = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *TINY_TRAIN, "train=false", "logger=none",
         f"paths.log_dir={tmp_path}/outputs", f"paths.cache_dir={tmp_path}/cache"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode != 0 and "train=false needs ckpt_path" in run.stderr + run.stdout


def test_threads_give_a_run_its_share_of_the_cores():
    import cv2
    import torch

    from session import share_cores

    before = torch.get_num_threads(), cv2.getNumThreads()
    try:
        cfg = _compose("threads=1", "data.num_workers=2")
        share_cores(cfg)
        assert torch.get_num_threads() == 1 and cv2.getNumThreads() == 1 and cfg.data.num_workers == 1
        cfg = _compose("data.num_workers=2")  # null: the libraries' defaults, workers as configured
        share_cores(cfg)
        assert cfg.data.num_workers == 2
        with pytest.raises(ValueError, match="threads=0: must be a whole number"):
            share_cores(_compose("threads=0"))
    finally:
        torch.set_num_threads(before[0])
        cv2.setNumThreads(before[1])
