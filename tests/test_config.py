"""Typed configs: defaults, recipes, --set overrides, and clear errors for bad keys and values."""

import math
import re

import pytest
import yaml

from sgcnn.engine.config import (
    Config,
    OptimConfig,
    config_from_yaml,
    config_to_yaml,
    parse_set,
    resolve_config,
)
from sgcnn.engine.optim import lr_factor
from sgcnn.engine.recipes import find_recipe, list_recipes, load_recipe
from sgcnn.errors import SgcnnError


def test_defaults_recipe_and_sets_layer_in_order():
    recipe = {
        "optim": {"lr": 0.05, "schedule": "multistep", "milestones": [10, 20]},
        "data": {"name": "synthetic"},
    }
    config = resolve_config(recipe, ["optim.lr=0.2", "train.amp=bf16"])
    assert isinstance(config, Config)
    assert config.optim.lr == 0.2  # --set wins over the recipe
    assert config.optim.milestones == [10, 20]  # the recipe wins over the defaults
    assert config.optim.momentum == 0.9  # untouched defaults stay
    assert config.finetune.lr == 0.01  # section-specific default survives the merge
    assert config.train.amp == "bf16"
    assert config.data.name == "synthetic"


@pytest.mark.parametrize(
    ("text", "key", "value"),
    [
        ("optim.lr=1e-4", "optim.lr", "1e-4"),  # YAML 1.1 reads this as a string ...
        ("grouping.conv=[0.95, 0.97]", "grouping.conv", [0.95, 0.97]),
        ("optim.nesterov=true", "optim.nesterov", True),
        ("grouping.fc_cap=null", "grouping.fc_cap", None),
        ("model.name=resnet20", "model.name", "resnet20"),
    ],
)
def test_parse_set_reads_values_as_yaml(text, key, value):
    assert parse_set(text) == (key, value)


def test_set_values_are_converted_to_the_field_types():
    config = resolve_config(
        None,
        [
            "optim.lr=1e-4",
            "train.epochs=3",
            "grouping.scheme=G",
            "grouping.conv=[0.5]",
            "train.save_every_min=0",
        ],
    )
    assert config.optim.lr == pytest.approx(1e-4)  # ... and the float field converts it
    assert isinstance(config.train.epochs, int)
    assert config.train.save_every_min == 0.0


@pytest.mark.parametrize(
    ("recipe", "sets", "message"),
    [
        ({"optimizer": {}}, [], "unknown key 'optimizer'"),
        ({"optim": {"lrr": 0.1}}, [], "did you mean 'lr'"),
        (None, ["train.epoch=3"], "valid keys in train: epochs, batch_size"),
        (None, ["data.nmae=mnist"], "unknown key 'data.nmae'"),
        (None, ["optim.lr=fast"], "optim.lr must be a number, got 'fast'"),
        (None, ["train.epochs=1.5"], "train.epochs must be an integer"),
        (None, ["train.epochs=true"], "train.epochs must be an integer"),
        (None, ["grouping.conv=0.9"], "grouping.conv must be a list"),
        (None, ["optim.nesterov=maybe"], "optim.nesterov must be true or false"),
        (None, ["optim.lr"], "--set expects key.sub=value"),
        (None, ["optim.lr.x=1"], "optim.lr has no sub-keys"),
        ({"optim": 0.1}, [], "recipe section 'optim' must be a mapping"),
        ({"model": 3}, [], "recipe section 'model' must be a mapping"),
    ],
)
def test_unknown_keys_and_wrong_types_are_errors(recipe, sets, message):
    with pytest.raises(SgcnnError, match=message.replace("(", r"\(").replace(".", r"\.")):
        resolve_config(recipe, sets)


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["grouping.scheme=GL"], "grouping.scheme must be one of baseline, G, LG, L"),
        (["grouping.scheme=G"], "needs target sparsities"),
        (["grouping.scheme=G", "grouping.conv=[95]"], "write 0.95 for 95%"),
        (["grouping.scheme=G", "grouping.conv=[0.5]", "grouping.fc=[0.5, 0.6]"], "one FC"),
        (["grouping.conv=[0.5]"], "but grouping.scheme is baseline"),
        (["optim.schedule=linear"], "optim.schedule must be one of"),
        (["train.amp=fp8"], "train.amp must be one of none, bf16, fp16"),
        (["train.device=tpu"], "train.device must be auto, cpu, cuda or cuda:N"),
        (["train.batch_size=0"], "train.batch_size must be >= 1"),
        (["train.epochs=0"], "model.checkpoint is not set"),
        (
            ["train.epochs=0", "model.checkpoint=m.pt", "model.reset_classifier=true"],
            "the new classifier starts from random weights",
        ),
        (["finetune.lr=0"], "finetune.lr must be finite and > 0"),
        (["optim.lr=.inf"], "optim.lr must be finite and > 0"),
        (["optim.momentum=2"], "optim.momentum must be below 1"),
        (["optim.min_lr=1"], "the schedule would raise the learning rate"),
        (["optim.milestones=[5, 2]"], "optim.milestones must be increasing"),
        (["train.seed=-1"], "train.seed must be an integer in"),
        (["grouping.scheme=G", "grouping.conv=[0.5]", "grouping.seed=-1"], "grouping.seed must"),
        (["grouping.scheme=G", "grouping.conv=[0.5, 0.5]"], "names a target twice"),
        (
            [
                "grouping.scheme=G",
                "grouping.conv=[0.7, 0.7]",
                "grouping.fc=[0.9, 0.95]",
                "grouping.fc_cap=0.8",
            ],
            "names a target twice",
        ),
        (["train.select=val_top5"], "train.select must be one of"),
        (["report.paper=[{top1: 74.4}]"], "report.paper[0] must be a mapping with a name"),
        (["report.paper=[baseline]"], "report.paper[0] must be a mapping"),
        (["report.paper=[{name: b, top1: 74%}]"], "report.paper[0].top1 must be a number"),
        (["report.paper=[{name: b, acc: 74}]"], "report.paper[0] has unknown keys ['acc']"),
    ],
)
def test_bad_values_are_errors(sets, message):
    with pytest.raises(SgcnnError, match=re.escape(message)):
        resolve_config(None, sets)


