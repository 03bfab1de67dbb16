"""Weight transfer (SPEC section 4): a child network inherits its parent's trained tensors.

Tensors are matched by structural name (``stem``, ``modules.<i>.blocks.<j>...``, ``head.<n>``,
``final``). Every weight layout in the decoded networks keeps output and input channels on
dims 0 and 1 (convolutions, depthwise and transposed convolutions, linear layers) and the
kernel on the dims after them, so one rule serves them all:

- same shape: copy whole;
- otherwise copy the overlapping channels, and the centre of the larger kernel into, or
  out of, the centre of the smaller one; the rest keeps the child's fresh initialisation;
- 1-D tensors (BN statistics and affine, biases): copy the overlap, fill extra channels with
  the parent tensor's mean;
- a block the parent module lacks inherits from that module's last block, by the same rules;
- a tensor with no counterpart keeps its initialisation. Optimiser state is never transferred.
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

import torch
from torch import nn

from evopose_pl.checkpoint import CheckpointError, checkpoint_label, load_checkpoint

_BLOCK_KEY = re.compile(r"^(modules\.\d+\.blocks\.)(\d+)(\..+)$")

ParentLike = nn.Module | Mapping[str, torch.Tensor] | str | os.PathLike


class Inheritance(str, Enum):
    COPIED = "copied"  # same shape, copied whole
    PARTIAL = "partial"  # overlapping channels and centred kernel
    LAST_BLOCK = "last_block"  # the parent module has fewer blocks: inherited from its last one
    INITIALISED = "initialised"  # no counterpart in the parent


@dataclass(frozen=True)
class TensorTransfer:
    child_key: str
    parent_key: str | None
    how: Inheritance
    child_shape: tuple[int, ...]
    parent_shape: tuple[int, ...] | None
    inherited: int  # elements taken from the parent (mean-filled ones excluded)


@dataclass
class TransferReport:
    """What each child tensor received; ``str(report)`` prints a summary for logs."""

    tensors: list[TensorTransfer] = field(default_factory=list)
    unused_parent_keys: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        counts = Counter(t.how.value for t in self.tensors)
        return {how.value: counts.get(how.value, 0) for how in Inheritance}

    @property
    def inherited_fraction(self) -> float:
        """Share of the child's elements whose values came from the parent."""
        total = sum(math.prod(t.child_shape) for t in self.tensors)
        return sum(t.inherited for t in self.tensors) / max(total, 1)

    def by_kind(self, how: Inheritance) -> list[TensorTransfer]:
        return [t for t in self.tensors if t.how is how]

    def summary(self) -> dict[str, float]:
        """Flat numbers for a logger."""
        return {
            **{f"transfer/{k}": v for k, v in self.counts().items()},
            "transfer/unused_parent": len(self.unused_parent_keys),
            "transfer/inherited_fraction": self.inherited_fraction,
        }

    def __str__(self) -> str:
        counts = self.counts()
        return (
            f"weight transfer: {len(self.tensors)} child tensors, "
            f"{100 * self.inherited_fraction:.1f}% of their elements inherited; "
            f"copied whole {counts['copied']}, copied in part {counts['partial']}, "
            f"from a module's last block {counts['last_block']}, left at initialisation {counts['initialised']}; "
            f"{len(self.unused_parent_keys)} parent tensors unused"
        )

    def details(self) -> str:
        """One line per tensor that was not copied whole: where it came from, and its shapes."""
        return "\n".join(
            f"{t.how.value:>11}  {t.child_key} {t.child_shape}"
            + (f" <- {t.parent_key} {t.parent_shape}" if t.parent_key else "")
            for t in self.tensors
            if t.how is not Inheritance.COPIED
        )


def load_state_dict(source: ParentLike, name: str = "parent checkpoint") -> dict[str, torch.Tensor]:
    """A plain state dict from a module, a state dict, or a checkpoint file.

    Files are read by ``checkpoint.load_checkpoint``, which never runs code a file carries (``name``
    says what the file is in its errors); a Lightning checkpoint's ``state_dict`` is taken as it is
    (prefixes such as ``net.`` are resolved by ``transfer_weights``).
    """
    if isinstance(source, nn.Module):
        return source.state_dict()
    if isinstance(source, (str, os.PathLike)):
        loaded = load_checkpoint(source, name)
        if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
            loaded = loaded["state_dict"]
        if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
            label = checkpoint_label(name, source)
            raise CheckpointError(f"{label}: holds neither a state dict nor a Lightning checkpoint")
        return dict(loaded)
    if isinstance(source, Mapping):
        return dict(source)
    raise TypeError(f"parent must be a module, a state dict or a checkpoint path, got {type(source).__name__}")


