/* latprune engine: group-of-4 weight-sparse convolution (JCW / Fast Sparse ConvNets), 1x1 and k x k, no im2col.
 * Hand-written source, packed by latprune/engine/kernels/group4.py (pack_group4).
 *
 * Four adjacent output channels share one list of nonzero input positions (ci, ky, kx). Each position is a tap
 * offset into the input grid of lp_dense.c (the input itself for 1x1 layers, padded phase planes otherwise), so a
 * tile of 4 rows x nv*LP_LANES grid columns is accumulated in registers across the whole sparse reduction
 * (4 x 64 floats = 16 zmm on AVX-512, up to 4 x 80 for the last tile of a row; 4 x 24 = 12 ymm on AVX2, whose 16
 * registers do not hold a 4 x 4 tile), then finished (bias, residual, activation) and stored once.
 * Packed arrays: values (nnz x 4 floats: the group's 4 weights per position), group_ptr (groups + 1 int32: where
 * each group's positions start), offsets (nnz int32 tap offsets into the grid), pad_offsets (the same positions
 * in the padded copy below; empty when the layer has none).
 *
 * Padded copy ("pad" variants): a 1x1 stride-1 layer whose channels are not a whole number of cache lines (14x14 =
 * 196 floats, 7x7 = 49) reads every input vector across two cache lines, and the last 1-3 columns need a slow
 * tail. Those variants first copy the input to channels of LP_G4_PAD floats rounded up (16-float aligned, zero
 * filled), then run aligned full-vector tiles over one grid row per channel (junk columns are never stored).
 * Measured, 512->512 at 14x14, 90% sparsity, 1 thread: 98 -> 85 us, of which the copy is ~13 us; autotune keeps
 * the plain variants where the copy does not pay (high sparsity, little work per input value). */
#ifndef LP_GROUP4_C
#define LP_GROUP4_C
#include "lp_common.h"
#include "lp_dense.c"
#ifdef _OPENMP
#include <omp.h>
#endif

/* Fully unroll a loop over the accumulator tile before scalar replacement runs, so the tile lives in registers
 * (without it GCC kept the tile on the stack between loops: 16 zeroing stores and 16 spills per tile). */
#define LP_UNROLL _Pragma("GCC unroll 16")
/* Tile widths in vectors, from the ISA's register count (isa.py: tile_shape; these defaults are AVX-512's): variant
 * widths LP_G4_NV0..2, and the widest tile LP_G4_MAXNV (5: 20 accumulators + 5 inputs + 1 broadcast = 26 of 32
 * zmm; AVX2: 3, 12 + 3 + 1 = 16 of 16 ymm). */
#ifndef LP_G4_MAXNV
#define LP_G4_NV0 4
#define LP_G4_NV1 3
#define LP_G4_NV2 2
#define LP_G4_MAXNV 5
#endif
#define LP_G4_PAD 16  /* the padded copy's channel stride is a multiple of this many floats (64 bytes) */

/* The padded copy's channel stride, or 0 where the layer reads its input in place (must match
 * kernels/group4.py: padded_stride). */
LP_INLINE int lp_g4_pad_stride(const lp_conv_shape *s) {
    const int hw = s->h * s->w;
    if (!lp_grid_is_direct(s) || hw % LP_G4_PAD == 0) return 0;
    return (hw + LP_G4_PAD - 1) / LP_G4_PAD * LP_G4_PAD;
}

/* Channel ci of the input to the padded copy: one full-vector store per vector, the last one a zero-filling
 * masked load, so the junk columns hold zeros. */
LP_INLINE void lp_g4_pad_channel(const float *in, float *scratch, int hw, int stride, int ci) {
    const float *src = in + (size_t)ci * hw;
    float *dst = scratch + (size_t)ci * stride;
    for (int i = 0; i < stride; i += LP_LANES) {
        const int n = hw - i;
        lp_vstore(dst + i, n >= LP_LANES ? lp_vload(src + i) : lp_load_lanes(src + i, 0, n > 0 ? n : 0));
    }
}

/* Where the next tile's input lives, so this tile's reduction can prefetch it into L1 (n == 0: nothing). */
typedef struct {
    const float *src;   /* the next tile's first column */
    const int32_t *off; /* its group's tap offsets */
    int n;              /* how many */
} lp_g4_next;

/* The general finish (junk columns inside the tile) on a copy of the tile in memory, out of line: inlined, its loops
 * index the tile with variables and GCC would keep the accumulators on the stack in the hot loop too. */
