"""Typed configuration of a run: train a baseline, self-group it, fine-tune it.

A run is configured by :class:`Config`, a tree of dataclasses with defaults. A YAML recipe
overrides any subset of it, and ``--set key.sub=value`` overrides the recipe::

    model:    {name: lenet5}
    data:     {name: mnist5k}
    train:    {epochs: 20, batch_size: 64}
    optim:    {lr: 0.01, schedule: multistep, milestones: [10, 15]}   # baseline training
    finetune: {lr: 0.01, schedule: cosine}                            # global fine-tune
    grouping: {scheme: G, conv: [0.95, 0.97], global_epochs: 10}

Between the library defaults and the recipe sit the model's own training defaults (its
dataset, learning rate and schedule; :mod:`sgcnn.models.registry`), so that naming a model is
enough to train it.

:func:`resolve_config` merges those layers onto the defaults and checks every key, type and
value: unknown keys are an error listing the valid ones, wrong types name the key and the
expected type. :func:`config_to_yaml` gives the resolved config written into every run folder.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from sgcnn.core.alternatives import METHODS
from sgcnn.core.grouper import check_seed
from sgcnn.data import DataConfig
from sgcnn.engine.typed import field_types, from_dict, to_dict, unknown_key_error
from sgcnn.errors import SgcnnError

SCHEMES = ("baseline", "G", "LG", "L")
SCHEDULES = ("constant", "step", "multistep", "cosine")
AMP_MODES = ("none", "bf16", "fp16")
SELECT_MODES = ("val_top1", "val_loss", "last")
# The settings of an optimizer section that only some schedules read (lr_factor in
# sgcnn.engine.optim): with any other schedule they would be silently ignored.
SCHEDULE_KEYS = {
    "milestones": ("multistep",),
    "step_size": ("step",),
    "gamma": ("step", "multistep"),
    "min_lr": ("cosine",),
}


@dataclass
class ModelConfig:
    """Which network to train or fine-tune."""

    name: str = "lenet5"  # registered model name (`sgcnn models`)
    num_classes: int | None = None  # None: the dataset's number of classes
    checkpoint: str | None = None  # start from these weights (sgcnn checkpoint or state_dict)
    # Transfer: replace the checkpoint's classifier with a fresh one for this dataset's classes
    # (every other weight, and the masks of self-grouped layers, are kept).
    reset_classifier: bool = False


@dataclass
class OptimConfig:
    """SGD with momentum and a learning-rate schedule over one training phase.

    The schedule is a function of the epoch counted from the start of the phase (fractional,
    updated every step): ``constant``; ``step`` (``lr * gamma ** (epoch // step_size)``);
    ``multistep`` (``lr * gamma ** #{milestones <= epoch}``); ``cosine`` (from ``lr`` down to
    ``min_lr`` over the phase). An optional linear warm-up over ``warmup_epochs`` precedes it.
    A setting the schedule does not read (``milestones`` with ``cosine``, ...) is refused
    (:data:`SCHEDULE_KEYS`); ``multistep`` with no milestones keeps ``lr`` constant.
    """

    lr: float = 0.1  # peak learning rate, for a global batch of batch_size x processes
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 1e-4  # L2 penalty on every parameter
    nesterov: bool = False  # Nesterov momentum
    schedule: str = "multistep"  # constant | step | multistep | cosine
    milestones: list[int] = field(default_factory=list)  # epochs where lr *= gamma (multistep)
    step_size: int = 30  # epochs between lr *= gamma (step)
    gamma: float = 0.1  # decay factor of step / multistep
    min_lr: float = 0.0  # cosine: final learning rate
    warmup_epochs: float = 0.0  # epochs of linear warm-up at the start of the phase


@dataclass
class TrainConfig:
    """How to run training (any phase): budget of the baseline, batches, device, precision."""

    epochs: int = 10  # baseline training epochs; 0 with model.checkpoint: evaluate it only
    batch_size: int = 128  # images per process per step
    eval_batch_size: int = 512  # images per process per evaluation step
    workers: int = 0  # DataLoader worker processes per training process
    device: str = "auto"  # auto (CUDA when available) | cpu | cuda | cuda:N
    amp: str = "none"  # none | bf16 | fp16 mixed precision (CUDA only; ignored on CPU)
    channels_last: bool = False  # NHWC memory format (CPU and CUDA)
    seed: int = 0  # initial weights, shuffling and augmentation
    threads: int = 0  # torch.set_num_threads per process; 0: PyTorch's default
    limit_batches: int = 0  # training steps per epoch at most (0: the whole epoch); quick checks
    save_every_min: float = 10.0  # minutes between mid-epoch checkpoints; 0: epoch ends only
    # Which epoch of a phase is its result: val_top1 (best validation Top-1), val_loss (lowest
    # validation loss) or last (the final epoch; for validation splits too small to choose).
    # The test split is never used to choose.
    select: str = "val_top1"


@dataclass
class GroupingConfig:
    """Self-grouping and fine-tuning scheme (docs/method.md section 1, step 5).

    One result row per target ``conv[i]`` (FC sparsity ``fc[i]``, default equal to the conv
    one, never above ``fc_cap``). Each target starts again from the best baseline.
    ``G``: prune once, then ``global_epochs`` of fine-tuning with ``finetune``. ``LG``: prune to
    ``lg_step``, ``2 lg_step``, ... up to the target, re-clustering each time, each step followed
    by ``local_epochs`` at the constant rate ``local_lr``; then the global fine-tune. ``L``: as
    LG without the global fine-tune.
    """

    scheme: str = "baseline"  # baseline | G | LG | L
    # How layers are pruned: sg (self-grouping) or a baseline method of the same sparsity:
    # groupconv | random | l1filter | kernel_l1 (sgcnn.core.alternatives; G scheme only)
    method: str = "sg"
    conv: list[float] = field(default_factory=list)  # target conv sparsities, e.g. [0.95]
    fc: list[float] | None = None  # FC sparsities paired with conv; None: equal to conv
    fc_cap: float | None = None  # FC sparsity never above this (paper: Conv-80/FC-60)
    groups: int = 16  # self-groups per layer (k-means clusters)
    seed: int = 0  # k-means seed
    lg_step: float = 0.1  # LG / L: sparsity added at each pruning step
    local_epochs: int = 1  # LG / L: fine-tuning epochs after each pruning step
    local_lr: float | None = None  # LG / L: constant lr of local fine-tuning; None: finetune.lr
    global_epochs: int = 10  # G / LG: epochs of the global fine-tune (with `finetune`)
    include: list[str] = field(default_factory=list)  # only layers matching these (fnmatch)
    exclude: list[str] = field(default_factory=list)  # leave layers matching these dense


@dataclass
class ReportConfig:
    """How the run's report is titled, and the paper's rows to print beside ours."""

    title: str | None = None  # default: the run name
    baseline_name: str = "baseline"  # label of the first result row (e.g. "transfer L")
    paper: list[dict] = field(default_factory=list)  # [{name, params, flops, top1}, ...]


def _finetune_default() -> OptimConfig:
    return OptimConfig(lr=0.01, schedule="cosine")


@dataclass
class Config:
    """A whole run. See the module docstring; every field has a default."""

    name: str | None = None  # run name: default output folder runs/<name>
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)  # baseline training
    finetune: OptimConfig = field(default_factory=_finetune_default)  # global fine-tune
    grouping: GroupingConfig = field(default_factory=GroupingConfig)
    report: ReportConfig = field(default_factory=ReportConfig)


def parse_set(text: str) -> tuple[str, Any]:
    """``"optim.lr=0.1"`` -> ``("optim.lr", 0.1)``; the value is read as YAML."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*", key):
        raise SgcnnError(f"--set expects key.sub=value (e.g. optim.lr=0.05), got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key, value


def apply_set_(tree: dict, key: str, value: Any, root: type | None = None) -> None:
    """Set dotted ``key`` in the nested dict ``tree`` (a :class:`Config`, or the dataclass
    ``root``); checks the keys."""
    cls: type | None = root or Config
    parts = key.split(".")
    node = tree
    for i, part in enumerate(parts):
        types_ = field_types(cls) if cls is not None else None
        if types_ is not None and part not in types_:
            raise unknown_key_error(key, ".".join(parts[:i]), list(types_))
        if i == len(parts) - 1:
            hint = types_[part] if types_ is not None else None
            if dataclasses.is_dataclass(hint) and not isinstance(value, dict):
                raise _section_error(key, hint, value)  # `model=resnet20`: not one value
            node[part] = value
            return
        hint = types_[part] if types_ is not None else None
        cls = hint if dataclasses.is_dataclass(hint) else None
        if cls is None and not isinstance(node.get(part), dict):  # e.g. report.paper, a list
            raise SgcnnError(f"{'.'.join(parts[: i + 1])} has no sub-keys; set it whole")
        node = node.setdefault(part, {})


def _section_error(key: str, cls: type, value: Any) -> SgcnnError:
    """``--set model=resnet20``: a section holds settings; the user meant one of them."""
    names = list(field_types(cls))
    first = "name" if "name" in names else names[0]
    example = value if first == "name" and isinstance(value, str) else "..."
    return SgcnnError(
        f"{key} is a section of settings ({', '.join(names)}), not one value (got {value!r}): "
        f"set one of its keys, e.g. --set {key}.{first}={example}"
    )


def deep_merge(base: dict, override: dict) -> dict:
    """``override`` laid over ``base``: mappings merge key by key, anything else replaces."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def resolve_config(
    recipe: dict | None = None, sets: list[str] | None = None, *, check_unused: bool = True
) -> Config:
    """Defaults, overridden by the model's own training defaults (its registry entry's
    ``defaults``: dataset, learning rate, schedule), then by ``recipe`` (a dict read from
    YAML), then by ``sets``. What the user writes always wins.

    ``check_unused``: refuse a schedule setting the schedule would ignore (see
    :func:`_check_schedule_keys`); off for the configs runs saved (:func:`config_from_yaml`),
    which record what ran, and for a command resuming a run (it may have been started before
    such settings were refused: the run goes on with its saved config, and
    :func:`sgcnn.engine.rundir.config_differences` accepts the setting, which changes
    nothing). The CLI checks new runs only (:func:`sgcnn.cli._pipeline.configure`)."""
    defaults = to_dict(Config())
    if recipe is not None:
        if not isinstance(recipe, dict):
            raise SgcnnError(f"a recipe must be a mapping of sections, got {recipe!r}")
        for key, section in recipe.items():
            if key not in defaults:
                raise unknown_key_error(str(key), "", list(defaults))
            if isinstance(defaults[key], dict) and not isinstance(section, dict):
                raise SgcnnError(
                    f"recipe section {key!r} must be a mapping of settings (e.g. "
                    f"{key}: {{...}}), got {section!r}"
                )
    overrides = [parse_set(text) for text in sets or []]

    def layered(base: dict) -> dict:
        tree = deep_merge(base, recipe or {})
        for key, value in overrides:
            apply_set_(tree, key, value)
        return tree

    tree = layered(defaults)
    model_defaults = _model_defaults(tree["model"].get("name"))
    if model_defaults:
        tree = layered(deep_merge(defaults, model_defaults))
    config = from_dict(Config, tree)
    validate(config)
    if check_unused:
        layers = (model_defaults, recipe or {}, {key for key, _ in overrides})
        _check_schedule_keys(config, layers)
    return config


def _check_schedule_keys(config: Config, layers: tuple[dict, dict, set[str]]) -> None:
    """A setting the section's schedule does not read (``milestones`` with ``cosine``, say) is
    an error rather than silently ignored, when it differs from its default and was written
    where the schedule was chosen or later (``layers``: the model's defaults, the recipe, the
    ``--set`` keys; library defaults below them). A schedule chosen later, such as ``--set
    optim.schedule=cosine`` over a recipe's multistep milestones, knowingly replaces them."""
    model_defaults, recipe, sets = layers
    default = OptimConfig()

    def layer(section: str, key: str) -> int:
        if section in sets or f"{section}.{key}" in sets:
            return 3
        if key in (recipe.get(section) or {}):
            return 2
        return 1 if key in (model_defaults.get(section) or {}) else 0

    for section in ("optim", "finetune"):
        o = getattr(config, section)
        chosen = layer(section, "schedule")
        where = ("the default", f"{config.model.name}'s default", "from the recipe", "from --set")
        for key, schedules in SCHEDULE_KEYS.items():
            value = getattr(o, key)
            if o.schedule in schedules or value == getattr(default, key):
                continue
            if layer(section, key) >= chosen:
                raise SgcnnError(
                    f"{section}.{key} is {value}, but {section}.schedule is {o.schedule} "
                    f"({where[chosen]}), which does not use it: also set the schedule (e.g. "
                    f"--set {section}.schedule={schedules[-1]}), or leave {section}.{key} out"
                )


def _model_defaults(name: Any) -> dict:
    """The registered training defaults of model ``name`` (none for unknown names: building
    the model reports those)."""
    from sgcnn.models.registry import list_models, model_entry

    if not isinstance(name, str) or name not in list_models():
        return {}
    return copy.deepcopy(dict(model_entry(name).defaults))


def validate(config: Config) -> None:
    """Check the values a type cannot express; raises :class:`SgcnnError`."""
    g, t = config.grouping, config.train
    _choice("grouping.scheme", g.scheme, SCHEMES)
    _choice("train.amp", t.amp, AMP_MODES)
    _choice("train.select", t.select, SELECT_MODES)
    for section in ("optim", "finetune"):
        o = getattr(config, section)
        _choice(f"{section}.schedule", o.schedule, SCHEDULES)
        _positive(f"{section}.lr", o.lr, allow_zero=False)
        for name in ("momentum", "weight_decay", "gamma", "min_lr", "warmup_epochs"):
            _positive(f"{section}.{name}", getattr(o, name))
        if o.momentum >= 1:
            raise SgcnnError(f"{section}.momentum must be below 1 (e.g. 0.9), got {o.momentum}")
        if o.min_lr > o.lr:
            raise SgcnnError(
                f"{section}.min_lr ({o.min_lr}) is above {section}.lr ({o.lr}): the schedule "
                "would raise the learning rate; give a min_lr <= lr"
            )
        if o.step_size < 1:
            raise SgcnnError(f"{section}.step_size must be >= 1 epoch, got {o.step_size}")
        if any(m < 0 for m in o.milestones) or list(o.milestones) != sorted(set(o.milestones)):
            raise SgcnnError(
                f"{section}.milestones must be increasing epochs >= 0, got {o.milestones}"
            )
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", t.device):
        raise SgcnnError(f"train.device must be auto, cpu, cuda or cuda:N, got {t.device!r}")
    for name in ("epochs", "workers", "threads", "limit_batches"):
        if getattr(t, name) < 0:
            raise SgcnnError(f"train.{name} must be >= 0, got {getattr(t, name)}")
    for name in ("batch_size", "eval_batch_size"):
        if getattr(t, name) < 1:
            raise SgcnnError(f"train.{name} must be >= 1, got {getattr(t, name)}")
    _positive("train.save_every_min", t.save_every_min)
    check_seed(t.seed, "train.seed")
    if config.model.reset_classifier and not config.model.checkpoint:
        raise SgcnnError(
            "model.reset_classifier needs model.checkpoint: the trained model whose classifier "
            "is replaced (--set model.checkpoint=PATH)"
        )
    if t.epochs == 0 and config.model.reset_classifier:
        raise SgcnnError(
            "train.epochs is 0 but model.reset_classifier is set: the new classifier starts "
            "from random weights and needs training epochs (e.g. --epochs 10)"
        )
    if t.epochs == 0 and not config.model.checkpoint:
        raise SgcnnError(
            "train.epochs is 0 but model.checkpoint is not set: give the weights to start from "
            "(--set model.checkpoint=PATH) or a number of training epochs"
        )
    _validate_grouping(g)
    _validate_paper_rows(config.report.paper)


_PAPER_KEYS = ("params", "flops", "top1", "top5")


def _validate_paper_rows(rows: list) -> None:
    """``report.paper``: ``[{name: "Conv-95/FC-95", params: 22000, flops: 388000, top1: 99.17},
    ...]``, checked now so that a typo does not fail the report after the whole run."""
    example = "e.g. - {name: Conv-95/FC-95, params: 22000, flops: 388000, top1: 99.17}"
    for i, row in enumerate(rows):
        where = f"report.paper[{i}]"
        if not isinstance(row, dict) or not isinstance(row.get("name"), str):
            raise SgcnnError(f"{where} must be a mapping with a name ({example}), got {row!r}")
        unknown = sorted(set(row) - {"name", *_PAPER_KEYS})
        if unknown:
            raise SgcnnError(
                f"{where} has unknown keys {unknown}; valid: name, {', '.join(_PAPER_KEYS)}"
            )
        for key in _PAPER_KEYS:
            value = row.get(key)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float)
            ):
                raise SgcnnError(f"{where}.{key} must be a number or null, got {value!r}")


