"""What the engine takes from outside: names written into generated C, built libraries loaded from disk, and
saved models' manifests. Each test plays the attacker (or the accident) and checks the one-sentence refusal."""

from __future__ import annotations

import ctypes
import re
import subprocess

import numpy as np
import pytest
import torch
import torch.nn as nn

from latprune.engine import compile
from latprune.engine.build import CSRC_DIR, build_shared_library, find_compiler
from latprune.engine.capture import capture
from latprune.engine.codegen import c_comment_text, lower
from latprune.engine.export import export_c
from latprune.engine.isa import host_isa
from latprune.engine.runtime import choose_kernels

from helpers import randomize_bn

#: Names that end a C comment, start a directive, splice lines (backslash-newline, the trigraph ??/), hold quotes,
#: the escape character itself, or a bidi override (text that reads differently than it compiles). Each would
#: define ``injected_<n>`` if it reached the C unescaped.
HOSTILE = (
    "x */ int injected_0 = 1; /*",
    "x\nint injected_1 = 1;\n#define injected_1b 1\n",
    'x" */ int injected_2 = 1; /* "',
    "x*\\\n/ int injected_3 = 1; /*",
    "x*??/\n/ int injected_4 = 1; /*",
    "x \u202e */ int injected_5 = 1; /* \u202c",
    "x%2A/ */ int injected_6 = 1; /* \\",
)
#: The subset torch.fx can trace as module names (fx itself rejects names with quotes, backslashes at the end or
#: newlines, since it writes them into Python source).
TRACEABLE = (HOSTILE[0], HOSTILE[3], HOSTILE[6].removesuffix(" \\"))


def _model(class_name: str, module_names: tuple[str, ...]) -> nn.Module:
    """Convs with ReLUs, registered under ``module_names``, in a class called ``class_name``."""

    def init(self: nn.Module) -> None:
        nn.Module.__init__(self)
        for i, name in enumerate(module_names):
            self.add_module(name, nn.Conv2d(3 if i == 0 else 8, 8, 3, padding=1))

    def forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
        for name in module_names:
            x = torch.relu(getattr(self, name)(x))
        return x

    cls = type(class_name, (nn.Module,), {"__init__": init, "forward": forward})
    gen = torch.Generator().manual_seed(0)
    model = cls()
    for p in model.parameters():
        p.data.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return randomize_bn(model, gen)


def _preprocessed(source: str) -> str:
    """``source`` after the C preprocessor (trigraphs on, comments gone): what the compiler actually reads."""
    proc = subprocess.run(
        [*find_compiler(), "-E", "-P", "-trigraphs", f"-I{CSRC_DIR}", "-x", "c", "-"],
        input=source,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def _injected(path) -> list[str]:
    lib = ctypes.CDLL(str(path))
    return [f"injected_{n}" for n in (*map(str, range(7)), "1b") if hasattr(lib, f"injected_{n}")]


def test_comment_text_escapes_everything_that_could_leave_a_comment() -> None:
    for name in HOSTILE:
        text = c_comment_text(name)
        assert re.fullmatch(r"[ -~]*", text) and not set("*\\?") & set(text), text
        assert bytes.fromhex(re.sub(r"%([0-9A-F]{2})|(.)", _hex, text)).decode() == name  # nothing is lost
    assert (
        c_comment_text("layer1.0.conv1: conv 3x3/1 g1 16->16 + residual")
        == "layer1.0.conv1: conv 3x3/1 g1 16->16 + residual"
    )


def _hex(m: re.Match[str]) -> str:
    return m.group(1) or m.group(2).encode().hex()


def test_hostile_class_and_module_names_compile_to_the_same_program() -> None:
    """compile(): the class name (header comment) and traceable module names (op comments) change no C token."""
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    hostile = _model(HOSTILE[3], TRACEABLE)
    plain = _model("Tiny", tuple(f"conv{i}" for i in range(len(TRACEABLE))))
    plain.load_state_dict(dict(zip(plain.state_dict(), hostile.state_dict().values(), strict=True)))
    cm, ref = compile(hostile, x), compile(plain, x)
    assert c_comment_text(HOSTILE[3]) in cm.source and HOSTILE[3] not in cm.source
    assert _preprocessed(cm.source) == _preprocessed(ref.source)
    assert _injected(cm.lib_path) == []
    with torch.no_grad():
        np.testing.assert_allclose(cm(x.numpy()), hostile(x).numpy(), rtol=1e-4, atol=1e-4)


def test_every_hostile_name_in_every_comment_changes_no_token() -> None:
    """lower(): each hostile string as the graph name and as every op name (also those fx cannot trace)."""
    model = _model("Tiny", tuple(f"conv{i}" for i in range(3)))
    graph = capture(model, torch.zeros(1, 3, 8, 8))
    choose_kernels(graph, None, 1, autotune=False)
    reference = _preprocessed(lower(graph, host_isa()).source)
    for i, name in enumerate(HOSTILE):
        graph.name = name
        for j, op in enumerate(graph.ops):
            op.name = HOSTILE[(i + j) % len(HOSTILE)]
        source = lower(graph, host_isa()).source
        assert _preprocessed(source) == reference, name
    assert _injected(build_shared_library(source)) == []


def test_export_c_escapes_the_class_name_in_model_c_and_readme(tmp_path) -> None:
    """export --c: model.c means the same, main.c and the Makefile are unchanged, the README keeps its lines."""
    x = torch.zeros(1, 3, 8, 8)
    names = tuple(f"conv{i}" for i in range(2))
    evil = export_c(_model(HOSTILE[1] + HOSTILE[4], names), x, tmp_path / "evil")
    plain = export_c(_model("Tiny", names), x, tmp_path / "plain")
    assert _preprocessed((evil / "model.c").read_text()) == _preprocessed((plain / "model.c").read_text())
    for name in ("main.c", "Makefile"):
        assert (evil / name).read_text() == (plain / name).read_text()
    readme, ref = (evil / "README.md").read_text().splitlines(), (plain / "README.md").read_text().splitlines()
    assert len(readme) == len(ref) and readme[1:] == ref[1:]
    assert readme[0].startswith("# x%0Aint injected_1 = 1;%0A#define") and "injected_4" in readme[0]
