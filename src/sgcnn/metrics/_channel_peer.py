"""The channel-pruned peer of a self-grouped torchvision ResNet: L1-norm channel pruning.

The alternative users weigh self-grouping against is structured channel pruning, which leaves
small *dense* convolutions that every runtime runs at full speed. :func:`prune_to_macs` builds
such a network the way Torch-Pruning's ``MagnitudePruner`` with L1 importance and a uniform
ratio does, without depending on it:

- channels are pruned in *coupled groups*: a block's inner channels (bottleneck: ``conv1``
  outputs = ``conv2`` inputs, ``conv2`` outputs = ``conv3`` inputs; basic block: ``conv1``
  outputs = ``conv2`` inputs) and, per stage, the residual stream (the stem's output; in each
  stage the ``downsample`` and every block's last convolution, which are added together, and
  every first convolution / ``downsample`` that reads them);
- a channel's importance is the sum over the group's producing layers of the L1 norm of its
  filter (``sum |W[n, :, :, :]|``); the lowest ``ratio`` of each group is removed, BatchNorm
  parameters follow their channels;
- the same ``ratio`` applies to every group (the input image and the classifier's outputs are
  kept); :func:`prune_to_macs` bisects the ratio to reach a MAC budget.

The result is an ordinary torchvision ``ResNet`` with narrower layers. Weights are sliced from
the original: this peer is about speed at equal MACs (``sgcnn bench``,
``benchmarks/bench_convert.py``), not accuracy. Other architectures have no peer here
(:func:`peer_unavailable` says why).
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

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


def peer_unavailable(model: nn.Module) -> str | None:
    """Why ``model`` has no channel-pruned peer here (None: it has one)."""
    if type(model) is not ResNet:
        return f"{type(model).__name__} is not a torchvision ResNet (the only family pruned here)"
    stages = [model.layer1, model.layer2, model.layer3, model.layer4]
    blocks = [b for s in stages for b in s]
    kinds = {type(b) for b in blocks}
    if kinds not in ({Bottleneck}, {BasicBlock}):
        return "its blocks are not all torchvision Bottleneck or all BasicBlock"
    if any(b.conv2.groups != 1 for b in blocks):
        return "grouped 3x3 convolutions (ResNeXt) are not pruned here"
    return None


@torch.no_grad()
def prune_resnet(model: ResNet, ratio: float) -> ResNet:
    """A copy of a torchvision ResNet with ``ratio`` of every coupled channel group removed."""
    if not 0 <= ratio < 1:
        raise ValueError("ratio must be in [0, 1)")
    why = peer_unavailable(model)
    if why is not None:
        raise ValueError(why)
    model = copy.deepcopy(model).eval()
    stages = [model.layer1, model.layer2, model.layer3, model.layer4]
    # The stem's output is the residual stream of the first stage when that stage has no
    # downsample projection (basic-block ResNets): then its blocks' outputs join the group.
    stem = _l1(model.conv1)
    if model.layer1[0].downsample is None:
        stem = stem + sum(_l1(_last_conv(b)) for b in model.layer1)
    keep_prev = _keep(stem, ratio)
    model.conv1 = _conv(model.conv1, out_idx=keep_prev)
    model.bn1 = _bn(model.bn1, keep_prev)
    for stage in stages:
        last = [_last_conv(b) for b in stage]
        producers = last + ([stage[0].downsample[0]] if stage[0].downsample is not None else [])
        if stage[0].downsample is None:  # the stream passes through unchanged: same channels
            keep_res = keep_prev
        else:
            keep_res = _keep(sum(_l1(c) for c in producers), ratio)
        for i, block in enumerate(stage):
            keep_in = keep_prev if i == 0 else keep_res
            _prune_block(block, keep_in, keep_res, ratio)
        keep_prev = keep_res
    fc = model.fc
    model.fc = nn.Linear(len(keep_prev), fc.out_features)
    model.fc.weight.data.copy_(fc.weight.detach()[:, keep_prev])
    model.fc.bias.data.copy_(fc.bias.detach())
    return model


def _last_conv(block: nn.Module) -> nn.Conv2d:
    return block.conv3 if isinstance(block, Bottleneck) else block.conv2


def _prune_block(block: nn.Module, keep_in, keep_res, ratio: float) -> None:
    """Prune one block in place: its inner channels by their own L1 norms, its input and
    output channels to the residual stream's ``keep_in`` / ``keep_res``."""
    inner1 = _keep(_l1(block.conv1), ratio)
    block.conv1 = _conv(block.conv1, out_idx=inner1, in_idx=keep_in)
    block.bn1 = _bn(block.bn1, inner1)
    if isinstance(block, Bottleneck):
        inner2 = _keep(_l1(block.conv2), ratio)
        block.conv2 = _conv(block.conv2, out_idx=inner2, in_idx=inner1)
        block.bn2 = _bn(block.bn2, inner2)
        block.conv3 = _conv(block.conv3, out_idx=keep_res, in_idx=inner2)
        block.bn3 = _bn(block.bn3, keep_res)
    else:
        block.conv2 = _conv(block.conv2, out_idx=keep_res, in_idx=inner1)
        block.bn2 = _bn(block.bn2, keep_res)
    if block.downsample is not None:
        ds_conv, ds_bn = block.downsample[0], block.downsample[1]
        block.downsample[0] = _conv(ds_conv, out_idx=keep_res, in_idx=keep_in)
        block.downsample[1] = _bn(ds_bn, keep_res)


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


def build_peer(dense: ResNet, target_macs: int, input_size, tune: bool = True, deployments=None):
    """``(info, models)``: ``dense`` channel-pruned to ``target_macs`` (:func:`prune_to_macs`),
    described (method, ratio, MACs, params), and deployed every way the dense model is, for
    :func:`sgcnn.metrics.latency.benchmark`'s ``extra``: eager (``channel_pruned``), each of
    ``deployments`` (default :data:`~sgcnn.metrics.latency.DEPLOYMENTS`) and sgcnn's fusion
    (``_fused``), the latter built per batch size (callables of the batch's input)."""
    from sgcnn.deploy.convert import fuse_dense
    from sgcnn.metrics._timing import DEPLOYMENTS, deploy

    deployments = DEPLOYMENTS if deployments is None else tuple(deployments)

    pruned, ratio = prune_to_macs(dense, target_macs, input_size)
    counts = count(pruned, input_size)
    info = {
        "method": "L1 channel pruning, one ratio over coupled channel groups "
        "(sgcnn/metrics/_channel_peer.py; importance: the L1 norm of the filters producing a "
        "channel, in the manner of Torch-Pruning's MagnitudePruner L1)",
        "ratio": round(ratio, 4),
        "macs": counts["flops"],
        "params": counts["params"],
    }
    models = {"channel_pruned": pruned}
    for how in deployments:
        models[f"channel_pruned_{how}"] = lambda x, how=how: deploy(pruned, x, how)
    models["channel_pruned_fused"] = lambda x: fuse_dense(pruned, x, tune=tune)
    return info, models
