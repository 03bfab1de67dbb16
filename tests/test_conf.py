"""Every model config composes with Hydra (in train.py's config: it names its codec and recipe) and instantiates
the network it names."""

from __future__ import annotations

import pytest
from hydra.utils import instantiate

from evopose_pl.nets import BASELINES, EFFICIENTPOSE_VARIANTS, KAPAO_SIZES, MODELS, EvoPoseNet, count_parameters
from evopose_pl.search import CompoundScaling


def test_a_config_for_every_named_model(conf_dir):
    # and the embedded demo's network: a named model's genotype decoded for a small resolution
    named = set(MODELS) | set(BASELINES) | set(EFFICIENTPOSE_VARIANTS) | set(KAPAO_SIZES) | {"pnfs"}
    assert {p.stem for p in (conf_dir / "model").glob("*.yaml")} == named | {"demo"}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_config_instantiates(compose, name):
    cfg = compose("train", f"model={name}")
    assert cfg.model.name == name and list(cfg.model.resolution) == list(MODELS[name].resolution)
    net = instantiate(cfg.model)
    assert isinstance(net, EvoPoseNet) and isinstance(net.scaling, CompoundScaling)
    assert net.genotype == MODELS[name].genotype and net.resolution == MODELS[name].resolution


def test_scaling_and_keypoints_are_overridable(compose):
    net = instantiate(
        compose(
            "train", "model=evopose2d_m", "model.scaling.alpha=1.0", "model.scaling.beta=1.0", "model.num_keypoints=16"
        ).model
    )
    s = instantiate(compose("train", "model=evopose2d_s", "model.num_keypoints=16").model)
    assert net.final.out_channels == 16 and count_parameters(net) == count_parameters(s)


def test_the_demo_network_is_evopose2d_s_scaled_down(compose):
    net = instantiate(compose("train", "model=demo").model)
    assert net.genotype == MODELS["evopose2d_s"].genotype and net.resolution == (96, 72)
    assert 0.3e6 < count_parameters(net).with_bn_stats < 0.45e6  # 0.38M; EvoPose2D-S is 2.53M
