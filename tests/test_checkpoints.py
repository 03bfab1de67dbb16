"""Loading a checkpoint never executes it: every path that reads one refuses a pickle payload with one line.

The payload opens a marker file for writing when unpickled, so a test sees whether it ran.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from evopose_pl.checkpoint import CheckpointError, load_checkpoint
from evopose_pl.nets import EvoPoseNet, build_model
from evopose_pl.predict import load_pose_module
from evopose_pl.transfer import transfer_weights


class Payload:
    """Unpickles into a call of ``open(marker, "w")``: harmless, and visible."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture
def payload(trained_checkpoint, tmp_path) -> tuple[Path, Path]:
    """A real train.py checkpoint with a payload added beside its weights, and the payload's marker."""
    marker = tmp_path / "payload-ran"
    checkpoint = torch.load(trained_checkpoint, weights_only=True)
    checkpoint["callbacks"]["payload"] = Payload(marker)
    path = tmp_path / "shared.ckpt"
    torch.save(checkpoint, path)
    return path, marker


def _refused_in_one_line(result: subprocess.CompletedProcess, path: Path, marker: Path) -> None:
    assert result.returncode != 0, result.stdout[-2000:]
    assert not marker.exists(), "the checkpoint's payload ran"
    errors = [line for line in result.stderr.splitlines() if str(path) in line]
    assert len(errors) == 1, result.stderr[-4000:]
    assert "refused, it asks to call" in errors[0] and "open" in errors[0], errors[0]
    assert "Traceback" not in result.stderr, result.stderr[-4000:]


def _run(*args: str, cwd: Path, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HOME": str(home)}  # no W&B key, caches kept out of the repository
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_predict_and_export_refuse_a_payload(payload, tmp_path, coco_sample, root):
    path, marker = payload
    predicted = _run("-m", "evopose_pl.predict", f"ckpt={path}", f"images={coco_sample}", f"output={tmp_path}/p",
                     cwd=root, home=tmp_path)  # fmt: skip
    _refused_in_one_line(predicted, path, marker)
    exported = _run("-m", "evopose_pl.export", f"ckpt={path}", f"output={tmp_path}/m.onnx", cwd=root, home=tmp_path)
    _refused_in_one_line(exported, path, marker)
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize(
    "overrides",
    [
        ["train=false", "ckpt_path={ckpt}"],  # test a checkpoint
        ["ckpt_path={ckpt}", "test=false"],  # resume training from it
        ["callbacks.weight_transfer.parent={ckpt}", "test=false"],  # inherit its weights
        ["model.pretrained={ckpt}", "test=false"],  # seed the network from it
    ],
    ids=["test-only", "resume", "weight-transfer", "pretrained"],
)
def test_train_refuses_a_payload_on_every_loading_path(payload, tmp_path, overrides, root, tiny_train):
    path, marker = payload
    result = _run(
        str(root / "train.py"), *tiny_train, "logger=none", f"paths.log_dir={tmp_path}/outputs",
        *(o.format(ckpt=path) for o in overrides),
        cwd=tmp_path, home=tmp_path,
    )  # fmt: skip
    _refused_in_one_line(result, path, marker)


def test_our_own_checkpoints_load_and_resume_safely(trained_checkpoint, tmp_path, root, tiny_train):
    """Nothing in a train.py checkpoint needs more than the weights-only unpickler, resuming included."""
    loaded = load_checkpoint(trained_checkpoint)
    assert {"state_dict", "net", "hyper_parameters", "optimizer_states", "loops"} <= set(loaded)
    assert load_pose_module(trained_checkpoint).input_size == (64, 48)
    last = trained_checkpoint.with_name("last.ckpt")
    result = _run(
        str(root / "train.py"), *tiny_train, "logger=none", f"paths.log_dir={tmp_path}/outputs",
        f"ckpt_path={last}", "trainer.max_epochs=2", "test=false",
        cwd=tmp_path, home=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Restoring states from the checkpoint path" in result.stdout + result.stderr


def test_library_loaders_refuse_a_payload(payload, test_genotype):
    path, marker = payload
    with pytest.raises(CheckpointError, match=rf"ckpt={path}: refused, it asks to call \S*open"):
        load_pose_module(path)
    with pytest.raises(CheckpointError, match=rf"parent checkpoint {path}: refused"):
        transfer_weights(path, EvoPoseNet(test_genotype, num_keypoints=17))
    with pytest.raises(CheckpointError, match=rf"model.pretrained={path}: refused"):
        build_model("evopose2d_xs", pretrained=path)
    assert not marker.exists()


def _torch_file(data: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(data, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "content,reason",
    [
        (os.urandom(4096), "not a PyTorch checkpoint"),
        (b"", "not a PyTorch checkpoint"),
        (b"state_dict = {}\n", "not a PyTorch checkpoint"),
        (_torch_file({"w": torch.zeros(100)})[:300], "not a readable PyTorch checkpoint"),
    ],
    ids=["binary-garbage", "empty", "text", "truncated"],
)
def test_damaged_checkpoints_name_the_file(tmp_path, content, reason):
    path = tmp_path / "weights.ckpt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, "ckpt=")
    message = str(info.value)
    assert message.startswith(f"ckpt={path}: {reason}") and "\n" not in message
    with pytest.raises(FileNotFoundError, match=f"ckpt={tmp_path}/missing.ckpt: no such checkpoint file"):
        load_checkpoint(tmp_path / "missing.ckpt", "ckpt=")
