"""Image folders too large for memory, streamed by DataLoader workers: the same splits, subsets and batches as
when held in memory, one sentence for a corrupt image, and memory that stays under a cap the folder exceeds."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from latprune.data import DataConfig, FolderData, ImageData, class_subset, in_memory, load_splits, make_loader
from latprune.errors import DataError


def write_noise_folder(root: Path, per_class: int, val: int = 4, size: tuple[int, int] = (10, 8)) -> Path:
    """root/train/<class>/*.png and root/val/<class>/*.png of random pixels (so any mix-up of images shows)."""
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", val)):
        for cls in ("ant", "bee", "cat"):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:04d}.png")
    return root


def _splits(monkeypatch, root: Path, streamed: bool, workers: int = 2):
    monkeypatch.setenv("LATPRUNE_DATA_IN_MEMORY", "0" if streamed else str(2**40))
    monkeypatch.setenv("LATPRUNE_DATA_WORKERS", str(workers))
    return load_splits(DataConfig(str(root), val_per_class=2, image_size=12))


def _epochs(loader, epochs: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out = []
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        out += list(loader)
    return out


def _assert_same(a, b) -> None:
    assert len(a) == len(b) > 0
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_a_streamed_folder_gives_the_splits_subsets_and_batches_of_one_in_memory(tmp_path, monkeypatch):
    root = write_noise_folder(tmp_path / "bugs", per_class=10)
    mem, streamed = _splits(monkeypatch, root, False), _splits(monkeypatch, root, True)
    assert isinstance(streamed.train, FolderData) and isinstance(mem.train, ImageData)
    assert streamed.info == mem.info
    for name in ("train", "val", "test"):  # the same seeded validation split, the same test set
        a, b = getattr(mem, name), getattr(streamed, name)
        assert torch.equal(a.labels, b.labels) and torch.equal(in_memory(b).images, a.images)
    # Deterministic class/sample subsets select the same images.
    pick = class_subset(mem.train.labels, 2, 3, seed=5)
    assert torch.equal(in_memory(streamed.train.subset(pick)).images, mem.train.subset(pick).images)
    # Training batches (shuffled, augmented from the epoch's generator) and evaluation batches are identical.
    for train in (True, False):
        a = make_loader(mem.train, mem.info, 5, train=train, seed=3)
        b = make_loader(streamed.train, streamed.info, 5, train=train, seed=3)
        _assert_same(_epochs(a), _epochs(b))
    # Under torchrun each rank decodes only its share, and still gets the in-memory rank's batches.
    for rank in range(2):
        a = make_loader(mem.train, mem.info, 6, train=True, seed=3, rank=rank, world_size=2)
        b = make_loader(streamed.train, streamed.info, 6, train=True, seed=3, rank=rank, world_size=2)
        _assert_same(_epochs(a), _epochs(b))
    b = make_loader(streamed.train.to("cpu"), streamed.info, 30, train=False)
    assert [len(y) for _, y in b] == [24]  # 3 classes x (10 - 2 validation) images


def test_a_corrupt_image_in_a_streamed_folder_is_one_sentence(tmp_path, monkeypatch):
    root = write_noise_folder(tmp_path / "bugs", per_class=6)
    bad = root / "train" / "bee" / "0003.png"
    bad.write_bytes(bad.read_bytes()[:30])
    splits = _splits(monkeypatch, root, True, workers=2)
    with pytest.raises(DataError, match=r"0003\.png' cannot be decoded .*truncated or corrupt") as info:
        list(make_loader(splits.train, splits.info, 4, train=False))
    assert "\n" not in str(info.value) and "Traceback" not in str(info.value)
    # A PNG whose header claims 60000 x 60000 pixels: PIL refuses to decode it, in one sentence here too.
    ihdr = struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)
    chunks = [(b"IHDR", ihdr), (b"IDAT", zlib.compress(b"\0" * 100)), (b"IEND", b"")]
    png = b"\x89PNG\r\n\x1a\n" + b"".join(
        struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d)) for t, d in chunks
    )
    bad.write_bytes(png)
    with pytest.raises(DataError, match=r"0003\.png' declares over .* pixels \(a decompression bomb"):
        list(make_loader(splits.train, splits.info, 4, train=False))


_PEAK_SCRIPT = """
import json, re, resource, sys
import torch
from latprune.data import DataConfig, load_splits, make_loader, normalize

def status(key):
    return int(re.search(key + r":\\s+(\\d+)", open("/proc/self/status").read()).group(1))

normalize(torch.zeros(8, 3, 224, 224, dtype=torch.uint8), (0.5,) * 3, (0.2,) * 3)  # warm up allocators
# Peak RSS from here on: ru_maxrss would include the pytest process this one was forked from (Linux keeps it
# across exec), so reset the high-water mark and read VmHWM.
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = status("VmRSS")
splits = load_splits(DataConfig(sys.argv[1], val_per_class=2, image_size=224))
seen = sum(len(y) for _, y in make_loader(splits.train, splits.info, 8, train=True))
workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # forked workers: they start at our size
print(json.dumps({"kind": type(splits.train).__name__, "seen": seen, "grew_kb": status("VmHWM") - before,
                  "before_kb": before, "workers_kb": workers}))
"""


def test_a_folder_larger_than_the_memory_cap_streams_within_it(tmp_path):
    """600 images at 224 pixels decode to 90 MB; streamed, a pass of training batches grows the process (peak RSS)
    by less than a 48 MB cap, and no worker holds more either. Held in memory, the same pass exceeds the cap."""
    root = write_noise_folder(tmp_path / "big", per_class=200)  # 3 x 200 = 600 training images
    decoded = 600 * 3 * 224 * 224
    cap_kb = 48 * 1024
    assert decoded > 1.5 * cap_kb * 1024

    def peak(streamed: bool) -> dict:
        env = dict(os.environ, LATPRUNE_DATA_WORKERS="2", LATPRUNE_DATA_IN_MEMORY="0" if streamed else str(2**40))
        proc = subprocess.run(
            [sys.executable, "-c", _PEAK_SCRIPT, str(root)], capture_output=True, text=True, env=env, timeout=600
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])

    streamed = peak(True)
    assert streamed["kind"] == "FolderData" and streamed["seen"] == 3 * (200 - 2)
    assert streamed["grew_kb"] < cap_kb, streamed
    assert streamed["workers_kb"] < streamed["before_kb"] + cap_kb, streamed  # a worker: forked, plus its batches
    held = peak(False)
    assert held["kind"] == "ImageData" and held["grew_kb"] > cap_kb, held  # the measurement can fail
