"""Export a trained network for use outside PyTorch.

    python -m evopose_pl.export ckpt=best.ckpt format=onnx [output=model.onnx] [opset=17]

The ONNX model takes ``images``: float32 RGB crops (N, 3, H, W) at the checkpoint's input size,
values 0-255 (the ImageNet normalisation is inside), and returns the deployed network's outputs by the names
its codec knows them by (``heatmaps`` (N, K, H', W') for heatmap networks and EfficientPose, whose
training-only intermediate predictions are left out). The batch dimension is
dynamic.

A KAPAO model takes whole images letterboxed to any height and width that are multiples of 64 (both
dynamic; pad with grey 114) and returns ``p3``, ``p4``, ``p5``, ``p6``: (N, A x (6 + 3K), H / s, W / s) at
strides s = 8, 16, 32, 64, the raw outputs of A = 3 anchors each. To decode, view a level as
(N, A, 6 + 3K, h, w) and take the sigmoid ``t`` of every value: at cell (gx, gy) of anchor (aw, ah) (the
codec metadata's ``anchors``, in pixels), the box centre is ``(2 t[0:2] - 0.5 + (gx, gy)) s``, its size
``(2 t[2:4])^2 (aw, ah)``, the confidence ``t[4] x t[5 + c]`` for class c (0: a person, 1 + k: keypoint k),
keypoint k ``(4 t[6 + K + 2k : 8 + K + 2k] - 2) (aw, ah) + (gx, gy) s``. Then NMS and fusion as
``evopose_pl.codecs.kapao.KapaoCodec.people`` does (SPEC-KAPAO section 4), with the thresholds in the codec
metadata's ``settings``.

The model's metadata carries the codec and the keypoint set (``codec``, ``keypoint_names``,
``skeleton``, ``flip_index``, JSON), so a runtime can decode without the checkpoint. Needs the extra:
``pip install -e ".[onnx]"``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from evopose_pl.module import PoseModule
from evopose_pl.nets import deployed
from evopose_pl.predict import load_pose_module, parse_overrides
from evopose_pl.runtimes import export_graph

FORMATS = ("onnx",)


def export_onnx(module: PoseModule, output: str | os.PathLike, opset: int = 17) -> Path:
    """Write ``module``'s network, with the normalisation, as one ONNX file with a dynamic batch dimension."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    height, width = module.input_size
    with deployed(module.net):
        export_graph(module.cpu(), torch.rand(2, 3, height, width) * 255, output, module.codec.layout == "whole_image",
                     opset)  # fmt: skip
    describe_model(output, module)
    return output


def describe_model(path: Path, module: PoseModule) -> None:
    """Write the codec and the keypoint set into the ONNX model's metadata."""
    import onnx

    model = onnx.load(str(path))
    info = module.keypoint_info
    entries = {
        "codec": module.codec.describe(),
        "keypoint_names": list(info.names),
        "skeleton": [list(pair) for pair in info.skeleton],
        "flip_index": list(info.flip_index),
    }
    del model.metadata_props[:]
    for key, value in entries.items():
        model.metadata_props.add(key=key, value=json.dumps(value))
    onnx.save(model, str(path))


def main(argv: Sequence[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return
    values = parse_overrides(argv, {"ckpt": "", "format": "onnx", "output": "", "opset": 17})
    if not values.get("ckpt"):
        raise SystemExit("ckpt= is required (python -m evopose_pl.export --help)")
    if values.get("format", "onnx") not in FORMATS:
        raise SystemExit(f"format={values['format']}: supported formats are {', '.join(FORMATS)}")
    ckpt = Path(str(values["ckpt"]))
    output = Path(str(values.get("output") or ckpt.with_suffix(".onnx")))
    try:
        module = load_pose_module(ckpt, "cpu", flip_test=False)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    export_onnx(module, output, int(values.get("opset", 17)))
    print(f"Wrote {output}: input 'images' (N, 3, {module.input_size[0]}, {module.input_size[1]}) float32 0-255,"
          f" {module.codec.name} outputs for {len(module.keypoint_info.names)} keypoints")  # fmt: skip


if __name__ == "__main__":
    main()
