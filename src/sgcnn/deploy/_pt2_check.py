"""Refuse a ``.pt2`` archive that could run code when PyTorch loads it.

``torch.export.load`` trusts its input: it unpickles weights marked ``use_pickle``, opaque and
custom-object constants, legacy ``data/weights/<model>.pt`` / ``data/constants/<model>.pt``
files and, when ``weights_only=True`` fails on them, the sample inputs; it evaluates symbolic
shape expressions with ``sympy.sympify`` (``eval``), compiles ``guards_code`` into a Python
function, and resolves graph targets by attribute lookup on ``torch``. Any of these runs
whatever a crafted file holds.

What :func:`sgcnn.deploy.export.save` writes has none of that: raw tensor payloads described by JSON
(``use_pickle: false``), sample inputs that load with ``weights_only=True``, no guards, shape
expressions made only of ``Symbol('s0', positive=True, integer=True)`` and arithmetic, and
graph targets that are ATen, prims, sgcnn or ``_operator`` functions. :func:`check_pt2`
reads the archive with :mod:`zipfile` and :mod:`json` only (plus ``torch.load(...,
weights_only=True)`` for the sample inputs) and accepts exactly that; anything else is refused
before PyTorch sees the file.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path

import torch

from sgcnn.errors import SgcnnError

# Members of an archive, relative to its root folder; <m> is a model name.
_FIXED = {"archive_format", "archive_version", "byteorder", ".data/version",
          ".data/serialization_id"}  # fmt: skip
_MEMBER = re.compile(
    r"models/(?P<model>\w+)\.json"
    r"|data/sample_inputs/\w+\.pt"
    r"|data/weights/\w+_weights_config\.json"
    r"|data/weights/weight_\d+"
    r"|data/constants/\w+_constants_config\.json"
    r"|data/constants/tensor_\d+"
    r"|extra/[\w.\-]+"
)
_PAYLOAD = re.compile(r"data/weights/weight_\d+|data/constants/tensor_\d+|extra/[\w.\-]+")
_PAYLOAD_PREFIX = {"weights": "weight_", "constants": "tensor_"}
# Graph targets PyTorch resolves without running anything but the operator itself.
_TARGETS = ("torch.ops.aten.", "torch.ops.prims.", "torch.ops.sgcnn.", "_operator.", "math.")
# Names a shape expression may use (sympy.sympify evaluates the text as Python).
_SYMPY_NAMES = {
    "Symbol", "Integer", "Rational", "Float", "True", "False", "oo",
    "positive", "negative", "nonnegative", "nonpositive", "integer", "real", "finite",
    "Add", "Mul", "Max", "Min", "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "And", "Or", "Not",
    "FloorDiv", "ModularIndexing", "Where", "PythonMod", "Mod", "CleanDiv", "CeilToInt",
    "FloorToInt", "CeilDiv", "FloatTrueDiv",
    "IntTrueDiv", "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt",
    "RoundToInt", "RoundDecimal", "ToFloat", "Identity",
}  # fmt: skip
_TOKEN = re.compile(
    r"\s+|'[a-z]+\d+'|[a-z]+\d+|[A-Za-z_]\w*|\d+(\.\d+)?(e-?\d+)?|//|[<>=!]=|[-+*/%(),<>=]"
)  # no powers or shifts: 9**9**9 or Pow(9, Pow(9, 9)) would keep sympy busy for ever
MAX_EXPRESSION = 4096  # characters of one shape expression


def _refuse(path: Path, why: str) -> SgcnnError:
    return SgcnnError(
        f"refusing to load {str(path)!r}: {why}. sgcnn loads only .pt2 files in the form "
        "`sgcnn convert` / `sgcnn export --format pt2` write (no pickled data, no code); "
        "re-export the model with sgcnn"
    )


def looks_like_pt2(path: str | Path) -> bool:
    """Whether ``path`` is a zip archive with a ``torch.export`` member (``archive_format``);
    nothing in it is read or trusted."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(n.endswith("/archive_format") for n in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def check_pt2(path: str | Path, data: bytes | None = None) -> None:
    """Raise :class:`SgcnnError` unless ``path`` (or its bytes ``data``, read once by the
    caller, who then loads those same bytes) is a ``.pt2`` archive that PyTorch can load
    without unpickling arbitrary objects or evaluating text from the file."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path if data is None else io.BytesIO(data)) as archive:
            _check_archive(path, archive)
    except zipfile.BadZipFile as err:
        raise SgcnnError(
            f"cannot read {str(path)!r} as a saved converted model (.pt2): it is not a zip "
            f"archive, or it is truncated ({err}); write it again with `sgcnn convert`"
        ) from err
    except SgcnnError:
        raise
    except Exception as err:  # an unreadable member: bad compression, CRC, truncation
        raise _refuse(path, f"a member cannot be read ({type(err).__name__}: {err})") from err


def _check_archive(path: Path, archive: zipfile.ZipFile) -> None:
    names = archive.namelist()
    if len(set(names)) != len(names):
        raise _refuse(path, "it lists the same member twice")
    if len({n.lower() for n in names}) != len(names):  # PyTorch's reader ignores case
        raise _refuse(path, "two of its member names differ only in case")
    roots = {n.split("/", 1)[0] for n in names}
    if len(roots) != 1 or any("/" not in n for n in names):
        raise _refuse(path, "its members are not all under one archive folder")
    root = roots.pop() + "/"
    members = {n[len(root) :] for n in names if not n.endswith("/")}
    models = set()
    for name in members:
        match = _MEMBER.fullmatch(name)
        if name not in _FIXED and not match:
            raise _refuse(path, f"unexpected member {name!r} (sgcnn never writes it)")
        if match and match["model"]:
            models.add(match["model"])
    if not models:
        raise _refuse(path, "it holds no exported program (models/<name>.json)")
    for name in sorted(members - _expected(models)):
        if not _PAYLOAD.fullmatch(name):
            raise _refuse(path, f"{name!r} belongs to no program in it")
    meta = "extra/sgcnn.json"
    if meta in members and not isinstance(_read_json(path, archive, root + meta), dict):
        raise _refuse(path, "extra/sgcnn.json is not a JSON object")
    for model in sorted(models):
        for kind in ("weights", "constants"):
            _check_payload_config(path, archive, root, members, model, kind)
        sample = f"data/sample_inputs/{model}.pt"
        if sample not in members:
            raise _refuse(path, f"{sample} is missing")
        try:
            torch.load(io.BytesIO(archive.read(root + sample)), weights_only=True)
        except Exception as err:
            raise _refuse(path, f"{sample} does not load with weights_only=True") from err
        _check_program(path, _read_json(path, archive, root + f"models/{model}.json"))


def _expected(models: set[str]) -> set[str]:
    """The members a program of each of ``models`` consists of, besides its payloads."""
    per_model = ("models/{m}.json", "data/sample_inputs/{m}.pt",
                 "data/weights/{m}_weights_config.json",
                 "data/constants/{m}_constants_config.json")  # fmt: skip
    return _FIXED | {f.format(m=m) for m in models for f in per_model}


def _read_json(path: Path, archive: zipfile.ZipFile, member: str):
    try:
        return json.loads(archive.read(member).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _refuse(path, f"{member} is not JSON") from err


def _check_payload_config(path, archive, root, members, model, kind) -> None:
    """Every weight / constant is a raw tensor payload described by JSON, never a pickle."""
    name = f"data/{kind}/{model}_{kind}_config.json"
    if name not in members:
        raise _refuse(path, f"{name} is missing (a legacy or pickled {kind} format)")
    config = _read_json(path, archive, root + name)
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise _refuse(path, f"{name} has no 'config' mapping")
    for fqn, meta in entries.items():
        if not isinstance(meta, dict) or meta.get("use_pickle") is not False:
            raise _refuse(path, f"{kind[:-1]} {fqn!r} is stored as a pickle")
        payload = meta.get("path_name")
        if not (isinstance(payload, str) and payload.startswith(_PAYLOAD_PREFIX[kind])):
            raise _refuse(path, f"{kind[:-1]} {fqn!r} is not a raw tensor ({payload!r})")
        if f"data/{kind}/{payload}" not in members or not isinstance(meta.get("tensor_meta"), dict):
            raise _refuse(path, f"{kind[:-1]} {fqn!r} has no payload or no tensor description")


def _check_program(path: Path, program) -> None:
    """No guard code, only known graph targets, shape expressions without Python in them."""
    if not isinstance(program, dict):
        raise _refuse(path, "its program is not a JSON object")
    if program.get("guards_code"):
        raise _refuse(path, "it carries guard code, which PyTorch would compile and run")
    stack = [program]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            target = node.get("target")
            if isinstance(target, str) and not target.startswith(_TARGETS):
                raise _refuse(path, f"its graph calls {target[:80]!r}")
            expr = node.get("expr_str")
            if isinstance(expr, str) and not _safe_expression(expr):
                raise _refuse(path, f"shape expression {expr[:80]!r} is not plain arithmetic")
            stack.extend(node.values())


def _safe_expression(text: str) -> bool:
    """``text`` is made of symbols, numbers, arithmetic and the sympy names above only, and
    is short enough to evaluate at once."""
    if len(text) > MAX_EXPRESSION or "**" in text.replace(" ", ""):
        return False
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match:
            return False
        token = match.group()
        is_name = token[0].isalpha() or token[0] == "_"
        if is_name and token not in _SYMPY_NAMES and not re.fullmatch(r"[a-z]+\d+", token):
            return False
        pos = match.end()
    return True
