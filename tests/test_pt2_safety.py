"""Crafted ``.pt2`` files whose loading by PyTorch would run code: sgcnn refuses them, and
nothing in them runs. Each is built from a genuine archive written by `sgcnn export`."""

import contextlib
import io
import json
import pickle
import zipfile

import pytest
import torch

import sgcnn
from _shared import FAST_KMEANS
from sgcnn.cli.main import main
from sgcnn.deploy import export
from sgcnn.deploy._native import available as _native_available
from sgcnn.engine.checkpoint import model_payload, save_checkpoint


class Payload:
    """Unpickling this creates the marker file: proof that code from the archive ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def genuine(tmp_path_factory):
    root = tmp_path_factory.mktemp("pt2")
    model = sgcnn.create_model("test_resnet")
    sgcnn.self_group_(model, 0.5, groups=2, kmeans=FAST_KMEANS)
    save_checkpoint(root / "g.pt", model_payload(model, "test_resnet", {}))
    out = root / "genuine.pt2"
    assert main(["export", "--checkpoint", str(root / "g.pt"), "--format", "pt2",
                 "--batch-size", "2", "--output", str(out)]) == 0  # fmt: skip
    return out


def _rewrite(src, dst, change):
    """Copy the archive ``src`` to ``dst``; ``change(members)`` edits {relative name: bytes}."""
    with zipfile.ZipFile(src) as z:
        root = z.namelist()[0].split("/")[0] + "/"
        members = {n[len(root) :]: z.read(n) for n in z.namelist()}
    change(members)
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as z:
        for name, data in members.items():
            z.writestr(root + name, data)
    return dst


def _pickled_tensor_file(marker):
    buffer = io.BytesIO()
    torch.save({"x": Payload(marker)}, buffer)
    return buffer.getvalue()


def _edit_json(members, name, edit):
    data = json.loads(members[name])
    edit(data)
    members[name] = json.dumps(data).encode()


def _sample_inputs(marker):
    def change(m):
        m["data/sample_inputs/model.pt"] = _pickled_tensor_file(marker)

    return change


def _case_collision(marker):
    """A pickled twin of the sample inputs whose name differs in case only, listed first:
    PyTorch's zip reader finds members case-insensitively, Python's zipfile does not."""

    def change(m):
        items = list(m.items())
        m.clear()
        m["data/sample_inputs/MODEL.pt"] = _pickled_tensor_file(marker)
        m.update(items)

    return change


def _stray_member(marker):
    def change(m):
        m["data/sample_inputs/other.pt"] = _pickled_tensor_file(marker)

    return change


def _pickled_weight(marker):
    def change(m):
        def edit(config):
            meta = next(iter(config["config"].values()))
            meta["use_pickle"] = True
            m[f"data/weights/{meta['path_name']}"] = _pickled_tensor_file(marker)

        _edit_json(m, "data/weights/model_weights_config.json", edit)

    return change


def _opaque_constant(marker):
    def change(m):
        m["data/constants/opaque_obj_0"] = pickle.dumps(Payload(marker))
        _edit_json(m, "data/constants/model_constants_config.json",
                   lambda c: c["config"].update({"evil": {"path_name": "opaque_obj_0",
                                                          "is_param": False,
                                                          "use_pickle": True,
                                                          "tensor_meta": None}}))  # fmt: skip

    return change


def _legacy_weights(marker):
    def change(m):
        m["data/weights/model.pt"] = _pickled_tensor_file(marker)
        del m["data/weights/model_weights_config.json"]

    return change


def _shape_expression(marker):
    def change(m):
        text = m["models/model.json"].decode()
        assert "Symbol('s" in text  # the genuine file has a dynamic batch
        evil = f"open('{marker}', 'w') and Symbol('s77', positive=True, integer=True)"
        m["models/model.json"] = text.replace(
            "Symbol('s77', positive=True, integer=True)", evil.replace("'", "\\u0027"), 1
        ).encode()

    return change


def _guards(marker):
    def change(m):
        _edit_json(m, "models/model.json",
                   lambda d: d.update(guards_code=[f"open('{marker}', 'w')"]))  # fmt: skip

    return change


def _graph_target(marker):
    def change(m):
        def edit(d):
            d["graph_module"]["graph"]["nodes"][0]["target"] = "torch.hub.load"

        _edit_json(m, "models/model.json", edit)

    return change


CRAFTS = {
    "sample-inputs-pickle": (_sample_inputs, "weights_only=True"),
    "weight-use-pickle": (_pickled_weight, "stored as a pickle"),
    "opaque-constant": (_opaque_constant, "opaque_obj_0"),
    "legacy-weights": (_legacy_weights, "data/weights/model.pt"),
    "shape-expression": (_shape_expression, "not plain arithmetic"),
    "guard-code": (_guards, "guard code"),
    "graph-target": (_graph_target, "torch.hub.load"),
    "case-collision": (_case_collision, "differ only in case"),
    "stray-member": (_stray_member, "belongs to no program"),
}


def test_genuine_archive_loads(genuine):
    module = export.load(genuine)
    assert module(torch.randn(3, 3, 16, 16)).shape == (3, 10)
    with zipfile.ZipFile(genuine) as z:
        (sample,) = [n for n in z.namelist() if n.endswith("sample_inputs/model.pt")]
        args, _ = torch.load(io.BytesIO(z.read(sample)), weights_only=True)
    assert args[0].shape[0] == 1  # a dynamic batch: one image is stored, not the batch


@pytest.mark.parametrize("craft", list(CRAFTS))
def test_crafted_archive_is_refused_and_nothing_runs(craft, genuine, tmp_path, capsys):
    marker = tmp_path / "ran"
    make, reason = CRAFTS[craft]
    crafted = _rewrite(genuine, tmp_path / "crafted.pt2", make(marker))
    with pytest.raises(sgcnn.SgcnnError, match="refusing to load") as info:
        export.load(crafted)
    assert reason in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("craft", ["sample-inputs-pickle", "weight-use-pickle", "case-collision"])
def test_without_the_check_pytorch_would_run_the_payload(craft, genuine, tmp_path):
    """The crafted files are real attacks: plain torch.export.load runs them."""
    marker = tmp_path / "ran"
    crafted = _rewrite(genuine, tmp_path / "crafted.pt2", CRAFTS[craft][0](marker))
    with contextlib.suppress(Exception):  # the payload is no tensor: loading fails, after it ran
        torch.export.load(crafted)
    assert marker.exists()


def test_damaged_archives_are_one_clear_error(genuine, tmp_path):
    truncated = tmp_path / "truncated.pt2"
    truncated.write_bytes(genuine.read_bytes()[:5000])
    with pytest.raises(sgcnn.SgcnnError, match="not a zip archive, or it is truncated"):
        export.load(truncated)
    bad_meta = _rewrite(genuine, tmp_path / "meta.pt2",
                        lambda m: m.update({"extra/sgcnn.json": b"\xff not json"}))  # fmt: skip
    with pytest.raises(sgcnn.SgcnnError, match=r"sgcnn\.json is not JSON"):
        export.load(bad_meta)


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ({"example_shape": 5}, "damaged sgcnn.json"),
        ({"example_shape": [1, 3, 16, 16], "dynamic_batch": "false"}, "damaged sgcnn.json"),
        ({"data": {"classes": ["a"], "mean": 0.5, "std": [0.2]}}, r"damaged data record \(mean"),
        ({"data": {"classes": [1, 2]}}, r"damaged data record \(classes"),
        ({"data": ["a", "b"]}, "damaged data record"),
    ],
)
def test_damaged_program_metadata_is_one_clear_error(genuine, tmp_path, meta, message):
    def change(m):
        current = json.loads(m["extra/sgcnn.json"])
        m["extra/sgcnn.json"] = json.dumps({**current, **meta}).encode()

    with pytest.raises(sgcnn.SgcnnError, match=message):
        export.load(_rewrite(genuine, tmp_path / "meta.pt2", change))


def test_the_bytes_checked_are_the_bytes_loaded(genuine, tmp_path, monkeypatch):
    """The file is read once: swapping it after the check cannot smuggle anything in."""
    from sgcnn.deploy import _pt2_check

    marker = tmp_path / "ran"
    crafted = _rewrite(genuine, tmp_path / "crafted.pt2", _sample_inputs(marker))
    target = tmp_path / "swapped.pt2"
    target.write_bytes(genuine.read_bytes())
    check = _pt2_check.check_pt2

    def check_then_swap(path, *data):
        check(path, *data)
        target.write_bytes(crafted.read_bytes())  # an attacker's swap, between check and load

    monkeypatch.setattr(export, "check_pt2", check_then_swap)
    with contextlib.suppress(Exception):
        export.load(target)
    assert not marker.exists()


def test_powers_in_shape_expressions_are_refused():
    from sgcnn.deploy._pt2_check import _safe_expression

    assert _safe_expression("Mul(Integer(7), Symbol('s77', positive=True, integer=True))")
    for text in ("9**9**9**9", "Pow(Integer(9), Pow(Integer(9), Integer(9)))", "x" * 5000):
        assert not _safe_expression(text)


def _edit_table(table, edit):
    """Rewrite the values (not the shape) of the table ``table`` of the first direct native
    layer (``entries`` [E, 3]): ``edit(tensor)`` changes it in place."""

    def change(m):
        config = json.loads(m["data/weights/model_weights_config.json"])["config"]
        layer = next(
            n.removesuffix(".entries")
            for n, v in config.items()
            if n.endswith(".entries") and len(v["tensor_meta"]["sizes"]) == 2
        )
        entry = config[f"{layer}.{table}"]
        dtype = {4: torch.int32, 5: torch.int64}[entry["tensor_meta"]["dtype"]]
        path = "data/weights/" + entry["path_name"]
        values = torch.frombuffer(bytearray(m[path]), dtype=dtype).clone()
        edit(values)
        m[path] = values.numpy().tobytes()

    return change


TABLE_EDITS = {  # each one, unguarded, is a read or write outside the kernel's buffers
    "rowmap-out-of-range": ("rowmap", lambda t: t.fill_(1 << 36)),
    "entries-negative-channel": ("entries", lambda t: t.view(-1, 3)[:, 0].fill_(-4)),
    "entries-tap-outside-kernel": ("entries", lambda t: t.view(-1, 3)[:, 1].fill_(9)),
    "chunk-of-no-rows": ("chunks", lambda t: t.view(-1, 5)[:, 3].fill_(0)),
    "chunk-weights-beyond": ("chunks", lambda t: t.view(-1, 5)[:, 2].add_(1 << 30)),
}


@pytest.mark.skipif(not _native_available(), reason="native kernel unavailable")
@pytest.mark.parametrize("edit", list(TABLE_EDITS))
def test_a_program_with_edited_kernel_tables_is_refused_when_it_runs(edit, genuine, tmp_path):
    """The archive is well formed, so it loads; its first call refuses instead of letting
    the native kernel index memory with the file's values."""
    table, change = TABLE_EDITS[edit]
    crafted = _rewrite(genuine, tmp_path / "tables.pt2", _edit_table(table, change))
    module = export.load(crafted)
    with pytest.raises(sgcnn.SgcnnError, match=r"not written by sgcnn\.convert"):
        module(torch.randn(2, 3, 16, 16))
