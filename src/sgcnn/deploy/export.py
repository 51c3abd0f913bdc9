"""Exporting self-grouped models: ``.pt2`` programs and ONNX, checked before they are written.

Two formats, one entry point, :func:`export` (``sgcnn.export``), and :func:`load`
(``sgcnn.load``) for ``.pt2`` files:

- ``pt2``: the converted model (:func:`sgcnn.convert`) traced by ``torch.export`` into an
  ``ExportedProgram``, a graph of ATen operators (plus sgcnn's registered native kernels where
  the converted model uses them) with every weight and index table, written with
  ``torch.export.save``. The per-layer choices measured by the conversion travel in the file as
  ``sgcnn.json``. The batch dimension is dynamic (``torch.export.Dim``) whatever the example's
  batch size: an example of batch 1 is traced at batch 2 (PyTorch would otherwise specialize
  the program to batch 1).
- ``onnx``: every layer realized with standard operators only (gather + padded grouped
  convolution, or the dense fallback: ``realizations=("grouped", "dense")``, and PyTorch's own
  max pooling), exported with the TorchScript-based exporter (dynamic batch axis).

A ``data`` record (what the model was trained on: class names in label order, the per-channel
``mean`` / ``std`` its inputs are normalised with, its ``input_size``; a checkpoint's ``data``
entry) travels in the file: in ``sgcnn.json`` (:attr:`LoadedProgram.data`) and as the ONNX
model's metadata entry ``sgcnn.data`` (JSON; onnxruntime:
``session.get_modelmeta().custom_metadata_map["sgcnn.data"]``), so whoever deploys the
program knows how to prepare its input and name its outputs.

Before anything is written, the program is run on a *new* input (other values, batch size + 2
when the batch is dynamic) and compared with the PyTorch model: ``torch.export.load`` of the
serialized bytes for ``pt2``, onnxruntime for ``onnx`` (skipped, and said, when onnxruntime is
not installed). The tolerance is ``1e-4 * max(1, max |output|)``. A program that fails the
check, or a model the exporter cannot trace, raises :class:`SgcnnError` and leaves no file;
the file is written atomically (temporary file beside it, fsync, rename).
"""

from __future__ import annotations

import copy
import io
import json
import os
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

from sgcnn._io import atomic_write, check_output_path
from sgcnn.deploy import fast
from sgcnn.deploy._convert_checks import example_tensor, output_tensors, run_checked
from sgcnn.deploy._pt2_check import check_pt2
from sgcnn.deploy.convert import convert
from sgcnn.errors import SgcnnError, describe
from sgcnn.nn.masked import is_masked
from sgcnn.nn.swap import replace_modules_

__all__ = ["FORMATS", "LoadedProgram", "export", "load"]

FORMATS = ("onnx", "pt2")
PORTABLE = ("grouped", "dense")  # realizations made of standard operators
META = "sgcnn.json"
ONNX_DATA_KEY = "sgcnn.data"  # ONNX metadata_props entry holding the data record (JSON)
TOLERANCE = 1e-4  # times max(1, max |output|)
MAX_BATCH = 65536


