"""Reference outputs of the released Keras EfficientPose models, computed with real TensorFlow.

This tool rebuilds the functional graph stored in an EfficientPose Keras 2.2.4 ``.h5`` file
(``attrs['model_config']``) out of ``tf.keras`` layers, one per config entry, wired by
``inbound_nodes``; loads every layer's weights from the file with h5py (and checks that each
stored weight is used exactly once); and runs inference (``training=False``) on one image.
It writes the fixtures the PyTorch port is tested against (``tests/data/efficientpose/``) and,
optionally, every layer's output for layer-by-layer debugging.

It is a tool, not part of the library: nothing in ``evopose_pl`` or the tests imports it, and it
is the only place in the project where TensorFlow is used. Run it from a scratch environment,
never from the project venv::

    python3 -m venv /tmp/tfenv
    /tmp/tfenv/bin/pip install tensorflow-cpu h5py numpy opencv-python-headless
    /tmp/tfenv/bin/python tools/keras_reference.py \\
        --h5 /work/shared/data/efficientpose/EfficientPoseRT.h5 \\
        --image /work/shared/data/mpii_sample/060754485.jpg \\
        --out tests/data/efficientpose/rt_reference.npz --debug /tmp/efficientpose_debug_rt.npz

(``EfficientPoseI.h5`` -> ``i_reference.npz`` likewise.) oneDNN is disabled by default
(``TF_ENABLE_ONEDNN_OPTS=0``); with it enabled the outputs move by < 1e-6.

Loading a file never executes it. The ``Lambda`` layers of the released files hold marshalled
bytecode of an old Python; it is never unmarshalled or run. Each Lambda is interpreted from its
config instead: one whose closure (third element of ``function``) holds axes is a spatial mean with
``keepdims=True``; one without is the identity (a disabled drop-connect). The reading is
cross-checked against the raw instruction bytes, names and constants of the stored code object.

Fixture contents (channels-first, the released joint order): ``image`` (uint8 R x R x 3, RGB),
``pafs`` (28, R/8, R/8), ``pass2`` and ``pass3`` (16, R/8, R/8), ``upscaled`` (16, 24, 24): the
full-resolution output sampled at ``upscaled_rows`` x ``upscaled_cols``, plus ``keras_version``
(of the file) and ``tensorflow_version``.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # plain Eigen kernels: outputs independent of the CPU's ISA

import cv2  # noqa: E402
import h5py  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow import keras  # noqa: E402

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
JOINTS = (
    "head_top",
    "upper_neck",
    "r_shoulder",
    "r_elbow",
    "r_wrist",
    "thorax",
    "l_shoulder",
    "l_elbow",
    "l_wrist",
    "pelvis",
    "r_hip",
    "r_knee",
    "r_ankle",
    "l_hip",
    "l_knee",
    "l_ankle",
)
OUTPUT_KEYS = {
    "pass1_skeleton_pafs": "pafs",
    "pass2_detection1_confs": "pass2",
    "pass3_detection2_confs": "pass3",
    "upscaled_confs": "upscaled",
}
# Order in which Keras stores (and set_weights expects) each class's variables.
WEIGHT_ORDER = {
    "Conv2D": ("kernel", "bias"),
    "Conv2DTranspose": ("kernel", "bias"),
    "DepthwiseConv2D": ("depthwise_kernel", "bias"),
    "BatchNormalization": ("gamma", "beta", "moving_mean", "moving_variance"),
}

# Python 3.6/3.7 opcodes that occur in the stored lambdas (only used to print/verify them).
_OPNAMES = {
    0x53: "RETURN_VALUE",
    0x64: "LOAD_CONST",
    0x6A: "LOAD_ATTR",
    0x74: "LOAD_GLOBAL",
    0x7C: "LOAD_FAST",
    0x88: "LOAD_DEREF",
    0x8D: "CALL_FUNCTION_KW",
}
# `lambda x: x`
_IDENTITY_CODE = bytes([0x7C, 0, 0x53, 0])
# `lambda a: K.mean(a, axis=spatial_dims, keepdims=True)`
_MEAN_CODE = bytes([0x74, 0, 0x6A, 1, 0x7C, 0, 0x88, 0, 0x64, 1, 0x64, 2, 0x8D, 3, 0x53, 0])


class Swish(keras.layers.Layer):
    """EfficientPose's ``Swish`` activation: 'swish1' = x*sigmoid(x), 'eswish' = 1.25*x*sigmoid(x)."""

    def __init__(self, activation: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if activation not in ("swish1", "eswish"):
            raise ValueError(f"unknown Swish activation {activation!r}")
        self.activation = activation

    def call(self, x: tf.Tensor) -> tf.Tensor:
        if self.activation == "eswish":
            return 1.25 * x * tf.sigmoid(x)  # same association as the original `beta * x * sigmoid(x)`
        return x * tf.sigmoid(x)


class SpatialMean(keras.layers.Layer):
    """Interpretation of the SE-squeeze Lambda: ``tf.reduce_mean(x, axis, keepdims=True)``."""

    def __init__(self, axis: list[int], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.axis = list(axis)

    def call(self, x: tf.Tensor) -> tf.Tensor:
        return tf.reduce_mean(x, axis=self.axis, keepdims=True)


class Identity(keras.layers.Layer):
    """Interpretation of the drop-connect Lambda that was saved disabled: ``lambda x: x``."""

    def call(self, x: tf.Tensor) -> tf.Tensor:
        return tf.identity(x)


def lambda_bytecode(function: list[Any]) -> tuple[bytes, list[str]]:
    """Instruction bytes and marshalled short strings of a serialised Keras Lambda, without unmarshalling it.

    Layout of a Python 3.6/3.7 marshalled code object: type byte, five int32 header fields, then
    ``co_code`` as a bytes object (``'s'``, int32 length, data); names and constants follow.
    """
    raw = base64.b64decode(function[0])
    if raw[0] & 0x7F != ord("c") or raw[21] & 0x7F != ord("s"):
        raise ValueError("Lambda function is not a Python 3.6/3.7 marshalled code object")
    n = int.from_bytes(raw[22:26], "little")
    code = raw[26 : 26 + n]
    strings, i = [], 26 + n
    while i < len(raw) - 1:  # short ASCII strings: type 'z'/'Z' (| ref flag), 1-byte length
        if raw[i] & 0x7F in (ord("z"), ord("Z")) and 0 < raw[i + 1] <= len(raw) - i - 2:
            text = raw[i + 2 : i + 2 + raw[i + 1]]
            if text.isascii() and text.decode().isprintable():
                strings.append(text.decode())
                i += 2 + raw[i + 1]
                continue
        i += 1
    return code, strings


def disassemble(code: bytes) -> str:
    """Wordcode listing, e.g. ``LOAD_FAST 0; RETURN_VALUE 0``."""
    return "; ".join(f"{_OPNAMES.get(code[i], hex(code[i]))} {code[i + 1]}" for i in range(0, len(code), 2))


def interpret_lambda(config: dict[str, Any]) -> keras.layers.Layer:
    """Build the layer a stored Lambda stands for, checking the reading against its bytecode."""
    function = config["function"]
    if config["function_type"] != "lambda" or config.get("arguments"):
        raise ValueError(f"unsupported Lambda config in {config['name']}")
    code, strings = lambda_bytecode(function)
    closure = function[2]
    if closure is not None:
        if code != _MEAN_CODE or not {"mean", "keepdims", "axis"} <= set(strings):
            raise ValueError(f"{config['name']}: bytecode is not K.mean(a, axis=..., keepdims=True)")
        return SpatialMean(closure[0], name=config["name"])
    if code != _IDENTITY_CODE:
        raise ValueError(f"{config['name']}: bytecode is not `lambda x: x`")
    return Identity(name=config["name"])


def lambda_summary(model_config: dict[str, Any]) -> list[str]:
    """One line per distinct stored Lambda: how many layers use it, its closure, instructions and strings."""
    groups: dict[str, list[str]] = {}
    for layer in model_config["config"]["layers"]:
        if layer["class_name"] == "Lambda":
            groups.setdefault(json.dumps(layer["config"]["function"]), []).append(layer["name"])
    lines = []
    for function, names in groups.items():
        code, strings = lambda_bytecode(json.loads(function))
        closure = json.loads(function)[2]
        reading = "identity" if closure is None else f"reduce_mean(axis={closure[0]}, keepdims=True)"
        lines.append(f"{len(names)} x Lambda -> {reading}: closure={closure}; {disassemble(code)}; strings={strings}")
    return lines


def make_layer(class_name: str, config: dict[str, Any]) -> keras.layers.Layer:
    """A ``tf.keras`` layer equivalent to one entry of the Keras 2.2.4 model config."""
    c, name = config, config["name"]
    if class_name == "Conv2D":
        return keras.layers.Conv2D(
            c["filters"],
            c["kernel_size"],
            strides=c["strides"],
            padding=c["padding"],
            use_bias=c["use_bias"],
            dilation_rate=c["dilation_rate"],
            activation=c["activation"],
            name=name,
        )
    if class_name == "DepthwiseConv2D":
        return keras.layers.DepthwiseConv2D(
            c["kernel_size"],
            strides=c["strides"],
            padding=c["padding"],
            depth_multiplier=c["depth_multiplier"],
            use_bias=c["use_bias"],
            dilation_rate=c["dilation_rate"],
            activation=c["activation"],
            name=name,
        )
    if class_name == "Conv2DTranspose":
        return keras.layers.Conv2DTranspose(
            c["filters"],
            c["kernel_size"],
            strides=c["strides"],
            padding=c["padding"],
            output_padding=c["output_padding"],
            use_bias=c["use_bias"],
            activation=c["activation"],
            name=name,
        )
    if class_name == "BatchNormalization":
        return keras.layers.BatchNormalization(
            axis=c["axis"],
            momentum=c["momentum"],
            epsilon=c["epsilon"],
            center=c["center"],
            scale=c["scale"],
            name=name,
        )
    if class_name == "Swish":
        return Swish(c["activation"], name=name)
    if class_name == "Activation":
        return keras.layers.Activation(c["activation"], name=name)
    if class_name == "GlobalAveragePooling2D":
        return keras.layers.GlobalAveragePooling2D(data_format=c["data_format"], name=name)
    if class_name == "AveragePooling2D":
        return keras.layers.AveragePooling2D(c["pool_size"], strides=c["strides"], padding=c["padding"], name=name)
    if class_name == "Reshape":
        return keras.layers.Reshape(c["target_shape"], name=name)
    if class_name == "Multiply":
        return keras.layers.Multiply(name=name)
    if class_name == "Add":
        return keras.layers.Add(name=name)
    if class_name == "Concatenate":
        return keras.layers.Concatenate(axis=c["axis"], name=name)
    if class_name == "Lambda":
        return interpret_lambda(c)
    raise ValueError(f"unsupported layer class {class_name} ({name})")


def build_model(model_config: dict[str, Any]) -> tuple[keras.Model, dict[str, str]]:
    """Rebuild the functional graph; the model returns a dict of every layer's output by layer name."""
    cfg = model_config["config"]
    tensors: dict[str, Any] = {}
    classes: dict[str, str] = {}
    (input_name, _, _) = cfg["input_layers"][0]
    for layer in cfg["layers"]:
        name, class_name, lcfg = layer["name"], layer["class_name"], layer["config"]
        classes[name] = class_name
        if class_name == "InputLayer":
            shape = lcfg["batch_input_shape"][1:]
            tensors[name] = keras.Input(shape=shape, batch_size=1, dtype=lcfg["dtype"], name=name)
            continue
        if len(layer["inbound_nodes"]) != 1:
            raise ValueError(f"{name}: shared layers are not supported")
        inputs = []
        for src, node_index, tensor_index, kwargs in layer["inbound_nodes"][0]:
            if node_index != 0 or tensor_index != 0 or kwargs:
                raise ValueError(f"{name}: unsupported inbound node {src, node_index, tensor_index, kwargs}")
            inputs.append(tensors[src])  # config layers are in topological order
        tensors[name] = make_layer(class_name, lcfg)(inputs if len(inputs) > 1 else inputs[0])
    if [n for n, *_ in cfg["output_layers"]] != list(OUTPUT_KEYS):
        raise ValueError(f"unexpected outputs {cfg['output_layers']}")
    return keras.Model(tensors[input_name], tensors, name=cfg["name"]), classes


def load_weights(model: keras.Model, classes: dict[str, str], h5: h5py.File) -> int:
    """Set every layer's weights from ``model_weights`` by layer name; check each stored array is used once."""
    group = h5["model_weights"]
    stored: set[str] = set()
    group.visititems(lambda path, obj: stored.add(path) if isinstance(obj, h5py.Dataset) else None)
    used: set[str] = set()
    for raw_name in group.attrs["layer_names"]:
        lname = raw_name.decode() if isinstance(raw_name, bytes) else str(raw_name)
        lgroup = group[lname]
        paths = [w.decode() if isinstance(w, bytes) else str(w) for w in lgroup.attrs["weight_names"]]
        if not paths:
            continue
        by_var = {p.rsplit("/", 1)[1].removesuffix(":0"): p for p in paths}
        order = WEIGHT_ORDER[classes[lname]]
        if sorted(by_var) != sorted(v for v in order if v in by_var) or order[0] not in by_var:
            raise ValueError(f"{lname}: unexpected variables {sorted(by_var)}")
        values = [np.asarray(lgroup[by_var[v]], dtype=np.float32) for v in order if v in by_var]
        layer = model.get_layer(lname)
        expected = [tuple(w.shape) for w in layer.weights]
        if [v.shape for v in values] != expected:
            raise ValueError(f"{lname}: shapes {[v.shape for v in values]} != {expected}")
        layer.set_weights(values)
        used.update(f"{lname}/{by_var[v]}" for v in order if v in by_var)
    if used != stored:
        raise ValueError(f"unused weights: {sorted(stored - used)}; missing: {sorted(used - stored)}")
    set_layers = {u.split("/", 1)[0] for u in used}
    unset = [layer.name for layer in model.layers if layer.weights and layer.name not in set_layers]
    if unset:
        raise ValueError(f"layers without stored weights: {unset}")
    return len(used)


def load_image(path: Path, resolution: int) -> np.ndarray:
    """RGB uint8 image resized to ``resolution`` x ``resolution`` with INTER_AREA."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(path)
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    return cv2.resize(rgb, (resolution, resolution), interpolation=cv2.INTER_AREA)


def normalise(image: np.ndarray) -> np.ndarray:
    """The PyTorch module's normalisation, as an NHWC float32 batch of one."""
    x = (image.astype(np.float32) - 255 * MEAN) / (255 * STD)
    return x[None].astype(np.float32)


def sample_indices(resolution: int) -> np.ndarray:
    """Rows/cols kept from the upscaled map: the first 8, the middle 8 and the last 8."""
    half = resolution // 2
    return np.concatenate([np.arange(8), np.arange(half - 4, half + 4), np.arange(resolution - 8, resolution)])


def describe(outputs: dict[str, np.ndarray]) -> None:
    """Print statistics of each output and the argmax of each full-resolution confidence map."""
    for key in OUTPUT_KEYS.values():
        v = outputs[key]
        print(
            f"{key:9s} {str(v.shape):15s} max|v|={np.abs(v).max():.6g} min={v.min():.6g} max={v.max():.6g} "
            f"mean={v.mean():.6g} std={v.std():.6g}"
        )
    up = outputs["upscaled"]
    res = up.shape[-1]
    print(f"argmax (row, col) of each upscaled map ({res} x {res}):")
    for j, joint in enumerate(JOINTS):
        r, c = np.unravel_index(int(np.argmax(up[j])), up[j].shape)
        print(f"  {j:2d} {joint:11s} ({r:3d}, {c:3d})  peak={up[j, r, c]:.4f}")


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--h5", type=Path, required=True, help="EfficientPose Keras .h5 file")
    parser.add_argument("--image", type=Path, required=True, help="input image (any size; resized to R x R)")
    parser.add_argument("--out", type=Path, required=True, help="fixture .npz to write")
    parser.add_argument("--debug", type=Path, help="optional .npz of every layer's output (NHWC, by layer name)")
    args = parser.parse_args()

    with h5py.File(args.h5, "r") as h5:
        model_config = json.loads(h5.attrs["model_config"])
        keras_version = h5.attrs["keras_version"]
        keras_version = keras_version.decode() if isinstance(keras_version, bytes) else str(keras_version)
        model, classes = build_model(model_config)
        n_weights = load_weights(model, classes, h5)
    resolution = model.input_shape[1]
    print(f"{args.h5.name}: {len(model.layers)} layers, {n_weights} weight arrays loaded, input {resolution}")
    for line in lambda_summary(model_config):
        print(" ", line)

    image = load_image(args.image, resolution)
    layer_outputs = {k: np.asarray(v) for k, v in model(normalise(image), training=False).items()}
    outputs = {key: layer_outputs[name][0].transpose(2, 0, 1) for name, key in OUTPUT_KEYS.items()}
    describe(outputs)

    idx = sample_indices(resolution)
    fixture = {
        "image": image,
        "pafs": outputs["pafs"],
        "pass2": outputs["pass2"],
        "pass3": outputs["pass3"],
        "upscaled_rows": idx,
        "upscaled_cols": idx,
        "upscaled": np.ascontiguousarray(outputs["upscaled"][:, idx][:, :, idx]),
        "keras_version": np.array(keras_version),
        "tensorflow_version": np.array(tf.__version__),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **fixture)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB)")
    if args.debug:
        np.savez(args.debug, **layer_outputs)
        print(f"wrote {args.debug} ({len(layer_outputs)} layer outputs)")


if __name__ == "__main__":
    main()
