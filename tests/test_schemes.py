"""Every registered sparsity scheme, end to end: the engine has a kernel for it, recognises the masks pruning makes
with it, and its kernels compute what torch's conv2d computes on the masked weight."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from latprune.engine.detect import choose_kernel, detect_scheme, scheme_applies
from latprune.engine.kernels import ConvMeta, kernels_for, list_kernels
from latprune.engine.layer import run_layer
from latprune.errors import PlanError
from latprune.schemes import SchemeLayer, detection_order, get_scheme, layer_scheme, list_schemes, make_mask

#: Layers to try a scheme on, in order: the first one it applies to is where it is tested.
LAYERS = (
    ConvMeta(16, 16, 8, 8, 3, 3, 1, 1, 1, 1),  # 3x3 conv
    ConvMeta(16, 16, 8, 8),  # 1x1 conv
    ConvMeta(32, 16, 1, 1, is_linear=True),  # linear
)


def _layer_for(scheme: str) -> ConvMeta:
    for meta in LAYERS:
        if scheme_applies(scheme, meta):
            return meta
    raise AssertionError(f"scheme {scheme} applies to none of the test layers")


def _pruned_weight(scheme: str, meta: ConvMeta, seed: int = 0) -> np.ndarray:
    """A random weight with the mask ``make_mask`` gives it at 70% sparsity (or its scheme's minimum)."""
    shape = (meta.c_out, meta.c_in // meta.groups, meta.kh, meta.kw)
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    spec = get_scheme(scheme)
    sparsity = max(0.7, spec.min_sparsity) if spec.prunes else 0.0
    weight = w.reshape(shape[:2]) if meta.is_linear else w  # linear layers are masked as (out, in)
    mask = make_mask(scheme, weight, sparsity, layer=f"test.{scheme}").reshape(shape)
    return (w * mask).numpy()


def _conv2d(w: np.ndarray, b: np.ndarray, x: np.ndarray, meta: ConvMeta) -> np.ndarray:
    out = F.conv2d(
        torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), (meta.stride_h, meta.stride_w),
        (meta.pad_h, meta.pad_w), 1, meta.groups,
    )  # fmt: skip
    return out.numpy()


@pytest.mark.parametrize("scheme", list_schemes())
def test_the_engine_has_a_kernel_for_the_scheme(scheme):
    spec = get_scheme(scheme)
    meta = _layer_for(scheme)
    kernels = [k for fmt in spec.formats for k in kernels_for(fmt, meta)]
    assert kernels, f"no engine kernel runs {scheme}"
    assert all(k.name in list_kernels() for k in kernels)
    assert set(spec.formats) <= set(list_schemes())


@pytest.mark.parametrize("scheme", list_schemes())
def test_the_engine_detects_the_masks_pruning_makes(scheme):
    meta = _layer_for(scheme)
    w = _pruned_weight(scheme, meta)
    assert detect_scheme(w, meta) == scheme
    kernel, _ = choose_kernel(w, meta, declared_scheme=scheme)  # a declared scheme the zeros really have is accepted
    assert kernel.scheme in ("dense", *get_scheme(scheme).formats)


@pytest.mark.parametrize("scheme", list_schemes())
def test_the_schemes_kernels_match_conv2d(scheme):
    meta = _layer_for(scheme)
    w = _pruned_weight(scheme, meta, seed=1)
    rng = np.random.default_rng(2)
    b = rng.standard_normal(meta.c_out).astype(np.float32)
    x = rng.standard_normal((2, meta.c_in, meta.h, meta.w)).astype(np.float32)  # a batch of 2
    ref = _conv2d(w, b, x, meta)
    for fmt in get_scheme(scheme).formats:
        for kernel in kernels_for(fmt, meta):
            for variant in kernel.variants_for(meta):
                got = run_layer(kernel, w, b, x, meta, variant=variant).reshape(ref.shape)
                assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max() + 1e-6, (kernel.name, variant)


@pytest.mark.parametrize("scheme", list_schemes())
def test_fallback_gives_a_scheme_that_applies(scheme):
    """Asked for on any layer kind, a scheme resolves to one defined there (the space relies on it)."""
    for layer in (
        SchemeLayer("conv", (3, 3)),
        SchemeLayer("conv", (1, 1)),
        SchemeLayer("conv", (5, 5)),
        SchemeLayer("depthwise", (3, 3)),
        SchemeLayer("linear", (1, 1), fc=True),
    ):
        chosen = layer_scheme(scheme, layer)
        assert get_scheme(chosen).applies(layer)
        if get_scheme(scheme).applies(layer):
            assert chosen == scheme


def test_registry_vocabulary():
    assert list_schemes()[0] == "dense" and not get_scheme("dense").prunes
    assert detection_order()[0] == "pattern" and detection_order()[-1] == "unstructured"
    assert layer_scheme("pattern", SchemeLayer("conv", (1, 1))) == "block_punched"
    assert layer_scheme("pattern", SchemeLayer("linear", fc=True)) == "block_fc"
    assert layer_scheme("group4", SchemeLayer("depthwise", (3, 3))) == "dense"
    with pytest.raises(PlanError, match="Unknown sparsity scheme 'zigzag'"):
        get_scheme("zigzag")


def test_the_engine_imports_neither_pruning_nor_models():
    """The scheme vocabulary is neutral: the engine reads it without importing pruning, models, search or training."""
    code = (
        "import sys, latprune.engine, latprune.engine.detect, latprune.engine.export;"
        "bad = [m for m in sys.modules if m.startswith(('latprune.prune', 'latprune.models', 'latprune.search',"
        " 'latprune.train', 'latprune.bench', 'latprune.space'))];"
        "sys.exit(', '.join(bad) or None)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
