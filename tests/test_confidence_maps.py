"""EfficientPose's codec: confidence maps and PAFs encoded then decoded back to the keypoints at stride 8 and at
full resolution, OpenPose's PAF geometry, the masked per-kind loss, the sigma schedule, scipy's blur, a shift-free
flip merge, and its rebuilding from a checkpoint description and from its Hydra config."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from scipy.ndimage import gaussian_filter

from evopose_pl.codecs import ConfidenceMapCodec, codec_from_description
from evopose_pl.codecs.confidence_maps import MPII_LIMBS, gaussian_blur
from evopose_pl.data.mpii import MPII_KEYPOINT_INFO, MPII_KEYPOINTS

INPUT = (128, 96)  # (H, W): not square, so x and y cannot be swapped unnoticed
STRIDE_8, FULL = (16, 12), INPUT
FLIP = MPII_KEYPOINT_INFO.flip_index


def _keypoints(batch: int = 2, size: tuple[int, int] = INPUT) -> torch.Tensor:
    """16 labelled MPII keypoints (B, 16, 3): the input's corners, an exact pixel, and random sub-pixel ones two
    stride-8 pixels or more inside the border (nearer, the reflecting blur pulls a wide peak onto the border
    sample, by up to 0.9 of a stride-8 pixel: the released decoding does the same)."""
    torch.manual_seed(1)
    height, width = size
    kp = torch.ones(batch, 16, 3)
    kp[..., :2] = 16 + torch.rand(batch, 16, 2) * torch.tensor([width - 33.0, height - 33.0])
    kp[:, :4, :2] = torch.tensor([[0.0, 0.0], [width - 1.0, height - 1.0], [0.0, height - 1.0], [37.0, 61.0]])
    return kp


def _outputs(codec: ConfidenceMapCodec, kp: torch.Tensor, size: tuple[int, int] = INPUT) -> dict[str, torch.Tensor]:
    """The perfect training-graph outputs for ``kp``: PAFs and two passes at stride 8, upscaled maps at input size."""
    small = (size[0] // 8, size[1] // 8)
    confs = codec.confidence_maps(kp, size, small)[0]
    return {
        "pafs1": codec.part_affinity_fields(kp, size, small)[0],
        "confs1": confs,
        "confs2": confs.clone(),
        "upscaled": codec.confidence_maps(kp, size, size)[0],
    }


@pytest.mark.parametrize("map_size", [STRIDE_8, FULL], ids=["stride8", "full"])
@pytest.mark.parametrize("epoch", [0, 9], ids=["widest", "narrowest"])
def test_encode_then_decode_returns_the_keypoints_within_half_a_map_pixel(map_size, epoch):
    codec, kp = ConfidenceMapCodec(), _keypoints()
    codec.set_progress(epoch / 10)
    stride = INPUT[1] / map_size[1]
    maps, visible = codec.confidence_maps(kp, INPUT, map_size)
    coords, _ = codec.decode(maps, INPUT)
    assert maps.shape == (2, 16, *map_size) and visible.eq(1).all()
    assert (coords - kp[..., :2]).abs().max() <= 0.5 * stride + 1e-4
    # A keypoint on a sample's centre, (i + 0.5) * stride - 0.5, comes back exactly.
    centres = (torch.tensor([[[3, 7], [0, 0], [map_size[1] - 1, map_size[0] - 1]]]) + 0.5) * stride - 0.5
    on_samples = torch.cat([centres, torch.ones(1, 3, 1)], dim=-1)
    maps, _ = codec.confidence_maps(on_samples, INPUT, map_size)
    assert torch.allclose(codec.decode(maps, INPUT)[0], centres, atol=1e-4)


def test_the_last_output_is_decoded_and_the_deployed_single_tensor_too():
    codec, kp = ConfidenceMapCodec(), _keypoints()
    outputs = _outputs(codec, kp)
    outputs["confs2"] = torch.zeros_like(outputs["confs2"])  # not decoded
    coords, scores = codec.decode(outputs, INPUT)
    assert torch.equal(coords, codec.decode(outputs["upscaled"], INPUT)[0])
    assert (coords - kp[..., :2]).abs().max() <= 0.5 + 1e-4 and scores.min() > 0.5


def test_stride_8_targets_upscaled_bilinearly_centre_where_the_full_resolution_targets_do():
    """The network's fixed upscaling (bilinear 4x4 stride-2 transposed convolutions, as F.interpolate's
    bilinear away from borders) carries the stride-8 targets onto the full-resolution ones: both are aligned
    on pixel centres. Corner alignment (sample i at 8i) would leave them 3.5 input pixels apart."""
    codec = ConfidenceMapCodec()
    kp = torch.tensor([[[40.3, 57.8, 1.0], [51.0, 70.5, 1.0], [44.75, 63.2, 1.0]]])
    upscaled = F.interpolate(
        codec.confidence_maps(kp, INPUT, STRIDE_8)[0], scale_factor=8, mode="bilinear", align_corners=False
    )
    full = codec.confidence_maps(kp, INPUT, FULL)[0]
    ys, xs = torch.meshgrid(torch.arange(128.0), torch.arange(96.0), indexing="ij")
    for maps in (upscaled, full):
        mass = maps.sum((-2, -1))
        centroid = torch.stack([(maps * xs).sum((-2, -1)) / mass, (maps * ys).sum((-2, -1)) / mass], dim=-1)
        assert (centroid - kp[..., :2]).abs().max() < 0.05


def test_pafs_are_unit_vectors_on_the_limb_band_and_zero_off_it():
    size, limbs = (128, 128), [[0, 1], [2, 3], [0, 3]]
    codec = ConfidenceMapCodec(limbs=limbs)
    centre = [(i + 0.5) * 8 - 0.5 for i in range(16)]  # the input pixels of the stride-8 samples
    kp = torch.tensor([[[centre[2], centre[4], 1], [centre[8], centre[4], 1], [centre[2], centre[2], 1],
                        [centre[10], centre[10], 0]]])  # fmt: skip
    fields, weights = codec.part_affinity_fields(kp, size, (16, 16))
    assert fields.shape == (1, 6, 16, 16) and weights.tolist() == [[1, 1, 0, 0, 0, 0]]
    # Horizontal limb 0, from sample (x 2, y 4) to (x 8, y 4), half-width 1: rows 3 to 5, columns 2 to 8.
    expected = torch.zeros(16, 16)
    expected[3:6, 2:9] = 1
    assert torch.equal(fields[0, 0], expected) and torch.equal(fields[0, 1], torch.zeros(16, 16))
    # The diagonal limb 1, (2, 2) to (10, 10), has an unlabelled endpoint: zero (and weight 0 above).
    assert fields[0, 2:].abs().sum() == 0
    kp[0, 3, 2] = 1
    fields, weights = codec.part_affinity_fields(kp, size, (16, 16))
    assert weights.eq(1).all()
    diagonal, unit = fields[0, 2:4], 1 / math.sqrt(2)
    on = [(y, x) for y in range(16) for x in range(16) if abs(x - y) / math.sqrt(2) <= 1 and 4 <= x + y <= 20]
    for y in range(16):
        for x in range(16):
            value = [unit, unit] if (y, x) in on else [0.0, 0.0]
            assert torch.allclose(diagonal[:, y, x], torch.tensor(value)), (y, x)
    assert (3, 2) in on and (2, 4) not in on and (1, 1) not in on and (11, 11) not in on
    # Limb 2 runs from keypoint 0, sample (2, 4), to keypoint 3, sample (10, 10): its vectors are (8, 6) / 10.
    assert torch.allclose(fields[0, 4:6, 4, 2], torch.tensor([0.8, 0.6]))


def test_paf_width_is_in_stride_8_pixels_at_every_resolution():
    codec = ConfidenceMapCodec(limbs=[[0, 1]], paf_width=2.0)
    kp = torch.tensor([[[10.0, 63.5, 1.0], [90.0, 63.5, 1.0]]])
    for map_size, rows in (((16, 12), 4), ((128, 96), 32)):  # +-16 input pixels around y = 63.5
        fields, _ = codec.part_affinity_fields(kp, INPUT, map_size)
        assert fields[0, 0].amax(-1).sum() == rows


def test_the_loss_masks_unlabelled_keypoints_and_their_limbs_and_weighs_outputs_by_kind():
    codec, kp = ConfidenceMapCodec(), _keypoints()
    kp[0, 5, 2] = 0  # l_ankle unlabelled: its maps and limb 13 (l_knee-l_ankle) carry no loss
    outputs = _outputs(codec, kp)
    perfect = codec.loss(outputs, kp, INPUT)
    assert set(perfect) == {"loss", "pafs1", "confs1", "confs2", "upscaled"}
    assert all(value == 0 for value in perfect.values())
    for name in ("confs1", "confs2", "upscaled"):
        outputs[name][0, 5] = torch.rand_like(outputs[name][0, 5])
    outputs["pafs1"][0, 26:28] = torch.rand_like(outputs["pafs1"][0, 26:28])
    assert codec.loss(outputs, kp, INPUT)["loss"] == 0
    outputs["confs1"][1, 5] += 0.5  # labelled in the second sample
    losses = codec.loss(outputs, kp, INPUT)
    assert losses["confs1"] > 0 and losses["confs2"] == losses["pafs1"] == losses["upscaled"] == 0
    assert torch.isclose(losses["confs1"], torch.tensor(0.25 * 16 * 12 / outputs["confs1"].numel()))

    weighted = ConfidenceMapCodec(loss_weights={"pafs": 2.0, "confs": 0.5, "upscaled": 3.0})
    noisy = {name: output + torch.rand_like(output) for name, output in outputs.items()}
    losses = weighted.loss(noisy, kp, INPUT)
    assert all(losses[name] > 0 for name in noisy)
    expected = 2 * losses["pafs1"] + 0.5 * (losses["confs1"] + losses["confs2"]) + 3 * losses["upscaled"]
    assert torch.isclose(losses["loss"], expected)
    unnamed = weighted.loss(tuple(noisy.values()), kp, INPUT)  # kinds by channels and resolution
    assert [unnamed[f"output{i}"] for i in range(4)] == [losses[name] for name in noisy]
    assert torch.isclose(unnamed["loss"], expected)
    with pytest.raises(ValueError, match="output 'pafs1' \\(pafs\\) has 16 channels, not 28"):
        codec.loss({"pafs1": outputs["confs1"]}, kp, INPUT)


def test_set_progress_steps_sigma_down_the_schedule():
    codec = ConfidenceMapCodec(sigma_schedule=[[0.0, 0.1], [0.5, 0.05], [0.9, 0.02]])
    sigmas = []
    for epoch in (0, 4, 5, 8, 9, 10):
        codec.set_progress(epoch / 10)
        sigmas.append(codec.sigma)
    assert sigmas == [0.1, 0.1, 0.05, 0.05, 0.02, 0.02]
    # exp(-d^2 / sigma^2), sigma a fraction of the width: 8 input pixels from the peak at sigma 0.05 x 96.
    codec.set_progress(0.5)
    sample_8, sample_1 = (59.5, 35.5), (59.0, 35.0)  # on a stride-8 sample (x 7, y 4), on a full-resolution one
    for map_size, (x, y), step in ((STRIDE_8, sample_8, 1), (FULL, sample_1, 8)):
        maps, _ = codec.confidence_maps(torch.tensor([[[x, y, 1.0]]]), INPUT, map_size)
        row, column = (4, 7) if step == 1 else (35, 59)
        assert maps[0, 0, row, column] == 1
        assert torch.isclose(maps[0, 0, row, column + step], torch.tensor(math.exp(-(8**2) / 4.8**2)))
    with pytest.raises(ValueError, match="must start at fraction 0 and increase"):
        ConfidenceMapCodec(sigma_schedule=[[0.0, 0.1], [0.5, 0.05], [0.5, 0.02]])


@pytest.mark.parametrize("sigma", [1.0, 2.3])
def test_the_blur_is_scipys_gaussian_filter(sigma):
    for shape in ((2, 3, 13, 17), (1, 2, 3, 5)):  # the second narrower than the kernel: repeated reflections
        maps = torch.rand(shape, dtype=torch.float64)
        expected = gaussian_filter(maps.numpy(), (0, 0, sigma, sigma), mode="reflect", truncate=4.0)
        assert np.allclose(gaussian_blur(maps, sigma).numpy(), expected, atol=1e-12)
    maps = torch.rand(2, 3, 13, 17)
    expected = gaussian_filter(maps.numpy(), (0, 0, sigma, sigma), mode="reflect", truncate=4.0)
    assert np.allclose(gaussian_blur(maps, sigma).numpy(), expected, atol=1e-6)


@pytest.mark.parametrize("map_size", [STRIDE_8, FULL], ids=["stride8", "full"])
def test_a_mirrored_pass_merges_without_a_shift(map_size):
    """A mirrored image's maps (keypoints at x -> W - 1 - x, left and right swapped) flipped back are the
    original maps: merging changes nothing and decodes to the keypoints."""
    codec, kp = ConfidenceMapCodec(), _keypoints()
    mirrored = kp.clone()
    mirrored[..., 0] = INPUT[1] - 1 - kp[..., 0]
    mirrored = mirrored[:, list(FLIP)]
    maps = codec.confidence_maps(kp, INPUT, map_size)[0]
    flipped = codec.confidence_maps(mirrored, INPUT, map_size)[0]
    assert not torch.allclose(flipped.flip(-1), maps)  # the swap is needed
    merged = codec.merge_flip(maps, flipped, FLIP)
    assert torch.allclose(merged, maps, atol=1e-5)
    training = codec.merge_flip({"pafs1": maps[:, :2], "upscaled": maps}, {"pafs1": flipped, "upscaled": flipped}, FLIP)
    assert torch.equal(training, merged)
    coords, _ = codec.decode(merged, INPUT)
    assert (coords - kp[..., :2]).abs().max() <= 0.5 * INPUT[1] / map_size[1] + 1e-4


def test_the_default_limbs_are_openposes_mpii_set_mirror_symmetric():
    names = [(MPII_KEYPOINTS[a], MPII_KEYPOINTS[b]) for a, b in ConfidenceMapCodec().limbs]
    assert names[:2] == [("head_top", "upper_neck"), ("upper_neck", "r_shoulder")] and len(names) == 14
    assert ("upper_neck", "thorax") in names and not any("pelvis" in limb for limb in names)
    assert {(FLIP[a], FLIP[b]) for a, b in MPII_LIMBS} == set(MPII_LIMBS)


def test_person_scores_are_the_box_score_times_the_found_keypoints_mean():
    codec = ConfidenceMapCodec(keypoint_threshold=0.1)
    scores = codec.person_scores(torch.tensor([0.5, 1.0]), torch.tensor([[0.9, 0.05, 0.7], [0.0, 0.0, 0.0]]))
    assert torch.allclose(scores, torch.tensor([0.5 * 0.8, 0.0]))


def test_settings_rebuild_the_codec_from_its_description():
    codec = ConfidenceMapCodec(
        limbs=[[0, 1], [1, 2]], sigma_schedule=[[0, 0.1], [0.3, 0.04]], paf_width=1.5,
        loss_weights={"pafs": 0.5}, blur_sigma=0.0, keypoint_threshold=0.3,
    )  # fmt: skip
    description = json.loads(json.dumps(codec.describe()))  # JSON values, as a checkpoint stores them
    rebuilt = codec_from_description(description)
    assert isinstance(rebuilt, ConfidenceMapCodec) and rebuilt.settings() == codec.settings()
    assert rebuilt.loss_weights == {"pafs": 0.5, "confs": 1.0, "upscaled": 1.0}
    with pytest.raises(ValueError, match="codec.loss_weights: \\['heatmaps'\\] are not among"):
        ConfidenceMapCodec(loss_weights={"heatmaps": 1.0})


def test_the_hydra_config_instantiates_the_default_codec(compose):
    cfg = compose("train", "codec=confidence_maps")
    codec = instantiate(cfg.codec)
    assert isinstance(codec, ConfidenceMapCodec) and codec.settings() == ConfidenceMapCodec().settings()
    json.dumps(codec.settings())  # plain values, not OmegaConf containers
    codec = instantiate(compose("train", "codec=confidence_maps", "codec.loss_weights.pafs=0.2").codec)
    assert codec.loss_weights["pafs"] == 0.2
