"""Whole-image samples (KAPAO): letterbox, mosaic, scene augmentation, and labels that move with the pixels."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from evopose_pl.data.coco import CocoKeypoints
from evopose_pl.data.synthetic import SyntheticConfig, ensure_synthetic
from evopose_pl.data.whole_image import (
    PAD_VALUE,
    SceneAugmentation,
    WholeImageDataset,
    collate_objects,
    draw_objects,
    hsv_jitter,
    letterbox,
    letterbox_matrix,
    object_labels,
)

OUTPUT = Path(__file__).resolve().parent / "output"
K = 17
NO_AUG = dict(mosaic_prob=0.0, scale=0.0, translate=0.0, hsv=(0.0, 0.0, 0.0), flip_prob=0.0)
# Each transform alone, and all together (flip forced, so a marker's expected colour is known; HSV apart, as it
# changes colours). Scales stay in [0.6, 1.4], so every marker keeps a few pixels of radius.
TRANSFORMS = {
    "letterbox": None,
    "mosaic": SceneAugmentation(**{**NO_AUG, "mosaic_prob": 1.0}),
    "affine": SceneAugmentation(**{**NO_AUG, "scale": 0.4, "translate": 0.1}),
    "flip": SceneAugmentation(**{**NO_AUG, "flip_prob": 1.0}),
    "all": SceneAugmentation(mosaic_prob=1.0, scale=0.4, translate=0.1, hsv=(0.0, 0.0, 0.0), flip_prob=1.0),
}
# Marker images: black, the person's box filled grey, each labelled keypoint a disc of its own saturated colour
# (one channel 0, one 255: far from the greys, and still saturated, S >= 0.3 x 255, under any HSV gain).
BOX_GREY = 60
MARKER_RADIUS = 4
LEVELS = (0, 85, 170, 255)
PALETTE = [(r, g, b) for r in LEVELS for g in LEVELS for b in LEVELS if min(r, g, b) == 0 and max(r, g, b) == 255]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return ensure_synthetic(tmp_path_factory.mktemp("whole_image"), SyntheticConfig(train_images=8, val_images=4))


@pytest.fixture(scope="module")
def annotations(synthetic) -> CocoKeypoints:
    return CocoKeypoints(synthetic.train_annotations, synthetic.images("train"))


@pytest.fixture(scope="module")
def markers(synthetic, annotations, tmp_path_factory) -> CocoKeypoints:
    """The synthetic people, one per image (so boxes never overlap), redrawn as markers in lossless PNGs."""
    root = tmp_path_factory.mktemp("markers")
    data = json.loads(synthetic.train_annotations.read_text())
    first: dict[int, dict] = {}
    for ann in data["annotations"]:
        if ann["num_keypoints"] > 0:
            first.setdefault(ann["image_id"], ann)
    data["annotations"] = list(first.values())
    for image in data["images"]:
        image["file_name"] = image["file_name"].replace(".jpg", ".png")
    (root / "markers.json").write_text(json.dumps(data))
    coco = CocoKeypoints(root / "markers.json", root)
    for inst in coco.instances:
        record = coco.images[inst.image_id]
        canvas = np.zeros((record["height"], record["width"], 3), np.uint8)
        x, y, w, h = inst.box
        cv2.rectangle(canvas, (round(x), round(y)), (round(x + w), round(y + h)), (BOX_GREY,) * 3, -1)
        for k, (kx, ky, v) in enumerate(inst.keypoints):
            if v > 0:
                cv2.circle(canvas, (round(kx), round(ky)), MARKER_RADIUS, PALETTE[k][::-1], -1)  # BGR
        cv2.imwrite(str(inst.image_path), canvas)
    assert len(coco.instances) == len(coco.images)
    return coco


def poses(sample: dict) -> tuple[np.ndarray, np.ndarray]:
    """A sample's pose boxes (P, 4) and keypoints (P, K, 3)."""
    objects = sample["objects"].numpy()
    rows = objects[objects[:, 0] == 0]
    return rows[:, 1:5], rows[:, 5:].reshape(len(rows), K, 3)


