"""Engine: scheme plans, masks held at zero while training, evaluation, a whole tiny run, and
the errors a user meets before any run folder is written."""

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import sgcnn
from sgcnn.engine.checkpoint import load_checkpoint, load_model, model_payload, save_checkpoint
from sgcnn.engine.config import resolve_config
from sgcnn.engine.distributed import Dist
from sgcnn.engine.loop import Precision, evaluate, masked_layers, train_step
from sgcnn.engine.optim import build_optimizer, build_scheduler
from sgcnn.engine.runner import Runner
from sgcnn.engine.schemes import lg_steps, plan, row_name, row_slug, total_epochs
from sgcnn.engine.state import read_metrics
from sgcnn.errors import SgcnnError

CIFAR_ARCHIVE = Path(__file__).resolve().parents[2] / "shared/data/cifar10-jpeg.tar.gz"


def tiny(**sections) -> dict:
    """A recipe that runs in about a second: test_convnet on 128 synthetic 16x16 images."""
    recipe = {
        "model": {"name": "test_convnet"},
        "data": {"name": "synthetic", "synthetic_size": 128, "image_size": 16},
        "train": {"epochs": 2, "batch_size": 32, "threads": 1, "device": "cpu"},
        "optim": {"lr": 0.05},
        "grouping": {"scheme": "G", "conv": [0.5], "global_epochs": 1},
    }
    for key, value in sections.items():
        recipe[key] = {**recipe.get(key, {}), **value}
    return recipe


# ----------------------------------------------------------------------------------- plans


def test_lg_steps_go_by_ten_points_up_to_the_target():
    assert lg_steps(0.95, 0.95, 0.1) == [
        (p, p) for p in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
    ]
    assert lg_steps(0.3, 0.3, 0.1) == [(0.1, 0.1), (0.2, 0.2), (0.3, 0.3)]
    # Conv-80/FC-60: FC stops at its cap while conv goes on.
    assert lg_steps(0.8, 0.6, 0.1)[-3:] == [(0.6, 0.6), (0.7, 0.6), (0.8, 0.6)]
    assert lg_steps(0.05, 0.05, 0.1) == [(0.05, 0.05)]


def test_plans_of_each_scheme():
    config = resolve_config(
        tiny(grouping={"scheme": "LG", "conv": [0.25], "local_epochs": 2, "global_epochs": 3})
    )
    kinds = [(s.kind, s.step, s.conv) for s in plan(config)]
    assert kinds == [
        ("train", 0, 0.0),
        ("evaluate", 0, 0.0),
        ("prune", 1, 0.1),
        ("local", 1, 0.0),
        ("prune", 2, 0.2),
        ("local", 2, 0.0),
        ("prune", 3, 0.25),
        ("local", 3, 0.0),
        ("global", 0, 0.0),
        ("evaluate", 0, 0.0),
    ]
    assert [s.selects for s in plan(config)].count(True) == 2  # baseline and global

    g = plan(resolve_config(tiny(grouping={"conv": [0.95, 0.97, 0.99]})))
    assert [s.row for s in g if s.kind == "evaluate"] == [
        "baseline",
        "Conv-95/FC-95",
        "Conv-97/FC-97",
        "Conv-99/FC-99",
    ]
    assert [s.kind for s in g[2:5]] == ["prune", "global", "evaluate"]

    local = plan(resolve_config(tiny(grouping={"scheme": "L", "conv": [0.2]})))
    assert [s.kind for s in local] == [
        "train",
        "evaluate",
        "prune",
        "local",
        "prune",
        "local",
        "evaluate",
    ]
    assert local[-2].selects and not local[-4].selects

    assert [
        s.kind for s in plan(resolve_config(tiny(grouping={"scheme": "baseline", "conv": []})))
    ] == ["train", "evaluate"]


def test_fc_cap_names_rows_like_the_paper():
    config = resolve_config(tiny(grouping={"conv": [0.6, 0.8], "fc_cap": 0.6}))
    rows = [s.row for s in plan(config) if s.kind == "evaluate"]
    assert rows == ["baseline", "Conv-60/FC-60", "Conv-80/FC-60"]
    assert row_slug("Conv-80/FC-60") == "conv80-fc60"
    assert row_name(0.975, 0.9) == "Conv-97.5/FC-90"


