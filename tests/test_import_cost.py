"""`import sgcnn` and `sgcnn --help` stay light: heavy dependencies load on first use."""

import json
import subprocess
import sys

import sgcnn

HEAVY = ("sklearn", "torchvision", "matplotlib", "yaml", "tqdm", "onnx", "onnxruntime")


def _loaded_after(code: str) -> set[str]:
    """Which of HEAVY a fresh interpreter has imported after running ``code``."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True
    ).stdout
    modules = json.loads(out.splitlines()[-1])
    return {m for m in HEAVY if m in modules}


def test_import_sgcnn_does_not_import_heavy_dependencies():
    assert _loaded_after("import sgcnn") == set()


def test_help_does_not_import_heavy_dependencies():
    code = (
        "import contextlib, io, sys\n"
        "from sgcnn.cli.main import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n        main(['--help'])\n    except SystemExit:\n        pass"
    )
    assert _loaded_after(code) == set()


def test_plotting_leaves_the_matplotlib_backend_alone(tmp_path):
    code = (
        "import matplotlib\n"
        "matplotlib.use('svg')\n"
        "from sgcnn.reports import plot_accuracy_vs_flops\n"
        f"plot_accuracy_vs_flops([{{'name': 'a', 'flops': 10, 'top1': 50.0}}], "
        f"__import__('pathlib').Path({str(tmp_path / 'p.png')!r}))\n"
        "print(matplotlib.get_backend())"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.split()[-1] == "svg"
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_public_name_resolves():
    for name in sgcnn.__all__:
        assert getattr(sgcnn, name) is not None, name
    assert set(sgcnn.__all__) <= set(dir(sgcnn))
    assert sgcnn.SgcnnError is sgcnn.errors.SgcnnError
