"""Data: COCO- and MPII-format keypoint datasets, top-down crops, heatmap encoding and decoding (no Lightning)."""

from evopose_pl.data.coco import AnnotationError, CocoKeypoints, Instance, KeypointInfo
from evopose_pl.data.dataset import ImageFileError, KeypointAnnotations, TopDownDataset
from evopose_pl.data.heatmaps import decode_heatmaps, masked_mse, merge_flipped, render_heatmaps, to_image
from evopose_pl.data.mpii import MPII_KEYPOINT_INFO, MpiiAnnotations
from evopose_pl.data.transforms import Augmentation

__all__ = [
    "MPII_KEYPOINT_INFO",
    "AnnotationError",
    "Augmentation",
    "CocoKeypoints",
    "ImageFileError",
    "Instance",
    "KeypointAnnotations",
    "KeypointInfo",
    "MpiiAnnotations",
    "TopDownDataset",
    "decode_heatmaps",
    "masked_mse",
    "merge_flipped",
    "render_heatmaps",
    "to_image",
]
