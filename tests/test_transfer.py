"""Weight transfer (SPEC section 4): exact cases, checkpoints, and approximate function preservation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from evopose_pl.nets import EvoPoseNet, build_model
from evopose_pl.search import ANCESTOR, EVOPOSE2D_S, SearchSpace, mutate
from evopose_pl.transfer import Inheritance, load_state_dict, transfer_weights

SIZE = (64, 64)


def _trained_like(net: EvoPoseNet, seed: int = 0) -> EvoPoseNet:
    """Give a fresh network non-trivial BN statistics and affine terms, as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
    return net.eval()


def _run(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return net.eval()(x)


def test_same_genotype_reproduces_parent_exactly():
    parent = _trained_like(EvoPoseNet(EVOPOSE2D_S))
    child = EvoPoseNet(EVOPOSE2D_S)
    x = torch.randn(2, 3, *SIZE)
    assert not torch.equal(_run(parent, x), _run(child, x))
    report = transfer_weights(parent, child)
    assert torch.equal(_run(parent, x), _run(child, x))
    assert report.counts() == {"copied": len(child.state_dict()), "partial": 0, "last_block": 0, "initialised": 0}
    assert report.inherited_fraction == 1.0 and not report.unused_parent_keys


def test_kernel_5_to_3_takes_the_centre_crop_and_3_to_5_places_at_the_centre():
    five = _trained_like(EvoPoseNet(ANCESTOR))  # module 2 has kernel 5
    three = EvoPoseNet(ANCESTOR.replace(2, "kernel", 3))
    transfer_weights(five, three)
    key = "modules.2.blocks.1.depthwise.conv.weight"
    assert torch.equal(three.state_dict()[key], five.state_dict()[key][:, :, 1:4, 1:4])

    back = EvoPoseNet(ANCESTOR)
    fresh = back.state_dict()[key].clone()
    report = transfer_weights(three, back)
    got = back.state_dict()[key]
    assert torch.equal(got[:, :, 1:4, 1:4], three.state_dict()[key])
    ring = torch.ones(5, 5, dtype=torch.bool)
    ring[1:4, 1:4] = False
    assert torch.equal(got[:, :, ring], fresh[:, :, ring])  # outside the centre: fresh initialisation
    assert next(t for t in report.tensors if t.child_key == key).how is Inheritance.PARTIAL


def test_channel_shrink_and_growth_copy_the_overlap_and_fill_with_the_mean():
    parent = _trained_like(EvoPoseNet(ANCESTOR))  # module 3: 80 channels
    small = EvoPoseNet(ANCESTOR.replace(3, "channels_div8", 6))  # 48 channels
    transfer_weights(parent, small)
    p, c = parent.state_dict(), small.state_dict()
    proj = "modules.3.blocks.0.project.conv.weight"  # (out, in, 1, 1): 80x240 -> 48x240
    assert torch.equal(c[proj], p[proj][:48])
    nxt = "modules.3.blocks.1.expand.conv.weight"  # (480 -> 288, 80 -> 48)
    assert torch.equal(c[nxt], p[nxt][:288, :48])
    var = "modules.3.blocks.0.project.bn.running_var"
    assert torch.equal(c[var], p[var][:48])

    grown = EvoPoseNet(ANCESTOR)
    fresh = grown.state_dict()["modules.3.blocks.1.expand.conv.weight"].clone()
    transfer_weights(small, grown)
    g, s = grown.state_dict(), small.state_dict()
    for key in (
        "modules.3.blocks.0.project.bn.weight",
        "modules.3.blocks.0.project.bn.running_mean",
        "modules.3.blocks.1.se.expand.bias",
    ):
        n = s[key].shape[0]
        assert torch.equal(g[key][:n], s[key])
        assert torch.allclose(g[key][n:], s[key].mean().expand(g[key].shape[0] - n))
    assert torch.equal(g[nxt][:288, :48], s[nxt])
    assert torch.equal(g[nxt][288:], fresh[288:]) and torch.equal(g[nxt][:, 48:], fresh[:, 48:])


def test_added_block_inherits_from_the_parent_modules_last_block():
    parent = _trained_like(EvoPoseNet(ANCESTOR))  # module 1 has 2 blocks
    child = EvoPoseNet(ANCESTOR.replace(1, "repeats", 3))
    report = transfer_weights(parent, child)
    p, c = parent.state_dict(), child.state_dict()
    new = [k for k in c if k.startswith("modules.1.blocks.2.")]
    assert new and all(torch.equal(c[k], p[k.replace("blocks.2.", "blocks.1.")]) for k in new)
    stand_ins = {t.child_key: t.parent_key for t in report.by_kind(Inheritance.LAST_BLOCK)}
    assert set(stand_ins) == set(new) and stand_ins[new[0]] == new[0].replace("blocks.2.", "blocks.1.")

    fewer = EvoPoseNet(ANCESTOR.replace(1, "repeats", 1))
    report = transfer_weights(parent, fewer)
    assert report.unused_parent_keys and all(k.startswith("modules.1.blocks.1.") for k in report.unused_parent_keys)


def test_across_compound_scales():
    s, m = _trained_like(build_model("evopose2d_s")), build_model("evopose2d_m")
    report = transfer_weights(s, m)
    counts = report.counts()
    assert counts["last_block"] > 0 and counts["partial"] > 0 and counts["initialised"] == 0
    assert 0.3 < report.inherited_fraction < 1
    key = "stem.conv.weight"  # 32 -> 40 output channels
    assert torch.equal(m.state_dict()[key][:32], s.state_dict()[key])
    report = transfer_weights(m, build_model("evopose2d_s"))  # and back down
    assert report.counts()["initialised"] == 0 and report.unused_parent_keys


def test_transposed_convolutions_and_linear_layers_copy_the_overlap():
    s, m = _trained_like(build_model("evopose2d_s")), build_model("evopose2d_m")
    transfer_weights(s, m)
    key = "head.1.conv.weight"  # ConvTranspose2d layout (in, out, k, k): 128x128 -> 168x168
    assert m.state_dict()[key].shape[:2] == (168, 168)
    assert torch.equal(m.state_dict()[key][:128, :128], s.state_dict()[key])

    parent, child = nn.Sequential(nn.Linear(6, 4)), nn.Sequential(nn.Linear(3, 5))
    fresh = child[0].weight.detach().clone()
    report = transfer_weights(parent, child)
    assert torch.equal(child[0].weight[:4], parent[0].weight[:, :3])
    assert torch.equal(child[0].weight[4:], fresh[4:])
    assert torch.equal(child[0].bias[:4], parent[0].bias)
    assert torch.allclose(child[0].bias[4], parent[0].bias.mean())
    assert report.counts()["partial"] == 2


def test_checkpoint_files_equal_the_module(tmp_path):
    parent = _trained_like(EvoPoseNet(EVOPOSE2D_S))
    genotype = EVOPOSE2D_S.replace(4, "kernel", 3).replace(6, "channels_div8", 7)
    torch.save(parent.state_dict(), tmp_path / "plain.pt")
    lightning_style = {"state_dict": {f"net.{k}": v for k, v in parent.state_dict().items()}, "epoch": 3}
    torch.save(lightning_style, tmp_path / "last.ckpt")

    reference = EvoPoseNet(genotype)
    transfer_weights(parent, reference)
    for source in (tmp_path / "plain.pt", str(tmp_path / "last.ckpt"), parent.state_dict()):
        torch.manual_seed(0)
        child = EvoPoseNet(genotype)
        transfer_weights(source, child)
        for key, value in reference.state_dict().items():
            if key.endswith("num_batches_tracked"):
                continue
            assert torch.equal(child.state_dict()[key], value), (source, key)


def test_unreadable_or_unrelated_parents_raise(tmp_path):
    child = EvoPoseNet(EVOPOSE2D_S)
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        transfer_weights(tmp_path / "missing.ckpt", child)
    (tmp_path / "garbage.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.ckpt"):
        transfer_weights(tmp_path / "garbage.ckpt", child)
    with pytest.raises(ValueError, match="no parent tensor matches"):
        transfer_weights({"backbone.conv1.weight": torch.zeros(3)}, child)
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="list.pt.*neither a state dict"):
        load_state_dict(tmp_path / "list.pt")


