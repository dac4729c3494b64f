"""What the engine takes from outside: names written into generated C, built libraries loaded from disk, and
saved models' manifests. Each test plays the attacker (or the accident) and checks the one-sentence refusal."""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import re
import stat
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from latprune.engine import CompiledModel, compile
from latprune.engine.build import CSRC_DIR, build_shared_library, find_compiler, load_library
from latprune.engine.capture import capture
from latprune.engine.codegen import c_comment_text, lower
from latprune.engine.export import export_c
from latprune.engine.isa import host_isa
from latprune.engine.runtime import choose_kernels
from latprune.engine.trust import SIDECAR_SUFFIX
from latprune.errors import EngineError

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


# ---------------------------------------------------------------------------------------------- built libraries


def _planted_library(path: Path, marker: Path) -> Path:
    """A library whose constructor creates ``marker`` the moment anything loads it (what an attacker plants)."""
    src = path.with_suffix(".c")
    src.write_text(
        f'#include <stdio.h>\n__attribute__((constructor)) static void planted(void) {{ FILE *f = fopen("{marker}", '
        '"w"); if (f) fclose(f); }\nint lp_arena_floats(void) { return 1; }\n'
    )
    subprocess.run([*find_compiler(), "-shared", "-fPIC", str(src), "-o", str(path)], check=True)
    return path


