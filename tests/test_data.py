"""Datasets (sgcnn.data): split sizes, determinism, stratification, transforms, caches, errors."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from sgcnn.data import DataConfig, DatasetSplits, build_datasets, list_datasets
from sgcnn.data import imagefolder as imagefolder_module
from sgcnn.data.cache import archive_key
from sgcnn.data.splits import stratified_split
from sgcnn.data.tensor_dataset import Augment, _augment
from sgcnn.engine.build import build_data
from sgcnn.engine.config import Config
from sgcnn.errors import SgcnnError

CIFAR_ARCHIVE = Path(__file__).resolve().parents[2] / "shared/data/cifar10-jpeg.tar.gz"


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    """These tests inspect the cache: here it is ``tmp_path / "cache"`` (overrides conftest's)."""
    monkeypatch.setenv("SGCNN_CACHE", str(tmp_path / "cache"))


def _denormalise(x: torch.Tensor, splits: DatasetSplits) -> torch.Tensor:
    mean = torch.tensor(splits.mean).view(-1, 1, 1)
    std = torch.tensor(splits.std).view(-1, 1, 1)
    return x * std + mean


# ---------------------------------------------------------------- registry and config checks


def test_list_datasets_names_every_builtin():
    assert list_datasets() == sorted(
        ["mnist5k", "mnist", "cifar10", "cifar100", "imagefolder", "synthetic"]
    )


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(SgcnnError, match="unknown dataset 'cifar11'") as info:
        build_datasets(DataConfig(name="cifar11"))
    assert "cifar10" in str(info.value) and "mnist5k" in str(info.value)


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5, "0.1", True])
def test_val_fraction_outside_unit_interval_is_refused(fraction):
    with pytest.raises(SgcnnError, match=r"val_fraction must be a number in \[0, 1\)"):
        build_datasets(DataConfig(name="synthetic", val_fraction=fraction))


def test_bad_image_size_is_refused():
    with pytest.raises(SgcnnError, match="image_size"):
        build_datasets(DataConfig(name="synthetic", image_size=0))


# ---------------------------------------------------------------- stratified split


def test_stratified_split_keeps_class_shares_and_is_seeded():
    labels = np.repeat(np.arange(4), [100, 50, 30, 20])
    kept, held = stratified_split(labels, 0.1, seed=3)
    assert len(held) == 20 and len(kept) == 180
    assert np.bincount(labels[held], minlength=4).tolist() == [10, 5, 3, 2]
    assert set(kept).isdisjoint(held) and len(set(kept) | set(held)) == 200
    again = stratified_split(labels, 0.1, seed=3)[1]
    other = stratified_split(labels, 0.1, seed=4)[1]
    assert np.array_equal(held, again) and not np.array_equal(held, other)


def test_stratified_split_never_takes_the_last_example_of_a_class():
    labels = np.array([0, 0, 0, 0, 1, 2])
    kept, held = stratified_split(labels, 0.5, seed=0)
    assert len(held) == 3 and set(labels[kept]) == {0, 1, 2}
    assert stratified_split(labels, 0.0, seed=0)[1].size == 0


# ---------------------------------------------------------------- mnist5k


def test_mnist5k_splits_are_stratified_disjoint_and_sized():
    splits = build_datasets(DataConfig())
    assert (len(splits.train), len(splits.val), len(splits.test)) == (3600, 400, 1000)
    assert np.bincount(splits.train.targets).tolist() == [360] * 10
    assert np.bincount(splits.val.targets).tolist() == [40] * 10
    assert np.bincount(splits.test.targets).tolist() == [100] * 10
    parts = [set(s.indices.tolist()) for s in (splits.train, splits.val, splits.test)]
    assert sum(len(p) for p in parts) == len(set.union(*parts)) == 5000
    assert splits.num_classes == 10 and splits.input_size == (1, 28, 28)
    assert splits.classes == [str(d) for d in range(10)] and splits.in_memory


def test_mnist5k_is_deterministic_and_test_split_ignores_split_seed():
    a, b = build_datasets(DataConfig()), build_datasets(DataConfig())
    c = build_datasets(DataConfig(split_seed=1))
    assert torch.equal(a.val.indices, b.val.indices)
    assert not torch.equal(a.val.indices, c.val.indices)
    assert torch.equal(a.test.indices, c.test.indices)
    assert torch.equal(a.test[7][0], b.test[7][0])