static __attribute__((noinline)) void lp_g4_finish_general(lp_vf acc[][LP_MAXNV], int rows, int nv, int j,
                                                           const lp_grid *g, const float *bias,
                                                           const float *residual, float *out, int act) {
    lp_tile_finish(acc, rows, nv, j, g, bias, residual, out, act);
}

/* The common finish, inline: the tile's first `valid` columns are output pixels j, j+1, ... (one run); a partial
 * last vector is a masked store, later vectors are junk. The accumulators started from the bias. */
LP_INLINE void lp_g4_finish_run(lp_vf acc[4][LP_G4_MAXNV], const int nv, int rows, int j, int valid, size_t hw,
                                const float *residual, float *out, int act) {
    LP_UNROLL for (int r = 0; r < 4; r++) {
        if (r >= rows) break;
        float *o = out + r * hw + j;
        const float *res = residual ? residual + r * hw + j : NULL;
        LP_UNROLL for (int v = 0; v < nv; v++) {
            const int len = valid - v * LP_LANES;
            if (len <= 0) break;
            lp_vf x = acc[r][v];
            if (len >= LP_LANES) {
                if (res) x += lp_vload(res + v * LP_LANES);
                lp_vstore(o + v * LP_LANES, lp_vact(x, act));
            } else {
                if (res) x += lp_load_lanes(res + v * LP_LANES, 0, len);
                lp_store_lanes(o + v * LP_LANES, lp_vact(x, act), 0, len);
            }
        }
    }
}

/* One tile: 4 rows x nv vectors at grid column j over the group's nnz positions. valid >= 0: the finish_run case;
 * -1: the general finish (nv <= LP_MAXNV there). */
LP_INLINE void lp_g4_tile(const lp_grid *g, const float *LP_RESTRICT vals, const int32_t *LP_RESTRICT off, int nnz,
                          int j, int rows, int valid, const float *bias, const float *residual, float *out, int act,
                          const int nv, lp_g4_next nx) {
    /* junk columns inside the tile, and rows of at least a vector: the masked finish of lp_dense.c */
    const int masked = LP_MASKED_FINISH && valid < 0 && g->wq >= LP_LANES;
    lp_vf acc[4][LP_G4_MAXNV];
    LP_UNROLL for (int r = 0; r < 4; r++) { /* the run and masked finishes add no bias: start from it */
        const lp_vf b0 = lp_vsplat((valid >= 0 || masked) && r < rows ? bias[r] : 0.f);
        LP_UNROLL for (int v = 0; v < nv; v++) acc[r][v] = b0;
    }
    const float *src = g->src + j;
    const int npf = nx.n < nnz ? nx.n : nnz;
    int i = 0;
    /* Not unrolled: 4 x nv accumulators + nv input vectors + 1 broadcast fit the registers (an unroll by two
     * measured ~3% slower on AVX-512: the second set of inputs forces register shuffles). The first npf steps also prefetch the rows
     * the next tile reads. */
#define LP_G4_STEP(PF)                                                                                            \
    do {                                                                                                           \
        const float *p = src + off[i];                                                                             \
        const float *wi = vals + (size_t)i * 4;                                                                    \
        lp_vf b[LP_G4_MAXNV];                                                                                      \
        LP_UNROLL for (int v = 0; v < nv; v++) b[v] = lp_vload(p + v * LP_LANES);                                  \
        if (PF)                                                                                                    \
            LP_UNROLL for (int v = 0; v < nv; v++) __builtin_prefetch(nx.src + nx.off[i] + v * LP_LANES, 0, 3);    \
        LP_UNROLL for (int r = 0; r < 4; r++) {                                                                    \
            const lp_vf a = lp_vsplat(wi[r]);                                                                      \
            LP_UNROLL for (int v = 0; v < nv; v++) acc[r][v] += a * b[v];                                          \
            LP_KEEP(a);                                                                                            \
        }                                                                                                          \
        LP_UNROLL for (int v = 0; v < nv; v++) LP_KEEP(b[v]);                                                      \
    } while (0)
    for (; i < npf; i++) LP_G4_STEP(1);
    for (; i < nnz; i++) LP_G4_STEP(0);
#undef LP_G4_STEP
    if (valid >= 0 || nv > LP_MAXNV) { /* (wide tiles only come from aligned tilings, which always have a run) */
        lp_g4_finish_run(acc, nv, rows, j, valid, (size_t)g->hw_out, residual, out, act);
    } else if (masked) {
#if LP_MASKED_FINISH
        lp_vruns q[LP_G4_MAXNV];
        lp_vruns_tile(g, j, nv, q);
        const size_t hw = (size_t)g->hw_out;
        LP_UNROLL for (int r = 0; r < 4; r++) {
            if (r >= rows) break;
            LP_UNROLL for (int v = 0; v < nv; v++) {
                lp_vf x = acc[r][v];
                if (residual) x += lp_vruns_load(residual + r * hw, q[v]);
                lp_vruns_store(out + r * hw, q[v], lp_vact(x, act));
            }
        }
#endif
    } else {
        lp_vf tile[4][LP_MAXNV];
        LP_UNROLL for (int r = 0; r < 4; r++)
            LP_UNROLL for (int v = 0; v < (nv < LP_MAXNV ? nv : LP_MAXNV); v++) tile[r][v] = acc[r][v];
        lp_g4_finish_general(tile, rows, nv, j, g, bias, residual, out, act);
    }
}

