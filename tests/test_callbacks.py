"""The WeightTransfer callback inside a real Lightning fit."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from callbacks import WeightTransfer
from evopose_pl.nets import EvoPoseNet
from evopose_pl.search import EVOPOSE2D_S


class HeatmapRegression(pl.LightningModule):
    """The smallest real module around a pose network: MSE on given heatmaps."""

    def __init__(self, net: nn.Module, lr: float) -> None:
        super().__init__()
        self.net, self.lr = net, lr
        self.weights_at_start: dict[str, torch.Tensor] = {}

    def on_train_start(self) -> None:
        self.weights_at_start = {k: v.clone() for k, v in self.net.state_dict().items()}

    def training_step(self, batch, batch_idx):
        x, y = batch
        return ((self.net(x) - y) ** 2).mean()

    def configure_optimizers(self):
        return torch.optim.Adam(self.net.parameters(), lr=self.lr)


def _loader() -> DataLoader:
    x, y = torch.randn(4, 3, 64, 64), torch.rand(4, 2, 32, 32)
    return DataLoader(TensorDataset(x, y), batch_size=2)


def _trainer(tmp_path, callback, max_epochs: int = 1) -> pl.Trainer:
    return pl.Trainer(
        default_root_dir=tmp_path,
        accelerator="cpu",
        max_epochs=max_epochs,
        callbacks=[callback],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


def test_child_starts_fit_with_the_parents_weights(tmp_path):
    parent = EvoPoseNet(EVOPOSE2D_S, num_keypoints=2)
    torch.save(parent.state_dict(), tmp_path / "parent.pt")
    child = HeatmapRegression(EvoPoseNet(EVOPOSE2D_S.replace(6, "channels_div8", 8), num_keypoints=2), lr=1e-3)
    callback = WeightTransfer(tmp_path / "parent.pt")
    _trainer(tmp_path, callback).fit(child, _loader())
    start = child.weights_at_start
    assert torch.equal(start["stem.conv.weight"], parent.state_dict()["stem.conv.weight"])
    assert torch.equal(
        start["modules.6.blocks.0.project.conv.weight"],
        parent.state_dict()["modules.6.blocks.0.project.conv.weight"][:64],
    )
    assert callback.report is not None and callback.report.counts()["partial"] > 0


def test_resumed_fit_keeps_its_own_weights(tmp_path):
    net = EvoPoseNet(EVOPOSE2D_S, num_keypoints=2)
    module = HeatmapRegression(net, lr=1e-2)
    trainer = _trainer(tmp_path, WeightTransfer(None))
    trainer.fit(module, _loader())
    trainer.save_checkpoint(tmp_path / "run.ckpt")
    trained = {k: v.clone() for k, v in net.state_dict().items()}

    torch.save(EvoPoseNet(EVOPOSE2D_S, num_keypoints=2).state_dict(), tmp_path / "other.pt")
    resumed = HeatmapRegression(EvoPoseNet(EVOPOSE2D_S, num_keypoints=2), lr=1e-2)
    _trainer(tmp_path, WeightTransfer(tmp_path / "other.pt"), max_epochs=2).fit(
        resumed, _loader(), ckpt_path=tmp_path / "run.ckpt"
    )
    assert torch.equal(resumed.weights_at_start["stem.conv.weight"], trained["stem.conv.weight"])


def test_missing_network_attribute_is_named(tmp_path):
    torch.save(EvoPoseNet(EVOPOSE2D_S, num_keypoints=2).state_dict(), tmp_path / "parent.pt")
    module = HeatmapRegression(EvoPoseNet(EVOPOSE2D_S, num_keypoints=2), lr=1e-3)
    with pytest.raises(AttributeError, match="no attribute 'model'"):
        _trainer(tmp_path, WeightTransfer(tmp_path / "parent.pt", attribute="model")).fit(module, _loader())
