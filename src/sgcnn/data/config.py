"""Typed configuration of the data pipeline and the splits it returns."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch.utils.data import Dataset

from sgcnn.errors import SgcnnError


@dataclass
class DataConfig:
    """Which dataset to load and how.

    Every dataset comes back as three splits: ``train`` (augmented when ``augment``), ``val``
    (carved from the training data, stratified, for model selection) and ``test`` (held out,
    evaluated and reported separately, never used to pick a checkpoint).
    """

    name: str = "mnist5k"  # mnist5k | mnist | cifar10 | cifar100 | imagefolder | synthetic
    root: str | None = None  # data folder (torchvision sets) or ImageFolder tree / tar archive
    download: bool = False  # torchvision sets: download only when asked (needs the internet)
    val_fraction: float = 0.1  # fraction of the training data held out for validation, [0, 1)
    split_seed: int = 0  # seed of the stratified validation split (and of synthetic images)
    image_size: int | None = None  # pixels (square); None keeps the dataset's native size
    augment: bool = True  # training augmentation (random crop / flip) on or off
    cache_dir: str | None = None  # extracted archives, decoded images; None: $SGCNN_CACHE
    # imagefolder only: use just these class folders, labelled in this order (e.g. one domain
    # of a dataset split by class); None: every class folder of train/.
    classes: list[str] | None = None
    # [mean, std] per channel (in [0, 1]) to normalise with instead of the dataset's own
    # (measured on train/, or fixed); `sgcnn eval` takes the ones a checkpoint trained with.
    normalize: list[list[float]] | None = None
    # synthetic only:
    num_classes: int = 10  # number of classes
    channels: int = 3  # image channels
    synthetic_size: int = 512  # images in the synthetic train split (val and test: a quarter)


@dataclass
class DatasetSplits:
    """The three splits of a dataset and what a model needs to know about them.

    Items of every split are ``(image, label)``: a float32 tensor ``[C, H, W]`` normalised with
    ``mean`` / ``std`` (per channel), and an ``int`` class index in ``[0, num_classes)``.
    """

    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    input_size: tuple[int, int, int]  # (channels, height, width) of every image
    classes: list[str]  # class names, index = label
    mean: tuple[float, ...] = field(default=())  # per-channel mean used to normalise, in [0, 1]
    std: tuple[float, ...] = field(default=())  # per-channel std used to normalise
    # True when items are slices of an in-memory tensor: loading is cheap and DataLoader
    # worker processes only add overhead (num_workers=0 is fastest). False: decoded per item.
    in_memory: bool = False


def data_record(splits: DatasetSplits) -> dict:
    """What a model trained on ``splits`` depends on beyond its weights, recorded with it: the
    class names (label order), the normalisation, the image size and the split sizes."""
    return {
        "classes": list(splits.classes),
        "mean": [float(m) for m in splits.mean],
        "std": [float(s) for s in splits.std],
        "input_size": list(splits.input_size),
        "sizes": [len(splits.train), len(splits.val), len(splits.test)],
    }


def check_same_data(recorded: dict | None, splits: DatasetSplits, what: str) -> None:
    """``splits`` must be the data ``recorded`` (:func:`data_record`) was taken from: the same
    classes in the same order, image size, split sizes and normalisation. Raises
    :class:`~sgcnn.errors.SgcnnError` naming what changed (a record from an older sgcnn, None,
    is not checked)."""
    if not recorded:
        return
    now = data_record(splits)
    changed = [
        f"{key} {_short(recorded[key])} -> {_short(now[key])}"
        for key in ("classes", "input_size", "sizes", "mean", "std")
        if key in recorded
        and not (same_classes if key == "classes" else _same)(recorded[key], now[key])
    ]
    if not changed:
        return
    advice = "give the same dataset (data.root, data.classes, data.val_fraction as it was)"
    trained = recorded_normalize(recorded)
    if trained is not None and all(c.split(" ", 1)[0] in ("mean", "std") for c in changed):
        # Only the normalisation: also what a run started with a data.normalize that an older
        # sgcnn ignored for its dataset meets when resumed with that value (the CLI replaces
        # it: sgcnn.engine.rundir.keep_trained_statistics).
        values = ", ".join("[" + ", ".join(f"{v:.6g}" for v in row) + "]" for row in trained)
        advice += (
            "; a run started with a data.normalize that an older sgcnn ignored for its "
            f"dataset trained with the recorded statistics: resume it with data.normalize="
            f"[{values}]"
        )
    shown = "; ".join(changed)
    raise SgcnnError(f"the data are not those {what} was made with ({shown}); {advice}")


def as_trained(data: dict, record: dict | None) -> dict:
    """A saved ``data`` section (a run's config: the settings as the user wrote them) reused
    for a checkpoint whose data ``record`` (:func:`data_record`) it carries, with
    ``normalize`` set to the statistics the weights were really trained with.

    Before ``data.normalize`` applied to every dataset, sgcnn accepted it everywhere but used
    it only for image folders of small images: a run on mnist, cifar10, synthetic data (...)
    with ``data.normalize`` set was trained on the data's own statistics, which its record
    holds. A section without ``normalize`` (the data's own, which the checks compare with the
    record), or a record without statistics, leaves ``data`` as it is. A ``data.normalize``
    given on the command that reuses the section is laid over it, and stands."""
    data = dict(data)
    trained = recorded_normalize(record)
    if data.get("normalize") is not None and trained is not None:
        data["normalize"] = trained
    return data


def ignored_normalize_note(data: dict, record: dict | None, source: str) -> str | None:
    """A note for the user when :func:`as_trained` changes ``data``'s ``normalize`` (the run
    of checkpoint ``source`` set one that the sgcnn it ran on ignored); None otherwise."""
    given, trained = data.get("normalize"), recorded_normalize(record)
    if given is None or trained is None or same_normalize(given, trained):
        return None
    return (
        f"note: {source} was trained on data normalised with mean {_short(trained[0])} / std "
        f"{_short(trained[1])} (its data's own): the data.normalize {_short(given)} of its run "
        "was ignored by the sgcnn that trained it, so those statistics are used (--set "
        "data.normalize=[MEAN, STD] chooses others)"
    )


def recorded_normalize(record: dict | None) -> list[list[float]] | None:
    """``[mean, std]`` of a data ``record`` (None without them)."""
    if not isinstance(record, dict) or not record.get("mean") or not record.get("std"):
        return None
    return [[float(m) for m in record["mean"]], [float(s) for s in record["std"]]]


def same_normalize(a, b) -> bool:
    """Whether two ``data.normalize`` values (``[mean, std]`` or None) normalise alike."""
    if a is None or b is None:
        return a is None and b is None
    try:
        return len(a) == len(b) == 2 and all(close_values(x, y) for x, y in zip(a, b, strict=True))
    except (TypeError, ValueError):  # not [mean, std] lists of numbers: not alike
        return False


# torchvision names MNIST's classes "0 - zero" .. "9 - nine"; sgcnn records both MNIST sets
# (mnist, mnist5k) as "0" .. "9", and reads older records of the first kind as the same.
_MNIST_NAMES = [f"{d} - {w}" for d, w in enumerate(
    ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
)]  # fmt: skip


def same_classes(recorded: list, now: list) -> bool:
    """Whether class lists name the same classes in the same order (MNIST's two spellings of
    its digits are one)."""

    def canonical(names: list) -> list[str]:
        names = [str(n) for n in names]
        return [n.split(" - ")[0] for n in names] if names == _MNIST_NAMES else names

    return canonical(list(recorded)) == canonical(list(now))


def class_names_text(classes) -> str:
    """Up to 8 class names and the count, for messages: ``[cat, dog, ...] (10)``."""
    shown = ", ".join(map(str, list(classes)[:8]))
    return f"[{shown}{', ...' if len(classes) > 8 else ''}] ({len(classes)})"


def close_values(a, b) -> bool:
    """Lists of numbers equal to 1e-4 (statistics in [0, 1], saved and read back)."""
    return len(a) == len(b) and all(
        abs(float(x) - float(y)) <= 1e-4 for x, y in zip(a, b, strict=True)
    )


def _same(a, b) -> bool:
    if isinstance(a, list) and a and isinstance(a[0], float):
        return len(a) == len(b) and all(abs(x - y) <= 1e-4 for x, y in zip(a, b, strict=True))
    return list(a) == list(b)


def _short(value) -> str:
    text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."
