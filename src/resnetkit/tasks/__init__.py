"""ResNets beyond classification: torchvision's detection and segmentation heads on resnetkit backbones, their
COCO weights by name, and detection fine-tuning on COCO-format folders (tasks.train)."""

from resnetkit.tasks.detection import DETECTORS, create_detector, resnet_fpn_backbone
from resnetkit.tasks.pretrained import create_task_model, load_task_model
from resnetkit.tasks.segmentation import SEGMENTERS, create_segmenter

__all__ = [
    "DETECTORS",
    "SEGMENTERS",
    "create_detector",
    "create_segmenter",
    "create_task_model",
    "load_task_model",
    "resnet_fpn_backbone",
]