def rename_keys(state: Mapping[str, torch.Tensor], key_map: Mapping[str, str]) -> dict[str, torch.Tensor]:
    """Rename a state dict's keys with ``{regex: replacement}`` rules, applied in order (``re.sub``);
    a key renamed to the empty string is dropped. Maps another naming (a public checkpoint) to ours."""
    rules = [(re.compile(pattern), replacement) for pattern, replacement in key_map.items()]
    renamed = {}
    for key, value in state.items():
        for pattern, replacement in rules:
            key = pattern.sub(replacement, key)
        if key:
            renamed[key] = value
    return renamed


def transfer_weights(parent: ParentLike, child: nn.Module, key_map: Mapping[str, str] | None = None) -> TransferReport:
    """Copy what ``child`` can inherit from ``parent`` into ``child``, in place.

    ``key_map`` renames the parent's keys first (see ``rename_keys``). Raises ``ValueError``
    when no parent tensor matches any child layer name: a silent fresh start would make a
    search look as if transfer had happened.
    """
    source = load_state_dict(parent)
    source = _strip_prefix(rename_keys(source, key_map) if key_map else source, child)
    last_block = _last_blocks(source)
    report = TransferReport()
    used: set[str] = set()
    targets = dict(child.named_parameters())
    targets.update(child.named_buffers())
    with torch.no_grad():
        for key, tensor in targets.items():
            parent_key, how = _counterpart(key, source, last_block)
            if parent_key is None:
                report.tensors.append(TensorTransfer(key, None, Inheritance.INITIALISED, tuple(tensor.shape), None, 0))
                continue
            used.add(parent_key)
            inherited = _copy_overlap(source[parent_key], tensor)
            if how is None:
                how = Inheritance.COPIED if source[parent_key].shape == tensor.shape else Inheritance.PARTIAL
            report.tensors.append(
                TensorTransfer(key, parent_key, how, tuple(tensor.shape), tuple(source[parent_key].shape), inherited)
            )
    if not used and targets:
        raise ValueError(
            "no parent tensor matches the child's layer names (e.g. "
            f"{next(iter(targets))!r}); parent keys look like {list(source)[:3]}"
        )
    report.unused_parent_keys = [k for k in source if k not in used]
    return report


def _strip_prefix(state: dict[str, torch.Tensor], child: nn.Module) -> dict[str, torch.Tensor]:
    """Drop a wrapper prefix (``net.`` in a LightningModule checkpoint) found before the child's first key."""
    anchor = next(iter(child.state_dict()), None)
    if anchor is None or anchor in state:
        return state
    for key in state:
        if key.endswith("." + anchor):
            prefix = key[: -len(anchor)]
            return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def _last_blocks(state: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """Index of the last block of each parent module, keyed by ``modules.<i>.blocks.``."""
    last: dict[str, int] = {}
    for key in state:
        match = _BLOCK_KEY.match(key)
        if match:
            last[match[1]] = max(last.get(match[1], -1), int(match[2]))
    return last


def _counterpart(
    key: str, source: Mapping[str, torch.Tensor], last_block: Mapping[str, int]
) -> tuple[str | None, Inheritance | None]:
    """The parent key a child tensor inherits from, and LAST_BLOCK when it is a stand-in block."""
    if key in source:
        return key, None
    match = _BLOCK_KEY.match(key)
    if match and match[1] in last_block and int(match[2]) > last_block[match[1]]:
        stand_in = f"{match[1]}{last_block[match[1]]}{match[3]}"
        if stand_in in source:
            return stand_in, Inheritance.LAST_BLOCK
    return None, None


def _copy_overlap(src: torch.Tensor, dst: torch.Tensor) -> int:
    """Copy the overlap of ``src`` into ``dst`` by the rules above; return elements copied."""
    src = src.to(device=dst.device)
    if src.dim() != dst.dim():
        return 0
    if src.shape == dst.shape:
        dst.copy_(src)
        return dst.numel()
    if dst.dim() == 1:
        n = min(src.shape[0], dst.shape[0])
        dst[:n] = src[:n]
        if dst.shape[0] > n:
            dst[n:] = src.float().mean()
        return n
    dst_index, src_index = [], []
    for axis, (s, d) in enumerate(zip(src.shape, dst.shape)):
        if axis < 2:  # channels: the first min(s, d)
            dst_index.append(slice(0, min(s, d)))
            src_index.append(slice(0, min(s, d)))
        elif d <= s:  # smaller child kernel: the parent's centre crop
            offset = (s - d) // 2
            dst_index.append(slice(None))
            src_index.append(slice(offset, offset + d))
        else:  # larger child kernel: the parent at the centre
            offset = (d - s) // 2
            dst_index.append(slice(offset, offset + s))
            src_index.append(slice(None))
    part = src[tuple(src_index)]
    dst[tuple(dst_index)] = part
    return part.numel()
