"""L1-norm channel pruning of a torchvision ResNet (benchmark-only comparison baseline).

The alternative users weigh self-grouping against is structured channel pruning, which leaves
small *dense* convolutions. This module builds such a network the way Torch-Pruning's
``MagnitudePruner`` with L1 importance and a uniform ratio does, without depending on it:

- channels are pruned in *coupled groups*: a bottleneck's inner channels (``conv1`` outputs =
  ``conv2`` inputs, ``conv2`` outputs = ``conv3`` inputs) and, per stage, the residual stream
  (the stem's output; in each stage the ``downsample`` and every ``conv3`` output, which are
  added together, and every ``conv1`` / ``downsample`` input that reads them);
- a channel's importance is the sum over the group's producing layers of the L1 norm of its
  filter (``sum |W[n, :, :, :]|``); the lowest ``ratio`` of each group is removed, BatchNorm
  parameters follow their channels;
- the same ``ratio`` applies to every group (the input image and the classifier's outputs are
  kept); :func:`prune_to_macs` bisects the ratio to reach a MAC budget.

The result is an ordinary torchvision ``ResNet`` with narrower layers, so it runs at plain
dense speed. Weights are sliced from the original (this is about speed, not accuracy).
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet

from sgcnn.metrics.counting import count


def _l1(conv: nn.Conv2d) -> torch.Tensor:
    return conv.weight.detach().abs().sum(dim=(1, 2, 3))


def _keep(importance: torch.Tensor, ratio: float) -> torch.Tensor:
    n = importance.numel()
    k = max(1, round(n * (1 - ratio)))
    return importance.topk(k).indices.sort().values


def _conv(conv: nn.Conv2d, out_idx=None, in_idx=None) -> nn.Conv2d:
    w = conv.weight.detach()
    if out_idx is not None:
        w = w[out_idx]
    if in_idx is not None:
        w = w[:, in_idx]
    new = nn.Conv2d(
        w.shape[1],
        w.shape[0],
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        bias=conv.bias is not None,
    )
    new.weight.data.copy_(w)
    if conv.bias is not None:
        new.bias.data.copy_(conv.bias.detach()[out_idx] if out_idx is not None else conv.bias)
    return new


def _bn(bn: nn.BatchNorm2d, idx) -> nn.BatchNorm2d:
    new = nn.BatchNorm2d(len(idx), bn.eps, bn.momentum)
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(new, name).data.copy_(getattr(bn, name).detach()[idx])
    return new


@torch.no_grad()
def prune_resnet(model: ResNet, ratio: float) -> ResNet:
    """A copy of a bottleneck ResNet with ``ratio`` of every coupled channel group removed."""
    if not 0 <= ratio < 1:
        raise ValueError("ratio must be in [0, 1)")
    model = copy.deepcopy(model).eval()
    stages = [model.layer1, model.layer2, model.layer3, model.layer4]
    if not all(isinstance(b, Bottleneck) for s in stages for b in s):
        raise ValueError("only bottleneck ResNets (resnet50/101/152, resnext, wide) are handled")
    # residual stream of the stem
    keep_prev = _keep(_l1(model.conv1), ratio)
    model.conv1 = _conv(model.conv1, out_idx=keep_prev)
    model.bn1 = _bn(model.bn1, keep_prev)
    for stage in stages:
        producers = [b.conv3 for b in stage] + [stage[0].downsample[0]]
        keep_res = _keep(sum(_l1(c) for c in producers), ratio)
        for i, block in enumerate(stage):
            keep_in = keep_prev if i == 0 else keep_res
            inner1 = _keep(_l1(block.conv1), ratio)
            block.conv1 = _conv(block.conv1, out_idx=inner1, in_idx=keep_in)
            block.bn1 = _bn(block.bn1, inner1)
            inner2 = _keep(_l1(block.conv2), ratio)
            if block.conv2.groups != 1:
                raise ValueError("grouped 3x3 convolutions are not handled")
            block.conv2 = _conv(block.conv2, out_idx=inner2, in_idx=inner1)
            block.bn2 = _bn(block.bn2, inner2)
            block.conv3 = _conv(block.conv3, out_idx=keep_res, in_idx=inner2)
            block.bn3 = _bn(block.bn3, keep_res)
            if block.downsample is not None:
                ds_conv, ds_bn = block.downsample[0], block.downsample[1]
                block.downsample[0] = _conv(ds_conv, out_idx=keep_res, in_idx=keep_in)
                block.downsample[1] = _bn(ds_bn, keep_res)
        keep_prev = keep_res
    fc = model.fc
    model.fc = nn.Linear(len(keep_prev), fc.out_features)
    model.fc.weight.data.copy_(fc.weight.detach()[:, keep_prev])
    model.fc.bias.data.copy_(fc.bias.detach())
    return model


def prune_to_macs(model: ResNet, target_macs: int, input_size=(3, 224, 224)) -> tuple:
    """``(pruned model, ratio)`` whose MACs (``sgcnn.count``) are closest to ``target_macs``."""
    lo, hi = 0.0, 0.95
    for _ in range(30):
        mid = (lo + hi) / 2
        macs = count(prune_resnet(model, mid), input_size)["flops"]
        if macs > target_macs:
            lo = mid
        else:
            hi = mid
    ratio = (lo + hi) / 2
    return prune_resnet(model, ratio), ratio