def check_format(fmt: str) -> str:
    """``fmt`` if sgcnn writes it (:data:`FORMATS`), else :class:`SgcnnError`."""
    if fmt not in FORMATS:
        raise SgcnnError(f"unsupported export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return fmt


def _say(progress: bool | None, message: str) -> None:
    if progress or (progress is None and sys.stderr.isatty()):
        print(f"export: {message}", file=sys.stderr, flush=True)


def _is_converted(model: nn.Module) -> bool:
    return any(fast.is_fast(m) for m in model.modules())


def _converted(model: nn.Module, x: torch.Tensor, portable: bool, progress) -> nn.Module:
    """``model`` itself if already converted (a portable copy if asked), else converted."""
    if _is_converted(model):
        return to_portable(copy.deepcopy(model)) if portable else model
    if not any(is_masked(m) for m in model.modules()):
        raise SgcnnError(
            "the model has neither self-grouped nor converted layers; self-group it first "
            "(sgcnn.self_group_) or pass a checkpoint made by `sgcnn group`"
        )
    return convert(
        model,
        x,
        tune=not portable,
        realizations=PORTABLE if portable else None,
        progress=progress,
    )


def to_portable(model: nn.Module) -> nn.Module:
    """Replace every native-kernel module by its standard-operator equivalent (in place):
    native convolutions by the padded-grouped form, native max pooling by ``nn.MaxPool2d``.

    All of them are replaced at once, so the memory planning between native layers (padded
    hand-off, in-place residual) disappears consistently: the grouped layers take and return
    ordinary tensors.
    """
    replace_modules_(
        model,
        lambda m, n: isinstance(m, fast.NativeGroupConv2d),
        lambda m, n: fast.GroupedConv2d.from_spec(m.spec()),
    )
    replace_modules_(
        model,
        lambda m, n: isinstance(m, fast.MaxPool2d),
        lambda m, n: nn.MaxPool2d(m.kernel_size, m.stride, m.padding, ceil_mode=m.ceil_mode),
    )
    if isinstance(model, torch.fx.GraphModule):
        model.recompile()
    return model


def _new_input(x: torch.Tensor, dynamic_batch: bool) -> torch.Tensor:
    """An input the program has never seen: other values, and another batch size if it may."""
    g = torch.Generator().manual_seed(20201)
    batch = x.shape[0] + 2 if dynamic_batch else x.shape[0]
    return torch.randn(batch, *x.shape[1:], generator=g).to(device=x.device, dtype=x.dtype)


def _difference(got: torch.Tensor, want: torch.Tensor, what: str, x: torch.Tensor) -> float:
    """max |got - want|; an :class:`SgcnnError` above the tolerance."""
    got, want = got.detach().float().cpu(), want.detach().float().cpu()
    if got.shape != want.shape:
        raise SgcnnError(
            f"{what} returns shape {tuple(got.shape)} where PyTorch returns {tuple(want.shape)} "
            f"on a new input of shape {tuple(x.shape)}; nothing was written"
        )
    diff = float((got - want).abs().max()) if want.numel() else 0.0
    scale = max(1.0, float(want.abs().max())) if want.numel() else 1.0
    if not diff <= TOLERANCE * scale:  # NaN fails too
        raise SgcnnError(
            f"{what} disagrees with PyTorch by {diff:.2e} (tolerance {TOLERANCE * scale:.1e}) "
            f"on a new input of shape {tuple(x.shape)}; nothing was written. This is a bug in "
            "sgcnn or the exporter: please report it with the model"
        )
    return diff


def _check_on_new_input(model, x, dynamic_batch: bool, what: str, run) -> float:
    """Run the written program (``run``) and ``model`` on a new input (:func:`_new_input`);
    their largest difference, or an :class:`SgcnnError` past the tolerance."""
    x_new = _new_input(x, dynamic_batch)
    with torch.no_grad():
        want = model(x_new)
        got = run(x_new)
    return _differences(got, want, what, x_new)


def _differences(got, want, what: str, x: torch.Tensor) -> float:
    """:func:`_difference` over every output tensor, matched in order; the largest."""
    got, want = output_tensors(got), output_tensors(want)
    if len(got) != len(want):
        raise SgcnnError(
            f"{what} returns {len(got)} tensors where PyTorch returns {len(want)} on a new "
            f"input of shape {tuple(x.shape)}; nothing was written"
        )
    return max((_difference(g, w, what, x) for g, w in zip(got, want, strict=True)), default=0.0)


# --------------------------------------------------------------------------- .pt2


def save(
    model: nn.Module,
    path,
    example_input,
    dynamic_batch: bool = True,
    verify: bool = True,
    progress: bool | None = None,
    overwrite: bool = True,
    data: dict | None = None,
) -> dict:
    """Write ``model`` (converted, or self-grouped: converted here) as a ``.pt2`` program.

    With a dynamic batch only one image of the example is stored in the file. An existing
    ``path`` is replaced only with ``overwrite``. Returns ``{"path", "max_abs_diff",
    "dynamic_batch"}``; the difference is the reloaded program's output against the model's
    on a new input.
    """
    path = check_output_path(path, overwrite, "path", "overwrite=True")  # before the work
    record = _checked_record(data)
    x = example_tensor(example_input, _device_of(model))
    if dynamic_batch and x.shape[0] > MAX_BATCH:
        raise SgcnnError(
            f"the example's batch of {x.shape[0]} is above {MAX_BATCH}, the largest batch a "
            "saved program takes; use a smaller batch size"
        )
    model = _converted(model, x, portable=False, progress=progress).eval()
    run_checked(model, x)
    trace_x = torch.cat([x, x]) if dynamic_batch and x.shape[0] == 1 else x
    shapes = ({0: torch.export.Dim("batch", min=1, max=MAX_BATCH)},) if dynamic_batch else None
    _say(progress, "tracing with torch.export")
    try:
        with torch.no_grad():
            program = torch.export.export(model, (trace_x,), dynamic_shapes=shapes)
        if dynamic_batch:
            program.example_inputs = ((x[:1].clone(),), {})  # the file need not hold a batch
    except Exception as err:
        hint = " (try dynamic_batch=False: the model may fix its batch size)" if shapes else ""
        raise SgcnnError(f"torch.export cannot trace the model{hint}: {describe(err)}") from err
    meta = {
        "format": "sgcnn.converted",
        "version": 2,
        "example_shape": list(x.shape),
        "dynamic_batch": dynamic_batch,
        "conversion": getattr(model, "sgcnn_conversion", None),
        "data": record,
    }
    buffer = io.BytesIO()
    torch.export.save(program, buffer, extra_files={META: json.dumps(meta)})
    data = buffer.getvalue()
    diff = None
    if verify:
        _say(progress, "checking the saved program on a new input")
        diff = _check_on_new_input(
            model, x, dynamic_batch, "the saved program",
            lambda x_new: torch.export.load(io.BytesIO(data)).module()(x_new),
        )  # fmt: skip
    atomic_write(path, lambda f: f.write(data), overwrite)
    _say(progress, f"wrote {path}")
    return {"path": str(path), "max_abs_diff": diff, "dynamic_batch": dynamic_batch}


class LoadedProgram(nn.Module):
    """A program read by :func:`load`: ``forward(x)`` runs the saved graph. ``x`` must have the
    example's shape apart from the batch size (when the batch is dynamic); anything else is an
    :class:`SgcnnError` naming the shape the program was exported for. ``data``: the data
    record written with it (``classes``, ``mean``, ``std``, ``input_size``, ...) or ``None``."""

    def __init__(self, program: nn.Module, meta: dict) -> None:
        super().__init__()
        self.program = program
        self.sgcnn_conversion = meta.get("conversion")
        self.sgcnn_example_shape = meta.get("example_shape")
        self.dynamic_batch = bool(meta.get("dynamic_batch", False))
        self.data = meta.get("data")  # what the model was trained on, if it was recorded

    def train(self, mode: bool = True) -> LoadedProgram:
        """An exported program is inference only: ``train(True)`` is an error, ``eval()`` a
        no-op (``ExportedProgram.module()`` refuses both)."""
        if mode:
            raise SgcnnError("a loaded program runs inference only; it cannot be trained")
        self.training = False
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        want = self.sgcnn_example_shape
        if want is not None:
            fixed = want[1:] if self.dynamic_batch else want
            got = list(x.shape[1:]) if self.dynamic_batch else list(x.shape)
            if got != list(fixed):
                batch = "N" if self.dynamic_batch else str(want[0])
                shape = "x".join([batch, *map(str, want[1:])])
                raise SgcnnError(
                    f"this program was exported for inputs of shape {shape}, got "
                    f"{'x'.join(map(str, x.shape))}; export it again with an example input of "
                    "the shape you need"
                )
        return self.program(x)


def load(path: str | os.PathLike) -> LoadedProgram:
    """Load a ``.pt2`` written by :func:`export` / ``sgcnn convert``; returns a
    :class:`LoadedProgram` (on the device it was saved from). Needs ``torch`` and sgcnn (for
    its registered native kernels), not the model's class or the code that built it."""
    path = Path(path)
    if not path.is_file():
        raise SgcnnError(f"{str(path)!r} does not exist (or is not a file)")
    try:
        data = path.read_bytes()  # once: the bytes checked are the bytes loaded
    except OSError as err:
        raise SgcnnError(f"cannot read {str(path)!r}: {describe(err)}") from err
    check_pt2(path, data)  # before PyTorch, which would unpickle and eval what the file holds
    extra = {META: ""}
    try:
        program = torch.export.load(io.BytesIO(data), extra_files=extra)
    except Exception as err:
        raise SgcnnError(
            f"cannot read {str(path)!r} as a saved converted model (.pt2 from `sgcnn convert`): "
            f"{describe(err)}"
        ) from err
    meta = json.loads(extra[META]) if extra[META] else {}
    return LoadedProgram(program.module(), _checked_meta(meta, path)).eval()


def _checked_meta(meta: dict, path: Path) -> dict:
    """``sgcnn.json`` as :class:`LoadedProgram` reads it, or an error naming what is damaged."""
    shape, dynamic = meta.get("example_shape"), meta.get("dynamic_batch", False)
    ok_shape = shape is None or (
        isinstance(shape, list)
        and len(shape) >= 1
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in shape)
    )
    if not ok_shape or not isinstance(dynamic, bool):
        raise SgcnnError(
            f"{str(path)!r} has a damaged {META} (example_shape {shape!r}, dynamic_batch "
            f"{dynamic!r}); write it again with `sgcnn convert` / `sgcnn export`"
        )
    return {**meta, "data": checked_record(meta.get("data"), str(path))}