def test_resnet50_lg_budget_matches_the_paper():
    config = resolve_config(
        None,
        [
            "model.checkpoint=x.pt",
            "train.epochs=0",
            "grouping.scheme=LG",
            "grouping.conv=[0.7]",
            "grouping.local_epochs=20",
            "grouping.global_epochs=90",
        ],
    )
    assert total_epochs(plan(config)) == 7 * 20 + 90  # the paper's 90 + 7 x 20 + 90, less
    # the 90 baseline epochs, which torchvision's pretrained weights stand for


# ----------------------------------------------------------------------------------- loops


@pytest.mark.parametrize("nesterov", [False, True])
def test_pruned_weights_stay_exactly_zero_while_training(nesterov):
    model = sgcnn.create_model("test_resnet")
    x, y = torch.randn(16, 3, 16, 16), torch.randint(0, 10, (16,))
    # Momentum buffers from dense training would push pruned weights away from zero...
    dense_opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    nn.functional.cross_entropy(model(x), y).backward()
    dense_opt.step()
    sgcnn.self_group_(model, 0.6, groups=4, input_size=(3, 16, 16))
    config = resolve_config(None, [f"finetune.nesterov={nesterov}", "finetune.weight_decay=0.01"])
    # ... so each phase gets a fresh optimizer; masks are also enforced after every step.
    optimizer = build_optimizer(model, config.finetune, lr=0.5)
    scheduler = build_scheduler(optimizer, config.finetune, 1, 5)
    layers = masked_layers(model)
    assert layers
    for _ in range(5):
        sums = train_step(
            model, (x, y), optimizer, scheduler, Precision(torch.device("cpu")), layers
        )
    assert sums[2].item() == 16
    for layer in layers:
        pruned = ~layer.weight_mask().bool().expand_as(layer.weight)
        assert pruned.any()
        assert torch.all(layer.weight[pruned] == 0)
        assert layer.weight[~pruned].abs().sum() > 0


def test_evaluate_leaves_each_modules_own_mode():
    """A BatchNorm frozen (eval) inside a model in train mode stays frozen after evaluation."""
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(16, 5))
    model.train()
    model[1].eval()
    loader = [(torch.randn(2, 3, 2, 2), torch.tensor([0, 1]))]
    evaluate(model, loader, Precision(torch.device("cpu")), Dist())
    assert [m.training for m in model] == [True, False, True, True] and model.training


def test_evaluate_counts_top1_and_top5_exactly():
    class Fixed(nn.Module):
        def forward(self, x):
            return x  # the inputs are the class scores

    scores = torch.tensor(
        [
            [9.0, 8, 7, 6, 5, 4, 0],  # label 0: top-1
            [9.0, 8, 7, 6, 5, 4, 0],  # label 4: top-5 only
            [9.0, 8, 7, 6, 5, 4, 0],
        ]
    )  # label 6: neither
    labels = torch.tensor([0, 4, 6])
    loader = [(scores, labels)]
    cpu = torch.device("cpu")
    result = evaluate(Fixed(), loader, Precision(cpu), Dist())
    assert result["n"] == 3
    assert result["top1"] == pytest.approx(100 / 3)
    assert result["top5"] == pytest.approx(200 / 3)
    expected = nn.functional.cross_entropy(scores, labels).item()
    assert result["loss"] == pytest.approx(expected)
    few = evaluate(Fixed(), [(scores[:, :5], labels.clamp(max=4))], Precision(cpu), Dist())
    assert few["top1"] == pytest.approx(100 / 3) and few["top5"] is None  # always 100: not given


# ----------------------------------------------------------------------------------- runs


