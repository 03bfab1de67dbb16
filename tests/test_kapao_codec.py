"""KAPAO's codec: labels -> perfect outputs -> people again, target assignment, the loss, fusion, and the
checkpoint description."""

from __future__ import annotations

import math

import pytest
import torch

from evopose_pl.codecs import codec_from_description
from evopose_pl.codecs.kapao import Candidates, KapaoCodec, fuse

K = 17
INPUT = (256, 320)


def person(batch: int, x: float, y: float, k: int = K, spacing: float = 24.0) -> torch.Tensor:
    """A pose-object label (1, 6 + 3K) at (x, y): keypoints on a grid ``spacing`` apart, inside its box,
    each in its own cell of the finest level; and its keypoint-object labels (K, 6 + 3K)."""
    points = torch.tensor([[x + spacing * (i % 4), y + spacing * (i // 4)] for i in range(k)])
    low, high = points.min(0).values - 12, points.max(0).values + 12
    pose = torch.zeros(1, 6 + 3 * k)
    pose[0, :6] = torch.tensor([batch, 0, *low, *high])
    pose[0, 6:] = torch.cat([points, torch.full((k, 1), 2.0)], 1).flatten()
    side = 0.05 * max(INPUT)
    objects = torch.zeros(k, 6 + 3 * k)
    objects[:, 0], objects[:, 1] = batch, torch.arange(1, k + 1)
    objects[:, 2:4], objects[:, 4:6] = points - side / 2, points + side / 2
    return torch.cat([pose, objects])


def labels() -> torch.Tensor:
    """Two images: one person in the first, two apart in the second."""
    return torch.cat([person(0, 40.5, 50.5), person(1, 20.5, 30.5), person(1, 200.5, 60.5)])


def test_encoding_then_decoding_returns_the_labels():
    codec, targets = KapaoCodec(), labels()
    found = codec.detect(codec.encode(targets, 2, INPUT), INPUT)
    for b, people in enumerate(found):
        poses = targets[(targets[:, 0] == b) & (targets[:, 1] == 0)]
        assert len(people) == len(poses)
        order = people.boxes[:, 0].argsort()
        expected = poses[poses[:, 2].argsort()]
        torch.testing.assert_close(people.boxes[order], expected[:, 2:6], atol=1e-3, rtol=0)
        points = expected[:, 6:].view(-1, K, 3)[..., :2]
        torch.testing.assert_close(people.keypoints[order], points, atol=1e-3, rtol=0)
        assert (people.scores > 0.99).all() and (people.keypoint_scores > 0.99).all()


def test_the_mirrored_pass_maps_back_onto_the_unmirrored_image():
    codec, targets = KapaoCodec(), labels()
    flip_index = list(range(K))  # no sides: the geometry alone
    mirrored = targets.clone()
    width = INPUT[1]
    mirrored[:, [2, 4]] = width - 1 - targets[:, [4, 2]]
    points = mirrored[:, 6:].view(-1, K, 3)
    points[..., 0] = torch.where(points[..., 2] > 0, width - 1 - points[..., 0], points[..., 0])
    candidates = codec.candidates(codec.encode(mirrored, 2, INPUT)).mirrored(width, flip_index)
    direct = codec.detect(codec.encode(targets, 2, INPUT), INPUT)
    for people, reference in zip(codec.people(candidates, INPUT), direct):
        a, b = people.boxes[:, 0].argsort(), reference.boxes[:, 0].argsort()
        torch.testing.assert_close(people.keypoints[a], reference.keypoints[b], atol=1e-3, rtol=0)


def test_mirroring_swaps_left_and_right_keypoints_and_their_object_classes():
    keypoints = torch.tensor([[[[10.0, 5.0], [30.0, 6.0]]]])  # (B, N, K, 2): left at x 10, right at x 30
    candidates = Candidates(torch.tensor([[[0.0, 0, 40, 10]]]), torch.ones(1, 1), torch.tensor([[1]]), keypoints)
    mirrored = candidates.mirrored(100, [1, 0])
    torch.testing.assert_close(mirrored.keypoints[0, 0], torch.tensor([[69.0, 6.0], [89.0, 5.0]]))
    torch.testing.assert_close(mirrored.boxes[0, 0], torch.tensor([59.0, 0, 99, 10]))
    assert mirrored.classes.item() == 2  # a left keypoint's object (class 1) is now a right one's
    scaled = candidates.scaled(2.0, 0.5)
    torch.testing.assert_close(scaled.keypoints[0, 0, 0], torch.tensor([5.0, 10.0]))


def test_a_label_is_assigned_to_its_cell_and_the_two_nearest_neighbours_of_every_fitting_anchor():
    codec = KapaoCodec()
    # A 30x30 box centred at (100.3, 60.8) at stride 8: centre cell (12, 7) with fractions (0.54, 0.6).
    target = torch.tensor([[0, 0, 85.3, 45.8, 115.3, 75.8] + [0.0] * 3 * K])
    found = codec.assign(target, 0, (32, 40))
    anchors = torch.tensor(codec.anchors[0]) / 8
    ratio = torch.tensor([30 / 8, 30 / 8]) / anchors
    fitting = (torch.maximum(ratio, 1 / ratio).amax(1) < 4).nonzero().flatten().tolist()
    assert sorted(set(found.anchor.tolist())) == fitting
    for anchor in fitting:
        cells = {(x, y) for x, y, a in zip(found.gx.tolist(), found.gy.tolist(), found.anchor.tolist()) if a == anchor}
        assert cells == {(12, 7), (13, 7), (12, 8)}
    torch.testing.assert_close(found.offset[0], torch.tensor([100.3 / 8 - 12, 60.8 / 8 - 7]))
    # At the grid's edge the missing neighbour is dropped; far-off shapes find no anchor at that level.
    edge = torch.tensor([[0, 0, 0.0, 0.0, 6.0, 20.0] + [0.0] * 3 * K])
    assert set(zip(codec.assign(edge, 0, (32, 40)).gx.tolist(), codec.assign(edge, 0, (32, 40)).gy.tolist())) <= {
        (0, 0),
        (0, 1),
        (1, 0),
    }
    huge = torch.tensor([[0, 0, 0.0, 0.0, 250.0, 250.0] + [0.0] * 3 * K])
    assert len(codec.assign(huge, 0, (32, 40)).label) == 0


def test_the_loss_parts_add_up_and_the_encoded_objectness_is_right():
    codec, targets = KapaoCodec(), labels()
    encoded = codec.loss(codec.encode(targets, 2, INPUT), targets, INPUT)
    torch.manual_seed(0)
    random = codec.loss([torch.randn_like(o) for o in codec.encode(targets, 2, INPUT)], targets, INPUT)
    assert set(encoded) == {"loss", "box", "objectness", "class", "keypoints"}
    # Only the anchor decoding reads is set, so the other assigned anchors still learn boxes and keypoints;
    # but objectness, everywhere, is already what the loss asks for.
    assert encoded["objectness"] < 0.01 * random["objectness"]
    torch.testing.assert_close(random["loss"], sum(random[k] for k in ("box", "objectness", "class", "keypoints")))


def test_the_loss_trains_raw_outputs_towards_the_labels():
    codec, targets = KapaoCodec(), labels()
    torch.manual_seed(0)
    outputs = [torch.nn.Parameter(0.1 * torch.randn_like(o)) for o in codec.encode(targets, 2, INPUT)]
    optimiser = torch.optim.Adam(outputs, lr=0.05)
    first = None
    for _ in range(60):
        loss = codec.loss(outputs, targets, INPUT)["loss"]
        first = first if first is not None else loss.item()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert math.isfinite(loss.item()) and loss.item() < 0.3 * first
    people = codec.detect([o.detach() for o in outputs], INPUT)
    assert [len(p) > 0 for p in people] == [True, True]


def test_an_image_without_labels_only_learns_silence():
    codec = KapaoCodec()
    outputs = [o.requires_grad_() for o in codec.encode(torch.zeros(0, 6 + 3 * K), 1, INPUT)]
    losses = codec.loss(outputs, torch.zeros(0, 6 + 3 * K), INPUT)
    assert losses["box"] == 0 and losses["keypoints"] == 0 and losses["objectness"] < 1e-6
    losses["loss"].backward()
    assert codec.detect(outputs, INPUT)[0].boxes.shape == (0, 4)


def test_wrong_outputs_or_targets_are_refused():
    codec = KapaoCodec()
    outputs = codec.encode(labels(), 2, INPUT)
    with pytest.raises(ValueError, match="4 output levels"):
        codec.loss(outputs[:3], labels(), INPUT)
    with pytest.raises(ValueError, match="object labels for 17 keypoints"):
        codec.loss(outputs, labels()[:, :-3], INPUT)
    with pytest.raises(ValueError, match="test_scales"):
        KapaoCodec(test_scales=[])


def test_fusion_takes_the_most_confident_keypoint_object_of_the_same_type_within_reach():
    keypoints = torch.tensor([[[10.0, 10.0], [50.0, 50.0]], [[200.0, 200.0], [240.0, 240.0]]])
    scores = torch.full((2, 2), 0.8)
    confident = torch.tensor([True, False])
    centres = torch.tensor([[12.0, 10.0], [11.0, 10.0], [10.0, 30.0], [52.0, 50.0], [200.0, 201.0]])
    types = torch.tensor([0, 0, 0, 0, 0])  # the object near pose 0's keypoint 1 is of type 0: not taken
    confidence = torch.tensor([0.5, 0.9, 0.99, 0.7, 0.95])
    fuse(keypoints, scores, confident, centres, types, confidence, distance=15.0)
    # 0.9 within reach beats 0.5; 0.99 is 20 away
    torch.testing.assert_close(keypoints[0, 0], torch.tensor([11.0, 10.0]))
    assert scores[0, 0] == pytest.approx(0.9)
    torch.testing.assert_close(keypoints[0, 1], torch.tensor([50.0, 50.0]))
    assert scores[0, 1] == pytest.approx(0.8)
    torch.testing.assert_close(keypoints[1], torch.tensor([[200.0, 200.0], [240.0, 240.0]]))  # not confident


def test_fusion_against_a_brute_force_version():
    generator = torch.Generator().manual_seed(3)
    for _ in range(20):
        n, k, m = 4, 5, 12
        keypoints = torch.rand(n, k, 2, generator=generator) * 100
        scores = torch.rand(n, k, generator=generator)
        confident = torch.rand(n, generator=generator) > 0.3
        centres = torch.rand(m, 2, generator=generator) * 100
        types = torch.randint(0, k, (m,), generator=generator)
        confidence = torch.rand(m, generator=generator)
        expected_points, expected_scores = keypoints.clone(), scores.clone()
        for i in range(n):
            for j in range(k):
                best = None
                for o in range(m):
                    near = torch.linalg.vector_norm(keypoints[i, j] - centres[o]) < 25
                    if confident[i] and types[o] == j and near and (best is None or confidence[o] > confidence[best]):
                        best = o
                if best is not None:
                    expected_points[i, j], expected_scores[i, j] = centres[best], confidence[best]
        fuse(keypoints, scores, confident, centres, types, confidence, 25.0)
        torch.testing.assert_close(keypoints, expected_points)
        torch.testing.assert_close(scores, expected_scores)


def test_the_codec_is_rebuilt_from_its_description():
    codec = KapaoCodec(test_scales=[0.8, 1.0, 1.2], test_flip=True, max_people=50)
    rebuilt = codec_from_description(codec.describe())
    assert isinstance(rebuilt, KapaoCodec) and rebuilt.settings() == codec.settings()
    assert codec.layout == "whole_image" and codec.target_key == "targets"