def _validate_grouping(g: GroupingConfig) -> None:
    _choice("grouping.method", g.method, METHODS)
    if g.method != "sg" and g.scheme not in ("baseline", "G"):
        raise SgcnnError(
            f"grouping.method {g.method} prunes once from the baseline: use grouping.scheme=G "
            f"(got {g.scheme}); the progressive LG / L schemes are for method sg"
        )
    if g.scheme == "baseline":
        if g.conv:
            raise SgcnnError(
                f"grouping.conv is {g.conv} but grouping.scheme is baseline: choose a scheme "
                "(G, LG or L) to self-group, or remove the targets"
            )
        return
    if not g.conv:
        raise SgcnnError(
            f"grouping.scheme {g.scheme} needs target sparsities: --conv 0.7 (or --set "
            "grouping.conv=[0.7])"
        )
    for i, p in enumerate(g.conv):
        _ratio(f"grouping.conv[{i}]", p)
    if g.fc is not None:
        if len(g.fc) != len(g.conv):
            raise SgcnnError(
                f"grouping.fc has {len(g.fc)} values but grouping.conv has {len(g.conv)}: "
                "give one FC sparsity per conv target, or leave fc unset (fc = conv)"
            )
        for i, p in enumerate(g.fc):
            _ratio(f"grouping.fc[{i}]", p)
    if g.fc_cap is not None:
        _ratio("grouping.fc_cap", g.fc_cap)
    fcs = g.fc if g.fc is not None else g.conv
    targets = [  # as rows name them: FC capped, percent to four decimals
        (round(c * 100, 4), round((f if g.fc_cap is None else min(f, g.fc_cap)) * 100, 4))
        for c, f in zip(g.conv, fcs, strict=True)
    ]
    if len(set(targets)) != len(targets):
        raise SgcnnError(
            f"grouping.conv {g.conv} (with grouping.fc and fc_cap) names a target twice; each "
            "target is one row (and one folder), so give each once"
        )
    check_seed(g.seed, "grouping.seed")
    if not 0 < g.lg_step < 1:
        raise SgcnnError(f"grouping.lg_step must be in (0, 1), e.g. 0.1, got {g.lg_step}")
    if g.groups < 1:
        raise SgcnnError(f"grouping.groups must be >= 1 (the paper uses 16), got {g.groups}")
    for name in ("local_epochs", "global_epochs"):
        if getattr(g, name) < 0:
            raise SgcnnError(f"grouping.{name} must be >= 0, got {getattr(g, name)}")
    if g.local_lr is not None:
        _positive("grouping.local_lr", g.local_lr, allow_zero=False)