def test_a_whole_g_run_writes_a_complete_run_folder(tmp_path):
    config = resolve_config(tiny(grouping={"conv": [0.5, 0.7]}))
    rows = Runner(config, tmp_path / "run", quiet=True).run()
    run = tmp_path / "run"

    assert [r["name"] for r in rows] == ["baseline", "Conv-50/FC-50", "Conv-70/FC-70"]
    assert rows[0]["flops"] > rows[1]["flops"] > rows[2]["flops"]
    assert all(0 <= r["top1"] <= r["top5"] <= 100 for r in rows)

    records = read_metrics(run / "metrics.jsonl")
    events = [r["event"] for r in records]
    assert events.count("epoch") == 2 + 1 + 1  # baseline + one global epoch per target
    assert events.count("prune") == 2 and events.count("row") == 3
    assert events[0] == "start"
    assert (run / "config.yaml").is_file() and (run / "state.pt").is_file()
    assert load_checkpoint(run / "state.pt")["done"] is True

    report = json.loads((run / "report.json").read_text())
    assert [r["name"] for r in report["rows"]] == [r["name"] for r in rows]
    assert (run / "report.md").is_file() and (run / "accuracy_vs_flops.png").is_file()
    assert list((run / "structure").glob("*.png"))

    # Each row's checkpoint rebuilds its model: masked weights are zero, counts agree.
    model, name, _ = load_model(run / "conv70-fc70" / "model.pt")
    assert name == "test_convnet"
    assert sgcnn.count(model, (3, 16, 16))["flops"] == rows[2]["flops"]
    for layer in masked_layers(model):
        pruned = ~layer.weight_mask().bool().expand_as(layer.weight)
        assert torch.all(layer.weight[pruned] == 0)
    assert not list(tmp_path.glob(".run.tmp-*"))


def test_best_epoch_is_chosen_on_validation(tmp_path):
    config = resolve_config(tiny(train={"epochs": 4}, grouping={"scheme": "baseline", "conv": []}))
    rows = Runner(config, tmp_path / "run", quiet=True).run()
    epochs = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["event"] == "epoch"]
    best = max(r["val_top1"] for r in epochs)
    chosen = max(r["epoch"] for r in epochs if r["val_top1"] == best)  # ties: the later one
    assert rows[0]["epoch"] == chosen
    assert rows[0]["val_top1"] == best

    last = resolve_config(
        tiny(train={"epochs": 3, "select": "last"}, grouping={"scheme": "baseline", "conv": []})
    )
    assert Runner(last, tmp_path / "last", quiet=True).run()[0]["epoch"] == 3


def test_lg_run_reclusters_at_every_step(tmp_path):
    config = resolve_config(
        tiny(
            train={"epochs": 1},
            grouping={"scheme": "LG", "conv": [0.3], "local_epochs": 1, "global_epochs": 1},
        )
    )
    Runner(config, tmp_path / "run", quiet=True).run()
    prunes = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["event"] == "prune"]
    assert [(p["step"], p["conv"]) for p in prunes] == [(1, 0.1), (2, 0.2), (3, 0.3)]
    assert prunes[0]["flops"] > prunes[1]["flops"] > prunes[2]["flops"]
    for p in prunes:  # every self-grouped layer reaches the step's sparsity (up to rounding)
        assert all(
            abs(layer["sparsity"] - p["conv"]) < 0.15
            for layer in p["layers"]
            if layer["name"].startswith("features")
        )


# ----------------------------------------------------------------------------------- errors


def _fails_without_a_folder(tmp_path, recipe, message):
    with pytest.raises(SgcnnError, match=message):
        Runner(resolve_config(recipe), tmp_path / "run", quiet=True).run()
    assert not (tmp_path / "run").exists()
    assert not list(tmp_path.glob(".run.tmp-*"))


def test_images_of_the_wrong_size_for_the_model(tmp_path):
    _fails_without_a_folder(
        tmp_path,
        tiny(model={"name": "lenet5"}, grouping={"scheme": "baseline", "conv": []}),
        "expects 1x28x28",
    )
    recipe = tiny(
        model={"name": "lenet5"},
        data={"channels": 1, "image_size": 20},
        grouping={"scheme": "baseline", "conv": []},
    )
    _fails_without_a_folder(tmp_path, recipe, "set data.image_size=28")


def test_missing_data_path(tmp_path):
    recipe = tiny(data={"name": "imagefolder", "root": str(tmp_path / "nowhere")})
    _fails_without_a_folder(tmp_path, recipe, "does not exist")