def rgb(sample: dict) -> np.ndarray:
    return sample["image"].permute(1, 2, 0).numpy()


def check_labels_inside(sample: dict, input_size, min_box: float = 0.0) -> None:
    """No pose box or visible keypoint outside the image's pixels; unlabelled keypoints zeroed; a keypoint object
    per visible keypoint, centred on it."""
    height, width = input_size
    boxes, keypoints = poses(sample)
    assert (boxes >= 0).all() and (boxes[:, [0, 2]] <= width - 1).all() and (boxes[:, [1, 3]] <= height - 1).all()
    assert (boxes[:, 2:] - boxes[:, :2] >= min_box).all()
    visible = keypoints[..., 2] > 0
    assert (keypoints[visible][:, 0] <= width - 1).all() and (keypoints[visible][:, 1] <= height - 1).all()
    assert (keypoints[visible][:, :2] >= 0).all() and (keypoints[~visible] == 0).all()
    objects = sample["objects"].numpy()
    points = objects[objects[:, 0] > 0]
    assert len(points) == visible.sum()
    person, k = np.nonzero(visible)
    np.testing.assert_allclose(points[:, 0], 1 + k)
    np.testing.assert_allclose((points[:, 1:3] + points[:, 3:5]) / 2, keypoints[person, k, :2], atol=1e-3)
    np.testing.assert_allclose(points[:, 3] - points[:, 1], 0.05 * max(height, width), rtol=1e-5)
    assert (points[:, 5:] == 0).all()


def expected_people(dataset: WholeImageDataset, plan, min_box: float) -> list[tuple[np.ndarray, bool, np.ndarray]]:
    """Every annotated person of every piece through the piece's matrix, by the spec's rules written out one person
    at a time: (its box clipped to the piece and the image, whether it is kept, its keypoints after the flip)."""
    height, width = dataset.input_size
    flip_index = list(dataset.keypoint_info.flip_index)
    people = []
    for piece in plan.pieces:
        m = piece.matrix
        bx1, by1, bx2, by2 = piece.bounds
        low, high = np.array([max(bx1, 0), max(by1, 0)]), np.array([min(bx2, width - 1), min(by2, height - 1)])
        image_id = dataset.image_ids[piece.index]
        for inst in (i for i in dataset.annotations.instances if i.image_id == image_id):
            x, y, w, h = inst.box
            corners = np.array([[x, y], [x + w, y], [x, y + h], [x + w, y + h]]) @ m[:, :2].T + m[:, 2]
            lo, hi = corners.min(0), corners.max(0)
            cut_lo, cut_hi = np.clip(lo, low, high), np.clip(hi, low, high)
            size = cut_hi - cut_lo
            kept = bool((size >= min_box).all() and size.prod() >= 0.1 * (hi - lo).prod())
            points = inst.keypoints[:, :2].astype(np.float64) @ m[:, :2].T + m[:, 2]
            inside = (points[:, 0] >= bx1) & (points[:, 0] <= bx2) & (points[:, 1] >= by1) & (points[:, 1] <= by2)
            visible = inside & (inst.keypoints[:, 2] > 0)
            clamped = np.clip(points, 0, (width - 1, height - 1))
            keypoints = np.where(visible[:, None], np.c_[clamped, inst.keypoints[:, 2]], 0.0)
            people.append((np.r_[cut_lo, cut_hi], kept, keypoints[flip_index] if plan.flip else keypoints))
    return people


# --- letterbox -------------------------------------------------------------------------------------------------


