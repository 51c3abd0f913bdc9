"""Object detection with self-grouped backbones: torchvision's Faster R-CNN (FPN) on the body of
a (self-grouped) classification network, COCO-format data, COCO mAP, a synthetic dataset.

::

    from sgcnn.detection import build_detector, load_coco, make_synthetic_coco
"""

from sgcnn.detection.dataset import CocoDetection, load_coco
from sgcnn.detection.model import build_detector
from sgcnn.detection.synthetic import make_synthetic_coco

__all__ = ["CocoDetection", "build_detector", "load_coco", "make_synthetic_coco"]
