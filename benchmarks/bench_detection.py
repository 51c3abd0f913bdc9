"""Faster R-CNN with a self-grouped backbone against a dense one, same budget, synthetic data.

Both detectors are trained from the same random initialisation with the same schedule on the
synthetic shapes set (``sgcnn detect synth``); the self-grouped one has its backbone body
self-grouped to ``--conv`` before training (masks kept throughout). Reported: backbone and
detector Params / FLOPs, COCO mAP on the validation images, and latency at batch 1 of the
dense backbone, the self-grouped backbone run as masked dense layers, and the converted one
(and the whole detectors), measured interleaved in one process.

    python benchmarks/bench_detection.py --out results/detection --threads 2

Without ``--data`` the dataset is generated into ``OUT/shapes`` (``--train-images`` train /
100 val images of ``--image-size`` px). Run folders go to ``OUT/runs``; the table to
``OUT/bench_detection.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))


def main(argv: list[str] | None = None) -> int:
    from _env import describe
    from sgcnn.detection.config import resolve_detect_config
    from sgcnn.detection.engine import load_detector
    from sgcnn.detection.run import convert_backbone, example_size, run_detection
    from sgcnn.detection.synthetic import make_synthetic_coco
    from sgcnn.metrics.latency import compare_latency
    from sgcnn.reports.render import _human

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--data", type=Path, help="a `sgcnn detect synth` folder (default: make one)")
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--conv", type=float, default=0.6, help="conv sparsity of the grouped body")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--train-images", type=int, default=300, help="when generating the set")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--runs", type=int, default=30, help="timed rounds per model")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    data = args.data or args.out / "shapes"
    if not (data / "train.json").is_file():
        make_synthetic_coco(data, args.train_images, 100, args.image_size, seed=0)
    base = [
        f"backbone.name={args.backbone}",
        "backbone.train_bn=true",
        f"data.train_images={data / 'train'}",
        f"data.train_annotations={data / 'train.json'}",
        f"data.val_images={data / 'val'}",
        f"data.val_annotations={data / 'val.json'}",
        f"data.min_size={args.image_size}",
        f"data.max_size={args.image_size}",
        f"train.epochs={args.epochs}",
        "train.batch_size=8",
        "train.lr=0.02",
        f"train.milestones=[{round(args.epochs * 2 / 3)},{round(args.epochs * 11 / 12)}]",
        "train.warmup_iters=100",
        "train.workers=0",
        f"train.device={args.device}",
        "train.latency_runs=5",
        "fpn_channels=64",
        "rois_per_image=128",
    ]
    reports, seconds = {}, {}
    for label, conv in (("dense", 0.0), (f"Conv-{round(args.conv * 100)}", args.conv)):
        out = args.out / "runs" / label
        if not (out / "report.json").is_file():
            config = resolve_detect_config({}, [*base, f"backbone.conv={conv}"])
            start = time.monotonic()
            run_detection(config, out, {"command": " ".join(sys.argv)})
            seconds[label] = round(time.monotonic() - start, 1)
        reports[label] = json.loads((out / "report.json").read_text())

    device = torch.device(args.device)
    dense, _ = load_detector(args.out / "runs" / "dense" / "detector.pt")
    grouped_label = list(reports)[1]
    grouped, _ = load_detector(args.out / "runs" / grouped_label / "detector.pt")
    size = example_size(args.image_size)
    fast = convert_backbone(grouped, size, device)
    dense, grouped = dense.to(device).eval(), grouped.to(device).eval()
    x = torch.rand(1, 3, size, size, device=device)
    models = {
        "dense backbone": dense.backbone.body,
        "grouped backbone (masked)": grouped.backbone.body,
        "grouped backbone (converted)": fast.backbone.body,
        "dense detector": dense,
        "grouped detector (converted backbone)": fast,
    }
    with torch.inference_mode():
        times = compare_latency(models, x, runs=args.runs, warmup=3)
    env = describe()

    lines = [
        "| backbone | backbone Params | backbone FLOPs | detector Params | detector FLOPs | "
        "AP | AP50 | AP75 | AP (converted) | train s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, r in reports.items():
        converted = r.get("map_converted", {}).get("ap")
        lines.append(
            f"| {args.backbone} {label} | {_human(r['backbone_counts']['params'])} | "
            f"{_human(r['backbone_counts']['flops'])} | {_human(r['detector_counts']['params'])} "
            f"| {_human(r['detector_counts']['flops'])} | {r['map']['ap']:.2f} | "
            f"{r['map']['ap50']:.2f} | {r['map']['ap75']:.2f} | "
            f"{'-' if converted is None else f'{converted:.2f}'} | {seconds.get(label, '-')} |"
        )
    lines += ["", "| model | median ms | p10 ms | p90 ms |", "|---|---|---|---|"]
    for name, t in times.items():
        lines.append(f"| {name} | {t['median_ms']:.2f} | {t['p10_ms']:.2f} | {t['p90_ms']:.2f} |")
    md = [
        f"# Faster R-CNN, {args.backbone} backbone, synthetic shapes ({args.image_size} px)",
        "",
        f"Same initialisation and budget ({args.epochs} epochs, batch 8, lr 0.02, FPN 64 "
        "channels, 128 RoIs per image) for both; "
        "mAP on the 100 validation images (COCO AP@[.5:.95], AP50, AP75); latency at batch 1, "
        f"{args.image_size} px, median of {args.runs} interleaved rounds, device {args.device}.",
        "",
        *lines,
        "",
        "Command: `python " + " ".join(sys.argv) + "`",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in env.items()),
        "",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_detection.md").write_text("\n".join(md))
    summary = {"reports": reports, "latency": times, "train_seconds": seconds, "env": env}
    (args.out / "bench_detection.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
