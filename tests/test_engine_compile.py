"""Whole-model tests of the engine compiler: capture, fusion, arena planning, generated C vs torch, save/load."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from latprune.cli import main
from latprune.engine import CompiledModel, compile
from latprune.engine.build import compiler_version, find_compiler
from latprune.engine.capture import capture
from latprune.engine.export import export_c
from latprune.engine.ir import ActOp, AddOp, ConvOp, PoolOp, plan_arena
from latprune.engine.kernels import get_kernel
from latprune.engine.runtime import choose_kernels
from latprune.errors import EngineError
from latprune.models import create_model, list_models

from helpers import randomize_bn


def group4_sparsify(model: nn.Module, sparsity: float, gen: torch.Generator, every: int = 1) -> nn.Module:
    """Zero weights in group-of-4 structure: 4 adjacent output channels drop the same (ci, kh, kw) positions.

    Only every ``every``-th non-depthwise conv is sparsified, so one model can mix dense and sparse layers.
    """
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    convs = [m for m in convs if not (m.groups > 1 and m.groups == m.in_channels == m.out_channels)]
    for m in convs[::every]:
        w = m.weight.data
        c_out = w.shape[0]
        keep = torch.rand((-(-c_out // 4), w[0].numel()), generator=gen) >= sparsity  # (groups of 4, K)
        w.mul_(keep.repeat_interleave(4, 0)[:c_out].reshape(w.shape))  # (c_out, c_in/g, kh, kw)
    return model


def assert_close(out: torch.Tensor, ref: torch.Tensor) -> None:
    err = (out - ref).abs().max().item()
    assert err <= 1e-5 * ref.abs().max().item() + 1e-6, f"max abs error {err}"


@pytest.mark.parametrize("name", list_models())
def test_zoo_model_matches_torch(name: str) -> None:
    """Every zoo model, with every other conv group4-sparse (so dense and sparse kernels meet in one network,
    and one build per model keeps the test fast), at batch 1 and 3, with 1 and 2 threads."""
    gen = torch.Generator().manual_seed(1)
    model = randomize_bn(create_model(name, num_classes=10, input_size=32, width_mult=0.25), gen)
    group4_sparsify(model, 0.8, gen, every=2)
    x = torch.randn(3, 3, 32, 32, generator=gen)
    cm = compile(model, x[:1], threads=1)
    assert cm.backend == "c"
    schemes = [get_kernel(layer.kernel).scheme for layer in cm.spec.layers]
    assert schemes.count("group4") >= 2 and schemes.count("dense") >= 2, schemes
    with torch.no_grad():
        ref = model(x)
    for threads in (1, 2):
        assert_close(cm(x, threads=threads), ref)  # batch 3
        assert_close(cm(x[1:2], threads=threads), ref[1:2])  # batch 1


class Functional(nn.Module):
    """Functional forms and ops that do not follow a conv: each needs its own IR op or fusion rule."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 1, bias=False)
        self.fc = nn.Linear(8 * 4 * 4, 5)
        self.fc2 = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.hardswish(self.conv(x))
        a = F.max_pool2d(y, 3, 2, 1, ceil_mode=True)  # 9x9 -> 5x5
        b = F.avg_pool2d(y, 3, 2, 1, ceil_mode=True, count_include_pad=False)
        z = torch.relu(a + b)  # add of two pools: a separate add op with the relu fused
        z = F.relu6(self.bn(z))  # BN after a non-conv: stand-alone BN
        z = z + self.conv2(z)  # residual fused into conv2
        z = F.adaptive_avg_pool2d(z, 4).relu()  # stand-alone activation, in place
        z = F.dropout(z, 0.5, self.training)
        return self.fc(z.view(z.size(0), -1)) + self.fc2(torch.flatten(z.mean((2, 3), keepdim=True), 1))


def test_functional_forms_and_standalone_ops() -> None:
    gen = torch.Generator().manual_seed(2)
    model = randomize_bn(Functional(), gen)
    x = torch.randn(2, 3, 9, 9, generator=gen)
    graph = capture(model, x)
    kinds = [type(op) for op in graph.ops]
    assert kinds.count(ConvOp) == 5 and kinds.count(PoolOp) == 2 and AddOp in kinds and ActOp in kinds
    add = next(op for op in graph.ops if isinstance(op, AddOp))
    assert add.act == 1 and add.out.buf in (add.a.buf, add.b.buf)  # fused relu, in place
    assert any(isinstance(op, ConvOp) and op.residual is not None for op in graph.ops)
    with torch.no_grad():
        ref = model(x)
    assert_close(compile(model, x, backend="torch")(x), ref)
    assert_close(compile(model, x)(x), ref)