def test_mnist5k_items_are_normalised_float_images():
    splits = build_datasets(DataConfig())
    x, y = splits.test[0]
    assert x.dtype == torch.float32 and x.shape == (1, 28, 28) and isinstance(y, int)
    batch = torch.stack([splits.test[i][0] for i in range(500)])
    assert abs(batch.mean().item()) < 0.1 and abs(batch.std().item() - 1) < 0.1
    pixels = _denormalise(batch, splits)
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5


def test_mnist5k_augments_train_only():
    splits = build_datasets(DataConfig())
    torch.manual_seed(0)
    train_draws = [splits.train[5][0] for _ in range(8)]
    assert any(not torch.equal(train_draws[0], t) for t in train_draws[1:])
    assert torch.equal(splits.val[5][0], splits.val[5][0])
    plain = build_datasets(DataConfig(augment=False))
    assert torch.equal(plain.train[5][0], plain.train[5][0])


def test_mnist5k_image_size_override_and_dataloader_batches():
    splits = build_datasets(DataConfig(image_size=32))
    assert splits.input_size == (1, 32, 32)
    x, y = next(iter(DataLoader(splits.train, batch_size=64, shuffle=True)))
    assert x.shape == (64, 1, 32, 32) and y.dtype == torch.int64


def test_random_crop_and_flip_pick_a_window_of_the_padded_image():
    torch.manual_seed(0)
    x = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    out = _augment(x, Augment(pad=2, flip=True))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(16):
        windows = [padded[i, :, t : t + 8, s : s + 8] for t in range(5) for s in range(5)]
        candidates = windows + [w.flip(2) for w in windows]
        assert any(torch.equal(out[i], w) for w in candidates)
    assert not torch.equal(out, x)  # 16 images all left in place is vanishingly unlikely


# ---------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_sized_and_learnable():
    config = DataConfig(name="synthetic", num_classes=4, channels=2, image_size=16, augment=False)
    splits, again = build_datasets(config), build_datasets(config)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (512, 128, 128)
    assert splits.input_size == (2, 16, 16) and splits.num_classes == 4
    assert torch.equal(splits.test[3][0], again.test[3][0])
    train = torch.stack([splits.train[i][0] for i in range(len(splits.train))])
    labels = torch.tensor(splits.train.targets)
    centroids = torch.stack([train[labels == k].mean(0) for k in range(4)]).flatten(1)
    test = torch.stack([splits.test[i][0] for i in range(len(splits.test))]).flatten(1)
    predicted = torch.cdist(test, centroids).argmin(1)
    assert (predicted == torch.tensor(splits.test.targets)).float().mean() > 0.95


# ---------------------------------------------------------------- imagefolder


def _tree(root: Path, splits: dict[str, int], size: int = 12, mode: str = "RGB") -> Path:
    """Class k's images are solid colour (40 k + 20) + index, so labels can be read back."""
    for split, per_class in splits.items():
        for k, name in enumerate(["cat", "dog", "emu"]):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                value = 40 * k + 20 + i
                colour = value if mode == "L" else (value, value, value)
                Image.new(mode, (size, size), colour).save(folder / f"{i:03d}.png")
    return root


def _tarball(tree: Path, archive: Path, top: str = "top") -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tree, arcname=top)
    return archive


def test_imagefolder_small_tree_carves_validation_and_caches(tmp_path, monkeypatch):
    root = _tree(tmp_path / "tree", {"train": 8, "test": 2})
    config = DataConfig(name="imagefolder", root=str(root), val_fraction=0.25, augment=False)
    splits = build_datasets(config)
    assert splits.classes == ["cat", "dog", "emu"] and splits.input_size == (3, 12, 12)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (18, 6, 6)
    assert np.bincount(splits.val.targets).tolist() == [2, 2, 2]
    assert splits.test.targets == [0, 0, 1, 1, 2, 2]
    for dataset in (splits.train, splits.val, splits.test):
        x, y = dataset[len(dataset) - 1]
        assert x.shape == (3, 12, 12) and x.dtype == torch.float32
        value = _denormalise(x, splits)[0, 0, 0].item() * 255
        assert 40 * y + 20 <= round(value) < 40 * y + 28
    assert list((tmp_path / "cache" / "decoded").glob("*.pt"))

    def fail(*args):
        raise AssertionError("decoded again although cached")

    monkeypatch.setattr(imagefolder_module, "_decode_all", fail)
    again = build_datasets(config)
    assert torch.equal(again.test[1][0], splits.test[1][0])