/* A run of `count` tiles of one group, nv vectors wide, at grid columns j0, j0 + nv*LANES, ...: one call per run,
 * not per tile. `limit` > 0: the aligned tilings (the tile at j has min(nv*LANES, limit - j) pixel columns); 0:
 * ask lp_g4_tile_at per tile via valid0 (count is 1 there). pf: prefetch each next tile's rows. */
#define LP_G4_TILES_NV(NV)                                                                                        \
    static void lp_g4_tiles_nv##NV(const lp_grid *g, const float *vals, const int32_t *off, int nnz, int j0,       \
                                   int count, int limit, int valid0, int rows, const float *bias,                  \
                                   const float *residual, float *out, int act, int pf) {                           \
        for (int k = 0, j = j0; k < count; k++, j += NV * LP_LANES) {                                               \
            const int left = limit - j;                                                                             \
            const int valid = limit > 0 ? (left < NV * LP_LANES ? left : NV * LP_LANES) : valid0;                   \
            lp_g4_next nx = {g->src + j + NV * LP_LANES, off, pf && k + 1 < count ? nnz : 0};                       \
            lp_g4_tile(g, vals, off, nnz, j, rows, valid, bias, residual, out, act, NV, nx);                        \
        }                                                                                                           \
    }
LP_G4_TILES_NV(1)
LP_G4_TILES_NV(2)
LP_G4_TILES_NV(3)
#if LP_G4_MAXNV >= 4 /* wider tiles than the registers hold are never instantiated */
LP_G4_TILES_NV(4)
#endif
#if LP_G4_MAXNV >= 5
LP_G4_TILES_NV(5)
#endif
#undef LP_G4_TILES_NV

/* Column tail (direct mode, 1-3 columns): the group's 4 rows in the lanes of one 4-float vector per column. */
typedef float lp_v4 __attribute__((vector_size(16), aligned(4)));
static void lp_g4_cols(const lp_grid *g, const float *LP_RESTRICT vals, const int32_t *LP_RESTRICT off, int nnz,
                       int j, int rows, const float *bias, const float *residual, float *out, int act) {
    for (int c = j; c < g->n; c++) {
        lp_v4 acc = {0}, acc1 = {0}, acc2 = {0}, acc3 = {0}; /* four chains hide the FMA latency */
        const float *src = g->src + c;
        int i = 0;
        for (; i + 4 <= nnz; i += 4) {
            lp_v4 w0, w1, w2, w3;
            memcpy(&w0, vals + (size_t)i * 4, sizeof w0);
            memcpy(&w1, vals + (size_t)i * 4 + 4, sizeof w1);
            memcpy(&w2, vals + (size_t)i * 4 + 8, sizeof w2);
            memcpy(&w3, vals + (size_t)i * 4 + 12, sizeof w3);
            acc += w0 * (src[off[i]] - (lp_v4){0});
            acc1 += w1 * (src[off[i + 1]] - (lp_v4){0});
            acc2 += w2 * (src[off[i + 2]] - (lp_v4){0});
            acc3 += w3 * (src[off[i + 3]] - (lp_v4){0});
        }
        for (; i < nnz; i++) {
            lp_v4 wi;
            memcpy(&wi, vals + (size_t)i * 4, sizeof wi);
            acc += wi * (src[off[i]] - (lp_v4){0});
        }
        acc += (acc1 + acc2) + acc3;
        for (int r = 0; r < rows; r++) {
            const size_t o = (size_t)r * g->hw_out + c;
            out[o] = lp_act(acc[r] + bias[r] + (residual ? residual[o] : 0.f), act);
        }
    }
}

