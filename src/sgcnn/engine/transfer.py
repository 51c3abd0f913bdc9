"""Transfer a trained (optionally self-grouped) classifier to a new dataset.

The classifier of a network is the last Linear (or 1x1 Conv2d, as in SqueezeNet) layer that a
forward pass runs whose outputs are the class scores. Transferring keeps every other weight and
buffer, including the masks, group labels and kept sets of self-grouped layers, and replaces
the classifier with a freshly initialised one for the new number of classes (dense: a new
classifier has no grouping yet). What follows is ordinary training of the run's plan:

- fine-tuning the transferred model as it is keeps its source grouping: pruned weights receive
  zero gradients and stay exactly zero (the paper's **L** for transfer when the source model
  was self-grouped; a *dense transfer* when it was not);
- ``G`` / ``LG`` self-group the transferred model again on the new data after that fine-tune.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sgcnn.engine import checkpoint as ckpt
from sgcnn.errors import SgcnnError
from sgcnn.models.registry import create_model, model_entry
from sgcnn.nn._modes import eval_mode
from sgcnn.nn.masked import is_masked


@torch.no_grad()
def find_classifier(model: nn.Module, input_size: tuple[int, ...], num_classes: int) -> str:
    """Qualified name of ``model``'s classifier: the last Linear / 1x1 Conv2d executed in a
    forward pass on ``input_size`` whose output has ``num_classes`` channels.

    Raises :class:`SgcnnError` when there is none (nothing to replace for a new task).
    """
    executed: list[str] = []
    hooks = []
    for name, module in model.named_modules():
        if _is_scorer(module, num_classes):
            hooks.append(module.register_forward_hook(lambda m, i, o, n=name: executed.append(n)))
    try:
        param = next(model.parameters())
        with eval_mode(model):
            model(torch.zeros(1, *input_size, dtype=param.dtype, device=param.device))
    finally:
        for hook in hooks:
            hook.remove()
    if not executed:
        raise SgcnnError(
            f"{type(model).__name__} has no classifier layer to replace (no Linear or 1x1 Conv2d "
            f"giving its {num_classes} class scores): it cannot be transferred to a new dataset"
        )
    return executed[-1]


def _is_scorer(module: nn.Module, num_classes: int) -> bool:
    if isinstance(module, nn.Linear):
        return module.out_features == num_classes
    if isinstance(module, nn.Conv2d):
        return module.out_channels == num_classes and module.kernel_size == (1, 1)
    return False


def model_classifier(model: nn.Module, name: str, kwargs: dict[str, Any]) -> str:
    """:func:`find_classifier` of a registered model ``name`` built with ``kwargs``."""
    entry = model_entry(name)
    classes = int(kwargs.get("num_classes") or entry.num_classes)
    try:
        return find_classifier(model, entry.input_size, classes)
    except RuntimeError as err:
        size = "x".join(map(str, entry.input_size))
        raise SgcnnError(
            f"cannot run {name} on its default input {size} to find its classifier: "
            f"{str(err)[:160]}"
        ) from err


def _plain_classes(path: str, payload: dict[str, Any], name: str | None) -> int | None:
    """The class count of a plain ``state_dict``'s classifier (an sgcnn checkpoint records
    its own; ``None`` then): read from the classifier weight's first dimension, so that a
    source trained on another number of classes than the model's default loads."""
    if payload.get("format") == ckpt.FORMAT or name is None:
        return None
    default = create_model(name)
    state = ckpt.unwrapped(ckpt.plain_state_dict(str(path), payload), default)
    weight = state.get(f"{model_classifier(default, name, {})}.weight")
    return int(weight.shape[0]) if isinstance(weight, torch.Tensor) and weight.dim() else None


# A source's class count is read from its classifier: only the model name can be wrong.
CHECK_MODEL = "Check that --model names the model the checkpoint was saved from."


