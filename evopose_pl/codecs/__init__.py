"""Codecs: the target encoding, loss, decoding and flip merge of each kind of pose output."""

from evopose_pl.codecs.base import CODECS, Codec, CodecError, Outputs, codec_from_description, named_outputs
from evopose_pl.codecs.confidence_maps import ConfidenceMapCodec
from evopose_pl.codecs.heatmap import HeatmapCodec

__all__ = [
    "CODECS",
    "Codec",
    "CodecError",
    "ConfidenceMapCodec",
    "HeatmapCodec",
    "Outputs",
    "codec_from_description",
    "named_outputs",
]