LP_INLINE void lp_g4_tiles_any(const lp_grid *g, const float *vals, const int32_t *off, int nnz, int j0, int count,
                                int limit, int valid0, int rows, const float *bias, const float *residual, float *out,
                                int act, int nv, int pf) {
    switch (nv) {
#if LP_G4_MAXNV >= 5
    case 5: lp_g4_tiles_nv5(g, vals, off, nnz, j0, count, limit, valid0, rows, bias, residual, out, act, pf); break;
#endif
#if LP_G4_MAXNV >= 4
    case 4: lp_g4_tiles_nv4(g, vals, off, nnz, j0, count, limit, valid0, rows, bias, residual, out, act, pf); break;
#endif
    case 3: lp_g4_tiles_nv3(g, vals, off, nnz, j0, count, limit, valid0, rows, bias, residual, out, act, pf); break;
    case 2: lp_g4_tiles_nv2(g, vals, off, nnz, j0, count, limit, valid0, rows, bias, residual, out, act, pf); break;
    case 1: lp_g4_tiles_nv1(g, vals, off, nnz, j0, count, limit, valid0, rows, bias, residual, out, act, pf); break;
    default: lp_g4_cols(g, vals, off, nnz, j0, rows, bias, residual, out, act); break;
    }
}

/* Column tiles of one grid row of whole vectors (a direct layer with n % LP_LANES == 0, or the padded copy):
 * full tiles of nv vectors; a remainder of r vectors widens the last tile when nv + r <= LP_G4_MAXNV (28x28 = 49
 * vectors: 11 tiles of 4 and one of 5, not 12 of 4 and a latency-bound tile of 1), else is a tile of its own. */
typedef struct {
    int aligned;     /* these tiles, else lp_tile_count / lp_tile_at of lp_dense.c */
    int nv, full, r; /* width, full tiles, remainder vectors */
    int merge;       /* the remainder widens the last full tile */
} lp_g4_tiling;

LP_INLINE lp_g4_tiling lp_g4_tiling_make(const lp_grid *g, int nv, int padded) {
    lp_g4_tiling t = {0, nv, 0, 0, 0};
    if (!padded && !(g->direct && g->n % LP_LANES == 0)) return t;
    const int nvec = g->n / LP_LANES; /* the padded stride is a whole number of vectors too */
    t.aligned = 1;
    t.full = nvec / nv;
    t.r = nvec - t.full * nv;
    t.merge = t.r > 0 && t.full > 0 && nv + t.r <= LP_G4_MAXNV;
    return t;
}

LP_INLINE int lp_g4_tile_count(const lp_grid *g, const lp_g4_tiling *t) {
    if (!t->aligned) return lp_tile_count(g, t->nv);
    return t->full + (t->r > 0 && !t->merge);
}

/* Tile k: first column *j, width *tnv (0: the column tail), and how many of its columns are output pixels in one
 * run (*valid), or -1 when junk columns sit between them. */
LP_INLINE void lp_g4_tile_at(const lp_grid *g, const lp_g4_tiling *t, int k, int *j, int *tnv, int *valid) {
    const int nr = t->nv * LP_LANES;
    if (!t->aligned) {
        lp_tile_at(g, t->nv, k, j, tnv);
        const int left = g->n - *j; /* wq == w_out: every grid column before n is the output pixel of that index */
        *valid = g->wq != g->w_out ? -1 : (left < *tnv * LP_LANES ? left : *tnv * LP_LANES);
        return;
    }
    *j = k * nr;
    *tnv = k < t->full ? t->nv : t->r;
    if (t->merge && k == t->full - 1) *tnv += t->r;
    const int left = (g->direct ? g->n : g->w_out) - *j; /* padded copy: one grid row, pixels before w_out */
    *valid = left < *tnv * LP_LANES ? left : *tnv * LP_LANES;
}