def _tiny() -> tuple[nn.Module, torch.Tensor]:
    return _model("Tiny", ("conv0", "conv1")), torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(2))


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A fresh engine cache of this test's own."""
    monkeypatch.setenv("LATPRUNE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "engine"


def test_cache_entries_are_owner_only_salted_and_recorded(cache, tmp_path, monkeypatch) -> None:
    model, x = _tiny()
    cm = compile(model, x)
    lib = Path(cm.lib_path)
    assert lib.parent == cache and stat.S_IMODE(cache.stat().st_mode) == 0o700
    assert stat.S_IMODE(lib.stat().st_mode) == 0o700
    for other in cache.iterdir():
        if other != lib:
            assert stat.S_IMODE(other.stat().st_mode) == 0o600, other
    sidecar = lib.with_name(lib.name + SIDECAR_SUFFIX)
    assert sidecar.read_text().strip() == hashlib.sha256(lib.read_bytes()).hexdigest()
    assert lib.name.endswith(f"-{sidecar.read_text()[:16]}.so")
    # Another cache (another user's, or another LATPRUNE_CACHE) names the same build differently: its salt differs.
    monkeypatch.setenv("LATPRUNE_CACHE", str(tmp_path / "other"))
    assert build_shared_library(cm.source).name.split("-")[0] != lib.name.split("-")[0]


def test_a_swapped_cache_library_is_never_loaded(cache, tmp_path) -> None:
    model, x = _tiny()
    lib = Path(compile(model, x).lib_path)
    marker = tmp_path / "marker"
    # Swapped by rename (a new file): writing into a library this process has mapped would crash it by itself.
    os.replace(_planted_library(cache / "planted.so", marker), lib)
    with pytest.raises(EngineError, match=rf"'{re.escape(str(lib))}' does not match the sha256"):
        load_library(lib)
    again = compile(model, x)  # the bad entry is skipped, and the rebuild stored and verified again
    assert hashlib.sha256(Path(again.lib_path).read_bytes()).hexdigest() == again.lib_sha256
    assert not marker.exists()
    with torch.no_grad():
        np.testing.assert_allclose(again(x.numpy()), model(x).numpy(), rtol=1e-4, atol=1e-4)


def test_cache_folders_others_can_write_or_own_are_refused(cache, tmp_path, monkeypatch) -> None:
    model, x = _tiny()
    lib = Path(compile(model, x).lib_path)
    cache.chmod(0o777)
    with pytest.raises(EngineError, match=r"'.*engine' is writable by group or others.*chmod go-w"):
        compile(model, x)
    with pytest.raises(EngineError, match=r"writable by group or others"):
        load_library(lib)
    cache.chmod(0o700)
    lib.chmod(0o722)
    with pytest.raises(EngineError, match=rf"'{re.escape(str(lib))}' is writable by group or others"):
        load_library(lib)
    lib.chmod(0o700)
    # A cache (or a library in it) that another user owns: refused even for root, who would run what they planted.
    if os.getuid() == 0:
        os.chown(cache, 65534, 65534)
    else:
        monkeypatch.setattr(os, "getuid", lambda: os.stat(cache).st_uid + 1)
    with pytest.raises(EngineError, match=r"'.*engine' belongs to .*not to you"):
        compile(model, x)
    with pytest.raises(EngineError, match=r"belongs to .*not to you"):
        load_library(lib)
    link = tmp_path / "link"
    link.symlink_to(tmp_path)
    monkeypatch.setenv("LATPRUNE_CACHE", str(tmp_path))
    (tmp_path / "engine").symlink_to(link)
    with pytest.raises(EngineError, match=r"is a symbolic link"):
        compile(model, x)


# ------------------------------------------------------------------------------------------------ saved models


def _saved(tmp_path) -> tuple[Path, nn.Module, torch.Tensor]:
    model, x = _tiny()
    return compile(model, x).save(tmp_path / "saved"), model, x


def _edit_json(path: Path, **changes) -> None:
    meta = json.loads(path.read_text())
    meta.update(changes)
    path.write_text(json.dumps(meta))


def test_a_saved_model_loads_only_its_recorded_library(cache, tmp_path) -> None:
    saved, model, x = _saved(tmp_path)
    meta = json.loads((saved / "model.json").read_text())
    assert meta["library_sha256"] == hashlib.sha256((saved / "model.so").read_bytes()).hexdigest()
    assert {stat.S_IMODE((saved / n).stat().st_mode) & 0o022 for n in os.listdir(saved)} == {0}
    (tmp_path / "link").symlink_to(saved)  # a symlink the user passes is followed; its target is what is checked
    with torch.no_grad():
        np.testing.assert_allclose(
            CompiledModel.load(tmp_path / "link")(x.numpy()), model(x).numpy(), rtol=1e-4, atol=1e-4
        )
    marker = tmp_path / "marker"
    os.replace(_planted_library(tmp_path / "planted.so", marker), saved / "model.so")
    with pytest.raises(EngineError, match=r"model\.so' does not match the sha256"):
        CompiledModel.load(saved)
    _edit_json(saved / "model.json", library_sha256=None)
    with pytest.raises(EngineError, match=r"records no library_sha256"):
        CompiledModel.load(saved)
    assert not marker.exists()
    (saved / "weights.bin").unlink()
    os.mkfifo(saved / "weights.bin")  # reading it would block forever
    with pytest.raises(EngineError, match=r"weights\.bin' is not a regular file"):
        CompiledModel.load(saved)
    saved.chmod(0o777)
    with pytest.raises(EngineError, match=r"saved model folder .* is writable by group or others"):
        CompiledModel.load(saved)


def test_an_edited_manifest_is_one_sentence_not_a_crash(cache, tmp_path) -> None:
    """arena_floats edited down, or weights.bin truncated with its hash (and size) updated: both crashed the
    process with SIGSEGV before; now each is refused before the library runs."""
    saved, model, x = _saved(tmp_path)
    good = (saved / "model.json").read_text()
    meta = json.loads(good)
    for field, value in (("arena_floats", 1), ("input_shape", [3, 4, 4]), ("ops", ["one op"]), ("threads", 10**9)):
        (saved / "model.json").write_text(good)
        _edit_json(saved / "model.json", **{field: value})
        with pytest.raises(EngineError, match=r"model\.json'.*(records|asks).*save the model again") as info:
            CompiledModel.load(saved)
        assert "\n" not in str(info.value)
    (saved / "model.json").write_text(good)
    raw = (saved / "weights.bin").read_bytes()
    cut = raw[: meta["weights_bytes"] - 256]
    (saved / "weights.bin").write_bytes(cut)
    _edit_json(saved / "model.json", weights_sha256=hashlib.sha256(cut).hexdigest())
    with pytest.raises(EngineError, match=r"weights\.bin' holds .* bytes .*save the model again"):
        CompiledModel.load(saved)
    _edit_json(saved / "model.json", weights_bytes=len(cut))  # the size updated too: the layout still disagrees
    with pytest.raises(EngineError, match=r"weights\.bin' holds .* bytes .*save the model again"):
        CompiledModel.load(saved)
    (saved / "weights.bin").write_bytes(raw)
    (saved / "model.json").write_text(good)
    with torch.no_grad():
        np.testing.assert_allclose(CompiledModel.load(saved)(x.numpy()), model(x).numpy(), rtol=1e-4, atol=1e-4)
