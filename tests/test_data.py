"""Dataset readers on generated files (IDX, CIFAR pickles, image folders), splits, subsets, augmentations, loader."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import re
import struct
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from PIL import Image

import latprune.data.datasets as datasets_mod
from latprune.data import (
    Augment,
    BatchLoader,
    DataConfig,
    ImageData,
    class_subset,
    find_dataset_root,
    load_dataset,
    load_splits,
    normalize,
    random_crop,
    random_hflip,
    read_cifar_batch,
    read_idx,
    stratified_split,
)
from latprune.errors import DataError

IDX_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    return header + array.astype(np.uint8).tobytes()


def write_idx_dataset(folder: Path, n_train: int = 40, n_test: int = 20, size: int = 28, gz: bool = True) -> None:
    """Write a Fashion-MNIST-shaped IDX dataset whose label is readable from the image (mean brightness)."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 20, (n, size, size)) + labels[:, None, None] * 20
        for stem, arr in ((f"{prefix}-images-idx3-ubyte", images), (f"{prefix}-labels-idx1-ubyte", labels)):
            data = idx_bytes(arr)
            if gz:
                (folder / f"{stem}.gz").write_bytes(gzip.compress(data))
            else:
                (folder / stem).write_bytes(data)


@pytest.fixture
def no_default_roots(monkeypatch, tmp_path):
    """Point $HOME and the system data folder at empty places so only $LATPRUNE_DATA can match."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(datasets_mod, "SYSTEM_DATA_DIR", tmp_path / "system")
    monkeypatch.delenv("LATPRUNE_DATA", raising=False)
    return tmp_path


# ---------------------------------------------------------------- IDX


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_round_trip(tmp_path, gz):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / ("x.gz" if gz else "x")
    path.write_bytes(gzip.compress(idx_bytes(array)) if gz else idx_bytes(array))
    out = read_idx(path)
    assert out.dtype == torch.uint8
    assert torch.equal(out, torch.from_numpy(array))


def test_truncated_idx_names_the_file(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(idx_bytes(np.zeros((5, 4, 4)))[:-7])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.*truncated"):
        read_idx(path)


def test_truncated_gzip_names_the_file(tmp_path):
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros(1000)))[:30])
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz.*truncated or corrupt"):
        read_idx(path)


def test_not_an_idx_file(tmp_path):
    path = tmp_path / "junk"
    path.write_bytes(b"\x89PNG junk")
    with pytest.raises(DataError, match=r"junk.*not an IDX file"):
        read_idx(path)


def test_find_root_order_and_missing_message(no_default_roots, monkeypatch):
    tmp = no_default_roots
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        find_dataset_root("fashion-mnist")
    system = tmp / "system" / "fashion-mnist"
    write_idx_dataset(system)
    assert find_dataset_root("fashion-mnist") == system
    cache = tmp / "home" / ".cache" / "latprune" / "data" / "fashion-mnist"
    write_idx_dataset(cache, gz=False)
    assert find_dataset_root("fashion_mnist") == cache  # alias, and the user cache wins over the system copy
    env = tmp / "env"
    write_idx_dataset(env / "fashion-mnist")
    monkeypatch.setenv("LATPRUNE_DATA", str(env))
    assert find_dataset_root("fashion-mnist") == env / "fashion-mnist"
    write_idx_dataset(env)
    assert find_dataset_root("fashion-mnist") == env  # the folder itself comes first


def test_incomplete_folder_is_skipped(no_default_roots, monkeypatch):
    env = no_default_roots / "env"
    write_idx_dataset(env)
    (env / "t10k-labels-idx1-ubyte.gz").unlink()
    monkeypatch.setenv("LATPRUNE_DATA", str(env))
    with pytest.raises(DataError, match="not found"):
        find_dataset_root("fashion-mnist")


def test_unknown_dataset_name():
    with pytest.raises(DataError, match="Unknown dataset 'nope-123'"):
        find_dataset_root("nope-123")


def test_load_idx_dataset_and_splits(no_default_roots, monkeypatch):
    env = no_default_roots / "env"
    write_idx_dataset(env, n_train=60, n_test=20)
    monkeypatch.setenv("LATPRUNE_DATA", str(env))
    data, info = load_dataset("fashion-mnist", train=True)
    assert data.images.shape == (60, 1, 28, 28) and data.images.dtype == torch.uint8
    assert data.labels.dtype == torch.int64 and data.labels.tolist()[:3] == [0, 1, 2]
    assert (info.num_classes, info.in_channels, info.input_size) == (10, 1, 28)
    splits = load_splits(DataConfig("fashion-mnist", val_per_class=2, split_seed=3))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (40, 20, 20)
    assert torch.bincount(splits.val.labels, minlength=10).tolist() == [2] * 10


def test_mismatched_idx_pair(no_default_roots, monkeypatch):
    env = no_default_roots / "env"
    write_idx_dataset(env)
    (env / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(7))))
    monkeypatch.setenv("LATPRUNE_DATA", str(env))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz' holds 7 labels for 20 images"):
        load_dataset("fashion-mnist", train=False)


def test_installed_fashion_mnist_if_present():
    """The real dataset (installed here by Debian's dataset-fashion-mnist) reads with its published sizes."""
    try:
        find_dataset_root("fashion-mnist")
    except DataError:
        pytest.skip("Fashion-MNIST is not installed on this machine")
    data, info = load_dataset("fashion-mnist", train=False)
    assert data.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(data.labels).tolist() == [1000] * 10
    # The published normalisation constants match the data to two decimals.
    assert float(data.images.float().mean() / 255) == pytest.approx(info.mean[0], abs=0.01)


# ---------------------------------------------------------------- CIFAR


def write_cifar_batch(path: Path, n: int, label_key: str, num_classes: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, num_classes, n)]
    path.write_bytes(pickle.dumps({b"data": data, label_key.encode(): labels, b"batch_label": b"x"}))
    return data


