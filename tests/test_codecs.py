"""Codecs as one object: the heatmap codec is today's pipeline unchanged, several outputs are each
trained by name, and a checkpoint's codec description rebuilds it or is refused by name."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from evopose_pl.codecs import CodecError, HeatmapCodec, codec_from_description, named_outputs
from evopose_pl.data.heatmaps import decode_heatmaps, masked_mse, merge_flipped, render_heatmaps

INPUT = (64, 48)


def _keypoints(batch: int = 2, k: int = 17) -> torch.Tensor:
    torch.manual_seed(1)
    kp = torch.rand(batch, k, 3) * torch.tensor([48.0, 64.0, 1.0])
    kp[..., 2] = (kp[..., 2] > 0.3).float()
    return kp


def test_the_heatmap_codec_is_the_reference_pipeline():
    codec, kp = HeatmapCodec(sigma=1.5), _keypoints()
    predicted = torch.rand(2, 17, 32, 24) * 255
    target, visible = render_heatmaps(kp, INPUT, (32, 24), 1.5)
    losses = codec.loss(predicted, kp, INPUT)
    assert set(losses) == {"loss", "heatmaps"} and torch.equal(losses["loss"], masked_mse(predicted, target, visible))
    flipped = torch.rand(2, 17, 32, 24)
    merged = codec.merge_flip(predicted, flipped, list(range(17)))
    assert torch.equal(merged, merge_flipped(predicted, flipped, list(range(17))))
    for got, expected in zip(codec.decode(merged, INPUT), decode_heatmaps(merged, INPUT)):
        assert torch.equal(got, expected)


def test_encode_then_decode_returns_the_keypoints_within_a_heatmap_pixel():
    codec, kp = HeatmapCodec(), _keypoints()
    kp[..., :2] = 4 + kp[..., :2] * torch.tensor([40 / 48, 56 / 64])  # inside the heatmap, off its border
    heatmaps, visible = codec.encode(kp, INPUT, (32, 24))
    coords, scores = codec.decode(heatmaps, INPUT)
    seen = visible.bool()
    assert (coords - kp[..., :2]).abs()[seen].max() <= 2.0  # input pixels: one heatmap pixel is 2
    assert scores[seen].min() > 0.9


def test_several_outputs_are_each_trained_by_name_and_the_last_is_decoded():
    codec, kp = HeatmapCodec(), _keypoints()
    early, final = torch.rand(2, 17, 16, 12) * 255, torch.rand(2, 17, 32, 24) * 255
    losses = codec.loss((early, final), kp, INPUT)
    assert set(losses) == {"loss", "output0", "output1"}
    assert torch.allclose(losses["loss"], losses["output0"] + losses["output1"])
    assert losses["output0"] != losses["output1"]  # each against targets at its own size
    assert torch.equal(codec.decode((early, final), INPUT)[0], codec.decode(final, INPUT)[0])
    assert list(named_outputs({"pafs": early, "heatmaps": final})) == ["pafs", "heatmaps"]


def test_a_codec_description_rebuilds_it_or_is_refused_by_name():
    codec = HeatmapCodec(sigma=2.5, keypoint_threshold=0.3)
    rebuilt = codec_from_description(codec.describe())
    assert isinstance(rebuilt, HeatmapCodec) and rebuilt.settings() == codec.settings()
    with pytest.raises(CodecError, match="codec 'centernet' is not one of"):
        codec_from_description({"name": "centernet", "settings": {}})
    with pytest.raises(CodecError, match="codec 'heatmap': .*unexpected keyword"):
        codec_from_description({"name": "heatmap", "settings": {"radius": 1}})
    with pytest.raises(CodecError, match="not a codec description"):
        codec_from_description(["heatmap"])


def test_heatmaps_peaking_at_one_for_squashed_outputs(compose):
    """PNFS's configuration (codec=pnfs): targets peak at 1, scores are the maxima, the loss is halved."""
    codec = instantiate(compose("train", "codec=pnfs").codec)
    assert isinstance(codec, HeatmapCodec) and codec.peak == 1.0 and codec.loss_scale == 0.5
    kp = torch.tensor([[[20.0, 30.0, 1.0], [10.0, 12.0, 0.0]]])
    target, visible = codec.encode(kp, INPUT, (16, 12))
    assert target.max() == 1.0 and visible.tolist() == [[1.0, 0.0]]
    _, scores = codec.decode(target, INPUT)
    assert scores[0, 0] == 1.0
    reference = HeatmapCodec(peak=1.0)
    outputs = torch.zeros(1, 2, 16, 12)
    assert codec.loss(outputs, kp, INPUT)["loss"] == pytest.approx(0.5 * reference.loss(outputs, kp, INPUT)["loss"])
