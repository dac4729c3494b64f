"""NPAS-style sparse kernels: block-punched kxk, pattern 3x3, unstructured (and N:M), block-sparse linear.

Each packer accepts ANY weight of the layer's shape and stays exact: a zero the scheme would not allow is simply
stored as a zero value inside the structure (e.g. a block-punched block keeps a kernel position when any of its
16 weights there is nonzero). A weight that really has the scheme's structure packs with no wasted work, which is
what ``latprune.engine.detect`` checks before picking one of these kernels. The ``unpack_*`` functions invert the
packers in numpy: they document the formats and let tests check ``unpack(pack(W)) == W``.

The C side is ``csrc/lp_npas.c``; the scratch layout (zero-padded, stride-phase-split input) is described there and
mirrored by ``_geometry`` here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from latprune.engine.isa import Isa
from latprune.engine.kernels import ConvMeta, KernelSpec, register_kernel
from latprune.errors import EngineError
from latprune.schemes import BLOCK_IN, BLOCK_OUT, FULL_PATTERN, PATTERNS_3x3, kernel_patterns

_MAX_TILE_FLOATS = 512  # LP_NPAS_SLACK in csrc/lp_npas.c: more than the widest tile (4 vectors of <= 16 lanes)

#: Pattern / unstructured variants: pixel tiles copied into an aligned buffer first (all filters then load aligned),
#: or read straight from the padded image filter by filter.
TILEBUF_VARIANTS = (
    "4vec_tilebuf",
    "2vec_tilebuf",
    "1vec_tilebuf",
    "4vec_direct",
    "2vec_direct",
    "1vec_direct",
)
#: Block-punched variants: vectors per pixel tile and loop order (autotune picks the fastest per layer). "wide" is
#: the ISA's ``TileShape.bp_nv`` vectors (4 on AVX-512 and NEON, 3 on AVX2 and generic: 16 registers).
CONV_VARIANTS = (
    "wide_pixel_outer",
    "2vec_pixel_outer",
    "1vec_pixel_outer",
    "wide_channel_outer",
    "2vec_channel_outer",
    "1vec_channel_outer",
)


@dataclass(frozen=True)
class _Geometry:
    """The padded, phase-split scratch image of ``lp_npas_geometry`` (csrc/lp_npas.c)."""

    hs: int  # rows of one stride-phase plane
    ws: int  # columns of one plane
    plane: int  # floats per plane
    cpg: int  # input channels per group
    cpg_pad: int  # cpg rounded up to a multiple of 4
    opg: int  # output channels per group
    nphase: int  # stride_h * stride_w


def _geometry(meta: ConvMeta) -> _Geometry:
    hs = -(-(meta.h + 2 * meta.pad_h) // meta.stride_h)
    ws = -(-(meta.w + 2 * meta.pad_w) // meta.stride_w)
    cpg = meta.c_in // meta.groups
    return _Geometry(hs, ws, hs * ws, cpg, -(-cpg // 4) * 4, meta.c_out // meta.groups, meta.stride_h * meta.stride_w)


def _tap_offsets(meta: ConvMeta, g: _Geometry) -> np.ndarray:
    """Offset of each kernel position kh * kw_size + kw in the scratch image (``lp_npas_tap_offsets``)."""
    kh, kw = np.divmod(np.arange(meta.kh * meta.kw), meta.kw)
    phase = (kh % meta.stride_h) * meta.stride_w + kw % meta.stride_w
    return phase * meta.groups * g.cpg_pad * g.plane + (kh // meta.stride_h) * g.ws + kw // meta.stride_w


def conv_scratch_floats(meta: ConvMeta) -> int:
    """Floats of scratch the conv kernels need: every phase plane of every (padded) channel plus the tail slack,
    or, for block-punched layers read in place, the copied last pixel tile (up to 64 floats) of every channel."""
    g = _geometry(meta)
    planes = g.nphase * meta.groups * g.cpg_pad * g.plane
    return max(planes, meta.groups * g.cpg_pad * 64) + _MAX_TILE_FLOATS + g.ws + 16


def tilebuf_scratch_floats(meta: ConvMeta) -> int:
    """Scratch of the pattern / unstructured kernels: the padded image, then a 64-byte aligned tile buffer holding
    one widest pixel tile (4 vectors of up to 16 lanes) of every (input channel, kernel position) row."""
    return conv_scratch_floats(meta) + 16 + meta.c_in * meta.kh * meta.kw * 64


def _check_weight(weight: np.ndarray, meta: ConvMeta, kernel: str) -> np.ndarray:
    weight = np.asarray(weight, dtype=np.float32)
    expected = (meta.c_out, meta.c_in // meta.groups, meta.kh, meta.kw)
    if weight.shape != expected:
        raise EngineError(f"Kernel {kernel} got a weight of shape {weight.shape} for a layer needing {expected}.")
    return weight


def _i32(a: np.ndarray) -> np.ndarray:
    """int32 array with at least one element (the C side never reads past the counts, but wants a real pointer)."""
    a = np.ascontiguousarray(a, dtype=np.int32)
    return a if a.size else np.zeros(1, dtype=np.int32)


def _f32(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a, dtype=np.float32)
    return a if a.size else np.zeros(1, dtype=np.float32)


# ----------------------------------------------------------------------------------------------- block-punched


def _decode_offsets(off: np.ndarray, meta: ConvMeta) -> tuple[np.ndarray, np.ndarray]:
    """Invert ``ci * plane + tap offset``: the (input channel, kernel position) of each scratch offset."""
    g = _geometry(meta)
    taps = _tap_offsets(meta, g)
    q, shift = np.divmod(np.asarray(off, dtype=np.int64), g.plane)
    phase, ci = np.divmod(q, meta.groups * g.cpg_pad)
    tap_phase, tap_shift = np.divmod(taps, meta.groups * g.cpg_pad * g.plane)
    key = {(int(p), int(t)): kpos for kpos, (p, t) in enumerate(zip(tap_phase, tap_shift, strict=True))}
    kpos = np.array([key[(int(p), int(t))] for p, t in zip(phase, shift, strict=True)], dtype=np.int64)
    return ci, kpos


def pack_block_punched(weight: np.ndarray, meta: ConvMeta, isa: Isa) -> dict[str, np.ndarray]:
    """Pack per 4 x 4 (filter x channel) block the kept kernel positions and the dense 4 x 4 values at each."""
    w = _check_weight(weight, meta, "npas_block_punched")
    g = _geometry(meta)
    k = meta.kh * meta.kw
    rbg = -(-g.opg // BLOCK_OUT)  # row blocks per group
    wg = np.zeros((meta.groups, rbg * BLOCK_OUT, g.cpg_pad, k), dtype=np.float32)
    wg[:, : g.opg, : g.cpg] = w.reshape(meta.groups, g.opg, g.cpg, k)
    ncb = g.cpg_pad // BLOCK_IN
    blocks = wg.reshape(meta.groups * rbg, BLOCK_OUT, ncb, BLOCK_IN, k)  # (rb, r, cb, ci, k)
    blocks = blocks.transpose(0, 2, 4, 3, 1)  # (rb, cb, k, ci, r)
    keep = (blocks != 0).any(axis=(3, 4))  # (rb, cb, k)
    ptr = np.concatenate([[0], np.cumsum(keep.sum(axis=(1, 2)))])
    _, cb, kpos = np.nonzero(keep)
    co0 = (np.arange(meta.groups)[:, None] * g.opg + np.arange(rbg)[None, :] * BLOCK_OUT).ravel()
    nvalid = np.minimum(BLOCK_OUT, g.opg - np.tile(np.arange(rbg) * BLOCK_OUT, meta.groups))
    return {
        "rows": _i32(np.stack([co0, nvalid], axis=1).ravel()),  # (RB * 2,)
        "ptr": _i32(ptr),
        "ci": _i32(cb * BLOCK_IN),
        "pos": _i32(kpos),
        "val": _f32(blocks[keep].ravel()),  # (n * 4 * 4,)
    }


def unpack_block_punched(packed: dict[str, np.ndarray], meta: ConvMeta) -> np.ndarray:
    """The dense (c_out, c_in/groups, kh, kw) weight a block-punched pack holds."""
    g = _geometry(meta)
    out = np.zeros((meta.c_out, g.cpg_pad, meta.kh * meta.kw), dtype=np.float32)
    ptr = packed["ptr"]
    n = int(ptr[-1])
    ci0, kpos = packed["ci"][:n], packed["pos"][:n]
    val = packed["val"][: n * BLOCK_IN * BLOCK_OUT].reshape(n, BLOCK_IN, BLOCK_OUT)  # (n, ci, r)
    for rb, (co0, nr) in enumerate(packed["rows"].reshape(-1, 2)):
        for j in range(ptr[rb], ptr[rb + 1]):
            out[co0 : co0 + nr, ci0[j] : ci0[j] + BLOCK_IN, kpos[j]] = val[j, :, :nr].T
    return out[:, : g.cpg].reshape(meta.c_out, g.cpg, meta.kh, meta.kw)


# ----------------------------------------------------------------------------------------------- pattern 3x3


def pack_pattern(weight: np.ndarray, meta: ConvMeta, isa: Isa) -> dict[str, np.ndarray]:
    """Pack per output channel its kept kernels grouped by pattern (PatDNN's filter-kernel reorder), 4 or 9 values
    each; a kernel whose nonzeros no pattern covers is kept full (pattern id 8)."""
    w = _check_weight(weight, meta, "npas_pattern3x3")
    k9 = w.reshape(meta.c_out, -1, 9)  # (c_out, cpg, 9)
    pid = kernel_patterns(w)
    co, ci = np.nonzero(pid >= 0)
    p = pid[co, ci]
    order = np.lexsort((ci, p, co))  # by output channel, then pattern (full last), then input channel
    co, ci, p = co[order], ci[order], p[order]
    nslot = FULL_PATTERN + 1
    off = np.concatenate([[0], np.cumsum(np.bincount(co * nslot + p, minlength=meta.c_out * nslot))])
    length = np.where(p == FULL_PATTERN, 9, 4)
    start = np.concatenate([[0], np.cumsum(length)])
    val = np.zeros(int(start[-1]), dtype=np.float32)
    taps = np.array(PATTERNS_3x3, dtype=np.int64)
    pat = p < FULL_PATTERN
    val[start[:-1][pat, None] + np.arange(4)] = k9[co[pat, None], ci[pat, None], taps[p[pat]]]
    val[start[:-1][~pat, None] + np.arange(9)] = k9[co[~pat], ci[~pat]]
    voff = np.concatenate([[0], np.cumsum(np.bincount(co, weights=length, minlength=meta.c_out))])
    return {
        "off": _i32(off),
        "voff": _i32(voff),
        "ci": _i32(ci),
        "val": _f32(val),
        "taps": _i32(taps.ravel()),
    }


def unpack_pattern(packed: dict[str, np.ndarray], meta: ConvMeta) -> np.ndarray:
    """The dense (c_out, c_in/groups, 3, 3) weight a pattern pack holds."""
    out = np.zeros((meta.c_out, meta.c_in // meta.groups, 9), dtype=np.float32)
    taps = packed["taps"].reshape(-1, 4)
    off, nslot = packed["off"], FULL_PATTERN + 1
    for co in range(meta.c_out):
        v = int(packed["voff"][co])
        for p in range(nslot):
            for j in range(off[co * nslot + p], off[co * nslot + p + 1]):
                idx = taps[p] if p < FULL_PATTERN else np.arange(9)
                out[co, packed["ci"][j], idx] = packed["val"][v : v + len(idx)]
                v += len(idx)
    return out.reshape(meta.c_out, -1, 3, 3)


def column_chunk(c_out: int) -> int:
    """Filters per chunk of the column-ordered pattern format: 128 on wide layers (more filters share each loaded
    input column: measured ~25 % faster than 32), but at least two chunks so that 2 threads both get work."""
    return max(16, min(128, c_out // 2))


def pack_pattern_columns(weight: np.ndarray, meta: ConvMeta, isa: Isa) -> dict[str, np.ndarray]:
    """Pack the kept kernels per chunk of filters and per (input channel, pattern) column, so a pixel tile loads a
    column's 4 input rows once for every filter of the chunk that uses them."""
    w = _check_weight(weight, meta, "npas_pattern3x3_cols")
    g = _geometry(meta)
    k9 = w.reshape(meta.c_out, -1, 9)  # (c_out, cpg, 9)
    pid = kernel_patterns(w)
    co, ci = np.nonzero(pid >= 0)
    p = pid[co, ci]
    chan = (co // g.opg) * g.cpg + ci  # global input channel
    qc = column_chunk(meta.c_out)
    key = ((co // qc) * meta.c_in + chan) * 9 + p  # (chunk, channel, pattern) column of each entry
    order = np.lexsort((co, key))
    co, ci, p, key = co[order], ci[order], p[order], key[order]
    columns, starts, counts = np.unique(key, return_index=True, return_counts=True)
    nq = -(-meta.c_out // qc)
    length = np.where(columns % 9 == FULL_PATTERN, 9, 4)  # values per entry of each column
    voff = np.concatenate([[0], np.cumsum(counts * length)])
    column_of = np.repeat(np.arange(len(columns)), counts)
    start = voff[:-1][column_of] + length[column_of] * (np.arange(len(co)) - starts[column_of])
    val = np.zeros(int(voff[-1]), dtype=np.float32)
    taps = np.array(PATTERNS_3x3, dtype=np.int64)
    pat = p < FULL_PATTERN
    val[start[pat, None] + np.arange(4)] = k9[co[pat, None], ci[pat, None], taps[p[pat]]]
    val[start[~pat, None] + np.arange(9)] = k9[co[~pat], ci[~pat]]
    return {
        "qc": _i32(np.array([qc])),
        "qptr": _i32(np.searchsorted(columns // (meta.c_in * 9), np.arange(nq + 1))),
        "col": _i32(columns % (meta.c_in * 9)),
        "eptr": _i32(np.concatenate([starts, [len(co)]])),
        "voff": _i32(voff[:-1]),
        "co": _i32(co),
        "val": _f32(val),
        "taps": _i32(taps.ravel()),
    }


def unpack_pattern_columns(packed: dict[str, np.ndarray], meta: ConvMeta) -> np.ndarray:
    """The dense (c_out, c_in/groups, 3, 3) weight a column-ordered pattern pack holds."""
    g = _geometry(meta)
    out = np.zeros((meta.c_out, g.cpg, 9), dtype=np.float32)
    taps = packed["taps"].reshape(-1, 4)
    ncol = int(packed["qptr"][-1])
    for k in range(ncol):
        chan, p = divmod(int(packed["col"][k]), 9)
        idx = taps[p] if p < FULL_PATTERN else np.arange(9)
        v = int(packed["voff"][k])
        for e in range(packed["eptr"][k], packed["eptr"][k + 1]):
            co = int(packed["co"][e])
            out[co, chan - (co // g.opg) * g.cpg, idx] = packed["val"][v : v + len(idx)]
            v += len(idx)
    return out.reshape(meta.c_out, g.cpg, 3, 3)


def pattern_columns_scratch_floats(meta: ConvMeta) -> int:
    """The tile-buffer scratch plus one widest pixel tile of accumulators per filter."""
    return tilebuf_scratch_floats(meta) + meta.c_out * 64


# ----------------------------------------------------------------------------------------------- unstructured


def pack_unstructured(weight: np.ndarray, meta: ConvMeta, isa: Isa) -> dict[str, np.ndarray]:
    """CSR over (ci, kh, kw) per output channel; each nonzero stores its tap's offset in the padded image and its
    row in the tile buffer."""
    w = _check_weight(weight, meta, "npas_unstructured")
    g = _geometry(meta)
    k = meta.kh * meta.kw
    flat = w.reshape(meta.c_out, -1)  # (c_out, cpg * kh * kw)
    co, idx = np.nonzero(flat)
    ci, kpos = np.divmod(idx, k)
    return {
        "ptr": _i32(np.concatenate([[0], np.cumsum(np.bincount(co, minlength=meta.c_out))])),
        "off": _i32(ci * g.plane + _tap_offsets(meta, g)[kpos]),
        "row": _i32(((co // g.opg) * g.cpg + ci) * k + kpos),
        "val": _f32(flat[co, idx]),
    }


def unpack_unstructured(packed: dict[str, np.ndarray], meta: ConvMeta) -> np.ndarray:
    """The dense weight an unstructured pack holds (inverts the tap offsets)."""
    g = _geometry(meta)
    ptr = packed["ptr"]
    n = int(ptr[-1])
    ci, kpos = _decode_offsets(packed["off"][:n], meta)
    co = np.repeat(np.arange(meta.c_out), np.diff(ptr))
    out = np.zeros((meta.c_out, g.cpg, meta.kh * meta.kw), dtype=np.float32)
    out[co, ci, kpos] = packed["val"][:n]
    return out.reshape(meta.c_out, g.cpg, meta.kh, meta.kw)


# ----------------------------------------------------------------------------------------------- block-sparse linear


def pack_block_fc(weight: np.ndarray, meta: ConvMeta, isa: Isa) -> dict[str, np.ndarray]:
    """Per block of 4 rows: the kept columns and the block's 4 rows over them (row-major)."""
    w = _check_weight(weight, meta, "npas_block_fc").reshape(meta.c_out, meta.c_in)
    nrb = -(-meta.c_out // BLOCK_OUT)
    wp = np.zeros((nrb * BLOCK_OUT, meta.c_in), dtype=np.float32)
    wp[: meta.c_out] = w
    blocks = wp.reshape(nrb, BLOCK_OUT, meta.c_in)  # (rb, r, col)
    keep = (blocks != 0).any(axis=1)  # (rb, col)
    counts = keep.sum(axis=1)
    ptr = np.concatenate([[0], np.cumsum(counts)])
    rb, col = np.nonzero(keep)
    local = np.arange(len(rb)) - ptr[rb]
    # Value of (row r, entry e) sits at 4 * ptr[rb] + r * ncols[rb] + local index: rows of one block are contiguous.
    dest = 4 * ptr[rb][:, None] + np.arange(BLOCK_OUT)[None, :] * counts[rb][:, None] + local[:, None]  # (n, 4)
    val = np.zeros(4 * len(rb), dtype=np.float32)
    val[dest] = blocks[rb, :, col]
    return {"ptr": _i32(ptr), "cols": _i32(col), "val": _f32(val)}


def unpack_block_fc(packed: dict[str, np.ndarray], meta: ConvMeta) -> np.ndarray:
    """The dense (c_out, c_in, 1, 1) weight a block_fc pack holds."""
    nrb = -(-meta.c_out // BLOCK_OUT)
    out = np.zeros((nrb * BLOCK_OUT, meta.c_in), dtype=np.float32)
    ptr = packed["ptr"]
    for rb in range(nrb):
        n = int(ptr[rb + 1] - ptr[rb])
        vals = packed["val"][4 * ptr[rb] : 4 * ptr[rb + 1]].reshape(BLOCK_OUT, n)  # (4, ncols)
        out[rb * BLOCK_OUT : (rb + 1) * BLOCK_OUT, packed["cols"][ptr[rb] : ptr[rb + 1]]] = vals
    return out[: meta.c_out].reshape(meta.c_out, meta.c_in, 1, 1)


# ----------------------------------------------------------------------------------------------- the table


def is_fc_layer(meta: ConvMeta) -> bool:
    """A linear layer, or a 1x1 convolution on a 1x1 image (the same matrix-vector product)."""
    plain = meta.kh == meta.kw == 1 and meta.h == meta.w == 1 and meta.pad_h == meta.pad_w == 0
    return meta.is_linear or (plain and meta.groups == 1)


def _conv_ok(meta: ConvMeta) -> bool:
    return not meta.is_linear and not meta.is_depthwise


BLOCK_PUNCHED = register_kernel(
    KernelSpec(
        name="npas_block_punched",
        c_function="lp_npas_block_punched",
        source="lp_npas.c",
        scheme="block_punched",
        supports=_conv_ok,
        pack=pack_block_punched,
        scratch_floats=conv_scratch_floats,
        variants=CONV_VARIANTS,
        description="NPAS block-punched kxk conv: 4x4 filter x channel blocks share kept kernel positions; computed "
        "without im2col, 4 filter rows of vector accumulators over output pixels.",
    )
)
PATTERN = register_kernel(
    KernelSpec(
        name="npas_pattern3x3",
        c_function="lp_npas_pattern3x3",
        source="lp_npas.c",
        scheme="pattern",
        supports=lambda m: _conv_ok(m) and m.kh == m.kw == 3,
        pack=pack_pattern,
        scratch_floats=tilebuf_scratch_floats,
        variants=TILEBUF_VARIANTS,
        description="PatDNN/NPAS pattern 3x3 conv with connectivity pruning: kernels grouped by pattern (fixed taps "
        "per group), over an aligned per-tile input buffer or straight from the padded input.",
    )
)
PATTERN_COLUMNS = register_kernel(
    KernelSpec(
        name="npas_pattern3x3_cols",
        c_function="lp_npas_pattern3x3_cols",
        source="lp_npas.c",
        scheme="pattern",
        supports=lambda m: _conv_ok(m) and m.kh == m.kw == 3,
        pack=pack_pattern_columns,
        scratch_floats=pattern_columns_scratch_floats,
        variants=("4vec", "2vec", "1vec"),
        description="Pattern 3x3 conv by (input channel, pattern) columns: each tile loads a kernel's 4 input rows "
        "once for all the filters of a chunk (up to 128) that keep it.",
    )
)
UNSTRUCTURED = register_kernel(
    KernelSpec(
        name="npas_unstructured",
        c_function="lp_npas_unstructured",
        source="lp_npas.c",
        scheme="unstructured",
        supports=lambda m: True,
        pack=pack_unstructured,
        scratch_floats=tilebuf_scratch_floats,
        variants=TILEBUF_VARIANTS,
        description="Unstructured sparse conv: CSR over (ci, kh, kw) per filter, vectorised over output pixels.",
    )
)
NM24 = register_kernel(
    KernelSpec(
        name="npas_nm24",
        c_function="lp_npas_unstructured",
        source="lp_npas.c",
        scheme="nm24",
        supports=lambda m: not m.is_depthwise,
        pack=pack_unstructured,
        scratch_floats=tilebuf_scratch_floats,
        variants=TILEBUF_VARIANTS,
        description="2:4 (N:M) sparse conv, run by the unstructured CSR kernel.",
    )
)
BLOCK_FC = register_kernel(
    KernelSpec(
        name="npas_block_fc",
        c_function="lp_npas_block_fc",
        source="lp_npas.c",
        scheme="block_fc",
        supports=is_fc_layer,
        pack=pack_block_fc,
        scratch_floats=lambda m: 0,
        description="NPAS block-based FC: blocks of 4 rows share kept columns; gathered sparse matrix-vector product.",
    )
)

UNPACKERS = {
    "npas_block_punched": unpack_block_punched,
    "npas_pattern3x3": unpack_pattern,
    "npas_pattern3x3_cols": unpack_pattern_columns,
    "npas_unstructured": unpack_unstructured,
    "npas_nm24": unpack_unstructured,
    "npas_block_fc": unpack_block_fc,
}

__all__ = [
    "BLOCK_FC",
    "BLOCK_IN",
    "BLOCK_OUT",
    "BLOCK_PUNCHED",
    "CONV_VARIANTS",
    "FULL_PATTERN",
    "NM24",
    "PATTERN",
    "PATTERN_COLUMNS",
    "TILEBUF_VARIANTS",
    "UNPACKERS",
    "UNSTRUCTURED",
    "PATTERNS_3x3",
    "column_chunk",
    "conv_scratch_floats",
    "is_fc_layer",
    "kernel_patterns",
    "pack_block_fc",
    "pack_block_punched",
    "pack_pattern",
    "pack_pattern_columns",
    "pack_unstructured",
    "tilebuf_scratch_floats",
]
