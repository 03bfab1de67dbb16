"""Reading checkpoints without executing them.

A checkpoint is a pickle, and unpickling an arbitrary pickle runs whatever code it names. Every
checkpoint the platform reads (``predict``, ``export``, ``train.py`` testing or resuming, weight
transfer, ``model.pretrained=`` seeding) is read by torch's weights-only unpickler, which rebuilds
tensors and plain containers and refuses anything else. Our own checkpoints hold nothing else, so
no extra globals are allowed: a file that asks for one is refused with a one-line reason.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch

_UNSAFE_GLOBAL = re.compile(r"GLOBAL (\S+) was not an allowed global")
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since PyTorch 1.6
_PICKLE_PROTOCOL = b"\x80"  # a pickle (older torch.save files, plain pickled state dicts)


class CheckpointError(ValueError):
    """A checkpoint that cannot be read safely, or is not a checkpoint; the message names the file."""


def load_checkpoint(path: str | os.PathLike, name: str = "checkpoint") -> Any:
    """The contents of the checkpoint at ``path``, read on the CPU without running any code it carries.

    ``name`` says in messages what the file is: ``"parent checkpoint"`` reads ``parent checkpoint <path>``,
    an override such as ``"ckpt="`` reads ``ckpt=<path>``. A missing file
    raises ``FileNotFoundError``; a file that would run code when unpickled, or that is no
    checkpoint at all, raises ``CheckpointError`` with one line naming the file and the reason.
    """
    path = Path(path)
    label = checkpoint_label(name, path)
    if not path.exists():
        raise FileNotFoundError(f"{label}: no such checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"{label}: not a file")
    with path.open("rb") as f:
        head = f.read(4)
    if not head.startswith((_ZIP_MAGIC, _PICKLE_PROTOCOL)):
        raise CheckpointError(f"{label}: not a PyTorch checkpoint (neither torch.save's zip archive nor a pickle)")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols it reads all the same
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(f"{label}: refused, {_refusal(str(error))}") from None
    except Exception as error:  # torch raises RuntimeError, KeyError, EOFError... for damaged files
        raise CheckpointError(f"{label}: not a readable PyTorch checkpoint ({first_sentence(error)})") from None


def checkpoint_label(name: str, path: str | os.PathLike) -> str:
    """How messages name a checkpoint: ``parent checkpoint <path>``, or ``ckpt=<path>`` for an override."""
    return f"{name}{os.fspath(path)}" if name.endswith("=") else f"{name} {os.fspath(path)}"


def first_sentence(error: BaseException) -> str:
    """An error's first sentence, for a one-line message (torch's and Lightning's run to paragraphs)."""
    text = str(error).strip()
    return text.split(". ")[0].splitlines()[0] if text else type(error).__name__


def _refusal(message: str) -> str:
    """torch's multi-line weights-only error, as one clause."""
    unsafe = _UNSAFE_GLOBAL.search(message)
    if unsafe:
        return (
            f"it asks to call {unsafe.group(1)} when loaded, which could run arbitrary code; only tensors and"
            " plain containers are read"
        )
    detail = message.split("WeightsUnpickler error:")[-1].strip().splitlines()
    return f"it holds objects other than tensors and plain containers ({detail[0] if detail else 'unknown'})"
