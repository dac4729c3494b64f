"""The engine's non-conv ops against torch: every activation in every kernel, the squeeze-excite gate, cat as
views, split/chunk/slices, channel LayerNorm, per-channel scale/shift, functional BN/linear/conv, and the
one-sentence list of unsupported ops."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from latprune.engine import compile
from latprune.engine.activations import get_activation, list_activations
from latprune.engine.build import build_shared_library, load_library
from latprune.engine.capture import capture
from latprune.engine.ir import ChannelScaleOp, ConvOp, CopyOp, LayerNormOp, TorchOp
from latprune.engine.isa import ISAS
from latprune.engine.kernels import ConvMeta, get_kernel, list_kernels
from latprune.engine.layer import run_layer
from latprune.engine.reference import conv_reference
from latprune.errors import EngineError
from latprune.schemes import make_mask

from helpers import randomize_bn
from patterns import BatchNormAct2d, LayerNorm2d, TracedLinear

# Layer shapes to try per kernel, in order: the first one a kernel supports is the one it is tested on.
SHAPES = (
    ConvMeta(16, 16, 6, 7, 3, 3, 1, 1, 1, 1),
    ConvMeta(16, 16, 6, 7, 3, 3, 2, 2, 1, 1, groups=16),
    ConvMeta(16, 16, 6, 7),
    ConvMeta(32, 16, 1, 1, is_linear=True),
)


def assert_close(out: torch.Tensor | np.ndarray, ref: torch.Tensor | np.ndarray, rel: float = 1e-5) -> None:
    out, ref = torch.as_tensor(out), torch.as_tensor(ref)
    assert out.shape == ref.shape, (out.shape, ref.shape)
    err = (out - ref).abs().max().item()
    assert err <= rel * ref.abs().max().item() + 1e-6, f"max abs error {err}"


@pytest.mark.parametrize("kernel", list_kernels())
def test_every_activation_in_every_kernel_epilogue(kernel: str) -> None:
    """Each kernel fuses each registered activation (code-by-code C switches) exactly as torch computes it;
    inputs span [-12, 12] so the exp/erf approximations are exercised on both tails."""
    spec = get_kernel(kernel)
    meta = next((m for m in SHAPES if spec.supports(m)), None)
    assert meta is not None, f"kernel {kernel} supports none of the test shapes; add one"
    rng = np.random.default_rng(0)
    w = rng.standard_normal((meta.c_out, meta.c_in // meta.groups, meta.kh, meta.kw)).astype(np.float32)
    if spec.scheme != "dense":
        keep = make_mask(spec.scheme, torch.from_numpy(w.reshape(w.shape[0], -1) if meta.is_linear else w), 0.5)
        w = w * keep.numpy().reshape(w.shape)
    w *= 4.0 / np.sqrt(meta.c_in // meta.groups * meta.kh * meta.kw)  # outputs of a few units
    b = rng.standard_normal(meta.c_out).astype(np.float32)
    x = rng.uniform(-3, 3, (2, meta.c_in, meta.h, meta.w)).astype(np.float32)
    for name in list_activations():
        code = get_activation(name).code
        ref = conv_reference(w, b, x, meta, act=code)
        for variant in spec.variants_for(meta):
            out = run_layer(spec, w, b, x, meta, act=code, variant=variant)
            assert_close(out, ref, 1e-4)


def test_every_activation_on_every_isa_matches_torch(isa: str) -> None:  # isa: every runnable one (conftest)
    """The vector code (AVX-512 and AVX2 have their own exp / reciprocal paths) and the scalar tails, on inputs
    from -40 to 40: lp_activate over 1003 floats, so a few take the scalar path."""
    source = ISAS[isa].c_defines() + '#include "lp_common.h"\n#include "lp_ops.c"\n'
    fn = load_library(build_shared_library(source, ISAS[isa])).lp_activate
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int]
    x = np.linspace(-40, 40, 1003, dtype=np.float32)
    for name in list_activations():
        act = get_activation(name)
        y = np.empty_like(x)
        fn(x.ctypes.data, y.ctypes.data, x.size, act.code, 1)
        ref = act.torch_fn(torch.from_numpy(x).double()).numpy()
        err = np.abs(y - ref) / np.maximum(np.abs(ref), 1.0)
        assert err.max() < 1e-6, f"{name} on {isa}: relative error {err.max():.2e} at x={x[err.argmax()]}"


class AllActivations(nn.Module):
    """Every registered activation three ways: fused into a conv, fused into a pool, and stand-alone."""

    def __init__(self) -> None:
        super().__init__()
        self.names = list_activations()
        self.convs = nn.ModuleList(nn.Conv2d(4, 4, 3, 1, 1) for _ in self.names)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = []
        for name, conv in zip(self.names, self.convs, strict=True):
            fn = get_activation(name).torch_fn
            y = fn(conv(x) * 3.0)  # fused: the 3.0 folds into the conv, the activation into its epilogue
            out.append(fn(F.max_pool2d(y, 2)))  # fused into the pool
            out.append(F.max_pool2d(fn(x[:, :2] * 4.0 + y[:, 2:]), 2))  # stand-alone, after an add
        return torch.cat(out, 1)


def test_every_activation_fused_and_standalone_matches_torch() -> None:
    x = torch.randn(2, 4, 9, 9, generator=torch.Generator().manual_seed(1))
    model = AllActivations().eval()
    with torch.no_grad():
        ref = model(x)
    for backend in ("torch", "c"):
        assert_close(compile(model, x[:1], backend=backend)(x), ref, 1e-4)


class SqueezeExcite(nn.Module):
    """Three gates: keepdim mean (in place), a Linear gate viewed to (N, C, 1, 1), and x read after the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, 1, 1)
        self.fc1, self.fc2 = nn.Conv2d(8, 4, 1), nn.Conv2d(4, 8, 1)
        self.lin = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        x = x * torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3), keepdim=True)))))  # timm's SE
        gate = F.hardsigmoid(self.lin(F.adaptive_avg_pool2d(x, 1).flatten(1)))  # (N, 8)
        y = gate.view(x.size(0), 8, 1, 1) * x  # gate first: torchvision's order
        return F.relu(y) + x  # x is still read: the gate cannot run in place