def test_bn_relu_and_residual_are_fused() -> None:
    model = create_model("resnet20", num_classes=10, input_size=32, width_mult=0.25)
    graph = capture(model, torch.zeros(1, 3, 32, 32))
    convs = graph.conv_ops()
    assert len(graph.ops) == len(convs) + 1  # only the global average pool is not a conv: BN, ReLU, add all fused
    assert sum(op.residual is not None for op in convs) == 9  # one per basic block
    assert all(op.act == 1 for op in convs if op.residual is not None)  # relu after the add, in the epilogue


def test_arena_reuses_memory_without_overlap() -> None:
    graph = capture(create_model("mobilenet_v2", input_size=32, width_mult=0.5), torch.zeros(1, 3, 32, 32))
    scratch = {i: 1000 for i in range(len(graph.ops))}
    plan = plan_arena(graph, scratch)
    live: dict[int, tuple[int, int]] = {}
    for i, op in enumerate(graph.ops):
        for ref in [*op.inputs, op.out]:
            start, _ = live.get(ref.buf, (i, i))
            live[ref.buf] = (start, i)
    spans = [(b, plan.offsets[b], graph.buffer_sizes[b], *live[b]) for b in plan.offsets]
    spans += [(-1 - i, off, scratch[i], i, i) for i, off in plan.scratch_offsets.items()]
    for k, (b1, o1, s1, a1, e1) in enumerate(spans):
        assert o1 % 16 == 0
        for b2, o2, s2, a2, e2 in spans[k + 1 :]:
            if a1 <= e2 and a2 <= e1:  # alive at the same time -> disjoint memory
                assert o1 + s1 <= o2 or o2 + s2 <= o1, (b1, b2)
    assert plan.total_floats < sum(graph.buffer_sizes.values()) / 3


class WithCustomFunction(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x)


def test_no_compiler_names_cc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CC", "/nonexistent")
    find_compiler.cache_clear()
    compiler_version.cache_clear()
    try:
        with pytest.raises(EngineError, match=r"CC='/nonexistent'"):
            compile(WithCustomFunction(), torch.zeros(1, 3, 8, 8))
    finally:
        monkeypatch.delenv("CC")
        find_compiler.cache_clear()
        compiler_version.cache_clear()


def test_save_load_numpy_io_and_cache_hit(tmp_path) -> None:
    gen = torch.Generator().manual_seed(3)
    model = randomize_bn(create_model("resnet20", num_classes=10, input_size=16, width_mult=0.25), gen)
    x = torch.randn(2, 3, 16, 16, generator=gen)
    cm = compile(model, x, threads=2)
    y = cm(x.numpy())
    assert isinstance(y, np.ndarray) and y.shape == (2, 10)
    loaded = CompiledModel.load(cm.save(tmp_path / "m"))
    np.testing.assert_array_equal(loaded(x.numpy()), y)
    assert loaded.threads == 2 and loaded.spec.layers == cm.spec.layers
    (tmp_path / "m" / "model.so").unlink()  # gone: rebuilt from the saved C source
    np.testing.assert_array_equal(CompiledModel.load(tmp_path / "m")(x.numpy()), y)
    (tmp_path / "m" / "weights.bin").write_bytes(b"\0" * 64)
    with pytest.raises(EngineError, match=r"weights\.bin"):
        CompiledModel.load(tmp_path / "m")
    # New weight values, same structure: the generated C is identical, so the library is a cache hit.
    randomize_bn(model, gen)
    again = compile(model, x, threads=2)
    assert again.source == cm.source and again.lib_path == cm.lib_path
    with pytest.raises(EngineError, match=r"shape \(N, 3, 16, 16\)"):
        cm(torch.zeros(1, 3, 32, 32))


