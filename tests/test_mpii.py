"""MPII annotations (SPEC-MPII sections 1, 2): the real sample read 0-based, MPII's square crop, the
keypoint set, head boxes inline or from the official .mat, bad records named, and both data configs."""

from __future__ import annotations

import functools
import json
import re

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from scipy.io import savemat
from torch.utils.data import default_collate

from evopose_pl.data import MPII_KEYPOINT_INFO, AnnotationError, Augmentation, MpiiAnnotations, TopDownDataset
from evopose_pl.data.heatmaps import to_image
from evopose_pl.data.mpii import MPII_KEYPOINTS
from evopose_pl.data.transforms import apply_affine
from evopose_pl.datamodule import PoseDataModule
from evopose_pl.metrics import PCKh

SAMPLE = "test_mpii.json"
SPEC_FLIP_PAIRS = {(0, 5), (1, 4), (2, 3), (10, 15), (11, 14), (12, 13)}


def _records(mpii_sample) -> list[dict]:
    return json.loads((mpii_sample / SAMPLE).read_text())


def _head_boxes(records: list[dict]) -> np.ndarray:
    """A head box per record (N, 4), 1-based like the json: a square around upper_neck and head_top."""
    joints = np.array([r["joints"] for r in records], dtype=np.float64)
    centre, side = (joints[:, 8] + joints[:, 9]) / 2, np.linalg.norm(joints[:, 9] - joints[:, 8], axis=-1)
    return np.concatenate([centre - side[:, None] / 2, centre + side[:, None] / 2], axis=1)


def _write_official(path, records: list[dict], shift: float = 0.0, missing: tuple[int, int] | None = None):
    """The official ground truth of ``records`` in gt_valid.mat's layout (1-based, MATLAB's axis order):
    headboxes_src [2 x 2 x N], pos_gt_src [16 x 2 x N] (moved by ``shift``), jnt_missing [16 x N]."""
    boxes = _head_boxes(records).reshape(-1, 2, 2)
    joints = np.array([r["joints"] for r in records], dtype=np.float64) + shift
    jnt_missing = 1 - np.array([r["joints_vis"] for r in records]).T
    if missing is not None:
        jnt_missing[missing[1], missing[0]] = 1
    savemat(path, {"headboxes_src": boxes.transpose(1, 2, 0), "pos_gt_src": joints.transpose(1, 2, 0),
                   "jnt_missing": jnt_missing, "dataset_joints": np.array(MPII_KEYPOINTS, dtype=object)})  # fmt: skip
    return path


def test_the_real_sample_is_read_zero_based_with_the_mpii_box(mpii_sample):
    records = _records(mpii_sample)
    mpii = MpiiAnnotations(mpii_sample / SAMPLE, mpii_sample)
    assert len(mpii.instances) == len(records) == 5 and mpii.skip_summary() == "none skipped"
    assert mpii.keypoint_info == MPII_KEYPOINT_INFO and mpii.files == (mpii_sample / SAMPLE,)
    assert [i.image_id for i in mpii.instances] == [0, 1, 2, 3, 4]
    for inst, record in zip(mpii.instances, records):
        assert inst.image_path == mpii_sample / record["image"] and inst.head_box is None
        np.testing.assert_allclose(inst.keypoints[:, :2], np.array(record["joints"]) - 1, atol=1e-4)
        assert inst.keypoints[:, 2].tolist() == record["joints_vis"]
        s = record["scale"]
        cx, cy = record["center"][0] - 1, record["center"][1] - 1 + 15 * s  # 0-based, moved down 15 x scale
        assert inst.box == pytest.approx((cx - 100 * s, cy - 100 * s, 200 * s, 200 * s))
    assert mpii.instances[2].keypoints[:, 2].sum() == 14  # two joints unannotated


