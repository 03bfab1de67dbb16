"""The top-down pipeline on real COCO data and on bad input (SPEC sections 5, 7, 8)."""

from __future__ import annotations

import functools
import json
import logging
import math
import re
import shutil

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from evopose_pl.codecs import HeatmapCodec
from evopose_pl.data import (
    AnnotationError,
    Augmentation,
    CocoKeypoints,
    ImageFileError,
    KeypointInfo,
    TopDownDataset,
    decode_heatmaps,
    masked_mse,
    render_heatmaps,
    to_image,
)
from evopose_pl.data.dataset import truncated_jpeg
from evopose_pl.data.synthetic import COCO_KEYPOINTS
from evopose_pl.data.transforms import box_to_center_scale, crop_matrix
from evopose_pl.datamodule import PoseDataModule
from evopose_pl.evaluation import evaluate_coco, results_records
from evopose_pl.metrics import CocoKeypointAP, PCKh

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
    """The heatmap codec's encode -> (flip merge) -> decode round trip, scored by COCO AP."""
    codec, kp = HeatmapCodec(), batch["keypoints"]
    heatmaps, _ = codec.encode(kp, INPUT, heatmap_size)
    if flip:  # what a perfect network predicts on the mirrored crop
        mirrored = kp.clone()
        mirrored[..., 0] = INPUT[1] - 1 - kp[..., 0]
        flipped, _ = codec.encode(mirrored[:, list(flip_index)], INPUT, heatmap_size)
        heatmaps = codec.merge_flip(heatmaps, flipped, flip_index)
    coords, scores = codec.decode(heatmaps, INPUT)
    image_xy = to_image(coords, batch["affine"])
    instance = codec.person_scores(batch["score"], scores)
    results = results_records(batch["image_id"].tolist(), image_xy.numpy(), scores.numpy(), instance.numpy())
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
        box_threshold=0.5,
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


def test_person_scores_use_keypoints_above_the_threshold():
    s = HeatmapCodec().person_scores(torch.tensor([0.9, 0.5]), torch.tensor([[0.1, 0.5, 0.7], [0.1, 0.15, 0.2]]))
    assert s.tolist() == pytest.approx([0.9 * 0.6, 0.0])
    strict = HeatmapCodec(keypoint_threshold=0.6)
    assert strict.person_scores(torch.tensor([1.0]), torch.tensor([[0.5, 0.7]])).tolist() == pytest.approx([0.7])


def _write(path, data):
    path.write_text(json.dumps(data))
    return path


def _copy_sample(coco_sample, folder):
    """A writable copy of the COCO sample: its annotations and its four JPEGs."""
    folder.mkdir()
    for path in coco_sample.iterdir():
        shutil.copyfile(path, folder / path.name)
    return folder


def test_missing_image_is_named_when_the_dataset_is_built(coco_sample, tmp_path):
    images = _copy_sample(coco_sample, tmp_path / "images")
    (images / "000000040083.jpg").unlink()
    with pytest.raises(FileNotFoundError) as info:
        TopDownDataset(images / "test_coco.json", images, INPUT)
    assert f"image {images / '000000040083.jpg'} does not exist (needed by {images / 'test_coco.json'} " in str(
        info.value
    )
    assert "annotations[1] (id 198196) and 1 more" in str(info.value)


def test_an_image_that_cannot_be_decoded_is_named(coco_sample, tmp_path):
    images = _copy_sample(coco_sample, tmp_path / "images")
    (images / "000000000785.jpg").write_bytes(b"not a jpeg")  # no JPEG magic: OpenCV's decode check names it
    ds = TopDownDataset(images / "test_coco.json", images, INPUT)
    with pytest.raises(FileNotFoundError, match=r"000000000785.jpg cannot be decoded \(needed by .*annotations\[0\]"):
        ds[0]


