"""The sgcnn cache: extracted archives and decoded images, each written atomically.

Location: ``DataConfig.cache_dir``, else ``$SGCNN_CACHE``, else ``$XDG_CACHE_HOME/sgcnn``, else
``~/.cache/sgcnn``. Everything in it can be deleted at any time; it is rebuilt on demand.
Nothing is ever visible under its final name until it is complete: archives are extracted into
a temporary folder that is renamed into place, files are written to a temporary name and
``os.replace``-d. A process killed half-way leaves only a temporary, which later runs ignore
(and remove once its process is gone). Processes that build the same entry at once (the ranks
of a ``torchrun`` job) take turns through a lock file, so only the first does the work.
"""

from __future__ import annotations

import contextlib
import hashlib
import lzma
import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import torch

try:
    import fcntl
except ImportError:  # Windows: no lock; concurrent builders just duplicate work
    fcntl = None

from sgcnn._io import atomic_write, cache_dir
from sgcnn.errors import SgcnnError

_TMP_TAG = ".tmp-"


def cache_root(override: str | None = None) -> Path:
    """The cache folder (created on first use)."""
    root = Path(override).expanduser() if override else cache_dir()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SgcnnError(
            f"cannot create the sgcnn cache folder {root}: {err}. Point the SGCNN_CACHE "
            "environment variable (or data.cache_dir) at a writable folder."
        ) from err
    if not os.access(root, os.W_OK | os.X_OK):
        raise SgcnnError(
            f"the sgcnn cache folder {root} is not writable. Point the SGCNN_CACHE environment "
            "variable (or data.cache_dir) at a writable folder."
        )
    return root


def archive_key(archive: Path) -> str:
    """``<name>-<hash of name, size and modification time>``: a changed archive gets a new key."""
    stat = archive.stat()
    name = archive.name
    for suffix in (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    digest = hashlib.sha1(f"{archive.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return f"{name}-{digest.hexdigest()[:12]}"


def extract_archive(archive: Path, cache: Path) -> Path:
    """Extract the tar archive once into ``cache/extracted/<key>`` and return that folder.

    Later calls (and other processes) reuse the folder. A corrupt or truncated archive raises
    :class:`SgcnnError` and leaves nothing behind. Members that would land outside the folder
    (absolute paths, ``..``, links out) are refused.
    """
    final = cache / "extracted" / archive_key(archive)
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with locked(final) as lock:
        if not final.is_dir():  # another process may have finished while we waited
            try:
                _extract_into(archive, final, cache)
            except BaseException:
                lock.unlink(missing_ok=True)  # leave nothing behind; a waiter just retries
                raise
    return final


def _extract_into(archive: Path, final: Path, cache: Path) -> None:
    _remove_orphans(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}{_TMP_TAG}{os.getpid()}-", dir=final.parent))
    try:
        with tarfile.open(archive, "r:*") as tar:
            _safe_extract(tar, tmp)
    except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError) as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise SgcnnError(
            f"cannot extract {archive}: {err}. The archive looks corrupt or truncated (or the "
            f"cache folder {cache} is not writable); download it again, or extract it yourself "
            "and pass the folder as root."
        ) from err
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        os.rename(tmp, final)
    except OSError:
        # Another process finished first: its copy is complete, keep it.
        shutil.rmtree(tmp, ignore_errors=True)
        if not final.is_dir():
            raise


@contextlib.contextmanager
def locked(path: Path) -> Iterator[Path]:
    """Hold an exclusive lock on ``.<name>.lock`` beside ``path`` (released on exit, or by the
    operating system if the process dies); yields the lock file's path."""
    lock = path.parent / f".{path.name}.lock"
    if fcntl is None:
        yield lock
        return
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield lock
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _safe_extract(tar: tarfile.TarFile, dest: Path) -> None:
    if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4
        tar.extractall(dest, filter="data")
        return
    base = dest.resolve()
    for member in tar.getmembers():
        target = (base / member.name).resolve()
        if base not in target.parents and target != base:
            raise tarfile.TarError(f"member {member.name!r} would be written outside the folder")
        if not (member.isfile() or member.isdir()):
            raise tarfile.TarError(f"member {member.name!r} is a link or device; refused")
    tar.extractall(dest)


def _remove_orphans(final: Path) -> None:
    """Delete temporaries of ``final`` left by processes that no longer run."""
    for tmp in final.parent.glob(f".{final.name}{_TMP_TAG}*"):
        pid = tmp.name[len(f".{final.name}{_TMP_TAG}") :].split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists but not ours, or cannot tell: leave it alone
    return True


def save_tensors(obj: dict[str, torch.Tensor], path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_orphans(path)
    atomic_write(path, lambda f: torch.save(obj, f))  # temporary named .<name>.tmp-<pid>-...


def load_tensors(path: Path) -> dict[str, torch.Tensor] | None:
    """What :func:`save_tensors` wrote, or ``None`` when absent or unreadable (rebuild it).

    Memory-mapped: pages are read on first use and shared with DataLoader workers.
    """
    if not path.is_file():
        return None
    try:
        return torch.load(path, weights_only=True, mmap=True)
    except Exception:  # a damaged cache entry is rebuilt, never fatal
        return None
