"""Writing files and folders so that a reader never sees a half-written one.

One discipline for every output of sgcnn:

- :func:`check_output_path` / :func:`check_output_dir` validate the location *before* any work
  (the parent is a folder a file can be created in, a file is not a folder, an existing output
  is refused unless ``overwrite``), so a long computation never ends in "permission denied".
- :func:`atomic_write` writes to a fresh temporary file in the target folder (a unique name from
  ``mkstemp``, so concurrent writers never share it), flushes it to disk (``fsync``), and
  renames it over the target; the folder is then fsynced so the rename survives a crash. A
  failure leaves the old file as it was and removes the temporary. The file gets the usual
  mode (``0o666`` less the umask), not ``mkstemp``'s owner-only one.
- :func:`staging_dir` / :func:`publish_dir` do the same for a folder of files.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from sgcnn.errors import SgcnnError


def _why(err: OSError) -> str:
    return err.strerror or type(err).__name__


def _check_parent(path: Path, flag: str) -> None:
    """The nearest existing ancestor of ``path`` is a folder this process can write into."""
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        if parent.is_symlink():  # a dangling link: mkdir would fail
            break
        parent = parent.parent
    if not parent.is_dir():
        raise SgcnnError(
            f"cannot write {flag} {str(path)!r}: {str(parent)!r} is a file, not a folder; "
            f"choose another {flag}"
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise SgcnnError(
            f"cannot write {flag} {str(path)!r}: the folder {str(parent)!r} is not writable; "
            f"choose another {flag}"
        )
    # os.access trusts permission bits only: root passes it on a read-only mount or in /proc.
    # Creating (and removing) an empty file is the check that cannot be fooled.
    try:
        fd, probe = tempfile.mkstemp(prefix=".sgcnn-probe-", dir=parent)
    except OSError as err:
        raise SgcnnError(
            f"cannot write {flag} {str(path)!r}: cannot create a file in {str(parent)!r} "
            f"({_why(err)}); choose another {flag}"
        ) from None
    os.close(fd)
    os.unlink(probe)


def check_output_path(
    path: str | os.PathLike, overwrite: bool, flag: str = "--output", switch: str = "--overwrite"
) -> Path:
    """Fail early unless ``path`` can be written as a file (see the module docstring);
    ``switch`` is what the caller sets to replace an existing file."""
    path = Path(path)
    if path.is_dir():
        raise SgcnnError(f"{flag} {str(path)!r} is a folder; give the name of a file to write")
    if path.exists() and not overwrite:
        raise SgcnnError(
            f"{flag} {str(path)!r} already exists; pass {switch} to replace it, or choose "
            "another name"
        )
    _check_parent(path, flag)
    return path


def check_output_paths(overwrite: bool, paths: dict[str, str | os.PathLike | None]) -> None:
    """:func:`check_output_path` for each ``{flag: path}`` given (None: not asked for), and
    no two of them the same file (one output would silently replace the other)."""
    seen: dict[Path, str] = {}
    for flag, path in paths.items():
        if path is None:
            continue
        resolved = check_output_path(path, overwrite, flag).resolve()
        if resolved in seen:
            raise SgcnnError(
                f"{seen[resolved]} and {flag} both name {str(path)!r}; give each its own file"
            )
        seen[resolved] = flag


def check_output_dir(path: str | os.PathLike, flag: str = "--output") -> Path:
    """Fail early unless ``path`` can be created (or filled) as a folder."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise SgcnnError(f"{flag} {str(path)!r} is a file; give a folder")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise SgcnnError(
                f"cannot write into {flag} {str(path)!r}: the folder is not writable; "
                f"choose another {flag}"
            )
        return path
    _check_parent(path, flag)
    return path


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # not supported here (e.g. some network filesystems): the rename still stands
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def usual_mode(base: int = 0o666) -> int:
    """``base`` less the user's umask: the mode ``open`` / ``mkdir`` would give (``tempfile``
    makes owner-only files and folders, which others of the user's group cannot read)."""
    mask = os.umask(0)
    os.umask(mask)
    return base & ~mask


