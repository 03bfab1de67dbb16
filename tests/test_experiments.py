"""The paper's training configs (conf/experiment/, train.py side): each composes and builds its network."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from evopose_pl.nets import count_parameters

# experiment -> (model class, input size, batch, epochs, warm-up epochs, scale_lr)
PAPER = {
    "evopose2d_xs": ("EvoPoseNet", [256, 192], 512, 200, 5, True),
    "evopose2d_s": ("EvoPoseNet", [256, 192], 512, 200, 5, True),
    "evopose2d_s_wt": ("EvoPoseNet", [256, 192], 512, 200, 5, True),
    "evopose2d_m": ("EvoPoseNet", [384, 288], 256, 200, 5, True),
    "evopose2d_l": ("EvoPoseNet", [512, 384], 128, 200, 5, True),
    "simplebaseline_r50": ("SimpleBaseline", [256, 192], 512, 200, 5, True),
    "hrnet_w32": ("HRNet", [256, 192], 256, 200, 5, True),
    "large_batch_256": ("SimpleBaseline", [256, 192], 256, 200, 5, True),
    "large_batch_512": ("SimpleBaseline", [256, 192], 512, 200, 5, True),
    "large_batch_1024": ("SimpleBaseline", [256, 192], 1024, 200, 5, True),
    "large_batch_2048": ("SimpleBaseline", [256, 192], 2048, 200, 5, True),
    "large_batch_2048_no_warmup": ("SimpleBaseline", [256, 192], 2048, 200, 0, True),
    "large_batch_2048_no_scaling": ("SimpleBaseline", [256, 192], 2048, 200, 5, False),
    "posetrack_finetune": ("EvoPoseNet", [256, 192], 512, 20, 5, True),
}
SEARCHES = {"e1", "e2", "e3", "e3_no_transfer"}  # evolve.py's, tested with it
EFFICIENTPOSE = {  # MPII, tested in test_efficientpose_system.py
    *(f"efficientpose_{v}" for v in ("rt", "i", "ii", "iii", "iv")),
    *(f"efficientpose_{v}_passes{n}" for v in ("i", "ii") for n in (1, 3)),
    "efficientpose_i_no_upscaling",
}
PNFS = {  # tested in test_pnfs.py
    "pnfs_mpii", "pnfs_mpii_random", "pnfs_mpii_darts", "pnfs_mpii_hrnet",
    "pnfs_coco_mobilenetv2", "pnfs_coco_resnet50",
    *(f"pnfs_mpii_parts{p}" for p in (1, 3, 5, 8)),
    *(f"pnfs_mpii_vector{d}" for d in (1, 4, 8, 16)),
}  # fmt: skip


COMPARISON = {"compare_evolution", "compare_pnfs"}  # run in test_comparison.py
KAPAO = {"kapao_s", "kapao_m", "kapao_l"}  # tested in test_kapao_system.py


def test_every_experiment_is_accounted_for(conf_dir):
    every = set(PAPER) | SEARCHES | EFFICIENTPOSE | PNFS | COMPARISON | KAPAO | {"coco_sample"}
    assert {p.stem for p in (conf_dir / "experiment").glob("*.yaml")} == every


@pytest.mark.parametrize("experiment", sorted(PAPER))
def test_paper_experiment_composes_and_builds(compose, experiment, tmp_path):
    cls, size, batch, epochs, warmup, scale = PAPER[experiment]
    overrides = [f"experiment={experiment}", "data.root=/data/coco"]
    if experiment in ("evopose2d_s_wt", "posetrack_finetune"):
        weights = tmp_path / "weights.pt"
        torch.save(instantiate(compose("train", "model=evopose2d_s").model).state_dict(), weights)
        overrides.append(f"model.pretrained={weights}")
    cfg = compose("train", *overrides)
    assert list(cfg.data.input_size) == size and cfg.data.batch_size == batch
    assert cfg.trainer.max_epochs == epochs and cfg.recipe.warmup_epochs == warmup and cfg.recipe.scale_lr is scale
    assert cfg.trainer.precision == "bf16-mixed" and cfg.data._target_.endswith("PoseDataModule")
    keypoints = 15 if experiment == "posetrack_finetune" else 17
    net = instantiate(cfg.model, num_keypoints=keypoints)
    assert type(net).__name__ == cls and net.final.out_channels == keypoints
    assert count_parameters(net).trainable > 1e6
    trainer = instantiate(cfg.trainer, accelerator="cpu", devices=1, logger=False, default_root_dir=tmp_path)
    assert trainer.max_epochs == epochs


def test_posetrack_finetuning_replaces_the_final_layer(compose, tmp_path):
    coco = instantiate(compose("train", "model=evopose2d_s").model)
    weights = tmp_path / "coco.pt"
    torch.save(coco.state_dict(), weights)
    cfg = compose("train", "experiment=posetrack_finetune", "data.root=/data/posetrack", f"model.pretrained={weights}")
    net = instantiate(cfg.model, num_keypoints=15)
    assert torch.equal(net.stem.conv.weight, coco.stem.conv.weight)
    assert not torch.equal(net.final.weight, coco.final.weight[:15])  # fresh, not the first 15 COCO channels
    assert cfg.callbacks.early_stopping.monitor == "val/loss" and cfg.test is False