def test_squeeze_excite_gate_matches_torch_and_runs_in_place_when_it_can() -> None:
    x = torch.randn(2, 3, 7, 7, generator=torch.Generator().manual_seed(2))
    model = SqueezeExcite().eval()
    graph = capture(model, x)
    scales = [op for op in graph.ops if isinstance(op, ChannelScaleOp)]
    assert len(scales) == 2 and scales[0].out.buf == scales[0].x.buf and scales[1].out.buf != scales[1].x.buf
    assert scales[1].act == 1  # the relu after the second gate is fused into it
    with torch.no_grad():
        ref = model(x)
    assert_close(compile(model, x[:1])(x), ref)
    assert_close(compile(model, x[:1], backend="torch")(x), ref)


class Concats(nn.Module):
    """Concatenations the placement pass computes in place (conv outputs, nested) and ones it copies
    (the network input, a view, a tensor already placed in another cat), features, and a cat as the output."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 5, 3, 1, 1)
        self.c = nn.Conv2d(12, 6, 1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.a(x), F.relu(self.b(x))
        ab = torch.cat([a, b], 1)  # both written in place
        inner = torch.cat([x, ab], dim=1)  # x: copied; ab: placed, taking a and b along
        again = torch.cat([a, x[:, 1:]], 1)  # a already placed, and a view: both copied
        y = self.c(inner)
        feats = torch.cat([y.mean((2, 3)), self.fc(again.mean((2, 3))[:, :6])], 1)  # (N, 10) features
        return torch.cat([feats, feats], 1)  # the output is a cat too


def test_cat_inputs_are_written_in_place_where_safe_and_match_torch() -> None:
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(3))
    model = Concats().eval()
    graph = capture(model, x)
    copies = [op for op in graph.ops if isinstance(op, CopyOp)]
    # Copied: x into inner, a and x[:, 1:] into again, and the second feats; everything else is in place.
    assert len(copies) == 4, [(op.name, op.x) for op in copies]
    with torch.no_grad():
        ref = model(x)
    assert_close(compile(model, x[:1])(x), ref)
    assert_close(compile(model, x[:1], backend="torch")(x), ref)


class Splits(nn.Module):
    """split by sizes, chunk, narrow and slices: all views of one buffer; the output is itself a slice."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 12, 3, 1, 1)
        self.p, self.q = nn.Conv2d(5, 4, 1), nn.Conv2d(7, 4, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        s1, s2 = torch.split(y, [5, 7], dim=1)
        c1, c2 = y.chunk(2, 1)
        z = self.p(s1) + self.q(s2) + c1[:, 2:6] + c2.narrow(1, 0, 4) + y[:, -4:]
        return z[:, 1:3]


def test_split_chunk_and_slices_are_views_that_match_torch() -> None:
    x = torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(4))
    model = Splits().eval()
    graph = capture(model, x)
    assert [op.name for op in graph.ops if isinstance(op, CopyOp)] == ["output_copy"]  # views, then the output
    with torch.no_grad():
        ref = model(x)
    assert_close(compile(model, x[:1])(x), ref)
    assert_close(compile(model, x[:1], backend="torch")(x), ref)


