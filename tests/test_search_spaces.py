"""Search spaces as parts: E3 with the head searched (``search_space=e3_head``) and a toy space of one's own,
each run as a search; the E3 space answers the same protocol (parse, mutate, sample, default ancestor)."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from evopose_pl.evolution import COMPLETED, Evolution, Settings, SettingsError, load_state
from evopose_pl.nets import count_parameters, decode_with_head
from evopose_pl.predict import load_pose_module
from evopose_pl.search import (
    ANCESTOR,
    GenotypeError,
    HeadGenotype,
    HeadSearchSpace,
    SearchExhaustedError,
    neighbours,
)

PAPER_HEAD = f"{ANCESTOR}|h3c128"


def test_a_head_genotype_reads_back_from_its_string_and_decodes_its_head():
    space = HeadSearchSpace()
    genotype = space.parse(f"{ANCESTOR}|h2c64")
    assert str(genotype) == f"{ANCESTOR}|h2c64" and space.parse(str(genotype)) == genotype
    assert space.default_ancestor == space.parse(PAPER_HEAD) == space.parse("ancestor")  # a name takes the head
    net = decode_with_head(genotype, resolution=(256, 192))
    assert net.config["head_blocks"] == 2 and net.config["head_channels"] == 64
    assert count_parameters(net).with_bn_stats < count_parameters(decode_with_head(PAPER_HEAD)).with_bn_stats
    for bad, message in [
        (f"{ANCESTOR}|h5c128", "head blocks 5 is not one of [1, 2, 3, 4]"),
        (f"{ANCESTOR}|h3c100", "head channels 100 is not one of [32, 64, 128, 256]"),
        (str(ANCESTOR), "is not a backbone genotype and a head gene"),
        ("k3r1c2s1|h3c128", "has 1 module genes"),
    ]:
        with pytest.raises(GenotypeError, match=re.escape(message)):
            space.parse(bad)


def test_head_mutations_change_one_gene_of_the_backbone_or_the_head():
    space, rng = HeadSearchSpace(), np.random.default_rng(0)
    parent = space.default_ancestor
    cache = {parent}
    changed = Counter()
    while True:  # until every child one mutation reaches was drawn
        try:
            child = space.mutate(parent, rng, cache)
        except SearchExhaustedError:
            break
        backbone = sum(a != b for a, b in zip(parent.backbone, child.backbone))
        head = (child.blocks != parent.blocks) + (child.channels != parent.channels)
        assert backbone + head == 1 and space.parse(str(child)) == child
        if head:  # to a neighbouring choice
            assert child.blocks in (2, 3, 4) and child.channels in (64, 128, 256)
        changed["head" if head else "backbone"] += 1
    # every neighbour found, none twice: the 4 of the head (blocks 2, 4; channels 64, 256) and E3's
    assert changed["head"] == 4 and changed["backbone"] == len(neighbours(parent.backbone, space.backbone))
    tiny = HeadSearchSpace(bounds="k3r1c1s1", kernels=[3], max_repeats=1, stride_modules=[], max_stride2=0,
                           head_blocks=[1], head_channels=[8], head=[1, 8])  # fmt: skip
    with pytest.raises(SearchExhaustedError):
        tiny.mutate(tiny.default_ancestor, rng, {tiny.default_ancestor})


def test_head_sampling_is_uniform_over_the_heads_and_stays_in_the_space():
    space, rng = HeadSearchSpace(), np.random.default_rng(1)
    draws = [space.sample(rng) for _ in range(1600)]
    assert all(space.validate(g) is g for g in draws)
    heads = Counter((g.blocks, g.channels) for g in draws)
    assert len(heads) == 16 and min(heads.values()) > 60  # about 100 each
    assert space.size == HeadSearchSpace().backbone.size * 16


def test_a_search_over_a_toy_space_of_ones_own(tmp_path):
    """The few dozen lines of tests/toy_space.py are all a search needs: planned, recorded, selected, resumed."""
    config = {"population": 2, "parents": 1, "generations": 3, "epochs": 1, "ancestor_epochs": 1}
    settings = Settings.from_config({**config, "search_space": {"kind": "tests.toy_space:ToySpace", "max_width": 6}})
    assert settings.ancestor == "w4" and settings.identity()["search_space"] == {
        "kind": "tests.toy_space:ToySpace", "max_width": 6, "start": 4}  # fmt: skip
    evolution = Evolution(tmp_path, settings)
    while (generation := evolution.resume_or_plan()) is not None:
        for job in list(evolution.jobs(generation)):
            ind = job.individual
            width = int(ind.genotype[1:])  # the narrower, the better
            evolution.record(ind.id, {"id": ind.id, "genotype": ind.genotype, "params": 1000 * width,
                                      "params_trainable": 1000 * width, "flops": 1, "val_loss": float(width),
                                      "checkpoint": None, "wall_time": 1.0, "transfer": None})  # fmt: skip
        evolution.select(generation)
    state = load_state(tmp_path)
    genotypes = [i.genotype for i in state.individuals]
    # both neighbours of w4; then w3's only new one (one child short); then w2's: down to the edge
    assert genotypes[0] == "w4" and set(genotypes[1:3]) == {"w3", "w5"} and genotypes[3:] == ["w2", "w1"]
    assert state.stopped is None and evolution.parents[0].genotype == "w1"
    with pytest.raises(SettingsError, match="ancestor='w9': the ancestor: 'w9' is not one of w1..w6"):
        Settings.from_config({**config, "ancestor": "w9", "search_space": {"kind": "tests.toy_space:ToySpace",
                                                                           "max_width": 6}})  # fmt: skip
    with pytest.raises(SettingsError, match="search_space: kind='nowhere': one of e3, e3_head, or module:Class"):
        Settings.from_config({**config, "search_space": {"kind": "nowhere"}})


TINY = ["logger=none", "data.num_workers=0", "data.synthetic.train_images=24", "data.synthetic.val_images=6",
        "data.batch_size=8", "population=2", "parents=1", "generations=1", "epochs=1", "ancestor_epochs=1"]  # fmt: skip


def test_evolve_py_searches_the_head_and_each_child_decodes_its_own(root, tmp_path):
    sweep = tmp_path / "head"
    command = [sys.executable, "evolve.py", f"hydra.sweep.dir={sweep}", "search_space=e3_head", *TINY,
               "search_space.bounds=k3r1c1s1-k3r1c2s2-k3r1c3s2-k3r1c4s2-k3r1c6s1-k3r1c8s1-k3r1c8s1",
               "search_space.head_channels=[16,32]", "search_space.head=[1,16]"]  # fmt: skip
    run = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    state = load_state(sweep)
    assert state.settings["search_space"]["kind"] == "e3_head" and all(i.status == COMPLETED for i in state.individuals)
    for ind in state.individuals:
        genotype = HeadGenotype.from_string(ind.genotype)
        if ind.checkpoint is not None:  # a parent: its checkpoint rebuilds the network its genotype names
            net = load_pose_module(sweep / ind.checkpoint).net
            assert (net.config["head_blocks"], net.config["head_channels"]) == (genotype.blocks, genotype.channels)


def test_evolve_py_searches_a_toy_space_given_as_a_config_of_ones_own(root, tmp_path):
    conf = tmp_path / "conf" / "search_space"
    conf.mkdir(parents=True)
    (conf / "toy.yaml").write_text(
        "# @package _global_\nsearch_space:\n  kind: tests.toy_space:ToySpace\n  max_width: 6\n"
        "model:\n  _target_: tests.toy_space.decode\n"
    )
    sweep = tmp_path / "toy"
    command = [sys.executable, "evolve.py", f"--config-dir={tmp_path / 'conf'}", f"hydra.sweep.dir={sweep}",
               "search_space=toy", *TINY]  # fmt: skip
    run = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    state = load_state(sweep)
    assert [i.genotype for i in state.individuals][0] == "w4" and len(state.individuals) == 3
    assert all(i.status == COMPLETED and i.params > 0 for i in state.individuals)
    widths = {i.genotype: i.params for i in state.individuals}
    assert sorted(widths, key=widths.get) == sorted(widths, key=lambda g: int(g[1:]))  # wider heads, more weights