def test_checkpoint_of_another_model(tmp_path):
    other = sgcnn.create_model("test_vgg")
    save_checkpoint(tmp_path / "vgg.pt", model_payload(other, "test_vgg", {"num_classes": 10}))
    recipe = tiny(model={"checkpoint": str(tmp_path / "vgg.pt")}, train={"epochs": 0})
    _fails_without_a_folder(tmp_path, recipe, "holds a 'test_vgg' model, not 'test_convnet'")

    plain = tmp_path / "plain.pt"
    torch.save(other.state_dict(), plain)
    recipe = tiny(model={"checkpoint": str(plain)}, train={"epochs": 0})
    _fails_without_a_folder(tmp_path, recipe, r"does not fit model .*Check model\.name \(--model\)")


def test_class_count_mismatch(tmp_path):
    recipe = tiny(model={"num_classes": 7}, grouping={"scheme": "baseline", "conv": []})
    _fails_without_a_folder(tmp_path, recipe, "gives 7 class scores but dataset 'synthetic'")


def test_existing_run_folder_is_not_overwritten(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    with pytest.raises(SgcnnError, match="already exists and is not empty"):
        Runner(resolve_config(tiny()), tmp_path / "run", quiet=True).run()
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["notes.txt"]


# ----------------------------------------------------------------------------------- real data


@pytest.mark.slow
@pytest.mark.skipif(not CIFAR_ARCHIVE.is_file(), reason="CIFAR-10 JPEG archive absent")
def test_resnet20_on_cifar10_trains_self_groups_and_recovers(tmp_path):
    """A short epoch of ResNet-20 on the real CIFAR-10 images (120 steps of 64), then
    Conv-50/FC-50 (G) and a short fine-tune (60 steps): Top-1 on the 10,000 test images far
    above chance (10 %) after training and after self-grouping + fine-tuning. (About 5-7 minutes
    on two CPU cores, most of it evaluating.)"""
    config = resolve_config(
        {
            "model": {"name": "resnet20"},
            "data": {"name": "imagefolder", "root": str(CIFAR_ARCHIVE), "val_fraction": 0.02},
            "train": {
                "epochs": 1,
                "limit_batches": 120,
                "batch_size": 64,
                "eval_batch_size": 500,
                "device": "cpu",
                "select": "last",
            },
            "optim": {"lr": 0.1, "schedule": "constant", "warmup_epochs": 0.2, "nesterov": True},
            "finetune": {"lr": 0.02, "schedule": "cosine"},
            "grouping": {"scheme": "G", "conv": [0.5], "global_epochs": 1},
        }
    )
    rows = {r["name"]: r for r in Runner(config, tmp_path / "run", quiet=True).run()}
    assert rows["baseline"]["top1"] > 25
    assert rows["Conv-50/FC-50"]["top1"] > 25
    assert rows["Conv-50/FC-50"]["flops"] < 0.6 * rows["baseline"]["flops"]
    fine_tune = [
        r
        for r in read_metrics(tmp_path / "run" / "metrics.jsonl")
        if r["event"] == "epoch" and r["kind"] == "global"
    ]
    assert fine_tune and fine_tune[0]["val_top1"] > 25


def test_precision_on_cpu_keeps_channels_last_and_drops_autocast():
    p = Precision.create(torch.device("cpu"), "bf16", channels_last=True)
    assert p.amp_dtype is None and p.scaler is None and p.channels_last
    x, _ = p.inputs(torch.zeros(2, 3, 8, 8), torch.zeros(2, dtype=torch.long))
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert not Precision.create(torch.device("cpu"), "none", channels_last=False).channels_last


def test_cuda_without_mixed_precision_computes_in_full_fp32():
    """PyTorch lets cuDNN use TF32 by default: a run with amp none on a GPU is full fp32, so
    `sgcnn eval` on a CPU reproduces what it measured; with bf16 the flags are left alone."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
        Precision.create(torch.device("cuda"), "bf16", channels_last=False)
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
        p = Precision.create(torch.device("cuda"), "none", channels_last=False)
        assert p.amp_dtype is None
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