def test_letterbox_matrix_fits_centres_and_pads():
    m = letterbox_matrix((425, 640), (384, 512))  # scale 0.8: 512 x 340, 22 pixels of pad above and below
    np.testing.assert_allclose(m[:, :2], [[0.8, 0], [0, 0.8]])
    # The image's extent (pixel centres at integers: [-0.5, w - 0.5]) fills exactly pixels 0-511 and 22-361.
    corners = np.array([[-0.5, -0.5], [639.5, 424.5]]) @ m[:, :2].T + m[:, 2]
    np.testing.assert_allclose(corners, [[-0.5, 21.5], [511.5, 361.5]])
    tall = letterbox_matrix((640, 320), (256, 256))  # pad left and right
    extent = np.array([[-0.5, -0.5], [319.5, 639.5]]) @ tall[:, :2].T + tall[:, 2]
    np.testing.assert_allclose(extent, [[63.5, -0.5], [191.5, 255.5]])
    np.testing.assert_allclose(letterbox_matrix((256, 320), (256, 320)), [[1, 0, 0], [0, 1, 0]], atol=1e-12)


def test_unaugmented_sample_is_the_letterboxed_image_and_its_annotations(coco_sample):
    coco = CocoKeypoints(coco_sample / "test_coco.json", coco_sample)
    dataset = WholeImageDataset(coco, (384, 512))
    assert len(dataset) == len(coco.images) and dataset.keypoint_info == coco.keypoint_info
    assert "4 images" in dataset.summary() and "12 people" in dataset.summary() and "skipped" in dataset.summary()
    for index in range(len(dataset)):
        sample = dataset[index]
        image_id = sample["image_id"]
        record = coco.images[image_id]
        size = (record["height"], record["width"])
        m = letterbox_matrix(size, (384, 512))
        np.testing.assert_allclose(sample["affine"].numpy(), m, atol=1e-6)
        assert sample["image"].dtype == torch.uint8 and sample["image"].shape == (3, 384, 512)
        # Pad placement, and the content is the resized image (cv2.resize aligns pixel centres as the matrix does).
        nw, nh = round(size[1] * m[0, 0]), round(size[0] * m[1, 1])
        x0, y0 = (512 - nw) // 2, (384 - nh) // 2
        image = rgb(sample)
        pad = np.ones(image.shape[:2], bool)
        pad[y0 : y0 + nh, x0 : x0 + nw] = False
        assert (image[pad] == PAD_VALUE).all()
        source = cv2.cvtColor(cv2.imread(str(coco.image_path(image_id))), cv2.COLOR_BGR2RGB)
        resized = cv2.resize(source, (nw, nh), interpolation=cv2.INTER_LINEAR)
        assert np.abs(image[y0 : y0 + nh, x0 : x0 + nw].astype(int) - resized).mean() < 1.0
        # Labels: every annotated person, mapped by the letterbox matrix.
        people = [i for i in coco.instances if i.image_id == image_id]
        boxes, keypoints = poses(sample)
        assert len(boxes) == len(people)
        for box, kps, inst in zip(boxes, keypoints, people):
            x, y, w, h = inst.box
            corners = np.array([[x, y], [x + w, y + h]]) @ m[:, :2].T + m[:, 2]
            np.testing.assert_allclose(box, np.clip(corners, 0, (511, 383)).reshape(-1), atol=1e-3)  # cut to pixels
            labelled = inst.keypoints[:, 2] > 0
            np.testing.assert_array_equal(kps[:, 2], inst.keypoints[:, 2] * labelled)
            mapped = inst.keypoints[labelled, :2] @ m[:, :2].T + m[:, 2]
            np.testing.assert_allclose(kps[labelled, :2], mapped, atol=0.5)  # clamped to the pixels at the edge
        points = sample["objects"][sample["objects"][:, 0] > 0]
        assert len(points) == sum(int((i.keypoints[:, 2] > 0).sum()) for i in people)
        np.testing.assert_allclose(points[:, 3] - points[:, 1], 0.05 * 512, rtol=1e-6)
        np.testing.assert_allclose(points[:, 4] - points[:, 2], 0.05 * 512, rtol=1e-6)
        check_labels_inside(sample, (384, 512))


