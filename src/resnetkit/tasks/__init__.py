"""ResNets beyond classification: torchvision's detection and segmentation heads on resnetkit backbones."""

from resnetkit.tasks.detection import DETECTORS, create_detector, resnet_fpn_backbone
from resnetkit.tasks.segmentation import SEGMENTERS, create_segmenter

__all__ = ["DETECTORS", "SEGMENTERS", "create_detector", "create_segmenter", "resnet_fpn_backbone"]