@pytest.mark.parametrize("target", ["host", "aarch64"])
def test_export_builds_and_matches_torch(target: str, tmp_path) -> None:
    """The exported C project builds with its Makefile and its main.c reproduces the model's output (MobileNetV2
    on the host, MobileNetV3-Small, with squeeze-excite gates, on aarch64).

    aarch64 is cross-compiled and run under qemu (correctness only) when Debian's gcc-aarch64-linux-gnu and
    qemu-user are installed.
    """
    cc, runner = "cc", []
    if target == "aarch64":
        if not (shutil.which("aarch64-linux-gnu-gcc") and shutil.which("qemu-aarch64")):
            pytest.skip(
                "needs aarch64-linux-gnu-gcc and qemu-aarch64 (apt-get install gcc-aarch64-linux-gnu qemu-user)"
            )
        cc, runner = "aarch64-linux-gnu-gcc", ["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu"]
    gen = torch.Generator().manual_seed(4)
    name = "mobilenet_v2" if target == "host" else "mobilenet_v3_small"  # NEON: SE gates, hard-sigmoid, hardswish
    model = group4_sparsify(randomize_bn(create_model(name, input_size=16, width_mult=0.25), gen), 0.8, gen)
    x = torch.randn(2, 3, 16, 16, generator=gen)
    out = export_c(model, x[:1], tmp_path / "c", target=target)
    x.numpy().tofile(out / "input.bin")
    make = subprocess.run(["make", "-C", str(out), f"CC={cc}"], capture_output=True, text=True)
    assert make.returncode == 0, make.stderr[-2000:]
    run = subprocess.run([*runner, "./model", "weights.bin", "input.bin", "output.bin"], cwd=out, capture_output=True)
    assert run.returncode == 0, run.stderr[-2000:]
    y = torch.from_numpy(np.fromfile(out / "output.bin", np.float32).reshape(2, -1))
    with torch.no_grad():
        assert_close(y, model(x))
    assert '"isa": "neon"' in (out / "model.json").read_text() or target != "aarch64"


def test_profile_covers_every_op() -> None:
    model = randomize_bn(
        create_model("resnet20", num_classes=10, input_size=16, width_mult=0.25), torch.Generator().manual_seed(5)
    )
    cm = compile(model, torch.zeros(1, 3, 16, 16))
    prof = cm.profile(repeats=3)
    assert len(prof) == len(cm.spec.ops) and all(t >= 0 for _, t in prof) and sum(t for _, t in prof) > 0
    assert "conv1" in prof[0][0] and cm.latency(repeats=3, warmup=1) > 0