def test_object_labels_rows():
    boxes = np.array([[10, 20, 50, 90]], np.float64)
    keypoints = np.zeros((1, 3, 3))
    keypoints[0, 0] = (30, 40, 2)
    keypoints[0, 2] = (35, 60, 1)
    keypoints[0, 1] = (99, 99, 0)  # unlabelled: zeroed
    labels = object_labels(boxes, keypoints, (128, 192), keypoint_box=0.05)
    assert labels.dtype == np.float32 and labels.shape == (3, 5 + 9)
    np.testing.assert_allclose(labels[0], [0, 10, 20, 50, 90, 30, 40, 2, 0, 0, 0, 35, 60, 1])
    half = 0.05 * 192 / 2
    np.testing.assert_allclose(labels[1, :5], [1, 30 - half, 40 - half, 30 + half, 40 + half])
    np.testing.assert_allclose(labels[2, :5], [3, 35 - half, 60 - half, 35 + half, 60 + half])
    assert (labels[1:, 5:] == 0).all()
    assert object_labels(np.zeros((0, 4)), np.zeros((0, 3, 3)), (64, 64)).shape == (0, 14)


# --- labels move with the pixels -------------------------------------------------------------------------------


def check_markers(sample: dict, flipped: bool, flip_index, colours: bool = True) -> int:
    """Every isolated visible keypoint lies on its marker (of the keypoint it names, or of its mirror image when
    flipped); every pose box fits its grey box. Returns how many keypoints were checked."""
    image = rgb(sample).astype(np.int64)
    boxes, keypoints = poses(sample)
    person, k = np.nonzero(keypoints[..., 2] > 0)
    points = keypoints[person, k, :2]
    distance = np.linalg.norm(points[:, None] - points[None], axis=-1) + np.eye(len(points)) * 1e9
    checked = 0
    references = np.array(PALETTE + [(0, 0, 0), (BOX_GREY,) * 3, (PAD_VALUE,) * 3])
    for (x, y), name, near in zip(points, k, distance.min(1) if len(points) else []):
        if near <= 2 * MARKER_RADIUS * 1.7 + 1:  # another marker could cover this one
            continue
        pixel = image[int(round(y)), int(round(x))]
        hsv = cv2.cvtColor(pixel.astype(np.uint8)[None, None], cv2.COLOR_RGB2HSV)[0, 0]
        assert hsv[1] > 40, f"keypoint {name} at ({x:.1f}, {y:.1f}) is not on a marker: {pixel}"
        if colours:
            found = int(np.argmin(np.linalg.norm(references - pixel, axis=1)))
            assert found == (flip_index[name] if flipped else name), f"keypoint {name} on marker {found}"
        checked += 1
    if colours:  # the grey box around each person; HSV changes the grey
        grey = (np.abs(image - BOX_GREY) <= 12).all(-1)
        height, width = grey.shape
        for box in boxes:
            x1, y1 = np.maximum(np.floor(box[:2] - 4), 0).astype(int)
            x2, y2 = (np.minimum(np.ceil(box[2:] + 4), (width - 1, height - 1))).astype(int)
            ys, xs = np.nonzero(grey[y1 : y2 + 1, x1 : x2 + 1])
            found = np.array([xs.min() + x1, ys.min() + y1, xs.max() + x1, ys.max() + y1])
            np.testing.assert_allclose(found, box, atol=2.0, err_msg="the pose box does not fit the person's box")
    return checked


@pytest.mark.parametrize("transform", list(TRANSFORMS))
def test_keypoints_and_boxes_land_on_the_moved_content(markers, transform):
    dataset = WholeImageDataset(markers, (320, 384), TRANSFORMS[transform], seed=3)
    flip_index = dataset.keypoint_info.flip_index
    checked = 0
    for epoch in range(2):
        dataset.set_epoch(epoch)
        for index in range(len(dataset)):
            sample = dataset[index]
            plan = dataset.plan(index)
            assert plan.flip == (transform in ("flip", "all")) and plan.mosaic == (transform in ("mosaic", "all"))
            checked += check_markers(sample, plan.flip, flip_index)
            check_labels_inside(sample, dataset.input_size, min_box=2.0 if transform != "letterbox" else 0.0)
    assert checked > 50


