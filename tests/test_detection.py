"""Detection with self-grouped backbones: the synthetic COCO set, the checked loader, the
Faster R-CNN builder, training that keeps masks, COCO mAP, the converted backbone, the CLI."""

import copy
import json
from pathlib import Path

import pytest
import torch

import sgcnn
from sgcnn.cli.main import main
from sgcnn.detection import build_detector, load_coco, make_synthetic_coco
from sgcnn.detection.config import resolve_detect_config
from sgcnn.detection.engine import (
    build,
    evaluate_coco,
    load_detector,
    save_detector,
    train_detector,
)
from sgcnn.detection.run import convert_backbone, masks_kept, masks_of

pytest.importorskip("pycocotools")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_synthetic_coco(tmp_path_factory.mktemp("data") / "shapes", 8, 4, 64, seed=1)


def _config(shapes, **backbone):
    sets = [
        f"data.train_images={shapes / 'train'}",
        f"data.train_annotations={shapes / 'train.json'}",
        f"data.val_images={shapes / 'val'}",
        f"data.val_annotations={shapes / 'val.json'}",
        "data.min_size=64",
        "data.max_size=64",
        "train.epochs=1",
        "train.batch_size=4",
        "train.workers=0",
        "train.warmup_iters=0",
        "train.device=cpu",
        "train.latency_runs=2",
        "fpn_channels=16",
    ]
    sets += [f"backbone.{k}={v}" for k, v in backbone.items()]
    return resolve_detect_config({}, sets)


def test_synthetic_set_is_deterministic_and_valid(shapes, tmp_path):
    again = make_synthetic_coco(tmp_path / "again", 8, 4, 64, seed=1)
    assert (again / "train.json").read_text() == (shapes / "train.json").read_text()
    data = load_coco(shapes / "train", shapes / "train.json")
    assert len(data) == 8 and data.category_ids == [1, 2, 3]
    x, target = data[0]
    assert x.shape == (3, 64, 64) and x.min() >= 0 and x.max() <= 1
    boxes = target["boxes"]
    assert len(boxes) >= 1 and (boxes[:, 2:] > boxes[:, :2]).all() and boxes.max() <= 64
    assert set(target["labels"].tolist()) <= {1, 2, 3}


def _bad(shapes, tmp_path, edit):
    data = json.loads((shapes / "train.json").read_text())
    edit(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["images"][0].update(file_name="nope.png"), "missing from"),
        (lambda d: d["annotations"][0].update(bbox=[60, 60, 20, 20]), "outside its image"),
        (lambda d: d["annotations"][0].update(bbox=[5, 5, -3, 10]), "negative size"),
        (lambda d: d["annotations"][0].update(area="n/a"), "area must be a number >= 0"),
        (lambda d: d["annotations"][0].update(area=-4.0), "area must be a number >= 0"),
        (lambda d: d["annotations"][0].update(iscrowd="0"), "iscrowd must be an integer"),
        (lambda d: d["annotations"][0].update(iscrowd=2), "iscrowd must be 0 or 1"),
        (lambda d: d["annotations"][0].update(image_id=999), "not in 'images'"),
        (lambda d: d["annotations"][0].update(category_id=7), "not among the categories"),
        (lambda d: d.pop("annotations"), "no 'annotations' list"),
        (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), "4 finite numbers"),
    ],
)
def test_loader_rejects_malformed_annotations(shapes, tmp_path, edit, message):
    with pytest.raises(sgcnn.SgcnnError, match=message):
        load_coco(shapes / "train", _bad(shapes, tmp_path, edit))


