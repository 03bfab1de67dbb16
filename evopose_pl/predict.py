"""Pose estimation on your images with a trained checkpoint.

    python -m evopose_pl.predict ckpt=best.ckpt images=photos/ [detections=boxes.json] [output=predictions]
                                 [flip_test=true] [device=cpu|cuda] [runtime=auto|torch|onnxruntime|openvino]
                                 [box_threshold=0.0] [batch_size=32]

A top-down network's people are cropped from the detections file's boxes (COCO results format; an image's
id is its file name's number, as in COCO: ``000000397133.jpg`` is 397133), or from an MPII annotation file's
people (centre and scale, as MPII is evaluated), or the whole image is one box. A single-stage network
(KAPAO) finds every person itself in the whole image, letterboxed to its input size: it takes no
detections file, and its test-time augmentation is its codec's (``flip_test`` is the crops').
Writes ``keypoints_results.json`` (COCO results format) and each image with the skeleton and the
keypoint scores drawn. The network, its input size and its keypoint set (names, flip pairs,
skeleton) come from the checkpoint, so COCO, MPII or any COCO-format keypoint set works.

The network runs in ``runtime``: ``auto`` (the default) takes the fastest installed for the device, OpenVINO on
the CPU (bf16 where the CPU has it natively; ``pip install -e ".[onnx]"``) and eager PyTorch with bf16 autocast
on CUDA (``evopose_pl.runtimes``); ``runtime=torch`` keeps PyTorch on the CPU too.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from evopose_pl.checkpoint import CheckpointError, checkpoint_label, first_sentence, load_checkpoint
from evopose_pl.data.coco import read_detections
from evopose_pl.data.mpii import MpiiAnnotations
from evopose_pl.data.transforms import box_to_center_scale, crop_matrix, warp
from evopose_pl.data.whole_image import letterbox
from evopose_pl.evaluation import results_records
from evopose_pl.files import read_json
from evopose_pl.module import PoseModule, checkpoint_codec, keypoint_set
from evopose_pl.nets import from_description
from evopose_pl.runtimes import AUTO, inference_network, precision, resolve_runtime
from evopose_pl.single_stage import SingleStageModule, in_image, module_class

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
RESULTS_FILE = "keypoints_results.json"


def load_pose_module(ckpt: str | os.PathLike, device: str = "cpu", flip_test: bool = True) -> PoseModule:
    """A PoseModule rebuilt from a checkpoint of train.py or evolve.py alone (no config files): its
    network, codec, keypoint set and input size come from the checkpoint (a whole-image codec's makes it a
    SingleStageModule); it predicts, it does not train."""
    label = checkpoint_label("ckpt=", ckpt)
    checkpoint = load_checkpoint(ckpt, "ckpt=")
    if not isinstance(checkpoint, dict) or "net" not in checkpoint or "state_dict" not in checkpoint:
        raise CheckpointError(f"{label}: not a checkpoint of train.py or evolve.py (it lacks the network description)")
    try:
        hparams = checkpoint.get("hyper_parameters", {})
        codec = checkpoint_codec(checkpoint)
        module = module_class(codec)(
            net=from_description(checkpoint["net"]),
            codec=codec,
            recipe=None,
            keypoints=keypoint_set(checkpoint),
            input_size=hparams["input_size"],
            flip_test=flip_test,
            channels_last=hparams.get("channels_last", True),
        )
        module.load_state_dict(checkpoint["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:  # a foreign or damaged checkpoint
        raise CheckpointError(f"{label}: its network cannot be rebuilt from it ({first_sentence(error)})") from None
    return module.to(device).eval()


@dataclass
class Person:
    box: tuple[float, float, float, float]
    box_score: float
    keypoints: np.ndarray  # (K, 2) image pixels
    scores: np.ndarray  # (K,)
    score: float = 0.0  # the instance score (box score x mean confident keypoint score)


def find_images(images: str | os.PathLike) -> list[Path]:
    path = Path(images)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"images={path}: no such file or folder")
    found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise FileNotFoundError(f"images={path}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder")
    return found


def image_id(path: Path, index: int) -> int:
    """COCO's convention: the file name's number; otherwise the image's position in the list."""
    return int(path.stem) if path.stem.isdigit() else index