def test_a_truncated_jpeg_is_named_before_training(coco_sample, tmp_path):
    images = _copy_sample(coco_sample, tmp_path / "images")
    TopDownDataset(images / "test_coco.json", images, INPUT)  # the intact copy is accepted
    jpeg = images / "000000196141.jpg"
    jpeg.write_bytes(jpeg.read_bytes()[: jpeg.stat().st_size // 2])
    assert cv2.imread(str(jpeg)) is not None  # OpenCV decodes it (partly grey) with only a warning
    with pytest.raises(ImageFileError) as info:
        TopDownDataset(images / "test_coco.json", images, INPUT)
    message = str(info.value)
    assert f"image {jpeg} is a truncated JPEG" in message
    assert f"(needed by {images / 'test_coco.json'} annotations[4] (id 460541) and 3 more)" in message


def _jpeg(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".jpg", image)
    assert ok
    return data.tobytes()


def test_a_truncated_jpeg_with_an_earlier_end_marker_is_named(coco_sample, tmp_path):
    """An EXIF-style thumbnail ends with its own FF D9 near the start; cut the main scan after it."""
    images = _copy_sample(coco_sample, tmp_path / "images")
    jpeg = images / "000000000785.jpg"
    whole = jpeg.read_bytes()
    thumbnail = _jpeg(np.full((8, 8, 3), 128, np.uint8))
    app1 = b"\xff\xe1" + (len(thumbnail) + 2).to_bytes(2, "big") + thumbnail
    with_thumbnail = whole[:2] + app1 + whole[2:]
    jpeg.write_bytes(with_thumbnail + b"\0" * 10_000)  # padding after the end marker (past 4 KiB) is accepted
    TopDownDataset(images / "test_coco.json", images, INPUT)[0]
    cut = len(app1) + whole.index(b"\xff\xda") + 20_000  # in the main scan, near enough the start that
    assert b"\xff\xd9" in with_thumbnail[:cut][-64 * 1024 :]  # the thumbnail's marker is in the tail
    jpeg.write_bytes(with_thumbnail[:cut])
    with pytest.raises(ImageFileError, match=rf"image {re.escape(str(jpeg))} is a truncated JPEG"):
        TopDownDataset(images / "test_coco.json", images, INPUT)


@pytest.mark.parametrize(
    "params",
    [[], [cv2.IMWRITE_JPEG_PROGRESSIVE, 1], [cv2.IMWRITE_JPEG_RST_INTERVAL, 4]],
    ids=["baseline", "progressive", "restart-markers"],
)
def test_complete_jpegs_with_trailers_pass_and_cut_ones_do_not(coco_sample, tmp_path, params):
    """A trailer after the end marker (a phone's motion-photo video) can hold FF DA or FF D9 by chance:
    the file is walked to its own end marker before it is refused."""
    image = cv2.imread(str(coco_sample / "000000000785.jpg"))
    ok, encoded = cv2.imencode(".jpg", image, params)
    data, path = encoded.tobytes(), tmp_path / "photo.jpg"
    rng = np.random.default_rng(0)
    for k in range(20):
        trailer = rng.integers(0, 256, 200_000, dtype=np.uint8).tobytes()
        if k == 0:  # one trailer that fools the tail: an FF DA after the last FF D9
            trailer += b"\xff\xda" + bytes(100)
        path.write_bytes(data + trailer)
        assert not truncated_jpeg(path), k
    for cut in (len(data) // 3, len(data) - 2, len(data) - 100):
        path.write_bytes(data[:cut])
        assert truncated_jpeg(path), cut


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["annotations"][2].update(keypoints=[1, 2, 3]), "annotations[2] (id"),
        (lambda d: d["annotations"][1].update(bbox=[1, 2]), "annotations[1] (id"),
        (lambda d: d["annotations"][0].update(image_id=-5), "image_id -5 is not in 'images'"),
        (lambda d: d["images"][0].pop("file_name"), "images[0] needs id, file_name"),
        (lambda d: d.pop("categories"), "'categories' is missing"),
        (
            lambda d: d["annotations"][0]["bbox"].__setitem__(2, -5),
            "annotations[0] (id 442619): 'bbox' [280.79, 44.73, -5",
        ),
        (lambda d: d["annotations"][1]["bbox"].__setitem__(3, math.nan), "annotations[1] (id 198196): 'bbox' [38.08"),
        (lambda d: d["annotations"][2]["bbox"].__setitem__(0, math.inf), "annotations[2] (id 230195): 'bbox' [inf"),
        (
            lambda d: d["annotations"][0]["keypoints"].__setitem__(3, math.nan),
            "annotations[0] (id 442619): 'keypoints'",
        ),
        (lambda d: d["annotations"][3].pop("area"), "annotations[3] (id 1202706) has no 'area'"),
        (lambda d: d["annotations"][5].update(area="big"), "annotations[5] (id 488308): 'area' is 'big'"),
        (lambda d: d["annotations"][6].update(area=math.nan), "annotations[6] (id 508900): 'area' is nan"),
    ],
)
def test_malformed_annotation_is_named(coco_sample, tmp_path, mutate, message):
    data = json.loads((coco_sample / "test_coco.json").read_text())
    mutate(data)
    path = _write(tmp_path / "broken.json", data)
    with pytest.raises(AnnotationError) as info:
        TopDownDataset(path, coco_sample, INPUT)
    assert str(path) in str(info.value) and message in str(info.value)


