"""The run folder: created whole, resumed only with the config it was made with.

Layout::

    runs/<name>/
        config.yaml          the resolved config (what --resume must match)
        metrics.jsonl        one JSON line per epoch, pruning step and result row
        state.pt             the resumable training state (sgcnn.engine.state)
        baseline/model.pt    best baseline (on validation); loadable by `sgcnn eval`
        conv95-fc95/model.pt best model of each result row
        report.md, report.json, accuracy_vs_flops.png, structure/   once the run is complete

The folder appears by renaming a complete staging folder (config, metrics, first state), so
there is never a run folder without a state to resume from; afterwards every file in it is
replaced atomically.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

from sgcnn._io import publish_dir, read_text, staging_dir
from sgcnn.data.config import recorded_normalize, same_normalize
from sgcnn.engine.config import (
    SCHEDULE_KEYS,
    Config,
    config_to_dict,
    config_to_yaml,
    yaml_problem,
)
from sgcnn.engine.state import CONFIG_FILE, METRICS_FILE, STATE_FILE
from sgcnn.errors import SgcnnError

# Keys that may change between a run and its resumption: they do not change the results
# (where the data lives, how many loader workers, how often to checkpoint, the evaluation
# batch: eval mode, per-image outputs summed in float64), or only name things (COSMETIC).
COSMETIC = {"name", "report.title", "report.paper"}
RESUMABLE_CHANGES = {
    "data.root",
    "data.cache_dir",
    "data.download",
    "train.workers",
    "train.threads",
    "train.save_every_min",
    "train.device",
    "train.eval_batch_size",
    *COSMETIC,
}


def check_new_run_dir(run_dir: Path) -> None:
    """A new run needs an absent or empty folder."""
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        hint = (
            "pass --resume to continue it"
            if (run_dir / STATE_FILE).is_file()
            else "remove it first"
        )
        raise SgcnnError(
            f"run folder {str(run_dir)!r} already exists and is not empty: {hint}, or choose "
            "another --output"
        )


def create_run_dir(run_dir: Path, config: Config, write_initial) -> None:
    """Create ``run_dir`` holding ``config.yaml`` and what ``write_initial(staging)`` writes
    (the first metrics line and state), all at once."""
    check_new_run_dir(run_dir)
    run_dir = run_dir.resolve()
    staging = staging_dir(run_dir)
    try:
        (staging / CONFIG_FILE).write_text(config_to_yaml(config))
        write_initial(staging)
        publish_dir(staging, run_dir, overwrite=False)  # an empty run_dir is replaced
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists stay values)."""
    out = {}
    for key, value in tree.items():
        full = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict) and value and full != "report.paper":
            out.update(flatten(value, full))
        else:
            out[full] = value
    return out


def config_differences(
    saved: dict, config: Config, ignored: tuple[list, list] | None = None
) -> list[str]:
    """``"key: saved -> now"`` for each key that differs and may not (see RESUMABLE_CHANGES).

    A key the saved config lacks (added by a later sgcnn) counts as its default: a run started
    before the key existed resumes as long as the key keeps the value that reproduces it.
    ``model.checkpoint`` spelled another way (relative / absolute, from the current folder)
    is the same file, and a schedule setting that neither schedule reads (``milestones`` with
    ``cosine``) changes nothing. ``ignored``: ``(given, trained)`` of a run whose
    ``data.normalize`` its sgcnn ignored (:func:`ignored_normalize`), where a change between
    values that all normalise as the run trained changes nothing (see :func:`_kept_statistics`)."""
    old, new = flatten(saved), flatten(config_to_dict(config))
    defaults = flatten(config_to_dict(Config()))
    diffs = []
    for key in sorted(set(old) | set(new)):
        if key in RESUMABLE_CHANGES or old.get(key) == new.get(key):
            continue
        if key not in old and key in defaults and new.get(key) == defaults[key]:
            continue
        if key == "model.checkpoint" and same_file(old.get(key), new.get(key)):
            continue
        if _unread_by_schedule(key, old, new):
            continue
        if key == "data.normalize" and _kept_statistics(old.get(key), new.get(key), ignored):
            continue
        diffs.append(f"{key}: {old.get(key)!r} -> {new.get(key)!r}")
    return diffs


def same_file(a: Any, b: Any) -> bool:
    """Whether paths ``a`` and ``b`` name the same file (relative ones from the current
    folder; the file need not exist any more)."""
    if not isinstance(a, str) or not isinstance(b, str):
        return a == b
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    try:
        if pa.exists() and pb.exists():
            return os.path.samefile(pa, pb)
        return pa.resolve() == pb.resolve()
    except (OSError, RuntimeError):  # unreadable, or a symlink loop
        return False


def _unread_by_schedule(key: str, old: dict, new: dict) -> bool:
    """``optim.milestones`` etc. when the section's schedule, the same then and now, does not
    read them (configs of runs started before such settings were refused)."""
    section, _, name = key.partition(".")
    if section not in ("optim", "finetune") or name not in SCHEDULE_KEYS:
        return False
    schedule = old.get(f"{section}.schedule")
    return schedule == new.get(f"{section}.schedule") and schedule not in SCHEDULE_KEYS[name]


def _kept_statistics(old: Any, new: Any, ignored: tuple[list, list] | None) -> bool:
    """Whether ``data.normalize`` going from ``old`` (the state's config) to ``new`` changes
    nothing for a run whose ``data.normalize`` its sgcnn ignored (``ignored``: ``(given,
    trained)``): both are the ignored value (which the CLI replaces: see
    :func:`keep_trained_statistics`), the statistics the run trained with, or unset (the
    data's own). What the data are then normalised with is checked against the state's
    record (:func:`sgcnn.data.config.check_same_data`)."""
    if ignored is None:
        return False
    given, trained = ignored

    def kept(value: Any) -> bool:
        return value is None or same_normalize(value, trained) or same_normalize(value, given)

    return kept(old) and kept(new)


