"""Saving converted models without their Python class, and exporting them to ONNX.

Two formats:

- ``pt2`` (:func:`save` / :func:`load`): the converted model is traced by ``torch.export``
  into an ``ExportedProgram`` — a graph of ATen operators plus sgcnn's registered kernels
  (``sgcnn::dg_conv2d``), with all weights and index tables — and written with
  ``torch.export.save``. Loading needs ``torch`` and ``import sgcnn`` (which registers the
  kernels), not the model's class or the code that built it. The per-layer choices measured by
  :func:`sgcnn.convert` travel in the file as ``sgcnn.json``. The batch dimension stays
  dynamic when the model allows it.
- ``onnx`` (:func:`export_onnx`): every layer is realized with standard operators only
  (gather + padded grouped convolution, or the dense fallback: ``realizations=("grouped",
  "dense")``), exported with the TorchScript-based ONNX exporter (opset 17, dynamic batch),
  and, when onnxruntime is installed, checked against PyTorch (atol 1e-4).
"""

from __future__ import annotations

import copy
import io
import json
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from sgcnn._io import atomic_write
from sgcnn._pt2_check import check_pt2
from sgcnn.errors import SgcnnError
from sgcnn.nn import fast
from sgcnn.nn.convert import convert, run_checked
from sgcnn.nn.masked import is_masked
from sgcnn.nn.swap import replace_modules_

FORMATS = ("onnx", "pt2")
PORTABLE = ("grouped", "dense")
META = "sgcnn.json"


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise SgcnnError(f"unsupported export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return fmt


def _is_converted(model: nn.Module) -> bool:
    return any(fast.is_fast(m) for m in model.modules())


def _converted(model: nn.Module, x: torch.Tensor, portable: bool) -> nn.Module:
    """``model`` itself if already converted (made portable if asked), else converted."""
    if _is_converted(model):
        return to_portable(copy.deepcopy(model)) if portable else model
    if not any(is_masked(m) for m in model.modules()):
        raise SgcnnError(
            "the model has neither self-grouped nor converted layers; self-group it first "
            "(sgcnn.self_group_) or pass a checkpoint made by `sgcnn group`"
        )
    return convert(model, x, tune=not portable, realizations=PORTABLE if portable else None)


def to_portable(model: nn.Module) -> nn.Module:
    """Replace every native-kernel layer by its padded-grouped equivalent (in place).

    All of them are replaced at once, so the memory planning between native layers (padded
    hand-off, in-place residual) disappears consistently: the grouped layers take and return
    ordinary tensors.
    """
    replace_modules_(
        model,
        lambda m, n: isinstance(m, fast.NativeGroupConv2d),
        lambda m, n: fast.GroupedConv2d.from_spec(m.spec()),
    )
    if isinstance(model, torch.fx.GraphModule):
        model.recompile()
    return model


def save(
    model: nn.Module, path: str | os.PathLike, example_input: torch.Tensor, overwrite: bool = True
) -> Path:
    """Write ``model`` (converted, or self-grouped: converted here) as a ``.pt2`` program.

    With a dynamic batch, only one image of ``example_input`` is stored in the file."""
    path = Path(path)
    x = example_input
    model = _converted(model, x, portable=False).eval()
    run_checked(model, x)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with torch.no_grad():
        try:
            program = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
            program.example_inputs = ((x[:1].clone(),), {})  # the file need not hold a batch
        except Exception:
            program = torch.export.export(model, (x,))
    meta = {
        "format": "sgcnn.converted",
        "version": 1,
        "example_shape": list(x.shape),
        "conversion": getattr(model, "sgcnn_conversion", None),
    }
    extra = {META: json.dumps(meta)}
    return atomic_write(path, lambda f: torch.export.save(program, f, extra_files=extra), overwrite)


def load(path: str | os.PathLike) -> nn.Module:
    """Load a model written by :func:`save`; returns a module (eval mode, on the CPU)."""
    path = Path(path)
    if not path.is_file():
        raise SgcnnError(f"{str(path)!r} does not exist (or is not a file)")
    check_pt2(path)  # before PyTorch, which would unpickle and eval what the file holds
    extra = {META: ""}
    try:
        program = torch.export.load(path, extra_files=extra)
    except Exception as err:
        raise SgcnnError(
            f"cannot read {str(path)!r} as a saved converted model (.pt2 from `sgcnn convert`): "
            f"{str(err).splitlines()[0][:200]}"
        ) from err
    module = program.module()
    if extra[META]:
        meta = json.loads(extra[META])
        module.sgcnn_conversion = meta.get("conversion")
        module.sgcnn_example_shape = meta.get("example_shape")
    return module


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    example_input: torch.Tensor,
    opset: int = 17,
    verify: bool = True,
    overwrite: bool = True,
) -> dict:
    """Write ``model`` as ONNX (standard operators only); returns ``{"path", "max_abs_diff"}``
    where the difference is onnxruntime's output against PyTorch's (``None`` without
    onnxruntime). A difference above 1e-4 is an error, and then nothing is written."""
    path = Path(path)
    x = example_input
    model = _converted(model, x, portable=True).eval()
    with torch.no_grad():
        expected = run_checked(model, x)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (x,),
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
        )
    data = buffer.getvalue()
    result = {"path": str(path), "max_abs_diff": None}
    if verify:
        result["max_abs_diff"] = _onnxruntime_difference(data, x, expected)
        if result["max_abs_diff"] is not None and result["max_abs_diff"] > 1e-4:
            raise RuntimeError(
                f"onnxruntime disagrees with PyTorch by {result['max_abs_diff']:.2e}; "
                f"{path} was not written"
            )
    atomic_write(path, lambda f: f.write(data), overwrite)
    return result


def _onnxruntime_difference(data: bytes, x: torch.Tensor, expected: torch.Tensor) -> float | None:
    """max |onnxruntime - PyTorch| on ``x`` for the ONNX model ``data``; None without ORT."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"input": x.cpu().numpy()})
    return float((torch.from_numpy(got) - expected.cpu()).abs().max())


def export(
    model: nn.Module, path, fmt: str, example_input: torch.Tensor, overwrite: bool = True
) -> dict:
    """Export in format ``fmt`` (``"onnx"`` or ``"pt2"``)."""
    check_format(fmt)
    if fmt == "onnx":
        return export_onnx(model, path, example_input, overwrite=overwrite)
    return {"path": str(save(model, path, example_input, overwrite))}