def test_flip_mirrors_the_image_and_swaps_left_and_right(annotations):
    """With every other draw the same, a flipped sample is the mirror image of the unflipped one, its labels
    mirrored, and left and right exchanged: a name still means the person's own side."""
    names = annotations.keypoint_info.names
    flip_index = list(annotations.keypoint_info.flip_index)
    left, right = names.index("left_shoulder"), names.index("right_shoulder")
    for settings in ({}, {"mosaic_prob": 1.0, "scale": 0.5, "translate": 0.1}):
        plain = WholeImageDataset(annotations, (256, 320), SceneAugmentation(**{**NO_AUG, **settings}), seed=1)
        flipped = WholeImageDataset(
            annotations, (256, 320), SceneAugmentation(**{**NO_AUG, **settings, "flip_prob": 1.0}), seed=1
        )
        both_shoulders = 0
        for index in range(len(plain)):
            a, b = plain[index], flipped[index]
            mirrored = rgb(a)[:, ::-1].astype(int)
            assert (np.abs(rgb(b).astype(int) - mirrored) > 8).mean() < 0.01  # seams may move by a pixel
            boxes_a, kps_a = poses(a)
            boxes_b, kps_b = poses(b)
            np.testing.assert_allclose(boxes_b[:, [0, 2]], 319 - boxes_a[:, [2, 0]], atol=1e-3)
            np.testing.assert_allclose(boxes_b[:, [1, 3]], boxes_a[:, [1, 3]], atol=1e-3)
            expected = kps_a[:, flip_index].copy()
            expected[..., 0] = np.where(expected[..., 2] > 0, 319 - expected[..., 0], 0)
            np.testing.assert_allclose(kps_b, expected, atol=1e-3)
            # The synthetic people face the camera: their left shoulder is on the image's right, flipped or not.
            shown = (kps_b[:, left, 2] > 0) & (kps_b[:, right, 2] > 0)
            assert (kps_b[shown, left, 0] > kps_b[shown, right, 0]).all()
            assert (kps_a[shown, left, 0] > kps_a[shown, right, 0]).all()
            both_shoulders += int(shown.sum())
        assert both_shoulders > 3


def test_hsv_changes_colours_only(markers):
    """HSV jitter leaves every label where it was and keeps the markers saturated; the pixels change."""
    plain = WholeImageDataset(markers, (320, 384), TRANSFORMS["all"], seed=5)
    jitter = SceneAugmentation(**{**vars(TRANSFORMS["all"]), "hsv": (0.015, 0.7, 0.4)})
    coloured = WholeImageDataset(markers, (320, 384), jitter, seed=5)
    changed = 0
    for index in range(len(plain)):
        a, b = plain[index], coloured[index]
        torch.testing.assert_close(a["objects"], b["objects"])
        assert coloured.plan(index).gains != (1.0, 1.0, 1.0) and plain.plan(index).gains == (1.0, 1.0, 1.0)
        changed += int((a["image"] != b["image"]).any())
        check_markers(b, True, coloured.keypoint_info.flip_index, colours=False)
    assert changed == len(plain)


def test_hsv_jitter_gains_and_hue_wraps_around():
    hsv = np.array([[[178, 100, 100], [90, 200, 200], [0, 0, 114]]], np.uint8)
    image = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    before = cv2.cvtColor(image, cv2.COLOR_BGR2HSV).astype(int)
    after = cv2.cvtColor(hsv_jitter(image, (1.02, 1.2, 0.5)), cv2.COLOR_BGR2HSV).astype(int)
    assert after[0, 0, 0] <= 3  # 178 x 1.02 = 181.6 wraps to about 1
    assert abs(after[0, 1, 0] - int(before[0, 1, 0] * 1.02)) <= 2
    assert abs(after[0, 1, 1] - min(255, before[0, 1, 1] * 1.2)) <= 4
    assert abs(after[0, 1, 2] - before[0, 1, 2] * 0.5) <= 2
    assert after[0, 2, 1] == 0 and abs(after[0, 2, 2] - 57) <= 1  # grey stays grey, darker