def cache_dir() -> Path:
    """sgcnn's cache folder (not created here): ``$SGCNN_CACHE``, else
    ``$XDG_CACHE_HOME/sgcnn``, else ``~/.cache/sgcnn``; data, tuning timings and built kernels
    all live under it."""
    if os.environ.get("SGCNN_CACHE"):
        return Path(os.environ["SGCNN_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "sgcnn"
    return Path.home() / ".cache" / "sgcnn"


def atomic_write(
    path: str | os.PathLike, write: Callable[[IO[bytes]], Any], overwrite: bool = True
) -> Path:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it to ``path``.

    With ``overwrite=False`` an existing ``path`` (one that appeared while writing, too) is an
    error and stays as it was. :class:`OSError` from the file system becomes
    :class:`SgcnnError` naming the file.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(  # the pid lets a cleaner tell a dead writer's leftover
            dir=path.parent, prefix=f".{path.name}.tmp-{os.getpid()}-", suffix=".tmp"
        )
    except OSError as err:
        raise SgcnnError(f"cannot write {str(path)!r}: {_why(err)}") from err
    try:
        os.fchmod(fd, usual_mode())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if path exists, atomically
            os.unlink(tmp)
    except FileExistsError as err:
        raise SgcnnError(
            f"{str(path)!r} already exists (written meanwhile?); pass --overwrite to replace it"
        ) from err
    except IsADirectoryError as err:
        raise SgcnnError(f"cannot write {str(path)!r}: it is a folder") from err
    except OSError as err:
        if err.errno == errno.EPERM and not overwrite:  # no hard links here: check, then rename
            return _rename_if_absent(Path(tmp), path)
        raise SgcnnError(f"cannot write {str(path)!r}: {_why(err)}") from err
    finally:
        Path(tmp).unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return path


def _rename_if_absent(tmp: Path, path: Path) -> Path:
    if path.exists():
        raise SgcnnError(f"{str(path)!r} already exists; pass --overwrite to replace it")
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    return path


def write_text(path: str | os.PathLike, text: str, overwrite: bool = True) -> Path:
    """:func:`atomic_write` of UTF-8 ``text``."""
    data = text.encode("utf-8")
    return atomic_write(path, lambda f: f.write(data), overwrite)


def staging_dir(output: str | os.PathLike) -> Path:
    """A fresh temporary folder beside ``output`` (same filesystem, so renames are atomic)."""
    output = Path(output).resolve()
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}.tmp-"))
        staging.chmod(usual_mode(0o777))  # mkdtemp's folder is owner-only
        return staging
    except OSError as err:
        raise SgcnnError(f"cannot create a folder beside {str(output)!r}: {_why(err)}") from err


def publish_dir(staging: Path, output: Path, overwrite: bool) -> None:
    """Move the files of ``staging`` into ``output``, all or nothing.

    A new (or empty) ``output`` is created by one rename; an existing one with files is an
    error unless ``overwrite``, in which case each file is replaced by an atomic rename.
    """
    if output.exists() and not output.is_dir():
        raise SgcnnError(f"output {str(output)!r} exists and is not a folder")
    if output.is_dir() and any(output.iterdir()):
        if not overwrite:
            raise SgcnnError(
                f"output folder {str(output)!r} is not empty; choose another --output "
                "or pass --overwrite"
            )
        for item in staging.iterdir():
            os.replace(item, output / item.name)
        shutil.rmtree(staging)
        _fsync_dir(output)
        return
    if output.is_dir():
        output.rmdir()
    os.replace(staging, output)
    _fsync_dir(output.parent)


def read_text(path: str | os.PathLike, what: str = "file") -> str:
    """The UTF-8 text of ``path``; a missing, unreadable or non-UTF-8 file is a
    :class:`SgcnnError` naming it."""
    path = Path(path)
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise SgcnnError(
            f"{what} {str(path)!r} is not UTF-8 text (byte {err.start}); is it the right file?"
        ) from err
    except IsADirectoryError as err:
        raise SgcnnError(f"{what} {str(path)!r} is a folder, not a file") from err
    except OSError as err:
        raise SgcnnError(f"cannot read {what} {str(path)!r}: {_why(err)}") from err