def checked_record(record, source: str) -> dict | None:
    """A data record read from a program (``None`` if it has none), checked: ``classes`` a
    list of names, ``mean`` / ``std`` lists of numbers of one length, ``input_size`` positive
    integers; anything else is an :class:`SgcnnError` naming ``source``."""
    if record is None:
        return None

    def numbers(v) -> bool:
        return isinstance(v, list) and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in v
        )

    problems = [] if isinstance(record, dict) else ["not a mapping"]
    if not problems:
        classes, size = record.get("classes", []), record.get("input_size", [1])
        if not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
            problems.append("classes")
        if not (numbers(record.get("mean", [])) and numbers(record.get("std", []))) or len(
            record.get("mean", [])
        ) != len(record.get("std", [])):
            problems.append("mean / std")
        if not (numbers(size) and all(isinstance(v, int) and v > 0 for v in size)):
            problems.append("input_size")
    if problems:
        raise SgcnnError(
            f"{source!r} carries a damaged data record ({', '.join(problems)}); export the "
            "model again"
        )
    return record


# --------------------------------------------------------------------------- ONNX


def _onnxruntime():
    """onnxruntime, which checks an ONNX file before it is written, or a clear error."""
    try:
        import onnxruntime
    except ImportError:
        raise SgcnnError(
            "checking the ONNX file before writing it needs onnxruntime: pip install "
            "'sgcnn[onnx]' (or onnxruntime); or skip the check (verify=False, --no-verify)"
        ) from None
    return onnxruntime


