"""Keras ``.h5`` weights under our layer names, read with h5py: the released EfficientPose models and
Keras' EfficientNet layer naming (``stem_conv``, ``block2a_expand_conv``...), so EvoPose2D networks can
start from TensorFlow-trained weights too. Only arrays are read: the file's Lambda layers (Python
bytecode) are never run. Networks that should reproduce the Keras outputs need ``padding=tf_same``.

| Keras layer | ours |
|---|---|
| ``stem_conv``, ``stem_bn`` (``_res1``: high resolution) | ``stem.conv``, ``stem.bn`` |
| ``block3b_dwconv``, ``block3b_bn``, ``block3b_se_reduce``... | ``modules.2.blocks.1.depthwise.conv``... |
| the same with ``_res2`` (EfficientPose's low-resolution backbone) | ``low.stem...``, ``low.modules...`` |
| ``pass1_block2_mbconv3_skeleton_dconv1_bn`` | ``skeleton.0.densenets.1.blocks.2.depthwise.bn`` |
| ``pass3_block1_mbconv1_detection2_se_se_squeeze_conv`` | ``detection.1.densenets.0.blocks.0.se.reduce`` |
| ``pass1_skeleton_pafs``, ``pass2_detection1_confs`` | ``skeleton.0.predict``, ``detection.0.predict`` |
| ``upscaled_deconv1``, ``upscaled_deconv2``, ``upscaled_confs`` | ``upscale.0``, ``upscale.1``, ``upscale.2`` |
| ``top_conv``, ``top_bn`` | ``top.conv``, ``top.bn`` |

Kernels move from Keras' (kh, kw, in, out) to PyTorch's layouts. The released EfficientPose models
predict their joints in their own order (``efficientpose.RELEASED_JOINTS``); their confidence-map
layers are permuted on reading into MPII's order, which our networks and data use. Their PAF channels
are kept as released (the limbs' order is undocumented).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import h5py
import numpy as np
import torch

from evopose_pl.checkpoint import CheckpointError
from evopose_pl.data.mpii import MPII_KEYPOINTS
from evopose_pl.nets.efficientpose import RELEASED_JOINTS

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"

_BN = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}
_BLOCK_LAYERS = {
    "expand_conv": "expand.conv",
    "expand_bn": "expand.bn",
    "dwconv": "depthwise.conv",
    "bn": "depthwise.bn",
    "se_reduce": "se.reduce",
    "se_expand": "se.expand",
    "project_conv": "project.conv",
    "project_bn": "project.bn",
}
_EMBCONV_LAYERS = {
    "conv1": "expand.conv",
    "conv1_bn": "expand.bn",
    "dconv1": "depthwise.conv",
    "dconv1_bn": "depthwise.bn",
    "se_se_squeeze_conv": "se.reduce",
    "se_se_excite_conv": "se.expand",
    "conv2": "project.conv",
    "conv2_bn": "project.bn",
}
_UPSCALE = {"upscaled_deconv1": "upscale.0", "upscaled_deconv2": "upscale.1", "upscaled_confs": "upscale.2"}
#: Released channel of each of MPII's joints.
RELEASED_TO_MPII = [RELEASED_JOINTS.index(name) for name in MPII_KEYPOINTS]


def is_hdf5(path: str | os.PathLike) -> bool:
    """Whether a file is HDF5 (a Keras ``.h5``), by its signature rather than its name."""
    try:
        with open(path, "rb") as file:
            return file.read(8) == HDF5_SIGNATURE
    except OSError:
        return False


def keras_layer_name(layer: str) -> str | None:
    """Our module name for a Keras layer, or None for a layer we have no counterpart for."""
    low = layer.endswith("_res2")
    base = re.sub(r"_res[12]$", "", layer)
    prefix = "low." if low else ""
    if base in ("stem_conv", "stem_bn", "top_conv", "top_bn"):
        return prefix + base.replace("_", ".")
    if m := re.fullmatch(r"block(\d+)([a-z])_(\w+)", base):
        stage, block, part = m.groups()
        if part in _BLOCK_LAYERS:
            return f"{prefix}modules.{int(stage) - 1}.blocks.{ord(block) - ord('a')}.{_BLOCK_LAYERS[part]}"
        return None
    if m := re.fullmatch(r"pass\d+_block(\d+)_mbconv(\d+)_(skeleton|detection)(\d*)_(\w+)", base):
        densenet, block, kind, index, part = m.groups()
        if part not in _EMBCONV_LAYERS:
            return None
        layer = _EMBCONV_LAYERS[part]
        return f"{kind}.{int(index or 1) - 1}.densenets.{int(densenet) - 1}.blocks.{int(block) - 1}.{layer}"
    if m := re.fullmatch(r"pass\d+_(skeleton|detection)(\d*)_(pafs|confs)", base):
        kind, index, _ = m.groups()
        return f"{kind}.{int(index or 1) - 1}.predict"
    return _UPSCALE.get(base)


def _to_torch(array: np.ndarray, variable: str) -> torch.Tensor:
    """A Keras weight in PyTorch's layout."""
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    if variable == "depthwise_kernel":  # (kh, kw, in, 1) -> (in, 1, kh, kw)
        return tensor.permute(2, 3, 0, 1).contiguous()
    if variable == "kernel" and tensor.dim() == 4:
        # Conv2D (kh, kw, in, out) -> (out, in, kh, kw); Conv2DTranspose (kh, kw, out, in) -> (in, out, kh, kw)
        return tensor.permute(3, 2, 0, 1).contiguous()
    return tensor