@pytest.mark.parametrize("input_size", [(256, 256), (256, 192)])
def test_the_crop_is_mpii_s_square_padded_by_a_quarter_and_fitted_to_the_input(mpii_sample, input_size):
    """200 x scale, x 1.25 by the crop: a square input sees 250 x scale pixels around the moved centre;
    another aspect ratio widens the square as it widens a COCO box."""
    dataset = TopDownDataset(MpiiAnnotations(mpii_sample / SAMPLE, mpii_sample), input_size=input_size)
    height, width = input_size
    for index, record in enumerate(_records(mpii_sample)):
        s = record["scale"]
        cx, cy = record["center"][0] - 1, record["center"][1] - 1 + 15 * s
        side_x, side_y = 250 * s, 250 * s * max(1.0, height / width)
        affine = dataset[index]["affine"].double().numpy()
        points = np.array([[cx, cy], [cx - side_x / 2, cy], [cx + side_x / 2, cy], [cx, cy - side_y / 2]])
        mapped = apply_affine(affine, points)
        np.testing.assert_allclose(mapped, [[width / 2, height / 2], [0, height / 2], [width, height / 2],
                                            [width / 2, 0]], atol=1e-3)  # fmt: skip


def test_the_keypoint_set_flips_left_and_right_as_the_spec_pairs_them(mpii_sample):
    info = MPII_KEYPOINT_INFO
    assert info.names == MPII_KEYPOINTS and info.num_keypoints == 16
    pairs = {(i, j) for i, j in enumerate(info.flip_index) if i < j}
    assert pairs == SPEC_FLIP_PAIRS and all(info.flip_index[i] == i for i in (6, 7, 8, 9))
    edges = {frozenset(e) for e in info.skeleton}
    chains = [(0, 1, 2, 6), (5, 4, 3, 6), (6, 7, 8, 9), (10, 11, 12, 7), (15, 14, 13, 7)]
    assert edges == {frozenset(pair) for chain in chains for pair in zip(chain, chain[1:])}
    # A flipped sample swaps left and right: the mirror of each joint is its partner's place.
    mpii = MpiiAnnotations(mpii_sample / SAMPLE, mpii_sample)
    plain = TopDownDataset(mpii, input_size=(256, 256))
    flipped = TopDownDataset(mpii, input_size=(256, 256),
                             augmentation=Augmentation(flip_prob=1.0, scale_factor=0.0, rotation_prob=0.0))  # fmt: skip
    a, b = plain[0]["keypoints"], flipped[0]["keypoints"]
    torch.testing.assert_close(b[list(info.flip_index), 0], 256 - a[:, 0], atol=1e-3, rtol=0)


def test_head_boxes_and_ground_truth_come_from_the_official_mat(mpii_sample, tmp_path):
    records = _records(mpii_sample)
    mat = _write_official(tmp_path / "gt_valid.mat", records, shift=0.5, missing=(1, 3))
    mpii = MpiiAnnotations(mpii_sample / SAMPLE, mpii_sample, head_boxes=mat)
    assert mpii.files == (mpii_sample / SAMPLE, mat)
    boxes = _head_boxes(records) - 1
    for i, (inst, record) in enumerate(zip(mpii.instances, records)):
        assert inst.head_box == pytest.approx(tuple(boxes[i]))
        visible = inst.keypoints[:, 2] > 0
        np.testing.assert_allclose(inst.keypoints[visible, :2], np.array(record["joints"])[visible] - 0.5, atol=1e-4)
        assert (visible == (np.array(record["joints_vis"]) > 0)).sum() == (15 if i == 1 else 16)
    assert mpii.instances[1].keypoints[3, 2] == 0 and mpii.instances[1].keypoints[4, 2] == 1  # jnt_missing rules


def test_a_single_person_mat_as_matlab_writes_it(mpii_sample, tmp_path):
    """MATLAB drops a trailing dimension of 1: one person's arrays are 2 x 2, 16 x 2 and 16 x 1."""
    record = _records(mpii_sample)[:1]
    annotations = tmp_path / "one.json"
    annotations.write_text(json.dumps(record))
    box = _head_boxes(record).reshape(2, 2)
    savemat(tmp_path / "one.mat", {"headboxes_src": box, "pos_gt_src": np.array(record[0]["joints"]),
                                   "jnt_missing": np.zeros((16, 1))})  # fmt: skip
    (inst,) = MpiiAnnotations(annotations, mpii_sample, head_boxes=tmp_path / "one.mat").instances
    assert inst.head_box == pytest.approx(tuple(box.reshape(-1) - 1))