def test_a_missing_area_names_what_needs_it(coco_sample, tmp_path):
    """COCO evaluation reads every ground-truth area, crowd ones included: refuse it on load, not after training."""
    data = json.loads((coco_sample / "test_coco.json").read_text())
    data["annotations"][7].update(iscrowd=1)
    del data["annotations"][7]["area"]
    path = _write(tmp_path / "no_area.json", data)
    with pytest.raises(AnnotationError) as info:
        TopDownDataset(path, coco_sample, INPUT)
    assert f"{path} annotations[7] (id 1717641) has no 'area'" in str(info.value)
    assert "pycocotools" in str(info.value) and "crowd" in str(info.value)


def test_a_zero_width_box_is_kept_as_the_reference_keeps_it(coco_sample, tmp_path):
    data = json.loads((coco_sample / "test_coco.json").read_text())
    data["annotations"][0]["bbox"][2] = 0
    ds = TopDownDataset(_write(tmp_path / "zero.json", data), coco_sample, INPUT)
    assert len(ds) == 12 and ds.instances[0].box[2] == 0


def test_skipped_instances_are_counted_by_reason(coco_sample, tmp_path):
    ds = TopDownDataset(coco_sample / "test_coco.json", coco_sample, INPUT)
    assert ds.annotations.skipped == {"no labelled keypoint": 2}
    data = json.loads((coco_sample / "test_coco.json").read_text())
    data["annotations"][0].update(iscrowd=1)
    data["annotations"][1].update(area=0)
    data["annotations"][2]["bbox"][:2] = [5000, 5000]  # outside its image once clipped
    ds = TopDownDataset(_write(tmp_path / "skips.json", data), coco_sample, INPUT)
    assert len(ds) == 9
    assert ds.annotations.skipped == {"crowd": 1, "no labelled keypoint": 2, "empty box or area <= 0": 2}


def test_no_valid_person_is_named_with_the_counts(coco_sample, tmp_path):
    data = json.loads((coco_sample / "test_coco.json").read_text())
    for ann in data["annotations"]:
        ann["iscrowd"] = 1
    path = _write(tmp_path / "crowds.json", data)
    with pytest.raises(AnnotationError) as info:
        TopDownDataset(path, coco_sample, INPUT)
    assert f"{path}: no valid person instance (skipped 14 crowd)" in str(info.value)