def ignored_normalize(run_dir: Path) -> tuple[list, list] | None:
    """``(given, trained)`` when ``run_dir`` was started by an sgcnn that ignored its
    ``data.normalize``: before that setting applied to every dataset, it was used only for
    image folders of small images, so a run on mnist, cifar10, synthetic data (...) with it
    set trained on the data's own statistics. Its ``config.yaml`` gives ``given``; its state
    records ``trained``, what it really used (a run of this sgcnn records what it gives).
    None for any other run, or when the folder, its config or its state cannot be read
    (resuming says why)."""
    try:
        data = read_run_config(run_dir).get("data")
    except SgcnnError:
        return None
    given = data.get("normalize") if isinstance(data, dict) else None
    if given is None:
        return None
    trained = recorded_normalize(_state_record(run_dir / STATE_FILE))
    if trained is None or same_normalize(given, trained):
        return None
    return given, trained


def _state_record(path: Path) -> dict | None:
    """The data record of the state ``path`` (mapped, not read whole: only the record is
    needed); None when it cannot be read."""
    import torch

    for mmap in (True, False):  # mapping needs the zip format every state is saved in
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except Exception:  # unreadable: resuming reads it again and says why
            continue
        record = state.get("data") if isinstance(state, dict) else None
        return record if isinstance(record, dict) else None
    return None


def keep_trained_statistics(run_dir: Path, config: Config) -> str | None:
    """Before resuming ``run_dir`` with ``config``: a run whose ``data.normalize`` its sgcnn
    ignored (:func:`ignored_normalize`) goes on with the statistics it trained with, when
    ``config`` gives the ignored value again (the command that started it): its
    ``data.normalize`` becomes them. Returns a note saying so (None when nothing changed).

    The same on every process of a distributed run (each reads the same files)."""
    ignored = ignored_normalize(run_dir)
    if ignored is None or not same_normalize(config.data.normalize, ignored[0]):
        return None
    given, trained = ignored
    config.data.normalize = [list(trained[0]), list(trained[1])]
    return (
        f"note: {str(run_dir)!r} was started with data.normalize {given}, which the sgcnn that "
        f"started it ignored for {config.data.name!r} data: it trained with the data's own "
        f"statistics (mean {_rounded(trained[0])} / std {_rounded(trained[1])}), recorded in "
        "its state, and goes on with them"
    )


def _rounded(values: list) -> list:
    return [round(float(v), 6) for v in values]


def check_resume(run_dir: Path, saved_config: dict, config: Config) -> None:
    """Resuming ``run_dir`` with ``config`` must not change anything that shapes the results.

    A changed name or report setting (:data:`COSMETIC`) is noted: the run's report keeps those
    of its ``config.yaml``."""
    diffs = config_differences(saved_config, config)
    if any(diff.startswith("data.normalize:") for diff in diffs):  # its state tells if harmless
        diffs = config_differences(saved_config, config, ignored_normalize(run_dir))
    if diffs:
        shown = "; ".join(diffs[:6]) + (f"; and {len(diffs) - 6} more" if len(diffs) > 6 else "")
        raise SgcnnError(
            f"cannot resume {str(run_dir)!r} with a different config ({shown}). Resume with the "
            f"recipe and --set options the run was started with (see {run_dir / CONFIG_FILE}), "
            "or start a new run in another --output folder."
        )
    old, new = flatten(saved_config), flatten(config_to_dict(config))
    renamed = [key for key in sorted(COSMETIC) if key in old and old[key] != new.get(key)]
    if renamed:
        print(
            f"note: {', '.join(renamed)} changed since the run started; its report keeps "
            f"those of {run_dir / CONFIG_FILE}",
            file=sys.stderr,
        )


def require_run_dir(run_dir: Path) -> None:
    """``run_dir`` must be a run folder (for --resume and `sgcnn report`)."""
    if not run_dir.is_dir():
        raise SgcnnError(f"run folder {str(run_dir)!r} does not exist")
    missing = [f for f in (CONFIG_FILE, METRICS_FILE) if not (run_dir / f).is_file()]
    if missing:
        raise SgcnnError(f"{str(run_dir)!r} is not an sgcnn run folder (no {', '.join(missing)})")


def read_run_config(run_dir: Path) -> dict:
    """The config ``run_dir`` was started with (its ``config.yaml``, as plain YAML)."""
    require_run_dir(run_dir)
    path = run_dir / CONFIG_FILE
    try:
        data = yaml.safe_load(read_text(path, "run config"))
    except yaml.YAMLError as err:
        raise SgcnnError(f"{str(path)!r} is not valid YAML: {yaml_problem(err)}") from err
    if not isinstance(data, dict):
        raise SgcnnError(f"{str(path)!r} is not a config (a YAML mapping); the file is damaged")
    return data


def remove_stale_temporaries(run_dir: Path) -> None:
    """Delete the temporaries of writes that a killed process never finished
    (``.<name>.<random>.tmp`` beside the file being replaced)."""
    for tmp in [*run_dir.glob(".*.tmp"), *run_dir.glob("*/.*.tmp")]:
        if tmp.is_file():
            tmp.unlink(missing_ok=True)


def lock_run_dir(run_dir: Path) -> int:
    """Take an exclusive lock on ``run_dir`` for this process (released when the returned
    descriptor is closed, or the process ends); a second process gets a clear error."""
    fd = os.open(run_dir, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise SgcnnError(
            f"run folder {str(run_dir)!r} is in use by another sgcnn process; wait for it to "
            "finish (or stop it) before resuming"
        ) from None
    return fd
