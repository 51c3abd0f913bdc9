"""Machine and library description printed next to every benchmark figure."""

from __future__ import annotations

import os
import platform
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]  # the repository these benchmarks belong to


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.readlines()
        for line in lines:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def source_commit(root: Path = ROOT) -> str:
    """The repository's commit (``git -C root``, whatever the current folder), ``+changes``
    when tracked files differ from it; ``""`` outside a git checkout."""
    from sgcnn.metrics._timing import source_commit as commit_of

    return commit_of(root) or ""


def describe() -> dict:
    """Hardware, versions, threads and date, for results' provenance."""
    import numpy
    import sklearn
    import torchvision

    commit = source_commit()
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "scikit-learn": sklearn.__version__,
        "numpy": numpy.__version__,
        "git": commit,
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