class Norms(nn.Module):
    """Channel LayerNorm three ways (timm's LayerNorm2d, nn.LayerNorm on a channels-last MLP, on features),
    functional BatchNorm in a BN subclass, layer scale, and the traced Linear subclass."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn = BatchNormAct2d(8, nn.SiLU)
        self.ln2d = LayerNorm2d(8)
        self.ln = nn.LayerNorm(8)
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 8)
        self.gamma = nn.Parameter(torch.linspace(-1, 1, 8))
        self.ln_flat = nn.LayerNorm(8)
        self.head = TracedLinear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.ln2d(self.bn(self.conv(x)))
        y = self.fc2(F.gelu(self.fc1(self.ln(x.permute(0, 2, 3, 1))))).permute(0, 3, 1, 2)  # (N, C, H, W)
        x = x + y * self.gamma[:, None, None]
        return self.head(self.ln_flat(x.mean((2, 3))))


def test_layernorm_functional_bn_layer_scale_and_traced_linear_match_torch() -> None:
    gen = torch.Generator().manual_seed(5)
    model = randomize_bn(Norms(), gen)
    with torch.no_grad():
        for p in (model.ln2d.weight, model.ln2d.bias, model.ln.weight, model.ln_flat.bias):
            p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
    x = torch.randn(2, 3, 6, 6, generator=gen)
    graph = capture(model, x)
    convs = [op.name for op in graph.ops if isinstance(op, ConvOp)]
    assert convs == ["conv", "fc1", "fc2", "head"]  # BN and the layer scale folded, Linear subclass named
    assert sum(isinstance(op, LayerNormOp) for op in graph.ops) == 3
    with torch.no_grad():
        ref = model(x)
    assert_close(compile(model, x[:1])(x), ref)
    assert_close(compile(model, x[:1], backend="torch")(x), ref)


class Affine(nn.Module):
    """Scale/shift by parameters and Python numbers where no conv can absorb them (after a pool, on
    features) and where one can; F.conv2d on the module's own weight."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, 1, 1)
        self.scale = nn.Parameter(torch.linspace(0.5, 2, 6).reshape(1, 6, 1, 1))
        self.shift = nn.Parameter(torch.linspace(-1, 1, 6))
        self.w = nn.Parameter(torch.randn(6, 6, 1, 1, generator=torch.Generator().manual_seed(6)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = (self.conv(x) - 0.5) / 2.0  # folded into the conv
        y = F.max_pool2d(y, 2) * self.scale + self.shift.view(-1, 1, 1)  # stand-alone depthwise 1x1
        y = 1.0 - F.conv2d(y, self.w)
        return y.mean((2, 3)) * self.shift + 3.0  # per-feature


def test_per_channel_scale_and_shift_fold_or_run_alone_and_match_torch() -> None:
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(7))
    model = Affine().eval()
    graph = capture(model, x)
    assert [op.meta.groups for op in graph.ops if isinstance(op, ConvOp)] == [1, 6, 1, 6]
    with torch.no_grad():
        ref = model(x)
    assert_close(compile(model, x[:1])(x), ref)
    assert_close(compile(model, x[:1], backend="torch")(x), ref)


class Unsupported(nn.Module):
    """Three kinds of op the engine does not compile, two of them twice, inside named submodules."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*(nn.Sequential(nn.Conv2d(4, 4, 1), nn.Softplus()) for _ in range(2)))
        self.dilated = nn.Conv2d(4, 4, 3, padding=2, dilation=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.roll(self.blocks(x), 1, 2)
        return self.dilated(x)


def test_unsupported_ops_are_listed_once_with_counts_and_module_paths() -> None:
    x = torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(8))
    model = Unsupported().eval()
    with pytest.raises(EngineError) as info:
        compile(model, x[:1])
    msg = str(info.value)
    assert msg.startswith("Cannot compile Unsupported with the C engine: 3 unsupported op types")
    assert "Softplus module (2 nodes, first at blocks.0.1)" in msg
    assert "function torch.roll (1 node, at the top-level forward())" in msg
    assert "Conv2d with dilation (1 node, at dilated" in msg
    assert "backend='torch'" in msg and "\n" not in msg and msg.endswith(".")
    cm = compile(model, x[:1], backend="torch")  # the suggested way out: those nodes run in PyTorch
    assert sum(isinstance(op, TorchOp) for op in capture(model, x, allow_torch_ops=True).ops) == 4
    with torch.no_grad():
        assert_close(cm(x), model(x))


def test_the_error_names_a_model_library_architecture_not_its_shared_class() -> None:
    class EfficientNet(Unsupported):  # timm builds MobileNets and MnasNets with its EfficientNet class
        def __init__(self) -> None:
            super().__init__()
            self.pretrained_cfg = {"architecture": "mobilenetv2_100"}

    with pytest.raises(EngineError, match=r"^Cannot compile mobilenetv2_100 \(EfficientNet\) with the C engine"):
        capture(EfficientNet().eval(), torch.zeros(1, 4, 6, 6))


def test_a_subclass_made_an_fx_leaf_is_refused_not_compiled_as_its_base() -> None:
    """A BatchNorm subclass with its own forward must be traced into: compiled as plain BatchNorm, its
    activation would be dropped silently."""
    leaf = type("BNAct", (BatchNormAct2d,), {"__module__": "torch.nn.user"})  # fx treats torch.nn.* as leaves
    model = nn.Sequential(nn.Conv2d(3, 4, 1), leaf(4, nn.SiLU)).eval()
    with pytest.raises(EngineError, match=r"BNAct module made an fx leaf \(1 node, at 1"):
        capture(model, torch.zeros(1, 3, 4, 4))