def load_source(path: str, name: str | None) -> tuple[nn.Module, str, dict[str, Any]]:
    """``(model, name, kwargs)`` of a transfer's source checkpoint, as trained: a plain
    ``state_dict`` is built for the class count its classifier holds."""
    payload = ckpt.load_checkpoint(path)
    classes = _plain_classes(path, payload, name)
    return ckpt.model_from_payload(payload, path, name, classes, hint=CHECK_MODEL)


def load_transferred(
    path: str, name: str | None, num_classes: int
) -> tuple[nn.Module, str, dict[str, Any], str]:
    """``(model, name, kwargs, classifier)``: the model of checkpoint ``path`` with its
    classifier replaced by a fresh one for ``num_classes`` classes.

    The fresh classifier is initialised by the model's own constructor from torch's global
    generator (seeded by the caller). Masks of self-grouped layers come along; a self-grouped
    source classifier is not carried over (its grouping belonged to the old classes).
    """
    if num_classes < 2:
        raise SgcnnError(
            f"the target dataset has {num_classes} class: a classifier needs at least 2 classes "
            "(check the dataset folder or data.classes)"
        )
    source, name, kwargs = load_source(path, name)
    classifier = _source_classifier(path, source, name, kwargs)
    kwargs = {**kwargs, "num_classes": num_classes}
    target = create_model(name, **kwargs)
    masked = _kept_masked(source, classifier)
    ckpt.attach_masks_(target, masked)
    state = target.state_dict()
    prefix = classifier + "."
    for key, value in source.state_dict().items():
        if key.startswith(prefix):
            continue
        grouping = key.rsplit(".", 1)[-1] in ("sg_labels", "sg_keep")  # any group count
        if key not in state or (state[key].shape != value.shape and not grouping):
            raise SgcnnError(
                f"checkpoint {path!r}: {key} does not fit a {name} model for {num_classes} "
                "classes outside its classifier; was it made with other model arguments?"
            )
        state[key] = value
    target.load_state_dict(state)
    for layer in masked:  # a plain state_dict may hold nonzero weights where its mask is 0
        target.get_submodule(layer).apply_mask_()
    return target, name, kwargs, classifier


def grouping_kept(path: str, name: str | None) -> tuple[str, list[str]]:
    """``(classifier, layers)`` of a transfer's source checkpoint: its classifier's name and
    the self-grouped layers the transfer keeps (all but the classifier, which it replaces).
    With no such layer, fine-tuning the transferred model is a dense transfer, not **L**."""
    source, name, kwargs = load_source(path, name)
    classifier = _source_classifier(path, source, name, kwargs)
    return classifier, _kept_masked(source, classifier)


def _source_classifier(path: str, source: nn.Module, name: str, kwargs: dict[str, Any]) -> str:
    try:
        return model_classifier(source, name, kwargs)
    except SgcnnError as err:
        raise SgcnnError(f"checkpoint {path!r}: {err}") from err


def _kept_masked(source: nn.Module, classifier: str) -> list[str]:
    """The self-grouped layers of ``source`` outside its ``classifier``."""
    return [
        n
        for n, m in source.named_modules()
        if is_masked(m) and n != classifier and not n.startswith(classifier + ".")
    ]


def check_masks_kept(model: nn.Module, source: nn.Module, classifier: str) -> None:
    """Every self-grouped layer of ``source`` is still self-grouped in ``model``, with the
    same mask (or a subset of it, after re-grouping) and exactly zero pruned weights; raises
    :class:`SgcnnError` naming the first layer that is not. The ``classifier`` (replaced by
    the transfer) is not checked."""
    layers = dict(model.named_modules())
    for name, module in source.named_modules():
        if not is_masked(module) or name not in layers or name == classifier:
            continue
        target = layers[name]
        kept = module.sg_mask.cpu()
        if not is_masked(target) or bool((target.sg_mask.cpu() & ~kept).any()):
            raise SgcnnError(f"layer {name} lost its self-grouping mask")
        if (target.weight * (1 - target.weight_mask())).abs().max().item() != 0:
            raise SgcnnError(f"layer {name} has non-zero pruned weights")