@torch.no_grad()
def predict_image(
    module: PoseModule, image: np.ndarray, boxes: Sequence[tuple[tuple[float, float, float, float], float]],
    batch_size: int = 32,
) -> list[Person]:  # fmt: skip
    """Keypoints of every (box, score) in a BGR image."""
    size = module.input_size
    people: list[Person] = []
    for start in range(0, len(boxes), batch_size):
        chunk = boxes[start : start + batch_size]
        crops, affines = [], []
        for box, _ in chunk:
            matrix = crop_matrix(*box_to_center_scale(box, size), size)
            crops.append(cv2.cvtColor(warp(image, matrix, size), cv2.COLOR_BGR2RGB).transpose(2, 0, 1))
            affines.append(matrix.astype(np.float32))
        images = torch.from_numpy(np.stack(crops)).to(module.device)
        coords, scores = module.keypoints(images, torch.from_numpy(np.stack(affines)).to(module.device))
        instance = module.codec.person_scores(torch.tensor([s for _, s in chunk], device=scores.device), scores)
        coords, scores, instance = coords.cpu().numpy(), scores.cpu().numpy(), instance.cpu().numpy()
        for (box, box_score), xy, kp, score in zip(chunk, coords, scores, instance):
            people.append(Person(box, box_score, xy, kp, float(score)))
    return people


@torch.no_grad()
def detect_people(module: SingleStageModule, image: np.ndarray) -> list[Person]:
    """Every person a single-stage network finds in a BGR image, letterboxed to its input size as its test
    split was."""
    letterboxed, matrix = letterbox(image, module.input_size)
    images = torch.from_numpy(cv2.cvtColor(letterboxed, cv2.COLOR_BGR2RGB).transpose(2, 0, 1).copy())
    people = in_image(module.detect(images[None].to(module.device))[0], torch.from_numpy(matrix).to(module.device))
    return [
        Person((x1, y1, x2 - x1, y2 - y1), float(score), xy, kp, float(score))
        for (x1, y1, x2, y2), score, xy, kp in zip(
            people.boxes.cpu().numpy().tolist(), people.scores.cpu().numpy(), people.keypoints.cpu().numpy(),
            people.keypoint_scores.cpu().numpy(),
        )
    ]  # fmt: skip


def render(
    image: np.ndarray, people: Sequence[Person], skeleton: Sequence[Sequence[int]], keypoint_threshold: float
) -> np.ndarray:
    """The image with each person's box, and the skeleton, keypoints and scores of the keypoints
    scoring above ``keypoint_threshold``."""
    canvas = image.copy()
    scale = max(1.0, max(image.shape[:2]) / 640)
    thick, radius, font = max(1, round(2 * scale)), max(2, round(3 * scale)), 0.35 * scale
    for n, person in enumerate(people):
        colour = _colour(n)
        x, y, w, h = (int(round(v)) for v in person.box)
        cv2.rectangle(canvas, (x, y), (x + w, y + h), colour, 1)
        cv2.putText(canvas, f"{person.score:.2f}", (x, max(0, y - 4)), cv2.FONT_HERSHEY_SIMPLEX, font * 1.3, colour, 1)
        visible = person.scores > keypoint_threshold
        points = [tuple(int(round(c)) for c in p) for p in person.keypoints]
        for a, b in skeleton:
            if a < len(points) and b < len(points) and visible[a] and visible[b]:
                cv2.line(canvas, points[a], points[b], colour, thick, cv2.LINE_AA)
        for point, score, shown in zip(points, person.scores, visible):
            if shown:
                cv2.circle(canvas, point, radius, (255, 255, 255), -1, cv2.LINE_AA)
                cv2.circle(canvas, point, radius, colour, 1, cv2.LINE_AA)
                cv2.putText(canvas, f"{score:.2f}", (point[0] + radius, point[1] - radius), cv2.FONT_HERSHEY_SIMPLEX,
                            font, colour, 1, cv2.LINE_AA)  # fmt: skip
    return canvas


def _colour(n: int) -> tuple[int, int, int]:
    hue = np.uint8([[[(n * 47) % 180, 220, 255]]])
    return tuple(int(c) for c in cv2.cvtColor(hue, cv2.COLOR_HSV2BGR)[0, 0])


def read_boxes(
    detections: str | os.PathLike, images: str | os.PathLike, box_threshold: float, ids: dict[int, Path]
) -> dict[int, list[tuple[tuple[float, float, float, float], float]]]:
    """(box, score) of each person by image id: from a detections file (COCO results format), or from an
    MPII annotation file (each person's centre and scale make its box, as in MPII's evaluation)."""
    boxes: dict[int, list] = {}
    records = read_json(Path(detections))
    if isinstance(records, list) and records and isinstance(records[0], dict) and "center" in records[0]:
        by_name = {path.name: id_ for id_, path in ids.items()}
        for person in MpiiAnnotations(detections, images).instances:
            if person.image_path.name in by_name:
                boxes.setdefault(by_name[person.image_path.name], []).append((person.box, 1.0))
        return boxes
    for det in read_detections(detections, box_threshold):
        boxes.setdefault(det.image_id, []).append((det.box, det.score))
    return boxes