@pytest.mark.parametrize(
    ("recipe", "sets", "message"),
    [
        (  # the model's default schedule (cosine) would silently drop the milestones
            {"model": {"name": "resnet20"}, "optim": {"milestones": [50, 75]}},
            [],
            "optim.milestones is [50, 75], but optim.schedule is cosine (resnet20's default), "
            "which does not use it: also set the schedule (e.g. --set optim.schedule=multistep)",
        ),
        (None, ["finetune.milestones=[5]"], "finetune.schedule is cosine (the default)"),
        ({"optim": {"schedule": "cosine", "step_size": 10}}, [], "--set optim.schedule=step"),
        (None, ["optim.schedule=constant", "optim.gamma=0.5"], "optim.gamma is 0.5"),
        (None, ["optim.schedule=multistep", "optim.min_lr=0.001"], "optim.schedule=cosine"),
        (None, ["optim.milestones=[5]", "optim.schedule=cosine"], "optim.milestones is [5]"),
    ],
)
def test_schedule_settings_the_schedule_ignores_are_errors(recipe, sets, message):
    with pytest.raises(SgcnnError, match=re.escape(message)):
        resolve_config(recipe, sets)


def test_schedule_settings_at_their_defaults_or_replaced_by_a_later_schedule_are_fine():
    assert resolve_config({"model": {"name": "resnet20"}}).optim.milestones == []
    assert resolve_config(None, ["optim.milestones=[]", "finetune.gamma=0.1"]).optim.schedule
    c = resolve_config({"model": {"name": "resnet20"}}, ["optim.schedule=multistep"])
    assert c.optim.schedule == "multistep" and c.optim.milestones == []  # a constant rate
    # A schedule chosen over a recipe's drops the recipe's milestones knowingly.
    _, recipe = load_recipe("resnet56_cifar10_g")
    c = resolve_config(recipe, ["optim.schedule=cosine", "finetune.schedule=step"])
    assert (c.optim.schedule, c.finetune.schedule) == ("cosine", "step")
    # A run saved by an earlier sgcnn with ignored milestones still reads (its report).
    saved = config_to_yaml(resolve_config(None, ["optim.schedule=multistep"]))
    saved = saved.replace("schedule: multistep", "schedule: cosine", 1)
    assert "milestones: []" in saved
    saved = saved.replace("milestones: []", "milestones: [3]", 1)
    config = config_from_yaml(saved)
    assert (config.optim.schedule, config.optim.milestones) == ("cosine", [3])


