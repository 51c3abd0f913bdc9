"""The ``sgcnn`` command line (see :mod:`sgcnn.cli.main`)."""

# Sub-commands in the order `sgcnn --help` lists them, with their one-line help. Each lives in
# the module `sgcnn.cli.<name>` (its `register(subparsers)` adds its parser); the table lets the
# top-level parser list every command without importing the modules and their dependencies.
COMMANDS = {
    "models": "list the registered models",
    "count": "count Params and FLOPs (MACs of conv/linear layers, masked weights removed)",
    "group": "self-group a model (SG-CNN steps 1-4)",
    "train": "train a baseline model (best epoch on validation, evaluated on test)",
    "finetune": "self-group a trained checkpoint and fine-tune it (G / LG / L schemes)",
    "transfer": "transfer a (self-grouped) classifier to a new dataset: dense, L, G or LG",
    "detect": "object detection (Faster R-CNN) with a self-grouped backbone",
    "run": "run a recipe: train, self-group, fine-tune, evaluate, report",
    "eval": "evaluate a checkpoint (Top-1 / Top-5, Params, FLOPs) or an exported .pt2 / .onnx",
    "convert": "compile a self-grouped model into exact, fast diverse-group modules (.pt2)",
    "export": "export a self-grouped checkpoint to ONNX or a torch.export program",
    "bench": "measure latency: dense vs self-grouped vs converted (median of interleaved runs)",
    "report": "re-render report.md / report.json / plots of a run folder",
    "demo": "LeNet-5 on mnist5k: baseline, Conv-95/97/99, paper-style table (CPU)",
}