def test_imagefolder_normalises_with_training_images_only(tmp_path):
    """Images carved for validation stay out of the mean / std the model is trained with."""
    from sgcnn.data.tensor_dataset import channel_stats

    root = _tree(tmp_path / "tree", {"train": 8, "test": 2})
    config = DataConfig(name="imagefolder", root=str(root), val_fraction=0.25, augment=False)
    splits = build_datasets(config)
    pixels = splits.train.images[splits.train.indices]
    assert (splits.mean, splits.std) == channel_stats(pixels)
    everything = build_datasets(replace(config, val_fraction=0.0))
    assert everything.mean != splits.mean  # every image has its own brightness


def test_imagefolder_uses_val_and_test_folders_when_both_exist(tmp_path):
    root = _tree(tmp_path / "tree", {"train": 4, "val": 3, "test": 2})
    splits = build_datasets(DataConfig(name="imagefolder", root=str(root)))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (12, 9, 6)


def test_imagefolder_lone_val_folder_is_the_test_split(tmp_path):
    root = _tree(tmp_path / "tree", {"train": 10, "val": 2})
    splits = build_datasets(DataConfig(name="imagefolder", root=str(root)))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (27, 3, 6)
    assert splits.train.augment == Augment(pad=4, flip=True) and splits.val.augment is None
    assert torch.equal(splits.val[0][0], splits.val[0][0])


def test_imagefolder_grayscale_images_have_one_channel(tmp_path):
    root = _tree(tmp_path / "tree", {"train": 4, "test": 1}, mode="L")
    splits = build_datasets(DataConfig(name="imagefolder", root=str(root), image_size=16))
    assert splits.input_size == (1, 16, 16) and splits.train[0][0].shape == (1, 16, 16)


def test_grayscale_images_are_rgb_for_a_model_of_three_channels(tmp_path):
    """Small gray images had one channel whatever the model (large ones are always RGB): a
    ResNet, or a transfer from one, could not use them, whatever the user set."""
    root = _tree(tmp_path / "tree", {"train": 4, "test": 1}, mode="L")
    config = DataConfig(name="imagefolder", root=str(root), augment=False)
    gray = build_datasets(config, model_channels=1)
    rgb = build_datasets(config, model_channels=3)
    assert gray.input_size == (1, 12, 12) and rgb.input_size == (3, 12, 12)
    x_gray, label = gray.test[0]
    x_rgb, same = rgb.test[0]
    assert label == same and x_rgb.shape == (3, 12, 12)
    for c in range(3):  # the gray plane in every channel, normalised alike
        torch.testing.assert_close(_denormalise(x_rgb, rgb)[c], _denormalise(x_gray, gray)[0])
    for model, channels in (("test_resnet", 3), ("lenet5", 1)):  # the pipeline's choice
        cfg = Config()
        cfg.model.name, cfg.data = model, config
        assert build_data(cfg).input_size[0] == channels


def test_an_rgb_tree_whose_first_image_is_grayscale_stays_rgb(tmp_path):
    root = _tree(tmp_path / "tree", {"train": 4, "test": 1})
    first = sorted((root / "train" / "cat").iterdir())[0]
    Image.open(first).convert("L").save(first)
    splits = build_datasets(DataConfig(name="imagefolder", root=str(root), augment=False))
    assert splits.input_size == (3, 12, 12) and splits.train[0][0].shape == (3, 12, 12)


def test_one_odd_sized_first_image_does_not_set_the_size_of_all(tmp_path):
    root = _tree(tmp_path / "tree", {"train": 4, "test": 1})
    first = sorted((root / "train" / "cat").iterdir())[0]
    Image.open(first).resize((8, 10)).save(first)
    splits = build_datasets(DataConfig(name="imagefolder", root=str(root), augment=False))
    assert splits.input_size == (3, 12, 12)


