"""The top-down pipeline on real COCO data and on bad input (SPEC sections 5, 7, 8)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from evopose_pl.data import (
    AnnotationError,
    Augmentation,
    KeypointInfo,
    TopDownDataset,
    decode_heatmaps,
    masked_mse,
    merge_flipped,
    render_heatmaps,
    to_image,
)
from evopose_pl.data.synthetic import COCO_KEYPOINTS
from evopose_pl.data.transforms import box_to_center_scale, crop_matrix
from evopose_pl.evaluation import evaluate_coco, rescore, results_records

INPUT = (256, 192)


def _valid_annotations(path) -> list[dict]:
    data = json.loads(path.read_text())
    return [a for a in data["annotations"] if not a["iscrowd"] and max(a["keypoints"][2::3]) > 0]


def test_dataset_yields_every_valid_instance(coco_sample):
    ds = TopDownDataset(coco_sample / "test_coco.json", coco_sample, INPUT)
    valid = _valid_annotations(coco_sample / "test_coco.json")
    assert len(ds) == len(valid) == 12
    assert sorted(i.image_id for i in ds.instances) == sorted(a["image_id"] for a in valid)
    sample = ds[0]
    assert sample["image"].dtype == torch.uint8 and tuple(sample["image"].shape) == (3, *INPUT)
    assert tuple(sample["keypoints"].shape) == (17, 3) and tuple(sample["affine"].shape) == (2, 3)
    assert sample["score"] == 1.0


def _round_trip_ap(batch, flip_index, heatmap_size, flip: bool, annotations) -> float:
    kp = batch["keypoints"]
    heatmaps, _ = render_heatmaps(kp, INPUT, heatmap_size)
    if flip:  # what a perfect network predicts on the mirrored crop
        mirrored = kp.clone()
        mirrored[..., 0] = INPUT[1] - 1 - kp[..., 0]
        flipped, _ = render_heatmaps(mirrored[:, list(flip_index)], INPUT, heatmap_size)
        heatmaps = merge_flipped(heatmaps, flipped, flip_index)
    coords, scores = decode_heatmaps(heatmaps, INPUT)
    image_xy = to_image(coords, batch["affine"])
    instance = rescore(batch["score"].numpy(), scores.numpy())
    results = results_records(batch["image_id"].tolist(), image_xy.numpy(), scores.numpy(), instance)
    return evaluate_coco(annotations, results)["AP"]


@pytest.mark.parametrize("heatmap_size", [(64, 48), (128, 96)])
@pytest.mark.parametrize("flip", [False, True])
def test_encode_decode_round_trip_scores_near_perfect_ap(coco_sample, heatmap_size, flip):
    ds = TopDownDataset(coco_sample / "test_coco.json", coco_sample, INPUT)
    batch = default_collate([ds[i] for i in range(len(ds))])
    ap = _round_trip_ap(batch, ds.flip_index, heatmap_size, flip, coco_sample / "test_coco.json")
    assert ap >= 0.95


def test_round_trip_detects_a_wrong_inverse_affine(coco_sample):
    """The AP check can fail: predictions mapped back through the wrong crop score poorly."""
    ds = TopDownDataset(coco_sample / "test_coco.json", coco_sample, INPUT)
    batch = default_collate([ds[i] for i in range(len(ds))])
    batch["affine"] = batch["affine"].roll(1, dims=0)
    assert _round_trip_ap(batch, ds.flip_index, (64, 48), False, coco_sample / "test_coco.json") < 0.3


def test_detections_load_into_test_samples(coco_sample):
    detections = json.loads((coco_sample / "test_coco_det_AP_H_56.json").read_text())
    ds = TopDownDataset(
        coco_sample / "test_coco.json", coco_sample, INPUT, detections=coco_sample / "test_coco_det_AP_H_56.json"
    )
    assert len(ds) == sum(d["category_id"] == 1 for d in detections) == 118
    strict = TopDownDataset(
        coco_sample / "test_coco.json",
        coco_sample,
        INPUT,
        detections=coco_sample / "test_coco_det_AP_H_56.json",
        score_threshold=0.5,
    )
    assert len(strict) == sum(d["score"] >= 0.5 for d in detections) < len(ds)
    sample = ds[3]
    assert sample["score"] == pytest.approx(detections[3]["score"])
    x, y, w, h = detections[3]["bbox"]
    centre = sample["affine"].double().numpy() @ np.array([x + w / 2, y + h / 2, 1.0])
    assert centre == pytest.approx([INPUT[1] / 2, INPUT[0] / 2], abs=1e-3)


def test_crop_fixes_the_aspect_and_pads_by_a_quarter():
    centre, scale = box_to_center_scale((10, 20, 60, 40), INPUT)  # wide box: height grows to 60 * 256/192
    assert centre.tolist() == [40, 40]
    assert scale == pytest.approx(60 * 256 / 192 * 1.25 / 256)
    _, tall = box_to_center_scale((0, 0, 30, 200), INPUT)
    assert tall == pytest.approx(200 * 1.25 / 256)
    m = crop_matrix((40, 40), scale, INPUT)
    left, right = (np.array([[10.0, 40.0], [70.0, 40.0]]) @ m[:, :2].T + m[:, 2])[:, 0]
    assert right - left == pytest.approx(INPUT[1] / 1.25)  # the box fills the input but for the padding
    assert (left + right) / 2 == pytest.approx(INPUT[1] / 2)


def test_augmentation_flips_swaps_and_hides_keypoints_outside(coco_sample):
    plain = TopDownDataset(coco_sample / "test_coco.json", coco_sample, INPUT)
    flipped = TopDownDataset(
        coco_sample / "test_coco.json",
        coco_sample,
        INPUT,
        augmentation=Augmentation(flip_prob=1.0, scale_factor=0.0, rotation_prob=0.0),
    )
    a, b = plain[0], flipped[0]
    # Mirroring the image (x -> width - 1 - x) then cropping about the mirrored centre puts input
    # column u at W - u: the crop is the plain crop mirrored and moved one column right.
    assert (a["image"].flip(-1)[..., :-1].float() - b["image"][..., 1:].float()).abs().mean() < 1
    visible = (a["keypoints"][:, 2] > 0) & (b["keypoints"][plain.flip_index, 2] > 0)
    mirrored = INPUT[1] - a["keypoints"][:, 0]
    assert torch.allclose(b["keypoints"][plain.flip_index, 0][visible], mirrored[visible], atol=1e-3)

    zoomed = TopDownDataset(
        coco_sample / "test_coco.json",
        coco_sample,
        INPUT,
        augmentation=Augmentation(
            flip_prob=0.0, scale_factor=0.3, rotation_prob=1.0, half_body_prob=1.0, half_body_min_keypoints=3
        ),
    )
    hidden = 0
    for i in range(len(zoomed)):
        kp = zoomed[i]["keypoints"]
        inside = (kp[:, 0] >= 0) & (kp[:, 0] < INPUT[1]) & (kp[:, 1] >= 0) & (kp[:, 1] < INPUT[0])
        assert torch.all(kp[~inside, 2] == 0)
        hidden += int(((~inside) & (torch.from_numpy(zoomed.instances[i].keypoints[:, 2]) > 0)).sum())
    assert hidden > 0  # half-body crops leave labelled keypoints outside: they lose their visibility


def test_augmentation_is_reproducible_and_changes_per_epoch(coco_sample):
    def make():
        return TopDownDataset(
            coco_sample / "test_coco.json",
            coco_sample,
            INPUT,
            augmentation=Augmentation(),
            seed=3,
        )

    a, b = make(), make()
    assert torch.equal(a[2]["affine"], b[2]["affine"])
    b.set_epoch(1)
    assert not torch.equal(a[2]["affine"], b[2]["affine"])


def test_flip_pairs_from_coco_names_and_other_sets():
    info = KeypointInfo(COCO_KEYPOINTS)
    assert info.flip_index == (0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15)
    assert info.upper_body == tuple(range(11))
    mpii = KeypointInfo(
        (
            "r_ankle",
            "r_knee",
            "r_hip",
            "l_hip",
            "l_knee",
            "l_ankle",
            "pelvis",
            "thorax",
            "upper_neck",
            "head_top",
            "r_wrist",
            "r_elbow",
            "r_shoulder",
            "l_shoulder",
            "l_elbow",
            "l_wrist",
        )
    )
    assert mpii.flip_index == (5, 4, 3, 2, 1, 0, 6, 7, 8, 9, 15, 14, 13, 12, 11, 10)
    assert mpii.upper_body == (7, 8, 9, 10, 11, 12, 13, 14, 15)


def test_targets_are_gaussians_at_the_rounded_heatmap_coordinate():
    kp = torch.tensor([[[100.0, 60.0, 2.0], [3.0, 250.0, 1.0], [50.0, 50.0, 0.0]]])
    heatmaps, visible = render_heatmaps(kp, INPUT, (64, 48))
    assert visible.tolist() == [[1.0, 1.0, 0.0]]
    peak = divmod(int(heatmaps[0, 0].argmax()), 48)
    assert peak == (math.floor(60 / 4 + 0.5), math.floor(100 / 4 + 0.5)) and heatmaps[0, 0].max() == 255
    sigma = 2 * 64 / 64
    assert heatmaps[0, 0, 15, 26].item() == pytest.approx(255 * math.exp(-1 / (2 * sigma**2)))


def test_loss_ignores_invisible_keypoints_but_counts_them_in_the_mean():
    target = torch.zeros(2, 3, 8, 6)
    predicted = torch.zeros(2, 3, 8, 6)
    predicted[:, 2] = 100.0  # wrong only where invisible
    visible = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    assert masked_mse(predicted, target, visible).item() == 0.0
    predicted[0, 0, 0, 0] = 10.0
    assert masked_mse(predicted, target, visible).item() == pytest.approx(100 / (2 * 3 * 8 * 6))


def test_decoding_takes_a_quarter_step_toward_the_higher_neighbour():
    heatmaps = torch.zeros(1, 2, 16, 12)
    heatmaps[0, 0, 5, 7], heatmaps[0, 0, 5, 8], heatmaps[0, 0, 4, 7] = 200.0, 100.0, 50.0
    heatmaps[0, 1, 0, 1] = 255.0  # on the border: no offset
    coords, scores = decode_heatmaps(heatmaps, (64, 48))
    assert coords[0, 0].tolist() == pytest.approx([(7 + 0.25) * 4, (5 - 0.25) * 4])
    assert coords[0, 1].tolist() == pytest.approx([4.0, 0.0])
    assert scores[0].tolist() == pytest.approx([200 / 255, 1.0])


def test_rescoring_uses_keypoints_above_the_threshold():
    s = rescore(np.array([0.9, 0.5]), np.array([[0.1, 0.5, 0.7], [0.1, 0.15, 0.2]]))
    assert s.tolist() == pytest.approx([0.9 * 0.6, 0.0])


def _write(path, data):
    path.write_text(json.dumps(data))
    return path


def test_missing_image_is_named(coco_sample, tmp_path):
    ds = TopDownDataset(coco_sample / "test_coco.json", tmp_path, INPUT)
    with pytest.raises(FileNotFoundError) as info:
        ds[0]
    assert f"image {ds.instances[0].image_path} does not exist" in str(info.value)
    assert "annotations[" in str(info.value)
    (tmp_path / ds.instances[0].image_path.name).write_bytes(b"not a jpeg")
    with pytest.raises(FileNotFoundError, match="cannot be decoded"):
        ds[0]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["annotations"][2].update(keypoints=[1, 2, 3]), "annotations[2] (id"),
        (lambda d: d["annotations"][1].update(bbox=[1, 2]), "annotations[1] (id"),
        (lambda d: d["annotations"][0].update(image_id=-5), "image_id -5 is not in 'images'"),
        (lambda d: d["images"][0].pop("file_name"), "images[0] needs id, file_name"),
        (lambda d: d.pop("categories"), "'categories' is missing"),
    ],
)
def test_malformed_annotation_is_named(coco_sample, tmp_path, mutate, message):
    data = json.loads((coco_sample / "test_coco.json").read_text())
    mutate(data)
    path = _write(tmp_path / "broken.json", data)
    with pytest.raises(AnnotationError) as info:
        TopDownDataset(path, coco_sample, INPUT)
    assert str(path) in str(info.value) and message in str(info.value)


def test_malformed_detections_are_named(coco_sample, tmp_path):
    path = _write(tmp_path / "dets.json", [{"image_id": 785, "bbox": [1, 2, 3, 4]}])
    with pytest.raises(AnnotationError, match=r"dets.json \[0\]: needs image_id, bbox and score"):
        TopDownDataset(coco_sample / "test_coco.json", coco_sample, INPUT, detections=path)


def test_coco_ap_refuses_a_keypoint_set_without_oks_sigmas(coco_sample):
    results = results_records([785], np.zeros((1, 16, 2)), np.ones((1, 16)), np.ones(1))
    with pytest.raises(ValueError, match="have 16 keypoints"):
        evaluate_coco(coco_sample / "test_coco.json", results)
