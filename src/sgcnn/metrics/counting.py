"""Mask-aware Params and FLOPs, with the paper's counting convention (docs/method.md section 1).

- **FLOPs** are multiply-accumulates (MACs) of convolution and linear layers, counting only
  unmasked weights: a convolution costs ``(unmasked weights) x H_out x W_out`` per image, a
  linear layer ``(unmasked weights) x (positions it is applied at)``. Biases, BatchNorm,
  activations and pooling are not counted.
- **Attention** (``nn.MultiheadAttention``, torchvision's Swin ``ShiftedWindowAttention`` /
  ``ShiftedWindowAttentionV2`` and MaxViT ``RelativePositionalMultiHeadAttention``) costs its
  projections, counted as linear layers, plus the two attention matmuls: with ``L`` queries,
  ``S`` keys and model width ``E``, the scores ``Q K^T`` and the weighted sum ``A V`` cost
  ``L x S x E`` MACs each (summed over the heads; per window for windowed attention).
  Softmax, scaling, LayerNorm and position biases are not counted.
- **Products of two activations** made with torch functions outside those modules (a model's
  own attention: ``q @ k.transpose(-2, -1)``, ``bmm``, ``einsum``,
  ``F.scaled_dot_product_attention``) cost ``(output elements) x (summed size)``, one entry
  ``"<module> (products)"`` per module that makes them (:mod:`sgcnn.metrics._products`).
- **Params** are the parameters of convolution and linear layers, and the projection weights
  and biases of the attention modules above: weights minus masked ones, plus biases. This
  (BatchNorm left out) is what reproduces the paper's tables for LeNet, ResNet and DenseNet.
  ``params_with_bn`` adds BatchNorm's affine parameters, and ``params_total`` counts every
  parameter of the model less the masked weights.

A convolution or linear layer is counted when it is called as a module, or when another
module applies its weight with ``F.linear`` / ``F.conv2d`` (``F.linear(x, self.fc.weight)``,
counted as the layer's call). One that never runs while its weight is computed with
otherwise (``x @ fc.weight.T``) outside the attention modules above cannot be counted, and
``count`` raises :class:`SgcnnError` rather than report zero for it
(:mod:`sgcnn.metrics._weight_use`). A layer never used costs nothing.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

from sgcnn.errors import SgcnnError
from sgcnn.metrics._products import ActivationProducts
from sgcnn.metrics._weight_use import WeightUse
from sgcnn.nn._example import example_image
from sgcnn.nn._modes import eval_mode
from sgcnn.nn.masked import is_masked

# How a module type is counted: its params, the MACs of one call from (module, args, kwargs,
# output), and the child layers it counts itself (their weights are used functionally).
_Rule = tuple[Callable[[nn.Module], int], Callable[..., int], Callable[[nn.Module], list]]


def _unmasked_weights(layer: nn.Module) -> int:
    if is_masked(layer):
        kernel = layer.weight[0, 0].numel()
        return int(layer.sg_mask.sum()) * kernel
    return layer.weight.numel()


def _bias(layer: nn.Module) -> int:
    return layer.bias.numel() if getattr(layer, "bias", None) is not None else 0


def _layer_params(*layers: nn.Module) -> int:
    """Params of conv / linear layers: ``sum(unmasked weights + bias)``."""
    return sum(_unmasked_weights(m) + _bias(m) for m in layers)


def _conv_macs(conv: nn.Conv2d, args, kwargs, out: torch.Tensor) -> int:
    """``MACs = (unmasked weights) x H_out x W_out``."""
    return _unmasked_weights(conv) * out.shape[-2] * out.shape[-1]


def _linear_macs(linear: nn.Linear, args, kwargs, out: torch.Tensor) -> int:
    """``MACs = (unmasked weights) x positions`` per image. A 2-D output ``[N, F]`` is one
    row per image (its first dimension the batch: a detector's box head on its proposals costs
    one row); a larger one, of the one example image, is every position but the features:
    ``[1, L, F]`` and a sequence-first ``[L, 1, F]`` are ``L``, windows folded into the first
    dimension (``[W, L, F]``) ``W x L``."""
    return _unmasked_weights(linear) * _positions(out)


def _positions(out: torch.Tensor) -> int:
    if out.dim() <= 1:
        return 1
    if out.dim() == 2:  # [N, F] rows: the batch first, one row per image
        return out.numel() // (out.shape[0] * out.shape[-1])
    return out.numel() // out.shape[-1]  # the example is one image: windows folded in count


def _arg(args: tuple, kwargs: dict, index: int, name: str) -> torch.Tensor:
    return args[index] if len(args) > index else kwargs[name]


def _seq_len(x: torch.Tensor, batch_first: bool) -> int:
    """Sequence length of a ``[L, N, E]``, ``[N, L, E]`` (``batch_first``) or ``[L, E]`` input."""
    return x.shape[1] if batch_first and x.dim() == 3 else x.shape[0]


def _mha_params(mha: nn.MultiheadAttention) -> int:
    """Params: ``in_proj_weight`` (or ``q/k/v_proj_weight``), ``in_proj_bias`` and ``out_proj``."""
    names = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight", "in_proj_bias")
    own = sum(p.numel() for n in names if (p := getattr(mha, n, None)) is not None)
    return own + _layer_params(mha.out_proj)


def _mha_macs(mha: nn.MultiheadAttention, args, kwargs, out) -> int:
    """``MACs = N x (L E E + S E kdim + S E vdim + 2 L S' E + L x (unmasked out_proj weights))``:
    the q, k, v projections, ``Q K^T`` and ``A V`` over ``S' = S`` keys (plus one for
    ``add_bias_kv``, one for ``add_zero_attn``), then the out projection."""
    query, key = _arg(args, kwargs, 0, "query"), _arg(args, kwargs, 1, "key")
    e = mha.embed_dim
    length, source = _seq_len(query, mha.batch_first), _seq_len(key, mha.batch_first)
    batch = query.numel() // (length * query.shape[-1])
    keys = source + (mha.bias_k is not None) + int(mha.add_zero_attn)
    projections = length * e * e + source * e * (mha.kdim + mha.vdim)
    out_proj = length * _unmasked_weights(mha.out_proj)
    return batch * (projections + 2 * length * keys * e + out_proj)


def _window_attention_params(attn: nn.Module) -> int:
    """Params of Swin's window attention: its ``qkv`` and ``proj`` linear layers."""
    return _layer_params(attn.qkv, attn.proj)


