"""Building and loading the native kernels' C library (see :mod:`sgcnn.deploy._native`).

The C sources (``csrc/``: ``dg_conv.c``, ``winograd.c`` and their shared header, shipped with
the package) are compiled on first use with the system C compiler (``$CC`` or ``cc``,
``-O3 -march=native -fopenmp``) into sgcnn's cache folder (``sgcnn._io.cache_dir``:
``$SGCNN_CACHE``, ``$XDG_CACHE_HOME/sgcnn`` or ``~/.cache/sgcnn``) under a key over the
source, the compiler, the flags and the CPU's features, and loaded with ``ctypes``. The vector
width follows the CPU: AVX-512F (16 lanes) or AVX2 + FMA (8 lanes). ``SGCNN_NATIVE=0``
disables it; :func:`available` says whether it can run.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from importlib import resources
from pathlib import Path

from sgcnn._io import cache_dir
from sgcnn.errors import SgcnnError

FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC")


class _CGeometry(ctypes.Structure):
    """``sg_geometry`` of ``csrc/dg_conv.c``, field for field."""

    _fields_ = [
        (name, ctypes.c_int64)
        for name in (
            *("batch", "channels", "height", "width", "filters", "kh", "kw", "sh", "sw"),
            *("ph", "pw", "dh", "dw", "out_h", "out_w", "block", "border_h", "border_w"),
            "input_padded",
        )
    ]


# ------------------------------------------------------------------------ building


_SOURCES = ("sg_simd.h", "dg_conv.c", "winograd.c")  # compiled together into one library


def _read_source(name: str) -> bytes:
    return resources.files("sgcnn.deploy").joinpath("csrc", name).read_bytes()


def _source() -> bytes:
    """Every source file of the library, for the build key."""
    return b"\0".join(name.encode() + b"\0" + _read_source(name) for name in _SOURCES)


def _cache_root() -> Path:
    return cache_dir()


class _NotHere(RuntimeError):
    """A reason the kernels cannot run that is the machine's, not a fault: disabled, no
    x86-64 CPU, no compiler, no AVX2. Any other (a cache folder the build cannot be written
    to, a failed compile) is told in a warning."""


def _compiler() -> str:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise _NotHere("no C compiler found (set CC or install gcc)")
    return compiler


@functools.cache
def cpu_id() -> str:
    """The CPU model and its feature flags (what ``-march=native`` compiles for)."""
    model, flags = platform.processor() or platform.machine(), ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model in ("", platform.machine()):
                    model = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = " ".join(sorted(value.split()))
                if model and flags:
                    break
    except OSError:
        pass
    return f"{model} | {flags}"


def _build_key(compiler: str) -> str:
    try:
        version = subprocess.run(
            [compiler, "--version"], capture_output=True, text=True, timeout=30
        ).stdout.splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        version = compiler
    parts = [_source(), version.encode(), " ".join(FLAGS).encode(), cpu_id().encode()]
    return hashlib.sha256(b"\0".join(parts)).hexdigest()[:20]


def _compile(compiler: str, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        for name in _SOURCES:
            (Path(tmp) / name).write_bytes(_read_source(name))
        so_tmp = Path(tmp) / out.name
        c_files = [str(Path(tmp) / name) for name in _SOURCES if name.endswith(".c")]
        cmd = [compiler, *FLAGS, *c_files, "-o", str(so_tmp)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.strip()[:500]}")
        os.replace(so_tmp, out)  # atomic: concurrent builders never see half a library


_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_error: str | None = None
_key: str | None = None


def _load() -> ctypes.CDLL | None:
    global _lib, _error, _key
    with _lock:
        if _lib is not None or _error is not None:
            return _lib
        try:
            if os.environ.get("SGCNN_NATIVE", "1") == "0":
                raise _NotHere("disabled by SGCNN_NATIVE=0")
            if platform.machine().lower() not in ("x86_64", "amd64"):
                raise _NotHere(f"needs an x86-64 CPU, this is {platform.machine()}")
            compiler = _compiler()
            key = _build_key(compiler)
            path = _cache_root() / "kernels" / key / "libsgcnn_dg.so"
            if not path.is_file():
                _compile(compiler, path)
            try:
                lib = ctypes.CDLL(str(path))
                lib.sg_geometry_size  # noqa: B018 (a library that lacks it is not ours)
            except (OSError, AttributeError):  # a damaged cached build: build it again
                _compile(compiler, path)
                lib = ctypes.CDLL(str(path))
            if not lib.sg_supported():
                raise _NotHere("this CPU lacks the AVX2 + FMA (or AVX-512F) the kernel needs")
            i64, p = ctypes.c_int64, ctypes.c_void_p
            for name in ("sg_lanes", "sg_max_block", "sg_max_rows", "sg_geometry_size"):
                getattr(lib, name).restype = i64
            lib.sg_isa.restype = ctypes.c_char_p
            if lib.sg_geometry_size() != ctypes.sizeof(_CGeometry):
                raise RuntimeError("the kernel library's geometry structure does not match")
            lib.sg_dg_conv2d.argtypes = [p, ctypes.POINTER(_CGeometry), p, i64, p, i64, p, p, p]
            lib.sg_dg_conv2d.argtypes += [p, p, ctypes.c_int]
            lib.sg_dg_conv2d.restype = ctypes.c_int
            lib.sg_wino_conv2d.argtypes = [*lib.sg_dg_conv2d.argtypes, ctypes.c_int]
            lib.sg_wino_conv2d.restype = ctypes.c_int
            lib.sg_max_pool2d.argtypes = [p, p] + [i64] * 11
            lib.sg_max_pool2d.restype = ctypes.c_int
            _lib, _key = lib, key
        except (OSError, RuntimeError) as err:
            _error = str(err)
            if not isinstance(err, _NotHere):
                warnings.warn(
                    f"sgcnn's native kernels are unavailable ({err}); conversion uses the "
                    "slower realizations. Set SGCNN_CACHE to a writable folder (the kernels "
                    "are built there), or SGCNN_NATIVE=0 to silence this",
                    stacklevel=2,
                )
        return _lib


def available() -> bool:
    """Whether the native kernels can run here (builds them on first call)."""
    return _load() is not None


def unavailable_reason() -> str | None:
    """Why :func:`available` is false (``None`` when it is true)."""
    _load()
    return _error


def _need() -> ctypes.CDLL:
    lib = _load()
    if lib is None:  # e.g. a converted model or .pt2 from another machine
        raise SgcnnError(
            f"this model uses sgcnn's native kernels, which cannot run here ({_error}); "
            "convert it again on this machine (sgcnn.convert uses other realizations where the "
            "kernels are unavailable), or export it as ONNX (standard operators only)"
        )
    return lib


def isa() -> str:
    """The instruction set the kernels were built for: ``"avx512f"`` or ``"avx2"``."""
    return _need().sg_isa().decode()


def lanes() -> int:
    """Floats per vector (16 with AVX-512F, 8 with AVX2)."""
    return int(_need().sg_lanes())


def max_block() -> int:
    """The largest ``Geometry.block`` (vectors per work item)."""
    return int(_need().sg_max_block())


def build_key() -> str:
    """Identifies the built library: source, compiler, flags and CPU features."""
    _need()
    return _key