def run(
    ckpt: str | os.PathLike,
    images: str | os.PathLike,
    detections: str | os.PathLike | None = None,
    output: str | os.PathLike = "predictions",
    flip_test: bool = True,
    device: str | None = None,
    box_threshold: float = 0.0,
    batch_size: int = 32,
    runtime: str = AUTO,
) -> Path:
    """Predict every image with the network in ``runtime`` (``evopose_pl.runtimes``); returns the results file.
    Keypoints are drawn above the checkpoint's codec's keypoint threshold; detections below ``box_threshold`` are
    left out."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    runtime = resolve_runtime(runtime, device)
    module = load_pose_module(ckpt, device, flip_test)
    single_stage = isinstance(module, SingleStageModule)
    if single_stage and detections is not None:
        raise ValueError(
            f"detections={detections}: this checkpoint's network ({module.codec.name}) finds people itself in whole "
            "images: drop detections="
        )
    paths = find_images(images)
    module.net = inference_network(module, runtime, device)
    module.to(device if runtime == "torch" else "cpu")  # the ONNX runtimes take host arrays
    print(f"{checkpoint_label('ckpt=', ckpt)}: {runtime} ({precision(runtime, device)}) on {device}")
    ids = {image_id(p, i): p for i, p in enumerate(paths)}
    boxes = {} if detections is None else read_boxes(detections, images, box_threshold, ids)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    skeleton = module.keypoint_info.skeleton
    results = []
    for id_, path in ids.items():
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise FileNotFoundError(f"images: {path} cannot be decoded")
        height, width = image.shape[:2]
        drawn = None
        if single_stage:  # every candidate person goes to the results (COCO AP ranks them); the confident are drawn
            people = detect_people(module, image)
            drawn = [p for p in people if p.score > module.codec.fusion_score]
        else:
            people = predict_image(module, image, boxes.get(id_, []) if detections is not None else
                                   [((0.0, 0.0, float(width), float(height)), 1.0)], batch_size)  # fmt: skip
        if people:
            results += results_records(
                [id_] * len(people),
                np.stack([p.keypoints for p in people]),
                np.stack([p.scores for p in people]),
                np.array([p.score for p in people]),
            )
        drawn = people if drawn is None else drawn
        cv2.imwrite(str(out / f"{path.stem}.jpg"), render(image, drawn, skeleton, module.codec.keypoint_threshold))
        print(f"{path.name}: {len(drawn)} people" + ("" if drawn is people else f" ({len(people)} candidates)"))
    results_file = out / RESULTS_FILE
    results_file.write_text(json.dumps(results))
    print(f"{len(results)} people in {len(ids)} images: {results_file} and the drawn images in {out}")
    return results_file


def parse_overrides(argv: Sequence[str], defaults: dict[str, object]) -> dict[str, object]:
    """``key=value`` arguments (the style of train.py and evolve.py) into typed keyword arguments."""
    values: dict[str, object] = {}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key not in defaults:
            raise SystemExit(f"{arg!r}: expected key=value with key one of {', '.join(defaults)}")
        default = defaults[key]
        if isinstance(default, bool):
            if value.lower() not in ("true", "false"):
                raise SystemExit(f"{key}={value}: expected true or false")
            values[key] = value.lower() == "true"
        elif isinstance(default, (int, float)):
            try:
                values[key] = type(default)(value)
            except ValueError:
                raise SystemExit(f"{key}={value}: expected a {type(default).__name__}") from None
        else:
            values[key] = None if value.lower() == "null" else value
    return values


def main(argv: Sequence[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    defaults = {"ckpt": "", "images": "", "detections": "", "output": "predictions", "flip_test": True,
                "device": "", "box_threshold": 0.0, "batch_size": 32, "runtime": AUTO}  # fmt: skip
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return
    values = parse_overrides(argv, defaults)
    for required in ("ckpt", "images"):
        if not values.get(required):
            raise SystemExit(f"{required}= is required (python -m evopose_pl.predict --help)")
    try:
        run(**{k: v for k, v in values.items() if v != ""})
    except (FileNotFoundError, ValueError) as e:  # bad input: the message names it, no traceback
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