def test_boxes_without_area_after_clipping_leave_training_but_not_evaluation(shapes, tmp_path):
    """COCO-2014's train set has boxes like [x, y, w, 0.0]; clipping can also empty a box. The
    detector's loss cannot take them: they leave the training targets and stay in COCOeval's."""

    def edit(d):
        d["annotations"][0].update(bbox=[5, 5, 3, 0.0])  # zero height
        d["annotations"][1].update(bbox=[-0.9, 5, 0.5, 10])  # clips to x1 < x0

    data = load_coco(shapes / "train", _bad(shapes, tmp_path, edit))
    assert data.dropped == 2
    for target in data.targets:
        boxes = target["boxes"]
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    total = sum(len(t["category_ids"]) for t in data.targets)
    assert len(data.ground_truth["annotations"]) == total + 2
    assert data.ground_truth["info"] == {}  # pycocotools 2.0.9 / 2.0.10 read it


def test_an_image_of_another_size_than_its_entry_is_refused(shapes, tmp_path):
    """Boxes are checked against the entry's width / height, so they must be the image's."""
    data = load_coco(shapes / "train", _bad(shapes, tmp_path, lambda d: d["images"][0].update(
        width=999)))  # fmt: skip
    first = next(i for i, info in enumerate(data.images) if info["width"] == 999)
    with pytest.raises(sgcnn.SgcnnError, match="but the annotations give 999x64"):
        data[first]


def test_loader_rejects_unparsable_files_and_unknown_categories(shapes, tmp_path):
    (tmp_path / "broken.json").write_text('{"images": [')
    with pytest.raises(sgcnn.SgcnnError, match="cannot parse annotation file"):
        load_coco(shapes / "train", tmp_path / "broken.json")
    with pytest.raises(sgcnn.SgcnnError, match=r"category ids \[3\] that the model"):
        load_coco(shapes / "val", shapes / "val.json", category_ids=[1, 2])


def test_a_random_backbone_with_frozen_batchnorm_is_refused(shapes):
    with pytest.raises(sgcnn.SgcnnError, match="--backbone-checkpoint PATH"):
        _config(shapes, name="test_resnet", train_bn="false")
    assert _config(shapes, name="test_resnet", train_bn="true").backbone.train_bn


@pytest.mark.parametrize("name", ["test_resnet", "test_densenet", "resnet18", "mobilenet_v2"])
def test_detector_builds_on_resnet_densenet_mobilenet(name):
    detector = build_detector(sgcnn.create_model(name), 3, min_size=64, max_size=64)
    detector.eval()
    out = detector(torch.rand(1, 3, 64, 64))
    assert set(out[0]) == {"boxes", "scores", "labels"}


def test_a_model_without_usable_backbone_is_refused():
    with pytest.raises(sgcnn.SgcnnError, match="no usable backbone"):
        build_detector(sgcnn.create_model("lenet5"), 3)


def test_training_keeps_masks_and_the_converted_backbone_is_exact(shapes, tmp_path):
    from sgcnn.engine.checkpoint import model_payload, save_checkpoint

    torch.manual_seed(0)  # a "trained" classifier: frozen BatchNorm needs one
    classifier = tmp_path / "classifier.pt"
    save_checkpoint(classifier, model_payload(sgcnn.create_model("test_resnet"), "test_resnet", {}))
    config = _config(shapes, name="test_resnet", conv=0.5, groups=4, checkpoint=classifier)
    train = load_coco(shapes / "train", shapes / "train.json", flip=True)
    detector, payload = build(config, train.categories)
    before = masks_of(detector)
    assert len(before) >= 3 and all(m.float().mean() < 0.7 for m in before.values())
    weights = copy.deepcopy(detector.state_dict())
    records = []
    train_detector(detector, train, config, torch.device("cpu"), records.append)
    assert len(records) == 1 and records[0]["loss"] > 0
    changed = [k for k, v in detector.state_dict().items() if not torch.equal(v, weights[k])]
    assert any("backbone.body" in k and k.endswith("weight") for k in changed)
    assert masks_kept(detector, before)  # same masks, pruned weights exactly zero

    val = load_coco(shapes / "val", shapes / "val.json", category_ids=train.category_ids)
    result = evaluate_coco(detector, val, torch.device("cpu"))
    assert {"ap", "ap50", "ap75"} <= set(result) and 0 <= result["ap"] <= result["ap50"] <= 100

    fast = convert_backbone(detector, 64, torch.device("cpu"), tune=False)
    x = torch.rand(1, 3, 64, 64)
    detector.eval()
    ref, got = detector.backbone(x), fast.backbone(x)
    for key in ref:
        torch.testing.assert_close(got[key], ref[key], atol=1e-4, rtol=1e-4)

    save_detector(tmp_path / "det.pt", detector, payload)
    loaded, _ = load_detector(tmp_path / "det.pt")
    loaded.eval()
    for key, value in loaded.backbone(x).items():
        torch.testing.assert_close(value, ref[key])
    assert masks_kept(loaded, before)