def export_onnx(
    model: nn.Module,
    path,
    example_input,
    opset: int = 17,
    verify: bool = True,
    progress: bool | None = None,
    overwrite: bool = True,
    data: dict | None = None,
) -> dict:
    """Write ``model`` as ONNX (standard operators only, dynamic batch axis); returns
    ``{"path", "max_abs_diff"}``, the difference of onnxruntime's output from PyTorch's on a
    new input of another batch size (``None`` when ``verify`` is false). ``verify`` needs
    onnxruntime: without it nothing is converted or written."""
    path = check_output_path(path, overwrite, "path", "overwrite=True")  # before the work
    ort = _onnxruntime() if verify else None
    record = _checked_record(data)
    onnx = _onnx_package() if record is not None else None  # before any work
    x = example_tensor(example_input, _device_of(model))
    model = _converted(model, x, portable=True, progress=progress).eval()
    outputs = output_tensors(run_checked(model, x))
    names = ["output"] if len(outputs) == 1 else [f"output{i}" for i in range(len(outputs))]
    axes = {"input": {0: "batch"}}  # every output with a batch dimension gets a dynamic one
    axes.update({n: {0: "batch"} for n, t in zip(names, outputs, strict=True) if t.dim() > 0})
    buffer = io.BytesIO()
    _say(progress, "exporting to ONNX")
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (x,),
                buffer,
                dynamo=False,
                opset_version=opset,
                input_names=["input"],
                output_names=names,
                dynamic_axes=axes,
            )
    except Exception as err:
        raise SgcnnError(f"the ONNX exporter cannot export the model: {describe(err)}") from err
    data = buffer.getvalue()
    if record is not None:
        data = _with_metadata(onnx, data, record)
    diff = None
    if verify:
        _say(progress, "checking in onnxruntime on a new input")

        def run(x_new: torch.Tensor) -> list[torch.Tensor]:
            try:
                session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
                got = session.run(None, {"input": x_new.cpu().numpy()})
            except Exception as err:
                raise SgcnnError(
                    f"onnxruntime cannot run the exported model: {describe(err)}; nothing "
                    "was written"
                ) from err
            return [torch.from_numpy(g) for g in got]

        diff = _check_on_new_input(model, x, True, "onnxruntime", run)
    atomic_write(path, lambda f: f.write(data), overwrite)
    _say(progress, f"wrote {path}")
    return {"path": str(path), "max_abs_diff": diff}


def _onnx_package():
    """The onnx package, which writes the data record into the file, or a clear error."""
    try:
        import onnx
    except ImportError:
        raise SgcnnError(
            "writing the data record into the ONNX file needs the onnx package: pip install "
            "'sgcnn[onnx]' (or onnx)"
        ) from None
    return onnx