def test_report_prints_counts_and_details():
    report = transfer_weights(_trained_like(EvoPoseNet(ANCESTOR)), EvoPoseNet(ANCESTOR.replace(1, "repeats", 3)))
    text = str(report)
    assert "copied whole" in text and "from a module's last block" in text and "% of their elements" in text
    assert "modules.1.blocks.2.depthwise.conv.weight" in report.details()
    assert report.summary()["transfer/last_block"] == report.counts()["last_block"] > 0


def _blobs(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A small localisation task: noisy 96x64 images with one bright blob, and a Gaussian
    heatmap at the blob (24x16, the ancestor's output stride 4)."""
    ys, xs = torch.randint(8, 88, (n,), generator=g).float(), torch.randint(8, 56, (n,), generator=g).float()
    yy, xx = torch.meshgrid(torch.arange(96.0), torch.arange(64.0), indexing="ij")
    blob = torch.exp(-((yy - ys[:, None, None]) ** 2 + (xx - xs[:, None, None]) ** 2) / 18)
    images = 0.3 * torch.randn(n, 3, 96, 64, generator=g) + 2 * blob[:, None]
    hy, hx = torch.meshgrid(torch.arange(24.0), torch.arange(16.0), indexing="ij")
    heatmaps = torch.exp(-((hy - ys[:, None, None] / 4) ** 2 + (hx - xs[:, None, None] / 4) ** 2) / 2)
    return images, heatmaps[:, None]


def test_transfer_approximately_preserves_the_parents_function():
    """The paper's premise: a transferred child starts near its trained parent, a fresh one does not.

    The parent is trained briefly on a real task; children are compared as they start their own
    training, with batch statistics (train mode, drop-connect off). Stride mutations change the
    heatmap size and are left out. Measured here: median loss 0.15 transferred against the parent's
    0.13 and 17 fresh; median relative output distance 1.1 transferred against 12 fresh.
    """
    g = torch.Generator().manual_seed(0)
    parent = EvoPoseNet(ANCESTOR, num_keypoints=1, drop_connect=0.0)
    optimiser = torch.optim.Adam(parent.parameters(), 2e-3)
    for _ in range(40):
        x, y = _blobs(16, g)
        loss = ((parent.train()(x) - y) ** 2).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()

    x, y = _blobs(32, torch.Generator().manual_seed(1))

    def output(net: nn.Module) -> torch.Tensor:
        with torch.no_grad():
            return net.train()(x)

    target = output(parent)
    parent_loss = ((target - y) ** 2).mean().item()
    rng, cache, space = np.random.default_rng(0), {ANCESTOR}, SearchSpace()
    rows = []  # (distance transferred, distance fresh, loss transferred, loss fresh)
    while len(rows) < 12:
        genotype = mutate(ANCESTOR, rng, cache, space)
        if genotype.num_stride2 != ANCESTOR.num_stride2:
            continue
        child = EvoPoseNet(genotype, num_keypoints=1, drop_connect=0.0)
        fresh = output(child)
        transfer_weights(parent, child)
        moved = output(child)
        rows.append(
            [((o - target).norm() / target.norm()).item() for o in (moved, fresh)]
            + [((o - y) ** 2).mean().item() for o in (moved, fresh)]
        )
    d_t, d_f, l_t, l_f = np.median(rows, axis=0)
    assert d_t < 0.25 * d_f
    assert l_t < 3 * parent_loss and l_t < 0.05 * l_f
    assert sum(r[0] < r[1] for r in rows) == len(rows)
