"""The self-grouping lifecycle: prepare (attach masks) -> step (cluster and prune) -> convert.

:class:`SelfGrouper` works like an optimizer over a model's Conv2d / Linear layers::

    grouper = SelfGrouper(model, groups=16, seed=0)
    grouper.step(0.6, fc_sparsity=0.6)    # G scheme: once to the target
    for p in (0.1, 0.2, ..., 0.7):         # LG scheme: progressive, re-clustering each time
        grouper.step(p); fine_tune(model)

Each step, for each selected layer: importance vectors (step 1) -> k-means groups (step 2) ->
centroid-based pruning to the layer's target sparsity (step 3); fully-connected layers get
their own ratio (step 4). State (masks, labels, kept sets) lives in the layers' buffers, so the
model's ``state_dict`` carries it. :func:`self_group_` is the one-call form.
"""

from __future__ import annotations

import fnmatch
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from itertools import chain

import torch
from threadpoolctl import threadpool_limits
from torch import nn

from sgcnn.core.clustering import KMeansSettings, cluster_filters
from sgcnn.core.importance import importance_vectors
from sgcnn.core.pruning import centroid_prune
from sgcnn.core.selection import Selection, select_layers
from sgcnn.errors import SgcnnError
from sgcnn.nn._example import example_image
from sgcnn.nn.masked import MaskedConv2d, MaskedLinear, is_masked
from sgcnn.nn.swap import replace_modules_


@dataclass(frozen=True)
class LayerGroups:
    """The self-group structure of one layer (CPU tensors).

    ``labels`` [N] long: the group of each filter; ``keep`` [g, C] bool: the input channels each
    group keeps; ``mask`` [N, C] bool: each filter's current input-channel mask. ``C`` is the
    weight's second dimension (input channels per group for an already grouped convolution).
    """

    labels: torch.Tensor
    keep: torch.Tensor
    mask: torch.Tensor


@dataclass
class LayerReport:
    """What one step did to one layer.

    ``kind`` is ``"conv"`` or ``"fc"``: the paper's two layer families, each with its own
    sparsity (``Conv-X/FC-Y``, ``conv_sparsity`` / ``fc_sparsity``, ``grouping.fc``), so the
    grouping report, configs and recipes say "fc", and so does the converter
    (:class:`sgcnn.deploy.fast.LayerSpec` ``kind``, a fast module's printed form).
    """

    name: str
    kind: str  # "conv" or "fc"
    filters: int  # N
    inputs: int  # C, input channels per filter
    groups: int  # number of non-empty self-groups
    group_sizes: list[int]  # filters per group
    kept_inputs: list[int]  # input channels kept per group
    target_sparsity: float  # requested cumulative sparsity of the layer
    sparsity: float  # achieved: pruned (filter, input channel) pairs / (N * C)


@dataclass
class GroupingReport:
    """Per-layer outcome of a :meth:`SelfGrouper.step`."""

    layers: list[LayerReport] = field(default_factory=list)
    stems: list[str] = field(default_factory=list)  # left dense
    shortcuts: list[str] = field(default_factory=list)  # left dense
    depthwise: list[str] = field(default_factory=list)  # nothing to group
    skipped: dict[str, str] = field(default_factory=dict)  # left dense: cannot be masked, why

    def to_dict(self) -> dict:
        """The report as plain JSON-ready types (``{"layers": [{name, kind, ...}, ...]}``)."""
        return asdict(self)

    def __str__(self) -> str:
        lines = [f"{'layer':40s} {'kind':4s} {'N x C':>11s} {'g':>3s} {'target':>7s} {'got':>7s}"]
        for r in self.layers:
            shape = f"{r.filters}x{r.inputs}"
            lines.append(
                f"{r.name:40s} {r.kind:4s} {shape:>11s} {r.groups:3d} "
                f"{r.target_sparsity:7.1%} {r.sparsity:7.1%}"
            )
        return "\n".join(lines)


