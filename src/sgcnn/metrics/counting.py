"""Mask-aware Params and FLOPs, with the paper's counting convention (docs/method.md section 1).

- **FLOPs** are multiply-accumulates (MACs) of convolution and linear layers, counting only
  unmasked weights: a convolution costs ``(unmasked weights) x H_out x W_out`` per image, a
  linear layer ``(unmasked weights) x (positions it is applied at)``. Biases, BatchNorm,
  activations and pooling are not counted.
- **Params** are the parameters of convolution and linear layers: weights minus masked ones,
  plus biases. This (BatchNorm left out) is what reproduces the paper's tables for LeNet,
  ResNet and DenseNet. ``params_with_bn`` adds BatchNorm's affine parameters, and
  ``params_total`` counts every parameter of the model less the masked weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from sgcnn.errors import SgcnnError
from sgcnn.nn._example import example_image
from sgcnn.nn.masked import is_masked


def _unmasked_weights(layer: nn.Module) -> int:
    if is_masked(layer):
        kernel = layer.weight[0, 0].numel()
        return int(layer.sg_mask.sum()) * kernel
    return layer.weight.numel()


def _bias(layer: nn.Module) -> int:
    return layer.bias.numel() if getattr(layer, "bias", None) is not None else 0


@torch.no_grad()
def count(model: nn.Module, input_size: int | Sequence[int] | torch.Tensor) -> dict:
    """Count ``model``'s Params and FLOPs (MACs) for one image of ``input_size``.

    ``input_size`` is ``H``, ``(H, W)``, ``(C, H, W)``, a full shape ``(N, C, H, W)`` or an
    example input tensor ``[N, C, H, W]``; the counts are per image either way (``N`` is
    ignored; of an example tensor only the first image is run). Returns integers ``params``,
    ``flops``, ``params_with_bn``, ``params_total`` and a per-layer list ``layers`` of
    ``{"name", "params", "flops"}`` (a layer called several times counts every call).
    """
    if getattr(model, "sgcnn_conversion", None) is not None:  # its layers are fast modules
        raise SgcnnError(
            "count the self-grouped model, not its converted form (sgcnn.convert's result "
            "lists each layer's executed MACs in model.sgcnn_conversion['layers'])"
        )
    example = example_image(model, input_size)
    layers: dict[str, dict] = {}
    handles = []
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            layers[name] = {"name": name, "params": _unmasked_weights(m) + _bias(m), "flops": 0}

            def hook(mod, args, out, name=name):
                weights = _unmasked_weights(mod)
                if isinstance(mod, nn.Conv2d):
                    positions = out.shape[-2] * out.shape[-1]
                else:
                    positions = (
                        out.numel() // (out.shape[0] * out.shape[-1]) if out.dim() > 1 else 1
                    )
                layers[name]["flops"] += weights * positions

            handles.append(m.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        model(example)
    except Exception as err:
        raise SgcnnError(
            f"{type(model).__name__} failed on an input of shape {tuple(example.shape)}: {err}. "
            "Give the input size the model expects."
        ) from err
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()

    params = sum(v["params"] for v in layers.values())
    bn = sum(
        p.numel()
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._NormBase)
        for p in m.parameters(recurse=False)
    )
    masked_out = sum(
        m.weight.numel() - _unmasked_weights(m) for m in model.modules() if is_masked(m)
    )
    total = sum(p.numel() for p in model.parameters()) - masked_out
    return {
        "params": int(params),
        "flops": int(sum(v["flops"] for v in layers.values())),
        "params_with_bn": int(params + bn),
        "params_total": int(total),
        "layers": list(layers.values()),
    }