@pytest.mark.parametrize("value", ["resnet20", "null", "[x]"])
def test_a_section_set_as_one_value_is_one_clear_error(value, tmp_path, capsys):
    from sgcnn.cli.main import main

    with pytest.raises(SgcnnError, match=r"model is a section of settings .*--set model\.name="):
        resolve_config(None, [f"model={value}"])
    for command in (["run", "lenet5_mnist5k_demo"], ["train"]):
        out = tmp_path / "never"
        assert main([*command, "--set", f"model={value}", "--output", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "error: model is a section" in err, err
        assert not out.exists()


def test_a_section_set_as_one_value_names_the_key_to_set():
    def error(sets: list[str]) -> str:
        with pytest.raises(SgcnnError) as err:
            resolve_config(None, sets)
        return str(err.value)

    assert "e.g. --set model.name=resnet20" in error(["model=resnet20"])
    assert "e.g. --set train.epochs=..." in error(["train=5"])
    assert resolve_config(None, ["model={name: resnet20}"]).model.name == "resnet20"


def test_resolved_config_round_trips_through_yaml():
    config = resolve_config(
        {"name": "x", "grouping": {"scheme": "LG", "conv": [0.8]}},
        ["grouping.fc_cap=0.6", "report.paper=[{name: baseline, top1: 1}]"],
    )
    text = config_to_yaml(config)
    assert yaml.safe_load(text)["grouping"]["fc_cap"] == 0.6
    assert config_from_yaml(text) == config


def test_every_shipped_recipe_resolves():
    names = list_recipes()
    for expected in (
        "lenet5_mnist_g",
        "lenet5_mnist_lg",
        "densenet121_cifar10_g",
        "densenet121_cifar100_lg",
        "resnet56_cifar10_g",
        "resnet50_imagenet_lg",
        "densenet201_imagenet_g",
        "lenet5_mnist5k_demo",
    ):
        assert expected in names
    for name in names:
        _, recipe = load_recipe(name)
        config = resolve_config(recipe, ["model.checkpoint=weights.pt"])
        # baseline recipes train only; transfer recipes fine-tune a checkpoint and
        # `sgcnn transfer --scheme` picks the scheme
        assert (
            config.grouping.scheme in ("G", "LG")
            or name.endswith("_baseline")
            or ("transfer" in name)
        )
        assert config.report.paper or name.startswith(("resnet56", "resnet20"))


def test_imagenet_recipes_follow_the_paper():
    _, recipe = load_recipe("resnet50_imagenet_lg")
    c = resolve_config(recipe, ["model.checkpoint=r50.pth"])
    assert (c.finetune.lr, c.finetune.momentum, c.finetune.weight_decay) == (0.01, 0.9, 1e-4)
    assert c.finetune.milestones == [30, 60]
    assert (c.grouping.local_epochs, c.grouping.global_epochs, c.grouping.fc_cap) == (20, 90, 0.6)
    with pytest.raises(SgcnnError, match=r"model\.checkpoint"):
        resolve_config(recipe)  # the pretrained weights are required


def test_unknown_recipe_suggests_names(tmp_path):
    with pytest.raises(SgcnnError, match="lenet5_mnist_g, lenet5_mnist_lg"):
        find_recipe("lenet5_mnist")
    with pytest.raises(SgcnnError, match="does not exist"):
        find_recipe(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(SgcnnError, match="cannot read recipe"):
        load_recipe(str(bad))


def test_learning_rate_schedules():
    o = OptimConfig(lr=0.1, schedule="multistep", milestones=[30, 60], gamma=0.1)
    assert [lr_factor(o, e, 90) for e in (0, 29.9, 30, 60)] == pytest.approx([1, 1, 0.1, 0.01])
    o = OptimConfig(lr=0.1, schedule="step", step_size=10, gamma=0.5)
    assert lr_factor(o, 25, 90) == pytest.approx(0.25)
    o = OptimConfig(lr=0.1, schedule="cosine", min_lr=0.01)
    assert lr_factor(o, 0, 10) == pytest.approx(1.0)
    assert lr_factor(o, 5, 10) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(o, 10, 10) == pytest.approx(0.1)
    o = OptimConfig(lr=0.1, schedule="constant", warmup_epochs=2)
    assert lr_factor(o, 1, 10) == pytest.approx(0.5)
    assert lr_factor(o, 0, 10) == pytest.approx(0.01)
    assert lr_factor(o, 2, 10) == 1.0
    assert not math.isnan(lr_factor(OptimConfig(schedule="cosine"), 3, 0))