def test_a_full_disk_while_caching_warns_and_keeps_the_decoded_images(tmp_path, monkeypatch):
    from sgcnn.data import imagefolder

    def full(obj, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(imagefolder, "save_tensors", full)
    root = _tree(tmp_path / "tree", {"train": 4, "test": 1})
    with pytest.warns(UserWarning, match="No space left on device"):
        splits = build_datasets(DataConfig(name="imagefolder", root=str(root), augment=False))
    assert len(splits.test) == 3 and splits.input_size == (3, 12, 12)


def test_a_broken_link_in_a_class_folder_is_named(tmp_path):
    root = _tree(tmp_path / "tree", {"train": 4, "test": 1})
    (root / "train" / "dog" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    with pytest.raises(SgcnnError, match=r"cannot read image .*gone\.png"):
        build_datasets(DataConfig(name="imagefolder", root=str(root)))


def test_imagefolder_tarball_is_extracted_once_into_the_cache(tmp_path, monkeypatch):
    archive = _tarball(_tree(tmp_path / "tree", {"train": 4, "test": 2}), tmp_path / "t.tar.gz")
    config = DataConfig(name="imagefolder", root=str(archive))
    splits = build_datasets(config)
    assert splits.classes == ["cat", "dog", "emu"] and len(splits.test) == 6
    extracted = [p for p in (tmp_path / "cache" / "extracted").iterdir() if p.suffix != ".lock"]
    assert len(extracted) == 1 and (extracted[0] / "top" / "train" / "cat").is_dir()

    def fail(*args, **kwargs):
        raise AssertionError("extracted again although cached")

    monkeypatch.setattr(tarfile, "open", fail)
    assert len(build_datasets(config).train) == len(splits.train)


def test_concurrent_builds_share_one_extraction(tmp_path):
    archive = _tarball(_tree(tmp_path / "tree", {"train": 4, "test": 2}), tmp_path / "t.tar.gz")
    config = DataConfig(name="imagefolder", root=str(archive))
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(build_datasets, [config, config]))
    assert [len(r.train) for r in results] == [len(results[0].train)] * 2
    entries = [p.name for p in (tmp_path / "cache" / "extracted").iterdir()]
    assert [e for e in entries if not e.endswith(".lock")] == [archive_key(archive)]


def test_extraction_removes_temporaries_of_dead_processes(tmp_path):
    archive = _tarball(_tree(tmp_path / "tree", {"train": 2, "test": 1}), tmp_path / "t.tar.gz")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = tmp_path / "cache" / "extracted" / f".{archive_key(archive)}.tmp-{dead.pid}-x"
    orphan.mkdir(parents=True)
    build_datasets(DataConfig(name="imagefolder", root=str(archive)))
    assert not orphan.exists()


def test_imagefolder_large_images_get_imagenet_transforms(tmp_path):
    root = _tree(tmp_path / "tree", {"train": 4, "test": 1}, size=80)
    splits = build_datasets(DataConfig(name="imagefolder", root=str(root), image_size=48))
    assert splits.input_size == (3, 48, 48) and not splits.in_memory
    assert splits.mean == (0.485, 0.456, 0.406)
    x, y = splits.val[0]
    assert x.shape == (3, 48, 48) and isinstance(y, int)
    assert torch.equal(splits.val[0][0], x)  # eval transforms: deterministic
    assert splits.train[0][0].shape == (3, 48, 48)


# ---------------------------------------------------------------- imagefolder errors


def _cache_is_clean(tmp_path: Path) -> bool:
    """Nothing in the extraction cache but lock files."""
    extracted = tmp_path / "cache" / "extracted"
    return not extracted.exists() or all(p.suffix == ".lock" for p in extracted.iterdir())


def test_imagefolder_without_root_missing_root_and_plain_file(tmp_path):
    with pytest.raises(SgcnnError, match="needs root"):
        build_datasets(DataConfig(name="imagefolder"))
    with pytest.raises(SgcnnError, match="does not exist"):
        build_datasets(DataConfig(name="imagefolder", root=str(tmp_path / "nope")))
    note = tmp_path / "notes.txt"
    note.write_text("hello")
    with pytest.raises(SgcnnError, match="not a tar archive"):
        build_datasets(DataConfig(name="imagefolder", root=str(note)))


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads everything")
def test_imagefolder_unreadable_root(tmp_path):
    root = _tree(tmp_path / "tree", {"train": 1, "test": 1})
    root.chmod(0)
    try:
        with pytest.raises(SgcnnError, match="not readable"):
            build_datasets(DataConfig(name="imagefolder", root=str(root)))
    finally:
        root.chmod(0o755)


def test_imagefolder_tree_errors(tmp_path):
    empty = tmp_path / "empty"
    (empty / "train").mkdir(parents=True)
    (empty / "test").mkdir()
    with pytest.raises(SgcnnError, match="holds no class folders"):
        build_datasets(DataConfig(name="imagefolder", root=str(empty)))
    (empty / "train" / "cat").mkdir()
    with pytest.raises(SgcnnError, match=r"one class folder \(cat\); a classifier needs"):
        build_datasets(DataConfig(name="imagefolder", root=str(empty)))
    (empty / "train" / "dog").mkdir()
    with pytest.raises(SgcnnError, match="has no images"):
        build_datasets(DataConfig(name="imagefolder", root=str(empty)))
    no_train = tmp_path / "no_train"
    (no_train / "images").mkdir(parents=True)
    (no_train / "labels").mkdir()
    with pytest.raises(SgcnnError, match=r"no train/ folder .*found: images, labels"):
        build_datasets(DataConfig(name="imagefolder", root=str(no_train)))
    train_only = _tree(tmp_path / "train_only", {"train": 2})
    with pytest.raises(SgcnnError, match="neither val/ nor test/"):
        build_datasets(DataConfig(name="imagefolder", root=str(train_only)))
    stray = _tree(tmp_path / "stray", {"train": 2, "test": 1})
    (stray / "test" / "yak").mkdir()
    with pytest.raises(SgcnnError, match="class folders that train/ lacks: yak"):
        build_datasets(DataConfig(name="imagefolder", root=str(stray)))


def test_imagefolder_corrupt_image_is_named(tmp_path):
    root = _tree(tmp_path / "tree", {"train": 2, "test": 1})
    (root / "train" / "dog" / "001.png").write_bytes(b"not a png")
    with pytest.raises(SgcnnError, match=r"cannot read image .*dog.001\.png"):
        build_datasets(DataConfig(name="imagefolder", root=str(root)))


def test_corrupt_tarball_leaves_no_cache_behind(tmp_path):
    archive = _tarball(_tree(tmp_path / "tree", {"train": 20, "test": 2}), tmp_path / "t.tar.gz")
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(SgcnnError, match="corrupt or truncated"):
        build_datasets(DataConfig(name="imagefolder", root=str(truncated)))
    assert _cache_is_clean(tmp_path)
    garbage = tmp_path / "garbage.tar.gz"
    garbage.write_bytes(b"\x1f\x8b" + os.urandom(500))
    with pytest.raises(SgcnnError, match="corrupt or truncated"):
        build_datasets(DataConfig(name="imagefolder", root=str(garbage)))
    assert _cache_is_clean(tmp_path)


def test_tarball_member_escaping_the_folder_is_refused(tmp_path):
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        data = b"gotcha"
        info = tarfile.TarInfo("../escaped.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(SgcnnError, match=f"cannot extract {archive}"):
        build_datasets(DataConfig(name="imagefolder", root=str(archive)))
    assert not (tmp_path / "cache" / "escaped.txt").exists() and _cache_is_clean(tmp_path)


# ---------------------------------------------------------------- torchvision sets


@pytest.mark.parametrize("name", ["mnist", "cifar10", "cifar100"])
def test_torchvision_set_missing_without_download(tmp_path, name):
    with pytest.raises(SgcnnError, match=r"not found under .*--set data\.download=true"):
        build_datasets(DataConfig(name=name, root=str(tmp_path / "data")))


def _idx(path: Path, array: np.ndarray) -> None:
    magic = 0x0800 | array.ndim  # idx format, unsigned bytes
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_mnist_from_local_files_uses_eval_transforms_for_validation(tmp_path):
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 100), ("t10k", 20)):
        _idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    splits = build_datasets(DataConfig(name="mnist", root=str(tmp_path / "data")))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (90, 10, 20)
    assert np.bincount(splits.val.targets).tolist() == [1] * 10
    assert splits.input_size == (1, 28, 28) and splits.num_classes == 10
    assert splits.val.augment is None and splits.train.augment == Augment(pad=2)
    assert torch.equal(splits.val[0][0], splits.val[0][0])