def _with_metadata(onnx, onnx_bytes: bytes, record: dict) -> bytes:
    """The ONNX model with ``record`` as its metadata entry :data:`ONNX_DATA_KEY` (JSON)."""
    proto = onnx.load_model_from_string(onnx_bytes)
    entry = proto.metadata_props.add()
    entry.key, entry.value = ONNX_DATA_KEY, json.dumps(record)
    return proto.SerializeToString()


def _checked_record(data: dict | None) -> dict | None:
    """``data`` if it can travel in a program (a JSON-serialisable dict that
    :func:`checked_record` will accept when the program is read back), else an error."""
    if data is None:
        return None
    try:
        if not isinstance(data, dict):
            raise TypeError(f"a {type(data).__name__}")
        record = json.loads(json.dumps(data, allow_nan=False))
    except (TypeError, ValueError) as err:
        raise SgcnnError(
            f"data must be a dict of JSON values (classes, mean, std, input_size), got {err}"
        ) from err
    return checked_record(record, "data")  # never write what loading would refuse


# --------------------------------------------------------------------------- API


def _device_of(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def export(
    model: nn.Module,
    path: str | os.PathLike,
    example_input: torch.Tensor | tuple[int, ...],
    format: str | None = None,
    *,
    dynamic_batch: bool | None = None,
    opset: int | None = None,
    verify: bool = True,
    progress: bool | None = None,
    overwrite: bool = True,
    data: dict | None = None,
) -> dict:
    """Export a self-grouped (or converted) ``model`` to ``path`` in ``format``.

    Args:
        model: a self-grouped model (:func:`sgcnn.self_group_`) or one converted by
            :func:`sgcnn.convert`; it is not modified.
        path: the file to write (written only once the check below passes).
        example_input: a tensor of the shape the model runs at (or that shape as a tuple);
            the program accepts any batch size and otherwise this shape.
        format: ``"onnx"`` (standard operators, any ONNX runtime) or ``"pt2"``
            (``torch.export``; load it with :func:`sgcnn.load`); ``None``: from the name of
            ``path`` (``.onnx`` / ``.pt2``). A name that says the other format is an error.
        dynamic_batch: ``pt2`` only (ONNX always has a dynamic batch axis); ``False`` fixes
            the batch size to the example's. Default: dynamic.
        opset: ``onnx`` only: the ONNX operator set (default 17).
        verify: run the written program on a new input against PyTorch first (ONNX: in
            onnxruntime, which must then be installed).
        progress: print the stages (and the layers being converted) on stderr; ``None``:
            only when stderr is a terminal.
        overwrite: replace an existing ``path`` (else an existing file is an error).
        data: what the model was trained on, stored in the file for whoever deploys it: a
            dict such as a checkpoint's ``data`` entry (``classes``, ``mean``, ``std``,
            ``input_size``); read it back with ``sgcnn.load(path).data`` (pt2) or from the
            ONNX metadata entry ``sgcnn.data`` (JSON).

    Returns ``{"path", "max_abs_diff", ...}``. Raises :class:`~sgcnn.errors.SgcnnError` for
    a format it cannot write, a model it cannot export, or a check that fails (nothing is
    written then).
    """
    fmt = _format_for(path, format)
    if fmt == "onnx":
        if dynamic_batch is False:
            raise SgcnnError(
                "ONNX files are written with a dynamic batch axis; dynamic_batch=False is for "
                "format pt2"
            )
        return export_onnx(
            model,
            path,
            example_input,
            opset=17 if opset is None else opset,
            verify=verify,
            progress=progress,
            overwrite=overwrite,
            data=data,
        )
    if opset is not None:
        raise SgcnnError("opset is the ONNX operator set; a pt2 program has none")
    dynamic = True if dynamic_batch is None else dynamic_batch
    return save(model, path, example_input, dynamic, verify, progress, overwrite, data)


def _format_for(path: str | os.PathLike, format: str | None) -> str:
    """``format``, or the one ``path``'s suffix names; a suffix naming the other is an error
    (an ONNX file named ``.pt2`` would be refused by :func:`sgcnn.load` later)."""
    said = Path(path).suffix.lstrip(".").lower()
    if format is None:
        if said not in FORMATS:
            raise SgcnnError(
                f"cannot tell the format from {str(path)!r}: name the file .onnx or .pt2, or "
                "pass format='onnx' / 'pt2'"
            )
        return said
    check_format(format)
    if said in FORMATS and said != format:
        raise SgcnnError(
            f"{str(path)!r} is named .{said} but format is {format!r}: name the file after "
            "its format"
        )
    return format