@contextmanager
def _single_threaded_ops():
    """One torch intra-op thread and one OpenMP / BLAS thread, restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        torch.set_num_threads(threads)


def _check_ratio(name: str, value: float | None) -> None:
    if value is None:
        return
    if not isinstance(value, (int, float)) or not (0 <= value < 1) or math.isnan(value):
        raise SgcnnError(
            f"{name} must be a fraction in [0, 1) (0.7 for 70% of kernels pruned), got {value!r}"
        )


def _check_groups(value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SgcnnError(f"groups must be an integer >= 1 (the paper uses 16), got {value!r}")


def _sparsity(layer: nn.Module) -> float:
    """The fraction of a masked layer's (filter, input channel) pairs already pruned."""
    return 1.0 - float(layer.sg_mask.float().mean())


SEED_MAX = 2**32 - 1  # the largest seed NumPy's and scikit-learn's generators take
SPARSER_MARGIN = 0.02  # a layer this much sparser than its target was already past it


def check_seed(value, name: str = "seed") -> None:
    """Raise :class:`SgcnnError` unless ``value`` is an integer in ``[0, SEED_MAX]``."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= SEED_MAX:
        raise SgcnnError(f"{name} must be an integer in [0, {SEED_MAX}], got {value!r}")


def _check_materialised(model: nn.Module) -> None:
    """Refuse a model whose tensors are on the meta device (shapes without values)."""
    tensors = chain(model.named_parameters(), model.named_buffers())
    meta = [name for name, t in tensors if t.is_meta]
    if meta:
        raise SgcnnError(
            f"{type(model).__name__} has tensors on the meta device ({', '.join(meta[:3])}): "
            "they have no values to group; load or initialise the weights first (e.g. "
            "model.to_empty(device='cpu'), then load_state_dict)"
        )


def _check_finite(model: nn.Module, names: Sequence[str]) -> None:
    """Refuse NaN or inf weights in the layers to self-group, before any of them is swapped."""
    modules = dict(model.named_modules())
    for name in names:
        if not bool(torch.isfinite(modules[name].weight).all()):
            raise SgcnnError(
                f"layer {name!r} has NaN or inf weights: nothing can be grouped from them; "
                "check the checkpoint or the training that produced it"
            )


class SelfGrouper:
    """Self-groups the selected layers of ``model`` in place (see the module docstring).

    Args:
        model: any ``nn.Module``; its Conv2d / Linear layers are swapped for masked ones.
        groups: self-groups per layer ``g`` (clamped to the number of filters).
        seed: k-means seed; the same seed on the same weights gives the same masks.
        include, exclude: qualified-name patterns (``fnmatch``) narrowing the layer set.
        overrides: ``{pattern: {"sparsity": p, "groups": g}}`` per-layer settings; the first
            matching pattern wins.
        input_size: the input to trace the model by running it, for models ``torch.fx``
            cannot trace symbolically: as :func:`sgcnn.count` takes it, ``H``, ``(H, W)``,
            ``(C, H, W)``, ``(N, C, H, W)`` or an example tensor.
        default_exclusions: leave stems and residual shortcut projections dense (paper).
        kmeans: k-means settings (default: the paper's).

    Everything is checked before any layer is swapped: a model that is itself one layer,
    tensors that are lazy (uninitialised) or on the meta device, NaN or inf weights in a
    selected layer are each an :class:`SgcnnError` that leaves the model as it was.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        groups: int = 16,
        seed: int = 0,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
        overrides: Mapping[str, Mapping[str, float]] | None = None,
        input_size: int | Sequence[int] | torch.Tensor | None = None,
        default_exclusions: bool = True,
        kmeans: KMeansSettings | None = None,
    ) -> None:
        _check_groups(groups)
        check_seed(seed)
        self.model = model
        self.groups = groups
        self.seed = seed
        self.overrides = dict(overrides or {})
        for pattern, setting in self.overrides.items():
            unknown = set(setting) - {"sparsity", "groups"}
            if unknown:
                raise SgcnnError(
                    f"override {pattern!r} has unknown keys {sorted(unknown)}; "
                    "valid keys: sparsity, groups"
                )
            _check_ratio(f"override {pattern!r} sparsity", setting.get("sparsity"))
            if "groups" in setting:
                _check_groups(setting["groups"])
        self.kmeans = kmeans or KMeansSettings()
        _check_materialised(model)
        example = None if input_size is None else example_image(model, input_size)
        self.selection: Selection = select_layers(
            model, include, exclude, example, default_exclusions
        )
        _check_finite(model, self.selection.layers)
        for pattern in self.overrides:
            if not any(fnmatch.fnmatchcase(n, pattern) for n in self.selection.layers):
                raise SgcnnError(
                    f"override pattern {pattern!r} matches none of the layers to self-group "
                    f"(e.g. {', '.join(self.selection.layers[:6])})"
                )
        self._prepare()

    def _prepare(self) -> None:
        """Swap the selected layers for masked ones (already masked layers are kept)."""
        chosen = set(self.selection.layers)

        def to_masked(module: nn.Module, name: str) -> nn.Module:
            if is_masked(module):
                return module
            cls = MaskedConv2d if isinstance(module, nn.Conv2d) else MaskedLinear
            return cls.from_dense(module)

        replace_modules_(self.model, lambda m, n: n in chosen, to_masked)
        modules = dict(self.model.named_modules())
        self.layers: dict[str, MaskedConv2d | MaskedLinear] = {
            n: modules[n] for n in self.selection.layers
        }

    def _setting(self, name: str, key: str, default):
        for pattern, setting in self.overrides.items():
            if fnmatch.fnmatchcase(name, pattern) and key in setting:
                return setting[key]
        return default

    @torch.no_grad()
    def step(self, conv_sparsity: float, fc_sparsity: float | None = None) -> GroupingReport:
        """Re-cluster every selected layer and prune it to its target cumulative sparsity.

        ``fc_sparsity`` (fully-connected layers) defaults to ``conv_sparsity``. Masks only
        shrink: a target below a layer's current sparsity leaves its mask as it is.
        """
        if conv_sparsity is None:
            raise SgcnnError("conv_sparsity is required: a fraction in [0, 1), e.g. 0.7")
        _check_ratio("conv_sparsity", conv_sparsity)
        _check_ratio("fc_sparsity", fc_sparsity)
        fc_sparsity = conv_sparsity if fc_sparsity is None else fc_sparsity
        report = GroupingReport(
            stems=self.selection.stems,
            shortcuts=self.selection.shortcuts,
            depthwise=self.selection.depthwise,
            skipped=self.selection.skipped,
        )
        jobs = []
        for name, layer in self.layers.items():
            is_conv = isinstance(layer, nn.Conv2d)
            target = self._setting(name, "sparsity", conv_sparsity if is_conv else fc_sparsity)
            groups = self._setting(name, "groups", self.groups)
            jobs.append((name, layer, is_conv, target, groups))
        sparser = [n for n, layer, _, t, _ in jobs if _sparsity(layer) > t + SPARSER_MARGIN]
        if sparser:
            warnings.warn(
                f"{len(sparser)} of {len(jobs)} layers (e.g. {sparser[0]}) are already sparser "
                "than this step's target and stay so: masks only shrink (sparsity is cumulative)",
                stacklevel=3,  # the caller of step (torch.no_grad's wrapper is one frame)
            )

        def group_layer(job):
            name, layer, _, target, groups = job
            return self._layer_groups(name, layer, target, groups)

        # Layers are independent: they are processed concurrently, one thread each. k-means
        # (scikit-learn) and the small tensor ops release the GIL; one intra-op thread per layer
        # avoids OpenMP spin-waiting, which made runs 10x slower when the cores were shared.
        workers = max(1, min(len(jobs), os.cpu_count() or 1))
        with _single_threaded_ops():
            with ThreadPoolExecutor(workers) as pool:
                results = list(pool.map(group_layer, jobs))
            for (name, layer, is_conv, target, _), (labels, keep, new_mask) in zip(
                jobs, results, strict=True
            ):
                report.layers.append(
                    self._apply(name, layer, is_conv, target, labels, keep, new_mask)
                )
        return report

    def _layer_groups(self, name: str, layer, target: float, groups: int):
        """``(labels [N], keep [g, C], new_mask [N, C])`` of one layer for target sparsity
        ``target``: importance, k-means, centroid pruning. Nothing is stored yet (subclasses
        replace this to prune differently)."""
        try:
            mask = layer.sg_mask.cpu()
            importance = importance_vectors(layer, mask)
        except SgcnnError as err:
            raise SgcnnError(f"layer {name!r}: {err}") from err
        labels = self._cluster(layer, importance, groups)
        return (labels, *centroid_prune(importance, labels, mask, target))

    def _apply(self, name, layer, is_conv, target, labels, keep, new_mask) -> LayerReport:
        """Store a layer's new groups and mask (zeroing pruned weights); report them."""
        layer.set_groups_(labels, keep, new_mask)
        sizes = torch.bincount(labels, minlength=keep.shape[0])
        return LayerReport(
            name=name,
            kind="conv" if is_conv else "fc",
            filters=int(new_mask.shape[0]),
            inputs=int(new_mask.shape[1]),
            groups=int(keep.shape[0]),
            group_sizes=sizes.tolist(),
            kept_inputs=keep.sum(1).tolist(),
            target_sparsity=float(target),
            sparsity=1.0 - int(new_mask.sum()) / new_mask.numel(),
        )

    def _cluster(self, layer, importance: torch.Tensor, groups: int) -> torch.Tensor:
        """Group labels; an already grouped convolution is clustered per convolution group
        (its filters see different input channels), with ``groups`` split between them."""
        conv_groups = getattr(layer, "groups", 1)
        if conv_groups == 1:
            return cluster_filters(importance, groups, self.seed, self.kmeans)
        per_block = max(1, round(groups / conv_groups))
        labels, offset = [], 0
        for block in importance.chunk(conv_groups, dim=0):
            block_labels = cluster_filters(block, per_block, self.seed, self.kmeans)
            labels.append(block_labels + offset)
            offset += int(block_labels.max()) + 1
        return torch.cat(labels)

    def group_structure(self) -> dict[str, LayerGroups]:
        """:func:`group_structure` of this grouper's model."""
        return group_structure(self.model)