def _mnist_files(root: Path) -> Path:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 100), ("t10k", 20)):
        _idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    return raw


def test_both_mnist_sets_name_their_digits_alike(tmp_path):
    """A model of mnist5k is evaluated on mnist and back: their class names agree, and an older
    record's torchvision spelling ("0 - zero") is the same classes."""
    from sgcnn.data.config import same_classes

    _mnist_files(tmp_path / "data")
    mnist = build_datasets(DataConfig(name="mnist", root=str(tmp_path / "data")))
    assert mnist.classes == build_datasets(DataConfig(name="mnist5k")).classes
    spelled = ["0 - zero", "1 - one", "2 - two", "3 - three", "4 - four", "5 - five", "6 - six",
               "7 - seven", "8 - eight", "9 - nine"]  # fmt: skip
    assert same_classes(spelled, mnist.classes) and not same_classes(spelled[::-1], mnist.classes)


def test_a_damaged_mnist_file_is_one_clear_error(tmp_path):
    raw = _mnist_files(tmp_path / "data")
    (raw / "train-labels-idx1-ubyte").write_bytes(b"")
    with pytest.raises(SgcnnError, match="corrupt, incomplete or missing"):
        build_datasets(DataConfig(name="mnist", root=str(tmp_path / "data")))


@pytest.mark.parametrize(
    "config",
    [
        DataConfig(name="mnist5k", normalize=[[0.5], [0.25]]),
        DataConfig(name="synthetic", synthetic_size=20, normalize=[[0.5] * 3, [0.25] * 3]),
    ],
    ids=["mnist5k", "synthetic"],
)
def test_normalize_replaces_any_datasets_own_statistics(config):
    own = build_datasets(replace(config, normalize=None))
    given = build_datasets(config)
    assert given.mean == (0.5,) * len(given.mean) and given.std == (0.25,) * len(given.std)
    for mine, theirs in ((given.val, own.val), (given.test, own.test)):
        pixel = _denormalise(theirs[0][0], own)  # in [0, 1]
        assert torch.allclose(mine[0][0], (pixel - 0.5) / 0.25, atol=1e-4)


