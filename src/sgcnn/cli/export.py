"""``sgcnn export``: write a self-grouped model as ONNX (standard operators) or ``.pt2``."""

from __future__ import annotations

import torch

from sgcnn._io import check_output_path
from sgcnn.cli import COMMANDS
from sgcnn.cli._common import (
    add_model_args,
    add_overwrite_arg,
    data_record_line,
    model_for_example,
    path_arg,
    positive_int,
    require_grouped_checkpoint,
)
from sgcnn.deploy import export as exporting
from sgcnn.errors import SgcnnError


def register(subparsers) -> None:
    p = subparsers.add_parser("export", help=COMMANDS["export"])
    add_model_args(p)
    p.add_argument("--format", required=True, help=f"one of: {', '.join(exporting.FORMATS)}")
    p.add_argument("--output", type=path_arg, required=True, help="file to write")
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=1,
        help="example batch (default 1; any batch runs)",
    )
    add_overwrite_arg(p)
    p.add_argument(
        "--no-verify",
        action="store_true",
        help="write without first running the program on a new input against PyTorch (the "
        "ONNX check needs onnxruntime)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.set_defaults(func=run)


def run(args) -> int:
    exporting.check_format(args.format)
    require_grouped_checkpoint(args)
    check_output_path(args.output, args.overwrite)
    if args.output.suffix != f".{args.format}":
        raise SgcnnError(
            f"--output {str(args.output)!r} does not end in .{args.format}; name the file after "
            "its format"
        )
    model, _, size, record = model_for_example(args, args.batch_size)
    x = torch.randn(args.batch_size, *size)
    result = exporting.export(
        model.eval(),
        args.output,
        x,
        format=args.format,
        verify=not args.no_verify,
        progress=not args.quiet,
        overwrite=args.overwrite,
        data=record,
    )
    shape = "x".join(map(str, (args.batch_size, *size)))
    print(f"wrote {result['path']} ({args.format}, input {shape}, any batch size)")
    print(data_record_line(record))
    if args.no_verify:
        print("not checked (--no-verify)")
    elif result.get("max_abs_diff") is not None:
        checker = "onnxruntime" if args.format == "onnx" else "reloaded program"
        print(f"{checker} vs PyTorch on a new input: max |difference| {result['max_abs_diff']:.2e}")
    return 0