def test_pieces_show_their_sources_and_labels_follow_the_rules(annotations):
    """Each piece of a plan paints its source warped by its matrix; the labels are the annotations through the same
    matrices, keypoints outside a piece unlabelled, small or mostly cut boxes dropped."""
    dropped = hidden = 0
    for min_box in (2.0, 20.0):
        augmentation = SceneAugmentation(min_box_size=min_box)
        dataset = WholeImageDataset(annotations, (256, 320), augmentation, seed=7)
        for epoch in range(3):
            dataset.set_epoch(epoch)
            for index in range(len(dataset)):
                plan = dataset.plan(index)
                sample = dataset[index]
                check_labels_inside(sample, dataset.input_size, min_box)
                if plan.gains == (1.0, 1.0, 1.0):
                    for piece in plan.pieces:
                        source = cv2.cvtColor(cv2.imread(str(dataset.image_path(piece.index))), cv2.COLOR_BGR2RGB)
                        warped = cv2.warpAffine(source, piece.matrix, (320, 256), flags=cv2.INTER_LINEAR)
                        u0, v0, u1, v1 = piece.pixels
                        inner = (slice(v0 + 1, v1 - 1), slice(u0 + 1, u1 - 1))
                        assert np.abs(rgb(sample)[inner].astype(int) - warped[inner]).mean() < 1.0
                people = expected_people(dataset, plan, min_box)
                kept = [p for p in people if p[1]]
                boxes, keypoints = poses(sample)
                assert len(boxes) == len(kept)
                for box, kps, (want_box, _, want_kps) in zip(boxes, keypoints, kept):
                    np.testing.assert_allclose(box, want_box, atol=1e-3)
                    np.testing.assert_allclose(kps, want_kps, atol=1e-3)
                dropped += len(people) - len(kept)
                hidden += sum(int((p[2][:, 2] == 0).sum()) for p in kept)
    assert dropped > 0 and hidden > 0


def test_mosaic_shows_four_images_around_a_centre(annotations):
    dataset = WholeImageDataset(annotations, (256, 320), SceneAugmentation(**{**NO_AUG, "mosaic_prob": 1.0}))
    for index in range(len(dataset)):
        plan = dataset.plan(index)
        assert plan.mosaic and plan.pieces[0].index == index and len(plan.pieces) == 4  # scale 1: all four show
        painted = np.zeros((256, 320), int)
        for piece in plan.pieces:
            u0, v0, u1, v1 = piece.pixels
            painted[v0:v1, u0:u1] += 1
        assert painted.max() == 1  # no pixel painted twice
        image = rgb(dataset[index])
        assert (image[painted == 0] == PAD_VALUE).all()


# --- determinism, batches, errors ------------------------------------------------------------------------------


def test_samples_repeat_within_an_epoch_and_change_across_epochs(annotations):
    dataset = WholeImageDataset(annotations, (256, 320), SceneAugmentation(), seed=11)
    again = WholeImageDataset(annotations, (256, 320), SceneAugmentation(), seed=11)
    first = [dataset[i] for i in range(4)]
    for i, sample in enumerate(first):
        for other in (dataset[i], again[i]):
            assert torch.equal(sample["image"], other["image"]) and torch.equal(sample["objects"], other["objects"])
    dataset.set_epoch(1)
    changed = [not torch.equal(first[i]["image"], dataset[i]["image"]) for i in range(4)]
    assert all(changed)
    dataset.set_epoch(0)
    assert torch.equal(first[2]["objects"], dataset[2]["objects"])
    other_seed = WholeImageDataset(annotations, (256, 320), SceneAugmentation(), seed=12)
    assert not torch.equal(first[0]["image"], other_seed[0]["image"])