def test_normalize_applies_to_large_images_too(tmp_path):
    tree = _tree(tmp_path / "tree", {"train": 2, "test": 1}, size=80)
    given = build_datasets(
        DataConfig(name="imagefolder", root=str(tree), normalize=[[0.5] * 3, [0.25] * 3])
    )
    assert given.mean == (0.5,) * 3
    pixel = (40 * 0 + 20 + 0) / 255  # the cat test image, solid colour
    expected = torch.full((3, 224, 224), (pixel - 0.5) / 0.25)
    assert torch.allclose(given.test[0][0], expected, atol=1e-5)
    with pytest.raises(SgcnnError, match="the images have 3 channel"):
        build_datasets(DataConfig(name="imagefolder", root=str(tree), normalize=[[0.5], [0.2]]))


# ---------------------------------------------------------------- real data (slow)


@pytest.mark.slow
@pytest.mark.skipif(not CIFAR_ARCHIVE.is_file(), reason="CIFAR-10 JPEG archive absent")
def test_cifar10_jpeg_archive(tmp_path):
    splits = build_datasets(DataConfig(name="imagefolder", root=str(CIFAR_ARCHIVE)))
    assert splits.num_classes == 10 and "airplane" in splits.classes
    assert (len(splits.train), len(splits.val), len(splits.test)) == (45000, 5000, 10000)
    assert np.bincount(splits.val.targets).tolist() == [500] * 10
    assert splits.input_size == (3, 32, 32) and splits.in_memory
    for mean, cifar in zip(splits.mean, (0.4914, 0.4822, 0.4465), strict=True):
        assert abs(mean - cifar) < 0.01
    x, y = next(iter(DataLoader(splits.train, batch_size=128, shuffle=True)))
    assert x.shape == (128, 3, 32, 32) and y.max() < 10