def test_cli_bench_json_and_export(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [
        "bench",
        "--model",
        "resnet20",
        "--input-size",
        "16",
        "--width-mult",
        "0.25",
        "--sparsity",
        "0.5",
        "--runs",
        "3",
        "--warmup",
        "1",
        "--json",
    ]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    ms = {name: t["median_ms"] for name, t in result["timings"].items()}
    assert ms["engine"] > 0 and ms["onnxruntime"] > 0 and ms["torch"] > 0
    assert result["speedups"]["onnxruntime"] == pytest.approx(ms["onnxruntime"] / ms["engine"])
    assert result["max_rel_error"] < 1e-4 and result["sparse_layers"] == 18
    assert (
        main(
            ["export", "--model", "resnet20", "--width-mult", "0.25", "--c", str(tmp_path / "e"), "--target", "aarch64"]
        )
        == 0
    )
    assert "#define LP_LANES 4" in (tmp_path / "e" / "model.c").read_text()
    assert main(["bench", "--model", "resnet20", "--sparsity", "1.5"]) == 2
    assert "--sparsity 1.5" in capsys.readouterr().err


def test_cli_bench_isa_compiles_for_that_isa_and_records_it(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["bench", "--model", "resnet20", "--input-size", "16", "--width-mult", "0.25", "--runs", "2"]
    args += ["--warmup", "0", "--no-torch", "--no-onnxruntime", "--json", "--isa", "generic"]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["isa"] == "generic" and result["cpu"] and result["max_rel_error"] < 1e-4
    assert main(["bench", "--model", "resnet20", "--isa", "sse9"]) == 2
    assert "--isa='sse9' is not an ISA latprune knows" in capsys.readouterr().err


def test_declared_schemes_choose_kernels_and_bad_names_fail() -> None:
    gen = torch.Generator().manual_seed(6)
    model = group4_sparsify(create_model("resnet20", num_classes=10, input_size=16, width_mult=0.5), 0.8, gen)
    graph = capture(model, torch.zeros(1, 3, 16, 16))
    choose_kernels(graph, {"layers.0.0.conv1": "group4", "layers.0.0.conv2": "dense"}, threads=1, autotune=False)
    chosen = {op.name: get_kernel(op.kernel).scheme for op in graph.conv_ops()}
    assert chosen["layers.0.0.conv1"] == "group4" and chosen["layers.0.0.conv2"] == "dense"
    with pytest.raises(EngineError, match=r"layers\.9\.conv1"):
        choose_kernels(graph, {"layers.9.conv1": "group4"}, threads=1, autotune=False)
    with pytest.raises(EngineError, match="conv1=sparse"):
        choose_kernels(graph, {"conv1": "sparse"}, threads=1, autotune=False)


def test_autotune_picks_valid_variants_and_stays_correct() -> None:
    gen = torch.Generator().manual_seed(7)
    model = group4_sparsify(randomize_bn(create_model("resnet20", num_classes=10, input_size=16, width_mult=0.25), gen),
                            0.7, gen)  # fmt: skip
    x = torch.randn(1, 3, 16, 16, generator=gen)
    cm = compile(model, x, autotune=True)
    assert all(0 <= layer.variant < len(get_kernel(layer.kernel).variants) for layer in cm.spec.layers)
    with torch.no_grad():
        assert_close(cm(x), model(x))


class PoolChain(nn.Module):
    """Pooling edge cases in one network (one build): ceil_mode, padding with and without counting it,
    windows that hang off the border, and an adaptive pool whose cells overlap."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(x, 3, 2, 1, ceil_mode=True)  # 23 -> 12
        x = F.avg_pool2d(x, 2, 1, 1, count_include_pad=False)  # 12 -> 13
        x = F.avg_pool2d(x, 3, 2, 1, ceil_mode=True)  # 13 -> 7, counting padding
        x = F.adaptive_avg_pool2d(x, (3, 5))  # overlapping cells
        return F.hardswish(nn.functional.max_pool2d(x, (2, 3), (1, 2)))  # 3x5 -> 2x2, hardswish fused into the pool


def test_pooling_edge_cases_match_torch() -> None:
    x = torch.randn(2, 5, 23, 23, generator=torch.Generator().manual_seed(8))
    cm = compile(PoolChain(), x)
    assert [type(op).__name__ for op in capture(PoolChain(), x).ops].count("PoolOp") == 4
    assert_close(cm(x), PoolChain()(x))


class RandomNet(nn.Module):
    """A small CNN drawn from a list of block choices (conv/BN/act, pools, residual blocks, BN after a pool)."""

    def __init__(self, blocks: list[tuple], channels: int) -> None:
        super().__init__()
        self.blocks = blocks
        self.layers = nn.ModuleList()
        c = 3
        for kind, k, s, _act, _ceil in blocks:
            if kind == "conv":
                groups = c if c == channels and k == 3 else 1  # depthwise once the width is reached
                self.layers.append(
                    nn.Sequential(nn.Conv2d(c, channels, k, s, k // 2, groups=groups), nn.BatchNorm2d(channels))
                )
                c = channels
            elif kind == "res":
                self.layers.append(nn.Sequential(nn.Conv2d(c, c, k, 1, k // 2, bias=False), nn.BatchNorm2d(c)))
            else:
                self.layers.append(nn.BatchNorm2d(c))
        self.fc = nn.Linear(c, 4)
        self.acts = nn.ModuleList([nn.Identity(), nn.ReLU(), nn.ReLU6(), nn.Hardswish()])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for (kind, k, s, act, ceil), layer in zip(self.blocks, self.layers, strict=True):
            if kind == "conv":
                x = self.acts[act](layer(x))
            elif kind == "res":
                x = self.acts[act](x + layer(x))
            elif kind == "maxpool":
                x = layer(F.max_pool2d(x, k, s, k // 2, ceil_mode=ceil))
            else:
                x = layer(F.avg_pool2d(x, k, s, k // 2, ceil_mode=ceil, count_include_pad=act % 2 == 0))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


block = st.tuples(
    st.sampled_from(["conv", "res", "maxpool", "avgpool"]),
    st.sampled_from([1, 3]),
    st.sampled_from([1, 2]),
    st.integers(0, 3),
    st.booleans(),
)


@settings(max_examples=40, deadline=None)
@given(blocks=st.lists(block, min_size=1, max_size=6), channels=st.integers(2, 9), size=st.integers(5, 13))
def test_capture_matches_torch_on_random_networks(blocks: list[tuple], channels: int, size: int) -> None:
    """The IR (BN folding, act/add fusion, in-place ops, shape inference) computes what the model computes."""
    blocks = [(kind, max(k, 2) if "pool" in kind else k, s, act, ceil) for kind, k, s, act, ceil in blocks]
    gen = torch.Generator().manual_seed(len(blocks) * 100 + channels * 10 + size)
    model = randomize_bn(RandomNet(blocks, channels), gen)
    x = torch.randn(2, 3, size, size, generator=gen)
    with torch.no_grad():
        ref = model(x)
    assert_close(compile(model, x, backend="torch")(x), ref)