def _datasets(group: h5py.Group) -> dict[str, h5py.Dataset]:
    """Every array under an h5py group, by its path inside it."""
    found: dict[str, h5py.Dataset] = {}
    group.visititems(lambda key, item: found.update({key: item}) if isinstance(item, h5py.Dataset) else None)
    return found


def read_keras_weights(path: str | os.PathLike, name: str = "model.pretrained=") -> dict[str, torch.Tensor]:
    """A Keras ``.h5`` file's weights as a state dict under our names (layers we do not have are dropped).

    Raises ``CheckpointError`` naming the file when it is not a Keras weights file.
    """
    path = Path(path)
    try:
        file = h5py.File(path, "r")
    except OSError as e:
        raise CheckpointError(f"{name}{path}: not a readable HDF5 file ({e})") from None
    with file:
        group = file["model_weights"] if "model_weights" in file else file
        state: dict[str, torch.Tensor] = {}
        for layer in group:
            ours = keras_layer_name(layer)
            if ours is None or not isinstance(group[layer], h5py.Group):
                continue
            for key, dataset in _datasets(group[layer]).items():
                variable = key.rsplit("/", 1)[-1].split(":")[0]
                param = _BN.get(variable, "weight" if "kernel" in variable else variable)
                state[f"{ours}.{param}"] = _to_torch(dataset[()], variable)
    if not state:
        raise CheckpointError(f"{name}{path}: no Keras layer in it has a counterpart here (stem_conv, block1a_...)")
    return _mpii_joint_order(state)


def _mpii_joint_order(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Released EfficientPose confidence maps permuted into MPII's joint order (the upscaling, a per-channel
    kernel, permuted on both channel axes)."""
    for key, tensor in state.items():
        if re.fullmatch(r"detection\.\d+\.predict\.(weight|bias)", key) and tensor.shape[0] == len(RELEASED_TO_MPII):
            state[key] = tensor[RELEASED_TO_MPII].contiguous()
        elif re.fullmatch(r"upscale\.\d+\.weight", key) and tensor.shape[:2] == (len(RELEASED_TO_MPII),) * 2:
            state[key] = tensor[RELEASED_TO_MPII][:, RELEASED_TO_MPII].contiguous()
        elif re.fullmatch(r"upscale\.\d+\.bias", key) and tensor.shape[0] == len(RELEASED_TO_MPII):
            state[key] = tensor[RELEASED_TO_MPII].contiguous()
    return state