def self_group_(
    model: nn.Module,
    conv_sparsity: float,
    fc_sparsity: float | None = None,
    *,
    groups: int = 16,
    seed: int = 0,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    overrides: Mapping[str, Mapping[str, float]] | None = None,
    input_size: int | Sequence[int] | torch.Tensor | None = None,
    default_exclusions: bool = True,
    kmeans: KMeansSettings | None = None,
) -> GroupingReport:
    """Self-group ``model`` in place to ``conv_sparsity`` (fc: ``fc_sparsity``, default equal).

    Calling it again with a higher sparsity re-clusters and continues from the current masks
    (the LG scheme). The keyword arguments are :class:`SelfGrouper`'s. Returns the per-layer
    :class:`GroupingReport`; raises :class:`~sgcnn.errors.SgcnnError` for a setting it cannot
    apply (a ratio outside [0, 1), a pattern that matches no layer, a model with nothing to
    group, one that is a bare layer, lazy or meta tensors, NaN or inf weights) before any layer
    is changed, and warns for a layer already sparser than the target or left dense because it
    cannot be masked (``report.skipped``).
    """
    grouper = SelfGrouper(
        model,
        groups=groups,
        seed=seed,
        include=include,
        exclude=exclude,
        overrides=overrides,
        input_size=input_size,
        default_exclusions=default_exclusions,
        kmeans=kmeans,
    )
    return grouper.step(conv_sparsity, fc_sparsity)


def group_structure(model: nn.Module) -> dict[str, LayerGroups]:
    """``{qualified name: LayerGroups}`` for every self-grouped layer of ``model``."""
    return {
        name: LayerGroups(m.sg_labels.cpu(), m.sg_keep.cpu(), m.sg_mask.cpu())
        for name, m in model.named_modules()
        if is_masked(m)
    }
