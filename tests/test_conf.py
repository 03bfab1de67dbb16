"""Every model config composes with Hydra and instantiates the network it names."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from evopose_pl.nets import BASELINES, MODELS, EvoPoseNet, count_parameters
from evopose_pl.search import CompoundScaling

from .conftest import CONF_DIR


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(overrides=list(overrides))


def test_a_config_for_every_named_model():
    assert {p.stem for p in (CONF_DIR / "model").glob("*.yaml")} == set(MODELS) | set(BASELINES)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_config_instantiates(name):
    cfg = _compose(f"+model={name}")
    assert cfg.model.name == name and list(cfg.model.input_size) == list(MODELS[name].input_size)
    net = instantiate(cfg.model)
    assert isinstance(net, EvoPoseNet) and isinstance(net.scaling, CompoundScaling)
    assert net.genotype == MODELS[name].genotype and net.input_size == MODELS[name].input_size


def test_scaling_and_keypoints_are_overridable():
    net = instantiate(
        _compose(
            "+model=evopose2d_m", "model.scaling.alpha=1.0", "model.scaling.beta=1.0", "model.num_keypoints=16"
        ).model
    )
    s = instantiate(_compose("+model=evopose2d_s", "model.num_keypoints=16").model)
    assert net.final.out_channels == 16 and count_parameters(net) == count_parameters(s)