def test_downloads_of_one_set_take_turns(tmp_path, monkeypatch):
    """Two processes (DDP ranks) asked to download the same set: one at a time, so the second
    neither writes into the first's files nor removes them when it fails."""
    import threading
    import time

    from sgcnn.data import torchvision_sets

    spans = []

    def slow(root, train, download):
        start = time.monotonic()
        time.sleep(0.2)
        spans.append((start, time.monotonic()))
        raise RuntimeError("offline")

    source = torchvision_sets.SOURCES["mnist"]
    monkeypatch.setitem(torchvision_sets.SOURCES, "mnist", replace(source, cls=slow))
    monkeypatch.setenv("SGCNN_CACHE", str(tmp_path / "cache"))
    config = DataConfig(name="mnist", root=str(tmp_path / "data"), download=True)

    def attempt():
        with pytest.raises(SgcnnError):
            build_datasets(config)

    threads = [threading.Thread(target=attempt) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    first, second = sorted(spans)
    assert second[0] >= first[1]  # the second began after the first had finished


def test_a_failed_download_leaves_no_folders_behind(tmp_path, monkeypatch):
    from sgcnn.data import torchvision_sets

    def fail(root, train, download):  # as torchvision does: folders first, then the network
        (Path(root) / "MNIST" / "raw").mkdir(parents=True)
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    source = torchvision_sets.SOURCES["mnist"]
    monkeypatch.setitem(torchvision_sets.SOURCES, "mnist", replace(source, cls=fail))
    root = tmp_path / "data"
    with pytest.raises(SgcnnError, match="could not download mnist"):
        build_datasets(DataConfig(name="mnist", root=str(root), download=True))
    assert not root.exists()
    root.mkdir()  # a folder the user had stays, empty as it was
    with pytest.raises(SgcnnError, match="could not download mnist"):
        build_datasets(DataConfig(name="mnist", root=str(root), download=True))
    assert root.is_dir() and not any(root.iterdir())


def test_two_folders_of_equal_names_sizes_and_times_never_share_decoded_images(tmp_path):
    """Archives packed with fixed modification times give two trees equal relative paths, byte
    sizes (uncompressed images) and times: each still decodes its own pixels."""
    means = []
    for parent, offset in (("one", 0), ("two", 100)):
        tree = tmp_path / parent / "data"
        for split in ("train", "test"):
            for k, name in enumerate(["cat", "dog"]):
                folder = tree / split / name
                folder.mkdir(parents=True)
                for i in range(3):
                    image = folder / f"{i}.ppm"
                    Image.new("RGB", (8, 8), (offset + 40 * k + i,) * 3).save(image)
                    os.utime(image, ns=(0, 0))
        splits = build_datasets(DataConfig(name="imagefolder", root=str(tree), augment=False))
        means.append(round(splits.mean[0] * 255))
    assert means[1] - means[0] == 100  # the second tree is 100 brighter everywhere


def test_sixteen_bit_grayscale_images_are_scaled_not_clipped(tmp_path):
    """PIL clips 16-bit values at 255 when converting; the tree's pixels keep their range."""
    for split in ("train", "test"):
        for k, name in enumerate(["dark", "light"]):
            folder = tmp_path / "tree" / split / name
            folder.mkdir(parents=True)
            for i in range(2):
                value = 257 * (60 + 100 * k + i)  # 8-bit 60 / 160 in 16 bits
                Image.fromarray(np.full((8, 8), value, np.uint16)).save(folder / f"{i}.png")
    splits = build_datasets(
        DataConfig(name="imagefolder", root=str(tmp_path / "tree"), augment=False)
    )
    assert splits.input_size == (1, 8, 8)
    pixels = sorted(round(float(_denormalise(x, splits)[0, 0, 0]) * 255) for x, _ in splits.test)
    assert pixels == [60, 61, 160, 161]


def test_float_images_are_refused_with_the_file_named(tmp_path):
    for split in ("train", "test"):
        for name in ("a", "b"):
            folder = tmp_path / "tree" / split / name
            folder.mkdir(parents=True)
            Image.fromarray(np.full((8, 8), 0.5, np.float32)).save(folder / "0.tif")
    with pytest.raises(SgcnnError, match=r"cannot read image .*0\.tif: 32-bit float image"):
        build_datasets(DataConfig(name="imagefolder", root=str(tmp_path / "tree")))
