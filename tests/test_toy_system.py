"""Adding a pose system takes a network, a codec and a recipe config, nothing else: a toy system of
direct coordinate regression trains, tests and checkpoints itself through the platform's parts."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from torch import nn

from evopose_pl.checkpoint import load_checkpoint
from evopose_pl.codecs import TopDownCodec, codec_from_description
from evopose_pl.datamodule import SyntheticDataModule
from evopose_pl.module import PoseModule


class ToyRegressor(nn.Module):
    """A few convolutions, pooled: each keypoint's (x, y) as a fraction of the input, and a score logit."""

    def __init__(self, num_keypoints: int) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU())
        self.out = nn.Linear(32, num_keypoints * 3)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        coords = self.out(self.features(images).mean((2, 3))).view(len(images), -1, 3)
        return {"coords": coords[..., :2].sigmoid(), "logits": coords[..., 2]}


class RegressionCodec(TopDownCodec):
    """Keypoints as fractions of the input: L1 on visible coordinates, binary cross-entropy on visibility."""

    name = "toy_regression"
    keypoint_threshold = 0.5

    def settings(self) -> dict:
        return {}

    def loss(self, outputs, keypoints, input_size):
        scale = keypoints.new_tensor([input_size[1], input_size[0]])
        visible = (keypoints[..., 2] > 0).float()
        coords = (outputs["coords"] - keypoints[..., :2] / scale).abs().sum(-1)
        losses = {
            "coords": (coords * visible).sum() / visible.sum().clamp(min=1),
            "logits": nn.functional.binary_cross_entropy_with_logits(outputs["logits"], visible),
        }
        return {"loss": losses["coords"] + losses["logits"], **losses}

    def decode(self, outputs, input_size):
        return outputs["coords"] * outputs["coords"].new_tensor([input_size[1], input_size[0]]), outputs[
            "logits"
        ].sigmoid()

    def merge_flip(self, outputs, flipped, flip_index):
        mirrored = flipped["coords"][:, list(flip_index)] * flipped["coords"].new_tensor([-1.0, 1.0])
        coords = (outputs["coords"] + mirrored + flipped["coords"].new_tensor([1.0, 0.0])) / 2
        return {"coords": coords, "logits": (outputs["logits"] + flipped["logits"][:, list(flip_index)]) / 2}


def test_a_toy_system_trains_tests_and_describes_itself(tmp_path, compose):
    data = SyntheticDataModule(
        tmp_path / "cache", synthetic={"train_images": 16, "val_images": 4}, input_size=(64, 48), batch_size=8
    )
    recipe = instantiate(compose("train", "recipe.lr=1e-3", "recipe.warmup_epochs=0").recipe)  # a recipe config
    codec = RegressionCodec()
    module = PoseModule(ToyRegressor(data.keypoint_info.num_keypoints), codec, recipe, data.keypoint_info, (64, 48), 8)
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=False, default_root_dir=tmp_path,
                         enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(module, data)
    assert {"val/loss_coords", "val/loss_logits"} <= set(trainer.callback_metrics)  # each output's loss, by name
    trainer.test(module, data, verbose=False)
    assert module.best_val_loss < float("inf") and 0 <= module.test_metrics["AP"] <= 1
    checkpoint = load_checkpoint(trainer.checkpoint_callback.best_model_path)
    assert checkpoint["codec"] == {"name": "toy_regression", "settings": {}}
    assert checkpoint["keypoints"]["names"] == list(data.keypoint_info.names)
    assert isinstance(codec_from_description(checkpoint["codec"]), RegressionCodec)
