"""Building generated C: a compile error names the compiler, keeps the source, and quotes the error line."""

from __future__ import annotations

from pathlib import Path

import pytest

from latprune.engine.build import build_shared_library
from latprune.errors import EngineError


def test_compile_error_quotes_the_error_line(tmp_path, monkeypatch):
    monkeypatch.setenv("LATPRUNE_CACHE", str(tmp_path))
    with pytest.raises(EngineError, match=r"failed to build.*kept at .*failed_.*\.c.*error") as exc:
        build_shared_library('#include "lp_common.h"\nint broken( { return 0; }\n')
    kept = str(exc.value).split("kept at ")[1].split(")")[0]
    assert "int broken" in Path(kept).read_text()


def test_cache_hit_returns_the_same_library(tmp_path, monkeypatch):
    monkeypatch.setenv("LATPRUNE_CACHE", str(tmp_path))
    source = "int lp_answer(void) { return 42; }\n"
    first = build_shared_library(source)
    assert build_shared_library(source) == first and first.exists()


def test_kernels_are_compiled_once_and_linked_into_each_model():
    from latprune.engine.build import split_kernels

    source = '#define LP_LANES 8\n#include "lp_common.h"\n#include "lp_group4.c"\n#include "lp_ops.c"\nint f(void);\n'
    glue, names = split_kernels(source)
    assert names == ("lp_group4.c", "lp_ops.c")
    assert '#include "lp_group4.c"' not in glue and "void lp_group4_conv(" in glue and "void lp_add(" in glue
    assert glue.index("lp_common.h") < glue.index("void lp_group4_conv(") < glue.index("int f(void);")
