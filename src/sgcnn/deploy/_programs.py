"""Exported programs as classifiers to evaluate: a ``.pt2`` (:func:`sgcnn.load`) or an ONNX
model (onnxruntime, CPU), as deployed.

:func:`load_classifier` returns a module that takes float32 image batches of any size and
returns one tensor of class scores: a program with a fixed batch ``B`` is run on chunks of
``B`` images (the last one padded with zeros, its padding dropped), and an ONNX model with
float16 / float64 input gets its input in that type. What cannot be a classifier is refused
with an :class:`SgcnnError`: several inputs or outputs, a non-floating input.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from sgcnn.deploy._pt2_check import looks_like_pt2
from sgcnn.errors import SgcnnError, describe

_ONNX_FLOATS = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
}


@dataclass
class Classifier:
    module: nn.Module  # images [N, C, H, W] -> scores [N, classes], any N
    device: torch.device
    image_shape: list | None  # [C, H, W] (None entries: dynamic); None when unknown
    kind: str  # "pt2" | "onnx"
    data: dict | None = None  # the data record written with the program (sgcnn.export)


def is_program(path) -> bool:
    """Whether ``path`` names an exported program (a ``.pt2`` archive or an ``.onnx`` file)."""
    return str(path).lower().endswith(".onnx") or looks_like_pt2(path)


def load_classifier(path) -> Classifier:
    """The program at ``path`` as a :class:`Classifier` (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise SgcnnError(f"{str(path)!r} does not exist (or is not a file)")
    classifier = _load_onnx(path) if str(path).lower().endswith(".onnx") else _load_pt2(path)
    classifier.module.eval()  # inference only (a loaded .pt2 refuses train mode)
    return classifier


def _load_pt2(path: Path) -> Classifier:
    from sgcnn.deploy.export import MAX_BATCH, load

    program = load(path)
    param = next(program.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    shape = program.sgcnn_example_shape
    if shape is None:
        return Classifier(_Single(program, str(path)), device, None, "pt2", program.data)
    batch = MAX_BATCH if program.dynamic_batch else shape[0]
    module = _Chunked(_Single(program, str(path)), batch, pad=not program.dynamic_batch)
    return Classifier(module, device, list(shape[1:]), "pt2", program.data)


def _load_onnx(path: Path) -> Classifier:
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise SgcnnError(
            "evaluating an ONNX model needs onnxruntime: pip install 'sgcnn[onnx]'"
        ) from err
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as err:
        raise SgcnnError(f"onnxruntime cannot load {str(path)!r}: {describe(err)}") from err
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(outputs) != 1:
        raise SgcnnError(
            f"{str(path)!r} takes {len(inputs)} inputs and gives {len(outputs)} outputs; an "
            "image classifier to evaluate takes one batch of images and gives one of scores"
        )
    dtype = _ONNX_FLOATS.get(inputs[0].type)
    if dtype is None:
        raise SgcnnError(
            f"{str(path)!r} takes {inputs[0].type} input; sgcnn eval feeds normalised float "
            "images (float32, float16 or float64 inputs)"
        )
    shape = [d if isinstance(d, int) and d > 0 else None for d in inputs[0].shape]
    module: nn.Module = _OnnxSession(session, inputs[0].name, dtype, str(path))
    if shape and shape[0] is not None:
        module = _Chunked(module, shape[0], pad=True)
    record = _onnx_record(session, path)
    return Classifier(module, torch.device("cpu"), shape[1:] or None, "onnx", record)


def _onnx_record(session, path: Path) -> dict | None:
    """The data record in the ONNX model's metadata (``sgcnn.data``), if it has one."""
    from sgcnn.deploy.export import ONNX_DATA_KEY, checked_record

    text = session.get_modelmeta().custom_metadata_map.get(ONNX_DATA_KEY)
    if text is None:
        return None
    try:
        record = json.loads(text)
    except ValueError as err:
        raise SgcnnError(
            f"{str(path)!r} has a damaged {ONNX_DATA_KEY} metadata entry: {describe(err)}"
        ) from err
    return checked_record(record, str(path))


class _Single(nn.Module):
    """A program's output, which must be one tensor of scores."""

    def __init__(self, program: nn.Module, name: str) -> None:
        super().__init__()
        self.program, self.name = program, name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.program(x)
        if not isinstance(out, torch.Tensor):
            raise SgcnnError(
                f"{self.name!r} gives {type(out).__name__} output, not one tensor of class "
                "scores: sgcnn eval evaluates classifiers"
            )
        return out


class _OnnxSession(nn.Module):
    """An onnxruntime session as a module: CPU tensors in, the output as float32."""

    def __init__(self, session, input_name: str, dtype: str, name: str) -> None:
        super().__init__()
        self.session, self.input_name, self.dtype, self.name = session, input_name, dtype, name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feed = {self.input_name: x.detach().cpu().numpy().astype(self.dtype)}
        try:
            out = self.session.run(None, feed)[0]
        except Exception as err:
            raise SgcnnError(f"onnxruntime cannot run {self.name!r}: {describe(err)}") from err
        return torch.from_numpy(out).float()


class _Chunked(nn.Module):
    """Runs ``inner`` on chunks of at most ``batch`` images; with ``pad`` every chunk is
    exactly ``batch`` images (the last one zero-padded, its padding dropped from the scores)."""

    def __init__(self, inner: nn.Module, batch: int, pad: bool) -> None:
        super().__init__()
        self.inner, self.batch, self.pad = inner, batch, pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == self.batch or (not self.pad and x.shape[0] < self.batch):
            return self.inner(x)
        outs = []
        for chunk in x.split(self.batch):
            n = chunk.shape[0]
            if self.pad and n < self.batch:
                filler = chunk.new_zeros((self.batch - n, *chunk.shape[1:]))
                chunk = torch.cat([chunk, filler])
            outs.append(self.inner(chunk)[:n])
        return torch.cat(outs)