def test_detect_cli_trains_evaluates_and_refuses_bad_input(shapes, tmp_path, capsys):
    out = tmp_path / "run"
    data = ["--images", str(shapes / "train"), "--annotations", str(shapes / "train.json")]
    data += ["--val-images", str(shapes / "val"), "--val-annotations", str(shapes / "val.json")]
    small = ["--min-size", "64", "--set", "data.max_size=64", "--set", "fpn_channels=16"]
    small += ["--set", "train.latency_runs=2", "--set", "train.limit_batches=1"]
    argv = ["detect", "train", "--recipe", "synthetic", "--backbone", "test_resnet", *data]
    assert main([*argv, *small, "--epochs", "1", "--device", "cpu", "--output", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["masks_kept"] is True and report["self_grouped_layers"] >= 3
    assert report["backbone_counts"]["flops"] < report["detector_counts"]["flops"]
    assert set(report["latency_ms"]) == {
        "backbone",
        "detector",
        "backbone converted",
        "detector converted",
    }
    assert (out / "detector.pt").is_file() and "AP50" in (out / "report.md").read_text()

    evaluation = ["detect", "eval", str(out / "detector.pt"), "--images", str(shapes / "val")]
    evaluation += ["--annotations", str(shapes / "val.json"), "--device", "cpu", "--runs", "1"]
    code = main(evaluation)
    printed = capsys.readouterr().out
    assert code == 0 and "converted backbone" in printed and "pruned weights all zero" in printed
    assert oct(out.stat().st_mode & 0o777) != oct(0o700)  # published with the usual mode
    existing = tmp_path / "eval.json"
    existing.write_text("keep me")
    assert main([*evaluation, "--json", str(existing)]) == 2  # refused before evaluating
    err = capsys.readouterr()
    assert "pass --overwrite" in err.err and "AP50" not in err.out
    assert existing.read_text() == "keep me"
    assert main([*evaluation, "--json", str(existing), "--overwrite"]) == 0
    assert json.loads(existing.read_text())["pruned_weights_zero"] is True
    capsys.readouterr()

    bad = _bad(shapes, tmp_path, lambda d: d["annotations"][0].update(bbox=[0, 0, -1, 5]))
    argv[argv.index(str(shapes / "train.json"))] = str(bad)
    assert main([*argv, *small, "--device", "cpu", "--output", str(tmp_path / "bad")]) == 2
    assert "negative size" in capsys.readouterr().err and not (tmp_path / "bad").exists()

    no_boxes = tmp_path / "val_no_boxes.json"
    no_boxes.write_text(json.dumps({**json.loads((shapes / "val.json").read_text()),
                                    "annotations": []}))  # fmt: skip
    evaluation[evaluation.index(str(shapes / "val.json"))] = str(no_boxes)
    assert main(evaluation) == 2
    assert "no (non-crowd) boxes: there is nothing to evaluate" in capsys.readouterr().err


def test_a_backbone_checkpoint_alone_names_its_model(shapes, tmp_path, monkeypatch):
    """--backbone-checkpoint without --backbone builds the model the checkpoint holds (the
    recipe's backbone name is for checkpoints that do not say)."""
    from sgcnn.detection import run as detection_run
    from sgcnn.engine.checkpoint import model_payload, save_checkpoint

    path = tmp_path / "classifier.pt"
    save_checkpoint(path, model_payload(sgcnn.create_model("test_resnet"), "test_resnet", {}))
    seen = {}
    monkeypatch.setattr(detection_run, "run_detection", lambda c, *a, **k: seen.update(c=c) or {})
    monkeypatch.setattr(detection_run, "format_report", lambda report: "")
    argv = ["detect", "train", "--recipe", "coco2014", "--backbone-checkpoint", str(path),
            "--images", "i", "--annotations", "a", "--output", str(tmp_path / "out")]  # fmt: skip
    assert main(argv) == 0
    assert seen["c"].backbone.name == "test_resnet" and seen["c"].backbone.checkpoint == str(path)
    (tmp_path / "plain.pt").write_bytes(b"")
    argv[argv.index(str(path))] = str(tmp_path / "plain.pt")
    assert main(argv) == 2


def _classifier(tmp_path, **extra):
    """A test_resnet classifier checkpoint (sgcnn format, with ``extra`` entries)."""
    from sgcnn.engine.checkpoint import model_payload, save_checkpoint

    torch.manual_seed(0)
    path = tmp_path / "classifier.pt"
    model = sgcnn.create_model("test_resnet")
    save_checkpoint(path, {**model_payload(model, "test_resnet", {}), **extra})
    return path


def test_the_backbones_recorded_normalisation_is_used_and_saved(shapes, tmp_path):
    """A backbone trained on data with its own mean / std normalises the detector's images the
    same way, also once the detector is saved and loaded; without a record: ImageNet's."""
    record = {"classes": ["a", "b"], "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}
    path = _classifier(tmp_path, data={**record, "input_size": [3, 16, 16], "sizes": [1, 1, 1]})
    categories = load_coco(shapes / "val", shapes / "val.json").categories
    detector, payload = build(_config(shapes, name="test_resnet", checkpoint=path), categories)
    assert detector.transform.image_mean == record["mean"]
    assert detector.transform.image_std == record["std"]
    assert payload["settings"]["image_mean"] == record["mean"]
    save_detector(tmp_path / "det.pt", detector, payload)
    loaded, _ = load_detector(tmp_path / "det.pt")
    assert loaded.transform.image_mean == record["mean"]
    assert loaded.transform.image_std == record["std"]

    (tmp_path / "plain").mkdir()
    plain = _classifier(tmp_path / "plain")
    detector, payload = build(_config(shapes, name="test_resnet", checkpoint=plain), categories)
    assert detector.transform.image_mean == [0.485, 0.456, 0.406]
    assert payload["settings"]["image_std"] == [0.229, 0.224, 0.225]


@pytest.mark.parametrize("failure", ["evaluation", "output taken"])
def test_a_failure_after_training_keeps_the_trained_detector(shapes, tmp_path, monkeypatch,
                                                              failure):  # fmt: skip
    """Whatever fails after training (evaluation, or --output filled by someone else), the
    trained detector is saved, and the error says where."""
    import re

    from sgcnn.detection import run as detection_run

    out = tmp_path / "run"
    if failure == "evaluation":

        def evaluate(*args, **kwargs):
            raise sgcnn.SgcnnError("COCO evaluation failed")

        monkeypatch.setattr(detection_run, "evaluate_coco", evaluate)
    else:
        measure = detection_run.measure

        def measure_then_take(*args, **kwargs):
            out.mkdir()
            (out / "theirs.txt").write_text("not ours")
            return measure(*args, **kwargs)

        monkeypatch.setattr(detection_run, "measure", measure_then_take)
    config = _config(shapes, name="test_resnet", checkpoint=_classifier(tmp_path))
    config.train.limit_batches = 1
    with pytest.raises(sgcnn.SgcnnError, match="trained detector is kept in") as caught:
        detection_run.run_detection(config, out, {}, quiet=True)
    kept = re.search(r"kept in (\S+detector\.pt)", str(caught.value)).group(1)
    _, payload = load_detector(kept)
    assert payload["backbone"]["name"] == "test_resnet"
    records = (Path(kept).parent / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in records] == [1]
    assert not (out / "detector.pt").exists()


def test_a_plain_state_dict_backbone_of_another_class_count_loads(shapes, tmp_path):
    """torch.save(model.state_dict()) of a 7-class classifier (the model's default: 10) is a
    backbone as it is: the class count comes from its classifier weight, as in transfer."""
    torch.manual_seed(0)
    trained = sgcnn.create_model("test_resnet", num_classes=7)
    torch.save(trained.state_dict(), tmp_path / "plain.pt")
    config = _config(shapes, name="test_resnet", checkpoint=tmp_path / "plain.pt")
    categories = load_coco(shapes / "val", shapes / "val.json").categories
    detector, payload = build(config, categories)
    assert payload["backbone"]["kwargs"] == {"num_classes": 7}
    body = detector.backbone.body.stages
    assert torch.equal(body["conv1"].weight, trained.conv1.weight)


@pytest.mark.parametrize(
    ("damage", "what"),
    [
        (lambda p: p.pop("backbone"), "no backbone name"),
        (lambda p: p["backbone"].pop("name"), "no backbone name"),
        (lambda p: p["backbone"].update(kwargs=[1]), "kwargs"),
        (lambda p: p.pop("categories"), "categories"),
        (lambda p: p["categories"][0].pop("id"), "categories"),
        (lambda p: p.pop("settings"), "settings"),
        (lambda p: p["settings"].pop("min_size"), "settings"),
        (lambda p: p["settings"].update(train_bn="no"), "train_bn"),
        (lambda p: p["settings"].update(image_mean="imagenet"), "image_mean"),
        (lambda p: p.pop("state_dict"), "no state_dict"),
    ],
)
def test_a_damaged_detector_checkpoint_is_one_clear_error(shapes, tmp_path, damage, what):
    from sgcnn.engine.checkpoint import load_checkpoint, save_checkpoint

    categories = load_coco(shapes / "val", shapes / "val.json").categories
    detector, payload = build(_config(shapes, name="test_resnet", train_bn="true"), categories)
    save_detector(tmp_path / "det.pt", detector, payload)
    saved = load_checkpoint(tmp_path / "det.pt")
    damage(saved)
    save_checkpoint(tmp_path / "damaged.pt", saved)
    with pytest.raises(sgcnn.SgcnnError, match="is a damaged detector checkpoint") as caught:
        load_detector(tmp_path / "damaged.pt")
    assert what in str(caught.value)


def test_an_image_pil_refuses_is_one_clear_error(shapes, monkeypatch):
    """Decompression bombs (and modes PIL cannot convert: ValueError) are not tracebacks."""
    from PIL import Image

    data = load_coco(shapes / "val", shapes / "val.json")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 64 x 64 is a "bomb" now
    with pytest.raises(sgcnn.SgcnnError, match=r"cannot read image .*000000\.png"):
        data[0]


def test_a_shape_hidden_by_later_ones_gets_no_box():
    """A shape that later shapes cover (almost) entirely has no box; a partly covered one has."""
    from PIL import Image

    from sgcnn.detection.synthetic import _paint

    shapes = [
        (2, (10, 10, 20, 20), (255, 0, 0)),  # hidden under the big square
        (1, (40, 40, 56, 56), (0, 255, 0)),  # a quarter covered: kept
        (2, (5, 5, 40, 40), (0, 0, 255)),
        (2, (48, 48, 64, 64), (9, 9, 9)),
    ]
    _, boxes = _paint(Image.new("RGB", (64, 64)), shapes)
    assert boxes == [(1, (40, 40, 56, 56)), (2, (5, 5, 40, 40)), (2, (48, 48, 64, 64))]


def test_16_bit_grayscale_images_are_scaled_not_clipped(shapes, tmp_path):
    """A 16-bit PNG (PIL mode I;16) loads as its 8-bit picture, as in classification (a plain
    convert("RGB") clipped it at 255: all white); a 32-bit float image is one clear error."""
    import numpy as np
    from PIL import Image

    folder = tmp_path / "val16"
    folder.mkdir()
    gray = {}
    for path in (shapes / "val").iterdir():
        gray[path.name] = np.asarray(Image.open(path).convert("L"))
        Image.fromarray(gray[path.name].astype(np.uint16) * 257).save(folder / path.name)
    data = load_coco(folder, shapes / "val.json")
    assert Image.open(data.images[0]["path"]).mode.startswith("I")
    x, _ = data[0]
    expected = torch.from_numpy(gray[Path(data.images[0]["path"]).name].copy()).float() / 255
    assert torch.equal(x, expected.expand(3, -1, -1))
    Image.fromarray(gray[Path(data.images[0]["path"]).name].astype(np.float32)).save(
        data.images[0]["path"], format="TIFF"
    )
    with pytest.raises(sgcnn.SgcnnError, match=r"cannot read image .*32-bit float"):
        data[0]


def _renumbered(shapes, tmp_path, names=True):
    """val.json as another tool exports it: circle 1 -> 3, square 2 -> 1, triangle 3 -> 2."""
    data = json.loads((shapes / "val.json").read_text())
    new = {1: 3, 2: 1, 3: 2}
    data["categories"] = [{"id": new[c["id"]], "name": c["name"]} for c in data["categories"]]
    if not names:
        for c in data["categories"]:
            c.pop("name")
    for a in data["annotations"]:
        a["category_id"] = new[a["category_id"]]
    path = tmp_path / ("renumbered.json" if names else "nameless.json")
    path.write_text(json.dumps(data))
    return path


def test_category_ids_that_name_other_classes_are_refused(shapes, tmp_path):
    """The detector's predictions for an id must not be scored against another class: ids are
    checked with their names, in evaluation and against the training set; a checkpoint that
    recorded no names (or a file without them) is not checked by name."""
    from sgcnn.detection.run import evaluate_checkpoint, run_detection
    from sgcnn.engine.checkpoint import load_checkpoint, save_checkpoint

    renumbered = _renumbered(shapes, tmp_path)
    model = {1: "circle", 2: "square", 3: "triangle"}
    message = r"category id 1 is 'square' here but 'circle' for the detector.*match the detector"
    with pytest.raises(sgcnn.SgcnnError, match=message):
        load_coco(shapes / "val", renumbered, category_ids=[1, 2, 3], category_names=model)
    load_coco(shapes / "val", shapes / "val.json", category_ids=[1, 2, 3], category_names=model)
    nameless = _renumbered(shapes, tmp_path, names=False)
    load_coco(shapes / "val", nameless, category_ids=[1, 2, 3], category_names=model)

    categories = load_coco(shapes / "train", shapes / "train.json").categories
    assert {c["id"]: c["name"] for c in categories} == model
    detector, payload = build(_config(shapes, name="test_resnet", train_bn="true"), categories)
    save_detector(tmp_path / "det.pt", detector, payload)
    with pytest.raises(sgcnn.SgcnnError, match=message):
        evaluate_checkpoint(str(tmp_path / "det.pt"), str(shapes / "val"), str(renumbered))
    old = load_checkpoint(tmp_path / "det.pt")
    for c in old["categories"]:
        c.pop("name")  # a checkpoint that recorded ids only
    save_checkpoint(tmp_path / "old.pt", old)
    report = evaluate_checkpoint(str(tmp_path / "old.pt"), str(shapes / "val"), str(renumbered),
                                 "cpu", runs=1)  # fmt: skip
    assert "ap50" in report["map"]

    config = _config(shapes, name="test_resnet", train_bn="true")
    config.data.val_annotations = str(renumbered)
    with pytest.raises(sgcnn.SgcnnError, match=message):
        run_detection(config, tmp_path / "run", {}, quiet=True)
    assert not (tmp_path / "run").exists()