/* Tiles [t0, t1) of group grp: runs of equal-width tiles, one call each. */
LP_INLINE void lp_g4_group_tiles(const lp_grid *g, const lp_g4_tiling *tl, int grp, int t0, int t1,
                                 const lp_conv_shape *s, const float *values, const int32_t *group_ptr,
                                 const int32_t *offsets, const float *bias, const float *residual, float *out,
                                 int act, int pf) {
    const int co = grp * 4, rows = s->c_out - co < 4 ? s->c_out - co : 4;
    const int p0 = group_ptr[grp], nnz = group_ptr[grp + 1] - p0;
    const float *vals = values + (size_t)p0 * 4;
    const int32_t *off = offsets + p0;
    const float *res = residual ? residual + (size_t)co * g->hw_out : NULL;
    float *o = out + (size_t)co * g->hw_out;
    bias += co;
    if (!tl->aligned) {
        for (int t = t0; t < t1; t++) {
            int j, tnv, valid;
            lp_g4_tile_at(g, tl, t, &j, &tnv, &valid);
            lp_g4_tiles_any(g, vals, off, nnz, j, 1, 0, valid, rows, bias, res, o, act, tnv, 0);
        }
        return;
    }
    const int limit = g->direct ? g->n : g->w_out, nr = tl->nv * LP_LANES;
    const int nfull = tl->full - tl->merge; /* tiles of exactly nv vectors */
    const int f1 = t1 < nfull ? t1 : nfull;
    if (t0 < f1) lp_g4_tiles_any(g, vals, off, nnz, t0 * nr, f1 - t0, limit, 0, rows, bias, res, o, act, tl->nv, pf);
    if (t1 > nfull && t0 <= nfull) { /* the last tile: nv + r wide (merged) or r wide */
        const int w = tl->merge ? tl->nv + tl->r : tl->r;
        lp_g4_tiles_any(g, vals, off, nnz, nfull * nr, 1, limit, 0, rows, bias, res, o, act, w, 0);
    }
}

/* variant (the product that kernels/group4.py names): tile width LP_G4_NV0, 1 or 2 vectors (variant % 3; 4, 3, 2 on
 * AVX-512, 3, 2, 1 on AVX2); order
 * (variant / 3 % 3): 0 the group outermost (its values stay in L1 while the thread sweeps the columns), 1 the same
 * plus a prefetch of the next tile's input rows, 2 the column tile outermost; the padded copy where the layer has
 * one (variant / 9 % 2). Each thread takes one contiguous range of (group, tile) items and walks it in runs of
 * tiles, one call per run, without a division per tile. */
void lp_group4_conv(const float *in, float *out, const float *bias, const float *residual, float *scratch,
                    const lp_conv_shape *s, int act, int variant, int nthreads, const float *values,
                    const int32_t *group_ptr, const int32_t *offsets, const int32_t *pad_offsets) {
    static const int widths[3] = {LP_G4_NV0, LP_G4_NV1, LP_G4_NV2};
    const int nv = widths[variant % 3], pf = variant / 3 % 3 == 1, col_outer = variant / 3 % 3 == 2;
    const int stride = variant / 9 % 2 ? lp_g4_pad_stride(s) : 0;
    lp_grid g = lp_grid_make(in, scratch, s);
    if (stride) { /* one grid row per channel, stride apart */
        g.src = scratch;
        g.n = g.wq = stride;
        g.w_out = g.hw_out;
        g.direct = 0;
        offsets = pad_offsets;
    }
    const lp_g4_tiling tl = lp_g4_tiling_make(&g, nv, stride > 0);
    const int groups = (s->c_out + 3) / 4;
    const int tiles = lp_g4_tile_count(&g, &tl);
    const long items = (long)groups * tiles;
#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
    {
        if (stride) {
#pragma omp for schedule(static)
            for (int ci = 0; ci < s->c_in; ci++) lp_g4_pad_channel(in, scratch, s->h * s->w, stride, ci);
        } else if (!g.direct) {
#pragma omp for schedule(static)
            for (int ci = 0; ci < s->c_in; ci++) lp_grid_prep_channel(in, scratch, s, ci);
#pragma omp single
            lp_grid_zero_slack(scratch, s);
        }
#ifdef _OPENMP
        const long nth = omp_get_num_threads(), tid = omp_get_thread_num();
#else
        const long nth = 1, tid = 0;
#endif
        const long lo = items * tid / nth, hi = items * (tid + 1) / nth;
        for (long it = lo; it < hi;) {
            if (col_outer) { /* item = tile * groups + group */
                const int t = (int)(it / groups), g0 = (int)(it % groups);
                const int g1 = hi - it < groups - g0 ? g0 + (int)(hi - it) : groups;
                for (int grp = g0; grp < g1; grp++)
                    lp_g4_group_tiles(&g, &tl, grp, t, t + 1, s, values, group_ptr, offsets, bias, residual, out,
                                      act, 0);
                it += g1 - g0;
            } else { /* item = group * tiles + tile */
                const int grp = (int)(it / tiles), t0 = (int)(it % tiles);
                const int t1 = hi - it < tiles - t0 ? t0 + (int)(hi - it) : tiles;
                lp_g4_group_tiles(&g, &tl, grp, t0, t1, s, values, group_ptr, offsets, bias, residual, out, act, pf);
                it += t1 - t0;
            }
        }
    }
}

#endif /* LP_GROUP4_C */