def _choice(name: str, value: str, options: tuple[str, ...]) -> None:
    if value not in options:
        raise SgcnnError(f"{name} must be one of {', '.join(options)}, got {value!r}")


def _positive(name: str, value: float, allow_zero: bool = True) -> None:
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise SgcnnError(f"{name} must be finite and {bound}, got {value}")


def _ratio(name: str, value: float) -> None:
    if not 0 <= value < 1:
        hint = f" (write {value / 100:g} for {value:g}%)" if 1 < value < 100 else ""
        raise SgcnnError(f"{name} must be a sparsity in [0, 1){hint}, got {value}")


def config_to_dict(config: Config) -> dict:
    """The config as plain dicts and lists."""
    return to_dict(config)


def config_to_yaml(config: Config) -> str:
    """The resolved config as YAML (what ``config.yaml`` of a run holds)."""
    return yaml.safe_dump(to_dict(config), sort_keys=False, default_flow_style=None)


def config_from_yaml(text: str, source: str = "config") -> Config:
    """Parse a resolved ``config.yaml`` back (strict: unknown keys are errors)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise SgcnnError(f"{source} is not valid YAML: {yaml_problem(err)}") from err
    if data is not None and not isinstance(data, dict):
        raise SgcnnError(f"{source} is not a config (a YAML mapping); the file is damaged")
    try:
        return resolve_config(data or {}, check_unused=False)
    except SgcnnError as err:
        raise SgcnnError(f"{source}: {err}") from err


def yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML parse error on one line: what and where (line, column)."""
    mark = getattr(err, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    return f"{getattr(err, 'problem', None) or type(err).__name__}{where}"
