"""Codecs: the target encoding, loss, decoding and flip merge of each kind of pose output (KAPAO's: objects)."""

from evopose_pl.codecs.base import (
    CODECS,
    Codec,
    CodecError,
    Outputs,
    TopDownCodec,
    codec_from_description,
    named_outputs,
)
from evopose_pl.codecs.confidence_maps import ConfidenceMapCodec
from evopose_pl.codecs.heatmap import HeatmapCodec
from evopose_pl.codecs.kapao import KapaoCodec

__all__ = [
    "CODECS",
    "Codec",
    "CodecError",
    "ConfidenceMapCodec",
    "HeatmapCodec",
    "KapaoCodec",
    "Outputs",
    "TopDownCodec",
    "codec_from_description",
    "named_outputs",
]