def test_a_mat_of_other_people_is_refused_naming_both_files(mpii_sample, tmp_path):
    records = _records(mpii_sample)
    fewer = _write_official(tmp_path / "fewer.mat", records[:4])
    with pytest.raises(AnnotationError) as info:
        MpiiAnnotations(mpii_sample / SAMPLE, mpii_sample, head_boxes=fewer)
    assert f"head boxes file {fewer} holds 4 people but {mpii_sample / SAMPLE} holds 5 records" in str(info.value)
    assert "matched by order" in str(info.value)
    shuffled = _write_official(tmp_path / "shuffled.mat", records[::-1])
    with pytest.raises(AnnotationError, match=re.escape(f"head boxes file {shuffled}: person 0 is not {mpii_sample}")):
        MpiiAnnotations(mpii_sample / SAMPLE, mpii_sample, head_boxes=shuffled)


def test_a_bad_mat_is_named(mpii_sample, tmp_path):
    savemat(tmp_path / "partial.mat", {"headboxes_src": np.zeros((2, 2, 5))})
    with pytest.raises(AnnotationError, match=r"partial.mat: has no 'pos_gt_src', 'jnt_missing'; the official"):
        MpiiAnnotations(mpii_sample / SAMPLE, mpii_sample, head_boxes=tmp_path / "partial.mat")
    savemat(tmp_path / "shape.mat", {"headboxes_src": np.zeros((2, 2, 5)), "pos_gt_src": np.zeros((16, 2, 4)),
                                     "jnt_missing": np.zeros((16, 5))})  # fmt: skip
    with pytest.raises(AnnotationError, match=r"shape.mat: 'pos_gt_src' has shape \(16, 2, 4\), expected"):
        MpiiAnnotations(mpii_sample / SAMPLE, mpii_sample, head_boxes=tmp_path / "shape.mat")
    with pytest.raises(AnnotationError, match=rf"head boxes file {re.escape(str(mpii_sample / SAMPLE))}: not a "):
        MpiiAnnotations(mpii_sample / SAMPLE, mpii_sample, head_boxes=mpii_sample / SAMPLE)
    with pytest.raises(FileNotFoundError, match=r"head boxes file .*absent.mat does not exist"):
        MpiiAnnotations(mpii_sample / SAMPLE, mpii_sample, head_boxes=tmp_path / "absent.mat")


def test_inline_head_boxes_are_read_one_based(mpii_sample, tmp_path):
    records = _records(mpii_sample)
    boxes = _head_boxes(records)
    for record, box in zip(records, boxes):
        record["head_box"] = box.tolist()
    annotations = tmp_path / "inline.json"
    annotations.write_text(json.dumps(records))
    mpii = MpiiAnnotations(annotations, mpii_sample)
    np.testing.assert_allclose([inst.head_box for inst in mpii.instances], boxes - 1)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r[1].pop("joints"), r"\[1\] \(image 052475643.jpg\): has no 'joints'"),
        (lambda r: r[2]["joints"].pop(), r"\[2\] \(image 051423444.jpg\): 'joints' must hold 16 \[x, y\] pairs"),
        (lambda r: r[0]["joints"][3].__setitem__(0, "x"), r"\[0\] \(image 005808361.jpg\): 'joints' must hold"),
        (lambda r: r[3].update(joints_vis=[1] * 15), r"\[3\] \(image 004645041.jpg\): 'joints_vis' must hold 16"),
        (lambda r: r[4].update(center=[1.0, float("nan")]), r"\[4\] \(image 060754485.jpg\): 'center' must be"),
        (lambda r: r[0].update(scale=0), r"\[0\] \(image 005808361.jpg\): 'scale' must be a positive number"),
        (lambda r: r[0].update(scale=True), r"\[0\] \(image 005808361.jpg\): 'scale' must be a positive number"),
        (lambda r: r[1].update(image=7), r"\[1\]: 'image' must be a file name, not 7"),
        (lambda r: r[2].update(head_box=[1, 2, 1, 2]), r"\[2\] \(image 051423444.jpg\): 'head_box' must be"),
        (lambda r: r.__setitem__(3, [1, 2]), r"\[3\]: not an object"),
    ],
)
def test_malformed_records_are_named_with_file_and_index(mpii_sample, tmp_path, mutate, message):
    records = _records(mpii_sample)
    mutate(records)
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(records))
    with pytest.raises(AnnotationError, match=re.escape(str(path)) + " " + message):
        MpiiAnnotations(path, mpii_sample)