def test_collate_objects_numbers_the_samples(annotations):
    dataset = WholeImageDataset(annotations, (256, 320), SceneAugmentation())
    samples = [dataset[i] for i in range(3)]
    batch = collate_objects(samples)
    assert batch["image"].shape == (3, 3, 256, 320) and batch["affine"].shape == (3, 2, 3)
    assert batch["targets"].shape == (sum(len(s["objects"]) for s in samples), 6 + 3 * K)
    for b, sample in enumerate(samples):
        rows = batch["targets"][batch["targets"][:, 0] == b]
        torch.testing.assert_close(rows[:, 1:], sample["objects"])
    assert batch["index"].tolist() == [0, 1, 2] and batch["image_id"].dtype == torch.int64
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, collate_fn=collate_objects)
    assert next(iter(loader))["image"].shape == (4, 3, 256, 320)


def test_input_size_must_be_multiples_of_64(annotations):
    for size in ((250, 320), (256, 100), (0, 64)):
        with pytest.raises(ValueError, match=str(size).replace("(", r"\(").replace(")", r"\)")):
            WholeImageDataset(annotations, size)


def test_missing_image_is_named(synthetic, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(synthetic.images("train"), images)
    missing = sorted(images.iterdir())[2]
    missing.unlink()
    coco = CocoKeypoints(synthetic.train_annotations, images)
    with pytest.raises(FileNotFoundError, match=missing.name):
        WholeImageDataset(coco, (256, 320))
    dataset = WholeImageDataset(coco, (256, 320), check_images=False)
    with pytest.raises(FileNotFoundError, match=f"{missing.name} does not exist"):
        dataset[2]
    assert dataset[0]["image"].shape == (3, 256, 320)


# --- the picture -----------------------------------------------------------------------------------------------


def test_letterbox_of_an_image_is_the_unaugmented_sample(coco_sample):
    """predict letterboxes a user's image exactly as the test split's samples are (pixels and matrix)."""
    coco = CocoKeypoints(coco_sample / "test_coco.json", coco_sample)
    dataset = WholeImageDataset(coco, (256, 320))
    for index in range(len(dataset)):
        sample = dataset[index]
        image, matrix = letterbox(cv2.imread(str(dataset.image_path(index))), (256, 320))
        np.testing.assert_array_equal(cv2.cvtColor(image, cv2.COLOR_BGR2RGB).transpose(2, 0, 1), sample["image"])
        np.testing.assert_allclose(matrix, sample["affine"].numpy(), atol=1e-6)


def test_picture_of_labels_through_every_transform(annotations, coco_sample):
    """A grid for the eye: rows are samples (synthetic, then real COCO), columns the transforms."""
    columns = {
        "letterbox": None,
        "mosaic": SceneAugmentation(**{**NO_AUG, "mosaic_prob": 1.0}),
        "affine": SceneAugmentation(**{**NO_AUG, "scale": 0.9, "translate": 0.1}),
        "hsv": SceneAugmentation(**{**NO_AUG, "hsv": (0.015, 0.7, 0.4)}),
        "flip": SceneAugmentation(**{**NO_AUG, "flip_prob": 1.0}),
        "all": SceneAugmentation(),
    }
    coco = CocoKeypoints(coco_sample / "test_coco.json", coco_sample)
    skeleton = annotations.keypoint_info.skeleton
    rows = []
    for source, index in ((annotations, 0), (annotations, 1), (annotations, 2), (coco, 2), (coco, 3)):
        cells = []
        for name, augmentation in columns.items():
            dataset = WholeImageDataset(source, (256, 320), augmentation, seed=2, check_images=False)
            sample = dataset[index]
            cell = draw_objects(rgb(sample), sample["objects"].numpy(), skeleton)
            assert cell.shape == (256, 320, 3) and (len(sample["objects"]) == 0 or (cell != rgb(sample)).any())
            header = np.zeros((18, 320, 3), np.uint8)
            cv2.putText(header, name, (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
            cells.append(np.pad(np.vstack([header, cell]), ((0, 2), (0, 2), (0, 0))))
        rows.append(np.hstack(cells))
    OUTPUT.mkdir(exist_ok=True)
    path = OUTPUT / "whole_image_labels.png"
    path.unlink(missing_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(np.vstack(rows), cv2.COLOR_RGB2BGR))
    written = cv2.imread(str(path))
    assert written is not None and written.shape == (5 * 276, 6 * 322, 3)