def test_no_detection_above_the_threshold_is_named(coco_sample):
    detections = coco_sample / "test_coco_det_AP_H_56.json"
    with pytest.raises(AnnotationError) as info:
        TopDownDataset(coco_sample / "test_coco.json", coco_sample, INPUT, detections=detections, box_threshold=1.5)
    assert f"detections file {detections}: no person detection with score >= 1.5" in str(info.value)


def test_the_datamodule_logs_kept_and_skipped_instances_per_split(coco_sample, caplog):
    logger = logging.getLogger("lightning.pytorch")  # Lightning's logger does not propagate to caplog's
    logger.addHandler(caplog.handler)
    try:
        data = PoseDataModule("test_coco.json", ".", "test_coco.json", ".", "test_coco_det_AP_H_56.json",
                              box_threshold=0.5, root=coco_sample)  # fmt: skip
        with caplog.at_level(logging.INFO, logger="lightning.pytorch"):
            data.setup()
    finally:
        logger.removeHandler(caplog.handler)
    annotations, detections = coco_sample / "test_coco.json", coco_sample / "test_coco_det_AP_H_56.json"
    counts = f"12 person instances of {annotations} (skipped 2 no labelled keypoint)"
    strict = sum(d["score"] >= 0.5 for d in json.loads(detections.read_text()))
    assert f"train: {counts}" in caplog.messages and f"val: {counts}" in caplog.messages
    assert f"test: {strict} person boxes of {detections} with score >= 0.5" in caplog.messages


@pytest.mark.parametrize("kind", ["annotations", "detections"])
@pytest.mark.parametrize("bad", ["binary", "folder"])
def test_a_file_that_is_not_json_is_named(coco_sample, tmp_path, kind, bad):
    path = tmp_path / f"{kind}.json"
    if bad == "binary":
        shutil.copyfile(coco_sample / "000000000785.jpg", path)  # a JPEG given for a JSON file
    else:
        path.mkdir()
    annotations = path if kind == "annotations" else coco_sample / "test_coco.json"
    detections = path if kind == "detections" else None
    role = "annotation file" if kind == "annotations" else "detections file"
    with pytest.raises(AnnotationError, match=re.escape(f"{role} {path}: ")):
        TopDownDataset(annotations, coco_sample, INPUT, detections=detections)


def test_a_missing_annotation_or_detections_file_is_named(coco_sample, tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"annotation file {re.escape(str(tmp_path))}/a.json does not exist"):
        TopDownDataset(tmp_path / "a.json", coco_sample, INPUT)
    with pytest.raises(FileNotFoundError, match=rf"detections file {re.escape(str(tmp_path))}/d.json does not exist"):
        TopDownDataset(coco_sample / "test_coco.json", coco_sample, INPUT, detections=tmp_path / "d.json")


def test_malformed_detections_are_named(coco_sample, tmp_path):
    path = _write(tmp_path / "dets.json", [{"image_id": 785, "bbox": [1, 2, 3, 4]}])
    with pytest.raises(AnnotationError, match=r"dets.json \[0\]: needs image_id, bbox and score"):
        TopDownDataset(coco_sample / "test_coco.json", coco_sample, INPUT, detections=path)


def test_coco_ap_refuses_a_keypoint_set_without_oks_sigmas(coco_sample):
    results = results_records([785], np.zeros((1, 16, 2)), np.ones((1, 16)), np.ones(1))
    with pytest.raises(ValueError, match="have 16 keypoints"):
        evaluate_coco(coco_sample / "test_coco.json", results)


def test_samples_carry_their_index_in_the_split(coco_sample):
    ds = TopDownDataset(coco_sample / "test_coco.json", coco_sample, INPUT)
    batch = default_collate([ds[i] for i in range(len(ds))])
    assert batch["index"].tolist() == list(range(len(ds)))
    dets = TopDownDataset(coco_sample / "test_coco.json", coco_sample, INPUT,
                          detections=coco_sample / "test_coco_det_AP_H_56.json")  # fmt: skip
    assert dets[117]["index"] == 117