def test_a_coco_file_or_detections_are_refused_for_mpii(mpii_sample, coco_sample):
    with pytest.raises(AnnotationError, match=r"test_coco.json: holds a dict, not an MPII annotation list"):
        MpiiAnnotations(coco_sample / "test_coco.json", coco_sample)
    mpii = MpiiAnnotations(mpii_sample / SAMPLE, mpii_sample)
    with pytest.raises(AnnotationError, match="MPII .* is tested on its annotated people"):
        TopDownDataset(mpii, detections=coco_sample / "test_coco_det_AP_H_56.json")


def _perfect_records(metric: PCKh, dataset) -> list[dict]:
    """The metric's records of predictions at the samples' keypoints, mapped back through each crop."""
    batch = default_collate([dataset[i] for i in range(len(dataset))])
    keypoints = to_image(batch["keypoints"][..., :2], batch["affine"]).numpy()
    scores = np.ones(keypoints.shape[:2])
    return metric.records(batch, keypoints, scores, scores.mean(-1))


def test_data_mpii_reads_the_real_sample_and_scores_pckh(compose, mpii_sample, tmp_path):
    mat = _write_official(tmp_path / "gt_valid.mat", _records(mpii_sample))
    cfg = compose("train", "data=mpii", f"data.root={mpii_sample}", f"data.train_annotations={SAMPLE}",
                  "data.train_images=.", f"data.val_annotations={SAMPLE}", "data.val_images=.",
                  f"data.head_boxes={mat}", "data.num_workers=0")  # fmt: skip
    assert cfg.data.input_size == [256, 256] and cfg.data.test_detections is None
    assert cfg.data.augmentation.scale_factor == 0.25 and cfg.data.augmentation.rotation_factor == 30
    data = instantiate(cfg.data)
    assert isinstance(data, PoseDataModule) and data.format == "mpii"
    assert isinstance(data.metric, functools.partial) and data.keypoint_info == MPII_KEYPOINT_INFO
    data.setup("test")
    records = _records(mpii_sample)
    for index, record in enumerate(records):
        sample = data.test_set[index]
        assert sample["index"] == index and sample["image"].shape == (3, 256, 256)
        visible = np.array(record["joints_vis"]) > 0
        keypoints = sample["keypoints"].numpy()
        assert (keypoints[visible, 2] > 0).all()  # every annotated joint lands in the crop
        assert ((keypoints[visible, :2] >= 0) & (keypoints[visible, :2] < 256)).all()
        middle = (keypoints[visible, :2].min(0) + keypoints[visible, :2].max(0)) / 2
        assert np.abs(middle - 128).max() < 0.15 * 256, (index, middle)  # the crop centres on the person
        person = sample["image"][:, 64:192, 64:192].float()  # the crop's middle is image, not border
        assert person.std() > 10
    metric = data.test_metric()
    assert isinstance(metric, PCKh)
    figures = metric.compute(_perfect_records(metric, data.test_set), tmp_path)
    assert figures["Mean"] == pytest.approx(100.0) and figures["Mean@0.1"] == pytest.approx(100.0)
    assert (tmp_path / "pckh_predictions.json").exists()


def test_data_mpii_synthetic_needs_no_download(compose, tmp_path):
    cfg = compose("train", "data=mpii_synthetic", f"data.cache_dir={tmp_path}", "data.synthetic.train_images=6",
                  "data.synthetic.val_images=4", "data.num_workers=0")  # fmt: skip
    data = instantiate(cfg.data)
    assert data.format == "mpii" and data.test_detections is None
    assert data.keypoint_info == MPII_KEYPOINT_INFO
    data.setup("fit")
    sample = data.train_set[0]
    assert sample["image"].shape == (3, 64, 64) and sample["keypoints"].shape == (16, 3)
    metric = data.test_metric()
    assert isinstance(metric, PCKh) and len(metric.ground_truth) == len(data.test_set)
    figures = metric.compute(_perfect_records(metric, data.test_set))
    assert all(value == pytest.approx(100.0) for value in figures.values())
    # the synthetic people's crops centre on them, as the real ones do
    for index in range(len(data.test_set)):
        keypoints = data.test_set[index]["keypoints"].numpy()
        inside = keypoints[keypoints[:, 2] > 0, :2]
        middle = (inside.min(0) + inside.max(0)) / 2
        assert np.abs(middle - 32).max() < 0.2 * 64, (index, middle)
