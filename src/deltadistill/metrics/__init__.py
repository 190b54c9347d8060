"""Quality metrics for delta-distilled video models: agreement with the teacher and temporal stability."""

from .detection import COCO_IOU_THRESHOLDS, map_vs_reference
from .segmentation import MeanIoU, iou_per_class, miou
from .temporal import DetectionConsistency, SegmentationConsistency, farneback_flow, match_iou, warp_to_next

__all__ = [
    "COCO_IOU_THRESHOLDS",
    "DetectionConsistency",
    "MeanIoU",
    "SegmentationConsistency",
    "farneback_flow",
    "iou_per_class",
    "map_vs_reference",
    "match_iou",
    "miou",
    "warp_to_next",
]