def test_cifar10_reader_layout(no_default_roots, monkeypatch):
    folder = no_default_roots / "env" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    first = write_cifar_batch(folder / "data_batch_1", 6, "labels", 10, 0)
    for i in range(2, 6):
        write_cifar_batch(folder / f"data_batch_{i}", 6, "labels", 10, i)
    write_cifar_batch(folder / "test_batch", 4, "labels", 10, 9)
    monkeypatch.setenv("LATPRUNE_DATA", str(no_default_roots / "env"))
    assert find_dataset_root("cifar10") == folder
    train, info = load_dataset("cifar10", train=True)
    test, _ = load_dataset("cifar-10", train=False)
    assert train.images.shape == (30, 3, 32, 32) and test.images.shape == (4, 3, 32, 32)
    assert info.in_channels == 3 and info.num_classes == 10
    # Rows are channel-major: bytes 0..1023 are red, 1024..2047 green; pixel (r, c) is at r * 32 + c.
    assert int(train.images[0, 0, 1, 2]) == int(first[0, 1 * 32 + 2])
    assert int(train.images[0, 1, 0, 0]) == int(first[0, 1024])
    assert int(train.images[1, 2, 31, 31]) == int(first[1, 3071])


def test_cifar100_reader(tmp_path, monkeypatch):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    write_cifar_batch(folder / "train", 8, "fine_labels", 100, 0)
    write_cifar_batch(folder / "test", 3, "fine_labels", 100, 1)
    monkeypatch.setenv("LATPRUNE_DATA", str(tmp_path))
    data, info = load_dataset("cifar100", train=False)
    assert data.images.shape == (3, 3, 32, 32) and info.num_classes == 100


def test_truncated_cifar_batch_names_the_file(tmp_path):
    path = tmp_path / "data_batch_3"
    write_cifar_batch(path, 5, "labels", 10, 0)
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(DataError, match=r"data_batch_3.*truncated or corrupt"):
        read_cifar_batch(path)


