"""Faster R-CNN (torchvision) on the body of a (self-grouped) classification network.

The *body* is the classifier without its head, cut into its top-level stages:

- ResNet-style networks (torchvision ResNets, the CIFAR ResNets of the zoo): the children
  before the global pooling (``conv1, bn1, relu, [maxpool], layer1 ... layer4``);
- networks with a ``features`` sequence (DenseNet, MobileNet V2 / V3, VGG, ...): its children.

A probe forward pass finds where the resolution halves; the last stage at each resolution
(stride >= 2 from the input when there are two such, at most the last four) feeds a feature
pyramid (FPN, plus a
max-pooled top level), as in torchvision's ``fasterrcnn_resnet50_fpn``. Anchors are
``8 x stride`` pixels per level (torchvision's 32 ... 512 for strides 4 ... 64), aspect ratios
0.5, 1, 2. The body's modules are the classifier's own (shared, not copied), so self-grouped
layers keep computing with ``W * M``: their pruned weights get zero gradients and stay zero.

BatchNorm of the body is frozen (``FrozenBatchNorm2d``: the running statistics and affine
parameters of the classifier, fixed), torchvision's choice for detection with small batches,
unless ``train_bn``.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

from sgcnn.errors import SgcnnError
from sgcnn.nn._modes import eval_mode
from sgcnn.nn.swap import replace_modules_

_HEADS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten, nn.Linear, nn.Dropout)
PROBE_SIZE = 128  # pixels of the probe image that finds the stages' strides


class Body(nn.Module):
    """Runs ``stages`` in order; returns ``{name: output}`` of the stages in ``returns``."""

    def __init__(self, stages: OrderedDict[str, nn.Module], returns: list[str]) -> None:
        super().__init__()
        last = list(stages).index(returns[-1])
        self.stages = nn.ModuleDict(list(stages.items())[: last + 1])
        self.returns = list(returns)

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        out = OrderedDict()
        for name, stage in self.stages.items():
            x = stage(x)
            if name in self.returns:
                out[name] = x
        return out


class Backbone(nn.Module):
    """``Body`` + FPN: what ``FasterRCNN`` takes (``out_channels`` per pyramid level)."""

    def __init__(self, body: Body, in_channels: list[int], out_channels: int) -> None:
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(in_channels, out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return self.fpn(self.body(x))


def body_stages(model: nn.Module) -> OrderedDict[str, nn.Module]:
    """The top-level stages of a classifier's body (see the module docstring)."""
    features = getattr(model, "features", None)
    if isinstance(features, nn.Sequential):
        return OrderedDict(features.named_children())
    children = list(model.named_children())
    if any(name.startswith("layer") for name, _ in children):
        stages = OrderedDict()
        for name, child in children:
            if isinstance(child, _HEADS):
                break
            stages[name] = child
        return stages
    raise SgcnnError(
        f"{type(model).__name__} has no usable backbone for detection: it needs a ResNet-style "
        "body (conv1 ... layer4) or a `features` sequence (DenseNet, MobileNet, VGG)"
    )


@torch.no_grad()
def make_body(model: nn.Module) -> tuple[Body, list[int], list[int]]:
    """``(body, channels, strides)`` of the feature maps the FPN takes."""
    stages = body_stages(model)
    shapes = []
    x = torch.zeros(1, 3, PROBE_SIZE, PROBE_SIZE, device=next(model.parameters()).device)
    try:
        with eval_mode(model):
            for stage in stages.values():
                x = stage(x)
                shapes.append(tuple(x.shape))
    except RuntimeError as err:
        raise SgcnnError(
            f"{type(model).__name__} has no usable backbone for detection: its stages do not run "
            f"on a 3-channel image ({str(err).splitlines()[0][:120]})"
        ) from err
    names = list(stages)
    ends = [
        i
        for i, shape in enumerate(shapes)
        if len(shape) == 4
        and (i + 1 == len(shapes) or shapes[i + 1][-1] != shape[-1] or len(shapes[i + 1]) != 4)
    ]
    reduced = [i for i in ends if PROBE_SIZE // shapes[i][-1] >= 2]
    ends = (reduced if len(reduced) >= 2 else ends)[-4:]  # small nets: full resolution too
    if len(ends) < 2:
        raise SgcnnError(
            f"{type(model).__name__} has no usable backbone for detection: fewer than two "
            "feature resolutions below the input"
        )
    channels = [shapes[i][1] for i in ends]
    strides = [PROBE_SIZE // shapes[i][-1] for i in ends]
    return Body(stages, [names[i] for i in ends]), channels, strides


def freeze_batchnorm_(module: nn.Module) -> None:
    """Swap every BatchNorm2d for a FrozenBatchNorm2d with its statistics and parameters."""

    def frozen(bn: nn.BatchNorm2d, _name: str) -> FrozenBatchNorm2d:
        out = FrozenBatchNorm2d(bn.num_features, eps=bn.eps)
        out.weight.copy_(bn.weight.detach())
        out.bias.copy_(bn.bias.detach())
        out.running_mean.copy_(bn.running_mean)
        out.running_var.copy_(bn.running_var)
        return out.to(bn.weight.device)

    with torch.no_grad():
        replace_modules_(module, lambda m, n: type(m) is nn.BatchNorm2d, frozen)


def build_detector(
    classifier: nn.Module,
    num_categories: int,
    min_size: int = 600,
    max_size: int = 1000,
    fpn_channels: int = 256,
    train_bn: bool = False,
    rois_per_image: int = 512,
    image_mean: list[float] | None = None,
    image_std: list[float] | None = None,
) -> FasterRCNN:
    """Faster R-CNN for ``num_categories`` object classes (plus the background) on the body of
    ``classifier``. Images are resized so that their shorter side is ``min_size`` (longer side
    at most ``max_size``): the paper's 300 px / 600 px settings. ``rois_per_image``: proposals
    sampled per image to train the box head (torchvision: 512). ``image_mean`` /
    ``image_std``: the per-channel normalisation of images in ``[0, 1]`` before the body, the
    one ``classifier`` was trained with; ``None``: ImageNet's (torchvision's default).

    The detector's body shares ``classifier``'s stages (its weights and masks, so that
    training the detector trains them); with ``train_bn`` false their BatchNorm layers are
    replaced by frozen ones, inside ``classifier`` too. Pass ``copy.deepcopy(classifier)`` to
    keep the classifier as it was."""
    if num_categories < 1:
        raise SgcnnError("a detector needs at least one object category")
    body, channels, strides = make_body(classifier)
    if not train_bn:
        freeze_batchnorm_(body)
    backbone = Backbone(body, channels, fpn_channels)
    levels = len(strides) + 1  # + the max-pooled top level
    sizes = tuple((8 * s,) for s in [*strides, strides[-1] * 2])
    anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * levels)
    pooler = MultiScaleRoIAlign(body.returns, output_size=7, sampling_ratio=2)
    return FasterRCNN(
        backbone,
        num_classes=num_categories + 1,
        min_size=min_size,
        max_size=max_size,
        rpn_anchor_generator=anchors,
        box_roi_pool=pooler,
        box_batch_size_per_image=rois_per_image,
        image_mean=image_mean,
        image_std=image_std,
    )
