"""Test-session setup: one torch thread per pytest worker (CI runs two workers on two cores)."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("OMP_WAIT_POLICY", "passive")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test that takes an ``isa`` argument runs once per ISA this host can execute (``runnable_isas``: an
    AVX-512 machine runs avx512, avx2 and generic), so every kernel path is tested on every CI machine."""
    if "isa" in metafunc.fixturenames:
        from latprune.engine.isa import runnable_isas

        metafunc.parametrize("isa", runnable_isas())


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and two workers with two threads each oversubscribe the
    machine (on a busy one, 10x slower); one thread also keeps reductions in a deterministic order. Restored
    after each test, so a test that sets its own thread count cannot leak it into the next."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_fake_fashion_mnist(root: Path, n_train: int, n_test: int, classes: int = 10, gz: bool = False) -> Path:
    """Tiny 28x28 IDX files under Fashion-MNIST's names; class ``c`` has a bright 7x7 patch, so it is learnable."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % classes
        images = rng.integers(0, 80, size=(n, 28, 28))
        for c in range(classes):
            r, q = divmod(c % 16, 4)
            images[labels == c, r * 7 : r * 7 + 7, q * 7 : q * 7 + 7] += 150
        for kind, arr in (("images-idx3", images), ("labels-idx1", labels)):
            header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
            data = header + arr.astype(np.uint8).tobytes()
            name = f"{prefix}-{kind}-ubyte"
            if gz:
                with gzip.open(root / f"{name}.gz", "wb") as f:
                    f.write(data)
            else:
                (root / name).write_bytes(data)
    return root


@pytest.fixture(scope="session")
def fake_fashion_mnist():
    """The :func:`write_fake_fashion_mnist` writer, for tests that need Fashion-MNIST-shaped files."""
    return write_fake_fashion_mnist