class _Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2's cPickle wrote str (SHORT_BINSTRING / BINSTRING), as in the published batches."""

    dispatch: ClassVar[dict] = dict(pickle._Pickler.dispatch)

    def save_bytes(self, obj: bytes) -> None:
        n = len(obj)
        self.write((pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_bytes


def _published_style_batch(entry: dict) -> bytes:
    """``entry`` pickled as the CIFAR archives are: protocol 2, Python 2 strings, numpy.core module names."""
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(entry)
    return buf.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")


@pytest.mark.parametrize("protocol", ["published", 2, 4, 5])
def test_genuine_cifar_batches_read_with_the_restricted_unpickler(tmp_path, protocol):
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, (7, 3072), dtype=np.uint8)
    entry = {
        b"batch_label": b"training batch 1 of 5",
        b"labels": [int(v) for v in rng.integers(0, 10, 7)],
        b"data": data,
        b"filenames": [f"img_{i}.png".encode() for i in range(7)],
    }
    raw = _published_style_batch(entry) if protocol == "published" else pickle.dumps(entry, protocol=protocol)
    if protocol == "published":
        assert b"numpy.core.multiarray\n_reconstruct" in raw and b"_codecs" not in raw
    (tmp_path / "data_batch_1").write_bytes(raw)
    images, labels = read_cifar_batch(tmp_path / "data_batch_1")
    assert torch.equal(images, torch.from_numpy(data.reshape(7, 3, 32, 32)))
    assert labels.tolist() == entry[b"labels"]


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _AlteredDtype:
    """A uint8 dtype whose pickled state sets NPY_ITEM_REFCOUNT: numpy would then treat the pixels as pointers."""

    def __reduce__(self):
        return (np.dtype, ("u1", False, True), (3, "|", None, None, None, -1, -1, 1))


def test_hostile_cifar_pickles_are_refused_before_anything_runs(tmp_path):
    marker = tmp_path / "marker"
    data = np.zeros((2, 3072), np.uint8)
    hostile = {
        "(posix|os).system": {b"data": data, b"labels": [0, 1], b"x": _Payload(marker)},
        "float64": {b"data": data.astype(np.float64), b"labels": [0, 1]},
        "object": {b"data": data, b"labels": np.array([0, _Payload(marker)], dtype=object)},
        "numpy.ma.core._mareconstruct": {b"data": np.ma.array(data), b"labels": [0, 1]},
        "zlib_codec": {b"data": data, b"labels": [0, 1]},
        "altered uint8 dtype": {b"data": data, b"labels": [0, 1], b"dtype": _AlteredDtype()},
    }
    for what, entry in hostile.items():
        raw = pickle.dumps(entry, protocol=2)
        if what == "zlib_codec":  # _codecs.encode asked to decompress: a codec other than latin1
            raw = raw.replace(b"X\x06\x00\x00\x00latin1", b"X\n\x00\x00\x00zlib_codec", 1)
            assert b"zlib_codec" in raw
        path = tmp_path / f"data_batch_{len(what)}"
        path.write_bytes(raw)
        with pytest.raises(DataError, match=rf"'{re.escape(str(path))}' holds .*{what}.*refused unread") as info:
            read_cifar_batch(path)
        assert "\n" not in str(info.value)
    assert not marker.exists()


# ---------------------------------------------------------------- image folders


def write_image_folder(root: Path, per_class: int = 3, size: tuple[int, int] = (20, 16)) -> None:
    for split in ("train", "val"):
        for cls, colour in (("cat", (250, 10, 10)), ("dog", (10, 10, 250))):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", size, colour).save(folder / f"{i}.png")


def test_image_folder_reader(tmp_path):
    write_image_folder(tmp_path / "pets")
    (tmp_path / "pets" / "train" / "dog" / "notes.txt").write_text("not an image")
    train, info = load_dataset(str(tmp_path / "pets"), train=True, image_size=12)
    val, _ = load_dataset(str(tmp_path / "pets"), train=False, image_size=12)
    assert train.images.shape == (6, 3, 12, 12) and len(val) == 6
    assert info.class_names == ("cat", "dog") and info.num_classes == 2 and info.input_size == 12
    assert train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    # Colours survive the resize: cats are red, dogs blue.
    assert int(train.images[0, 0].float().mean()) == 250 and int(train.images[5, 2].float().mean()) == 250


def test_corrupt_image_names_the_file(tmp_path):
    write_image_folder(tmp_path / "pets")
    bad = tmp_path / "pets" / "train" / "cat" / "1.png"
    bad.write_bytes(bad.read_bytes()[:20])
    with pytest.raises(DataError, match=r"1\.png.*truncated or corrupt"):
        load_dataset(str(tmp_path / "pets"), train=True, image_size=8)


def test_image_folder_without_test_split(tmp_path):
    folder = tmp_path / "flat" / "a"
    folder.mkdir(parents=True)
    Image.new("L", (8, 8), 3).save(folder / "x.png")
    data, _ = load_dataset(str(tmp_path / "flat"), train=True, image_size=8)
    assert data.images.shape == (1, 3, 8, 8)
    with pytest.raises(DataError, match="no val/ or test/ subfolder"):
        load_dataset(str(tmp_path / "flat"), train=False, image_size=8)


# ---------------------------------------------------------------- splits and subsets


def test_stratified_split_is_disjoint_exact_and_seeded():
    labels = torch.arange(300) % 3
    train, val = stratified_split(labels, 10, seed=1)
    assert set(train.tolist()).isdisjoint(val.tolist())
    assert sorted(train.tolist() + val.tolist()) == list(range(300))
    assert torch.bincount(labels[val]).tolist() == [10, 10, 10]
    again = stratified_split(labels, 10, seed=1)[1]
    other = stratified_split(labels, 10, seed=2)[1]
    assert torch.equal(val, again) and not torch.equal(val, other)
    with pytest.raises(DataError, match="too few"):
        stratified_split(labels, 100, seed=0)


def test_class_subset():
    labels = torch.arange(1000) % 20
    idx = class_subset(labels, num_classes=5, per_class=7, seed=4)
    counts = torch.bincount(labels[idx], minlength=20)
    assert int((counts > 0).sum()) == 5 and set(counts[counts > 0].tolist()) == {7}
    assert torch.equal(idx, class_subset(labels, 5, 7, seed=4))
    assert not torch.equal(idx, class_subset(labels, 5, 7, seed=5))
    assert len(class_subset(labels, None, None, seed=0)) == 1000
    with pytest.raises(DataError, match="asks for 21 classes"):
        class_subset(labels, 21, 1, seed=0)


# ---------------------------------------------------------------- transforms and loader


def test_random_crop_takes_a_window_of_the_padded_image():
    images = torch.randint(1, 256, (16, 2, 6, 5), dtype=torch.uint8)
    out = random_crop(images, 2, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    offsets = set()
    for i in range(16):
        hits = [(y, x) for y in range(5) for x in range(5) if torch.equal(padded[i, :, y : y + 6, x : x + 5], out[i])]
        assert hits, f"image {i} is not a crop of its padded self"
        offsets.update(hits)
    assert len(offsets) > 3  # offsets vary across the batch
    again = random_crop(images, 2, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    assert torch.equal(random_crop(images, 0, torch.Generator()), images)


def test_random_hflip_flips_some_images():
    images = torch.randint(0, 256, (64, 1, 4, 4), dtype=torch.uint8)
    out = random_hflip(images, torch.Generator().manual_seed(1))
    flipped = [torch.equal(out[i], images[i].flip(-1)) for i in range(64)]
    kept = [torch.equal(out[i], images[i]) for i in range(64)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert 10 < sum(flipped) < 54


def test_normalize():
    images = torch.tensor([0, 255], dtype=torch.uint8).view(1, 2, 1, 1).expand(1, 2, 2, 2)
    out = normalize(images, (0.0, 0.5), (1.0, 0.5))
    assert out.dtype == torch.float32
    assert torch.allclose(out[0, 0], torch.zeros(2, 2)) and torch.allclose(out[0, 1], torch.ones(2, 2))


def test_batch_loader_epochs_shards_and_determinism():
    data = ImageData(torch.arange(50, dtype=torch.uint8).view(50, 1, 1, 1), torch.arange(50))
    loader = BatchLoader(data, (0.0,), (1 / 255,), 8, shuffle=True, augment=Augment(0, True), seed=3)
    assert len(loader) == 7

    def order(ld: BatchLoader, epoch: int) -> list[int]:
        ld.set_epoch(epoch)
        batches = list(ld)
        for images, labels in batches:  # images and labels stay paired (pixel value == label here)
            assert torch.equal(images.view(-1).round().long(), labels)
        return [int(v) for _, y in batches for v in y]

    first = order(loader, 0)
    assert sorted(first) == list(range(50))
    assert order(loader, 0) == first and order(loader, 1) != first
    shards = [BatchLoader(data, (0.0,), (1 / 255,), 8, shuffle=True, seed=3, rank=r, world_size=2) for r in range(2)]
    parts = [order(s, 5) for s in shards]
    assert len(parts[0]) == len(parts[1]) == 25 and set(parts[0]).isdisjoint(parts[1])
    drop = BatchLoader(data, (0.0,), (1.0,), 8, drop_last=True)
    assert len(drop) == 6 and sum(len(y) for _, y in drop) == 48


def test_image_data_validates_shapes():
    with pytest.raises(DataError, match="uint8"):
        ImageData(torch.zeros(2, 1, 3, 3), torch.zeros(2, dtype=torch.long))
    with pytest.raises(DataError, match="3 labels do not match 2 images"):
        ImageData(torch.zeros(2, 1, 3, 3, dtype=torch.uint8), torch.zeros(3, dtype=torch.long))
