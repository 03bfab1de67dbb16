"""The codec of a pose system: how keypoints become training targets and network outputs become
keypoints again, kept as one object so the pair can be tested as a round trip (as mmpose's codecs).

A codec sees the network's outputs as named tensors (``named_outputs``): a network returning one
tensor has one output, ``heatmaps``; a network with several (intermediate supervision, detection
passes, part affinity fields) returns a tuple or a dict, and the codec's loss covers each by name.
Top-down codecs (``TopDownCodec``) decode person crops, one person per sample; a single-stage codec
(KAPAO's, ``codecs.kapao``) decodes whole images into people, and its ``layout`` asks the data module for
whole images rather than crops.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch

Outputs = torch.Tensor | Sequence[torch.Tensor] | Mapping[str, torch.Tensor]

#: Every codec class by its ``name``: what a checkpoint's ``codec`` entry is rebuilt from.
CODECS: dict[str, type[Codec]] = {}


class CodecError(ValueError):
    """A codec description (from a checkpoint or a config) that cannot be rebuilt."""


def named_outputs(outputs: Outputs) -> dict[str, torch.Tensor]:
    """A network's outputs by name: one tensor is ``heatmaps``; a sequence gives ``output0``, ``output1``, ...
    (the last being the final prediction); a mapping keeps its names."""
    if torch.is_tensor(outputs):
        return {"heatmaps": outputs}
    if isinstance(outputs, Mapping):
        return dict(outputs)
    return {f"output{i}": output for i, output in enumerate(outputs)}


class Codec(ABC):
    """Encode targets and compute the loss; what every pose system's codec shares.

    Subclasses set ``name`` (which registers them, so checkpoints can name them) and keep their
    constructor arguments in ``settings()``, which rebuild them: ``type(codec)(**codec.settings())``.
    """

    name: ClassVar[str] = ""
    #: The samples the codec learns from: ``top_down`` person crops or ``whole_image`` scenes (data modules read it).
    layout: ClassVar[str] = "top_down"
    #: The batch entry ``loss`` takes its targets from.
    target_key: ClassVar[str] = "keypoints"
    #: A keypoint scoring above it counts as found (drawn by ``predict``).
    keypoint_threshold: float = 0.0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            CODECS[cls.name] = cls

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """The constructor arguments (JSON values) that rebuild this codec."""

    @abstractmethod
    def loss(self, outputs: Outputs, targets: torch.Tensor, input_size: Sequence[int]) -> dict[str, torch.Tensor]:
        """``{"loss": total, <part>: its loss, ...}`` for a batch, from the batch's ``target_key`` entry: for
        top-down codecs ``keypoints`` (B, K, 3) in input pixels with visibility, targets encoded on the
        outputs' device."""

    def set_progress(self, fraction: float) -> None:  # noqa: B027 (a hook: most targets are fixed)
        """Targets that change over training (EfficientPose's sigma schedule) take the ``fraction`` of training
        done, 0 to 1. PoseModule calls it at each training epoch's start, and with 1 before validating, so
        validation losses are measured against the same (final) targets throughout and compare across epochs."""

    def describe(self) -> dict[str, Any]:
        """What rebuilds this codec without the configs (stored in checkpoints)."""
        return {"name": self.name, "settings": self.settings()}


class TopDownCodec(Codec):
    """A codec of person crops: decodes one person per sample and merges a flip-test pass."""

    @abstractmethod
    def decode(self, outputs: Outputs, input_size: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Keypoints (B, K, 2) in input pixels and their scores (B, K)."""

    @abstractmethod
    def merge_flip(self, outputs: Outputs, flipped: Outputs, flip_index: Sequence[int]) -> Outputs:
        """``outputs`` merged with the outputs for the mirrored input (left and right swapped by ``flip_index``)."""

    def person_scores(self, box_scores: torch.Tensor, keypoint_scores: torch.Tensor) -> torch.Tensor:
        """Each person's confidence (B,) from its box score (B,) and keypoint scores (B, K): COCO results
        rank people by it. By default, the box score (a codec that decodes boxes itself overrides it)."""
        return box_scores.float()


def codec_from_description(description: Any) -> Codec:
    """The codec ``Codec.describe`` described."""
    if not isinstance(description, Mapping) or not isinstance(description.get("settings", {}), Mapping):
        raise CodecError(f"not a codec description: {description!r:.200}")
    name = description.get("name")
    if name not in CODECS:
        raise CodecError(f"codec {name!r} is not one of {sorted(CODECS)} (import the module that defines it)")
    try:
        return CODECS[name](**description.get("settings", {}))
    except TypeError as error:
        raise CodecError(f"codec {name!r}: {error}") from None