def _window_attention_macs(attn: nn.Module, args, kwargs, out) -> int:
    """``MACs = T x (unmasked qkv + proj weights) + 2 x T x w x C`` for an input ``[B, H, W, C]``
    padded to ``T = B x H' x W'`` tokens (``H'``, ``W'`` the next multiples of the window) in
    windows of ``w = wh x ww`` tokens: per window and head, ``Q K^T`` and ``A V`` cost
    ``w x w x C / heads`` each."""
    batch, height, width, channels = _arg(args, kwargs, 0, "x").shape
    wh, ww = attn.window_size
    tokens = batch * -(-height // wh) * wh * -(-width // ww) * ww
    projections = _unmasked_weights(attn.qkv) + _unmasked_weights(attn.proj)
    return tokens * projections + 2 * tokens * wh * ww * channels


def _no_params(module: nn.Module) -> int:
    return 0


def _no_children(module: nn.Module) -> list[nn.Module]:
    return []


def _grid_attention_macs(attn: nn.Module, args, kwargs, out) -> int:
    """MaxViT's attention on ``[B, G, P, D]`` (``G`` groups of ``P`` tokens): ``Q K^T`` and
    ``A V`` cost ``2 x B x G x P x P x D``; its ``to_qkv`` / ``merge`` linears count themselves."""
    batch, groups, tokens, _ = _arg(args, kwargs, 0, "x").shape
    return 2 * batch * groups * tokens * tokens * attn.n_heads * attn.head_dim


def _rules() -> dict[type, _Rule]:
    """Counted module types, most specific first. Attention modules call their projection
    weights functionally (``F.linear``), so they are counted as a whole."""
    rules: dict[type, _Rule] = {
        nn.MultiheadAttention: (_mha_params, _mha_macs, lambda m: [m.out_proj])
    }
    # torchvision's modules can only be in the model if torchvision has been imported.
    swin = sys.modules.get("torchvision.models.swin_transformer")
    if swin is not None:  # ShiftedWindowAttentionV2 subclasses ShiftedWindowAttention
        window = (_window_attention_params, _window_attention_macs, lambda m: [m.qkv, m.proj])
        rules[swin.ShiftedWindowAttention] = window
    maxvit = sys.modules.get("torchvision.models.maxvit")
    if maxvit is not None:
        grid = (_no_params, _grid_attention_macs, _no_children)
        rules[maxvit.RelativePositionalMultiHeadAttention] = grid
    rules[nn.Conv2d] = (_layer_params, _conv_macs, _no_children)
    rules[nn.Linear] = (_layer_params, _linear_macs, _no_children)
    return rules


def _rule(module: nn.Module, rules: dict[type, _Rule]) -> _Rule | None:
    return next((r for t, r in rules.items() if isinstance(module, t)), None)


@torch.no_grad()
def count(model: nn.Module, input_size: int | Sequence[int] | torch.Tensor) -> dict:
    """Count ``model``'s Params and FLOPs (MACs) for one image of ``input_size``.

    ``input_size`` is ``H``, ``(H, W)``, ``(C, H, W)``, a full shape ``(N, C, H, W)`` or an
    example input tensor ``[N, C, H, W]``; the counts are per image either way (``N`` is
    ignored; of an example tensor only the first image is run). Returns integers ``params``,
    ``flops``, ``params_with_bn``, ``params_total`` and a per-layer list ``layers`` of
    ``{"name", "params", "flops"}`` (a layer called several times counts every call; an
    attention module is one entry, its projections included). Raises :class:`SgcnnError` for
    a convolution or linear layer whose weight is used outside its forward (see above).
    """
    if getattr(model, "sgcnn_conversion", None) is not None:  # its layers are fast modules
        raise SgcnnError(
            "count the self-grouped model, not its converted form (sgcnn.convert's result "
            "lists each layer's executed MACs in model.sgcnn_conversion['layers'])"
        )
    example = example_image(model, input_size)
    rules = _rules()
    rule_of = {id(m): _rule(m, rules) for m in model.modules()}
    inside = {id(c) for m in model.modules() if (r := rule_of[id(m)]) for c in r[2](m)}
    counted: dict[str, nn.Module] = {}
    layers: dict[str, dict] = {}
    running: set[str] = set()  # layers inside their own forward
    called: set[str] = set()  # layers called as modules
    handles = []
    stack: list[str] = [""]  # the modules inside their forward, innermost last

    def leave(*_) -> None:
        stack.pop()

    for name, m in model.named_modules():
        handles.append(m.register_forward_pre_hook(lambda *_, name=name: stack.append(name)))
        handles.append(m.register_forward_hook(leave, always_call=True))
    for name, m in model.named_modules():
        rule = rule_of[id(m)]
        if rule is None or id(m) in inside:
            continue
        params, macs, _ = rule
        counted[name] = m
        layers[name] = {"name": name, "params": params(m), "flops": 0}

        def enter(mod, args, name=name):
            running.add(name)

        def hook(mod, args, kwargs, out, name=name, macs=macs):
            layers[name]["flops"] += macs(mod, args, kwargs, out)  # reads the weight: running
            running.discard(name)
            called.add(name)

        handles.append(m.register_forward_pre_hook(enter))
        handles.append(m.register_forward_hook(hook, with_kwargs=True))

    def functional_call(name: str, out: torch.Tensor) -> None:
        layer = counted[name]
        macs = _conv_macs if isinstance(layer, nn.Conv2d) else _linear_macs
        layers[name]["flops"] += macs(layer, (), {}, out)

    watched = {  # a parametrized weight is made anew at each read: nothing to watch
        name: m.weight
        for name, m in counted.items()
        if isinstance(getattr(m, "weight", None), torch.Tensor)
        and not parametrize.is_parametrized(m)
    }
    uses = WeightUse(watched, running, functional_call)
    products = ActivationProducts(lambda: stack[-1], running, uses.is_watched)
    try:  # eval mode also keeps attention off its fast path
        with eval_mode(model), uses, products:
            model(example)
    except Exception as err:
        raise SgcnnError(
            f"{type(model).__name__} failed on an input of shape {tuple(example.shape)}: {err}. "
            "Give the input size the model expects."
        ) from err
    finally:
        for h in handles:
            h.remove()
    uses.check(called, {n: type(m).__name__ for n, m in counted.items()})
    for owner, macs in products.macs.items():
        name = f"{owner or type(model).__name__} (products)"
        layers[name] = {"name": name, "params": 0, "flops": macs}

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