def test_the_dataset_takes_an_annotation_source_or_a_coco_file(coco_sample):
    coco = CocoKeypoints(coco_sample / "test_coco.json", coco_sample)
    from_source = TopDownDataset(coco, input_size=INPUT)
    from_file = TopDownDataset(coco_sample / "test_coco.json", coco_sample, INPUT)
    assert from_source.annotations is coco and from_source.annotation_file == from_file.annotation_file
    assert torch.equal(from_source[3]["image"], from_file[3]["image"])
    assert from_source.keypoint_info == coco.keypoint_info
    with pytest.raises(ValueError, match="images_dir goes with an annotation file"):
        TopDownDataset(coco, coco_sample, INPUT)
    with pytest.raises(ValueError, match="test_coco.json needs its images_dir"):
        TopDownDataset(coco_sample / "test_coco.json", input_size=INPUT)


def _coco_module(coco_sample, **kwargs) -> PoseDataModule:
    return PoseDataModule("test_coco.json", ".", "test_coco.json", ".", root=coco_sample, **kwargs)


def test_the_datamodule_chooses_the_test_metric(coco_sample, mpii_sample):
    data = _coco_module(coco_sample)
    metric = data.test_metric()  # sets the test split up
    assert isinstance(metric, CocoKeypointAP) and data.test_set is not None
    assert metric.annotation_file == coco_sample / "test_coco.json"
    seen = []

    class Counting(CocoKeypointAP):
        def __init__(self, dataset, label: str) -> None:
            super().__init__(dataset)
            seen.append((dataset, label))

    chosen = _coco_module(coco_sample, metric=functools.partial(Counting, label="mine"))
    chosen.setup("test")
    assert isinstance(chosen.test_metric(), Counting) and seen == [(chosen.test_set, "mine")]
    mpii = PoseDataModule("test_mpii.json", ".", "test_mpii.json", ".", root=mpii_sample, format="mpii")
    assert mpii.keypoint_info.num_keypoints == 16
    with pytest.raises(ValueError, match=r"PCKh needs every person's head box, but 5 of the 5 people of .*test_mpii"):
        mpii.test_metric()  # the sample's json has no head boxes and no .mat was given
    with pytest.raises(ValueError, match=r"PCKh scores MPII's 16 joints; .*test_coco.json has 17 keypoints"):
        _coco_module(coco_sample, metric=PCKh).test_metric()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"format": "posetrack"}, "data.format='posetrack': must be one of 'coco', 'mpii'"),
        ({"head_boxes": "gt_valid.mat"}, "head boxes are MPII's"),
        ({"format": "mpii", "test_detections": "dets.json"}, "MPII is tested on its annotated people"),
        ({"metric": "PCKh"}, "data.metric must build a Metric from the test split"),
    ],
)
def test_the_datamodule_refuses_settings_that_do_not_fit_the_format(coco_sample, kwargs, message):
    with pytest.raises((ValueError, TypeError), match=re.escape(message)):
        _coco_module(coco_sample, **kwargs)


def test_data_configs_name_their_metric_and_box_threshold(compose):
    cfg = compose("train", "data=coco", "data.root=/data/coco")
    assert cfg.data.input_size == cfg.model.resolution and cfg.data.box_threshold == 0.0
    assert cfg.data.format == "coco" and cfg.data.metric._target_ == "evopose_pl.metrics.CocoKeypointAP"
    assert cfg.data.metric._partial_ and "score_threshold" not in cfg.data
    synthetic = compose("train", "data=synthetic").data
    assert synthetic.metric._target_.endswith("CocoKeypointAP") and synthetic.box_threshold == 0.0
    for overrides in (["data=mpii", "data.root=/data/mpii"], ["data=mpii_synthetic"]):
        data = compose("train", *overrides).data
        assert data.format == "mpii" and data.metric._target_ == "evopose_pl.metrics.PCKh" and data.metric._partial_
        assert data.input_size[0] == data.input_size[1]  # square, as MPII is reported
