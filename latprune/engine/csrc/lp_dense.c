/* latprune engine: dense convolution kernels (register-blocked GEMM over an input "grid", depthwise, linear).
 * Hand-written source, packed by latprune/engine/kernels/dense.py (pack_dense_conv, pack_depthwise, pack_linear).
 *
 * The input grid, shared with lp_group4.c: a k x k convolution with stride (sh, sw) and padding is turned into
 * shifted reads of ONE buffer. The input is padded and split into sh*sw phase planes (plane (ry, rx) holds padded
 * pixel (y*sh + ry, x*sw + rx)), each Hq x Wq. Output pixel (oy, ox) is grid column j = oy*Wq + ox, and kernel
 * tap (ci, ky, kx) reads plane[ci][ky%sh][kx%sw] at j + (ky/sh)*Wq + kx/sw: a fixed offset per tap, so a tile of
 * consecutive grid columns is a contiguous vector load for every tap and every stride. Columns ox >= w_out are junk
 * (computed, never stored). A 1x1 stride-1 unpadded layer with >= 16 pixels reads the input directly ("direct").
 *
 * Calling contract (beyond lp_common.h): out must not alias in or residual, because the last tile of a row may be
 * shifted to overlap the previous one (recomputing, and rewriting, a few outputs); scratch holds at least
 * KernelSpec.scratch_floats(meta) floats; buffers need no alignment (64-byte alignment is faster). */
#ifndef LP_DENSE_C
#define LP_DENSE_C
#include "lp_common.h"
#include "lp_lanes.h"

/* The ISA's tile shapes come from the #defines that open the generated source (Isa.c_defines in engine/isa.py, which
 * kernels/dense.py packs the weights for): rows per weight panel, vectors per pixel-major tile, channels and pixels
 * of the channel-major tiles. */
#if !defined(LP_DENSE_MR) || !defined(LP_DENSE_NV) || !defined(LP_CM) || !defined(LP_CM_NP)
#error "lp_dense.c needs the ISA's tile #defines (LP_DENSE_MR, LP_DENSE_NV, LP_CM, LP_CM_NP) from Isa.c_defines"
#endif
#define LP_MAXNV 4 /* widest tile, in vectors */
/* Work loops hand out chunks of about 1/8 of a thread's share as threads come for them (schedule(dynamic)), not a
 * fixed half each: a thread that runs slower (a phone's little core, a vCPU the host shares with other work) no
 * longer holds a fixed share of every layer. One thread takes everything in one chunk. */
#define LP_DYN_CHUNK(n, threads) \
    ((threads) == 1 ? (int)(n) : (n) / (8 * (threads)) > 1 ? (int)((n) / (8 * (threads))) : 1)


typedef struct {
    const float *src; /* tap offsets are relative to this */
    int n;            /* grid columns: h_out * wq */
    int wq;           /* grid row width */
    int w_out;        /* valid columns per grid row */
    int h_out;        /* grid rows that hold output pixels */
    int hw_out;       /* output pixels per channel */
    int direct;       /* grid column == output pixel and src is the input itself */
} lp_grid;

/* Direct when the input can be read in place: a 1x1 stride-1 unpadded layer with at least 16 pixels (so a vector
 * tile fits). Copying unaligned channels (h*w not a multiple of 16) to aligned rows was measured: slower. */
LP_INLINE int lp_grid_is_direct(const lp_conv_shape *s) {
    return s->kh == 1 && s->kw == 1 && s->stride_h == 1 && s->stride_w == 1 && s->pad_h == 0 && s->pad_w == 0 &&
           s->h * s->w >= 16;
}

LP_INLINE int lp_grid_hq(const lp_conv_shape *s) { return (s->h + 2 * s->pad_h + s->stride_h - 1) / s->stride_h; }
LP_INLINE int lp_grid_wq(const lp_conv_shape *s) { return (s->w + 2 * s->pad_w + s->stride_w - 1) / s->stride_w; }

/* Floats from one input channel's phase planes to the next's: rounded up to 16 floats (64 bytes). */
LP_INLINE size_t lp_grid_chan(const lp_conv_shape *s) {
    return ((size_t)s->stride_h * s->stride_w * lp_grid_hq(s) * lp_grid_wq(s) + 15) & ~(size_t)15;
}

LP_INLINE lp_grid lp_grid_make(const float *in, const float *scratch, const lp_conv_shape *s) {
    lp_grid g;
    g.direct = lp_grid_is_direct(s);
    g.src = g.direct ? in : scratch;
    g.wq = g.direct ? s->w : lp_grid_wq(s);
    g.n = s->h_out * g.wq;
    g.w_out = s->w_out;
    g.h_out = s->h_out;
    g.hw_out = s->h_out * s->w_out;
    return g;
}

/* Small copies and fills, inline: the grid's rows are often a few floats long (7x7 maps), where a memcpy/memset
 * call per row costs more than the data. */
LP_INLINE void lp_copy_floats(float *LP_RESTRICT dst, const float *LP_RESTRICT src, int n) {
    int i = 0;
    for (; i + LP_LANES <= n; i += LP_LANES) lp_vstore(dst + i, lp_vload(src + i));
    if (i < n) lp_store_lanes(dst + i, lp_load_lanes(src + i, 0, n - i), 0, n - i);
}
LP_INLINE void lp_zero_floats(float *dst, int n) {
    int i = 0;
    for (; i + LP_LANES <= n; i += LP_LANES) lp_vstore(dst + i, lp_vsplat(0.f));
    if (i < n) lp_store_lanes(dst + i, lp_vsplat(0.f), 0, n - i);
}

/* dst[i] = src[2i] for i < n (a stride-2 phase plane row): two masked loads and one lane shuffle per LP_LANES
 * outputs, never reading past src[2n - 2]. */
LP_INLINE void lp_copy_even_floats(float *LP_RESTRICT dst, const float *LP_RESTRICT src, int n) {
    for (int i = 0; i < n; i += LP_LANES) {
        const int m = n - i < LP_LANES ? n - i : LP_LANES; /* outputs in this chunk */
        const int span = 2 * m - 1;                       /* input floats they need */
        const float *p = src + 2 * i;
        const lp_vf v0 = span >= LP_LANES ? lp_vload(p) : lp_load_lanes(p, 0, span);
        const lp_vf v1 = span > LP_LANES ? lp_load_lanes(p + LP_LANES, 0, span - LP_LANES) : lp_vsplat(0.f);
        const lp_vf ev = LP_EVEN_LANES(v0, v1);
        if (m == LP_LANES)
            lp_vstore(dst + i, ev);
        else
            lp_store_lanes(dst + i, ev, 0, m);
    }
}

/* Write input channel ci's padded phase planes into scratch. */
static void lp_grid_prep_channel(const float *in, float *scratch, const lp_conv_shape *s, int ci) {
    const int sh = s->stride_h, sw = s->stride_w, hq = lp_grid_hq(s), wq = lp_grid_wq(s);
    const float *src = in + (size_t)ci * s->h * s->w;
    float *dst = scratch + (size_t)ci * lp_grid_chan(s);
    /* only the planes some tap reads (a 1x1 stride-2 layer reads 1 of 4; the others are never written) */
    const int ny = s->kh < sh ? s->kh : sh, nx = s->kw < sw ? s->kw : sw;
    for (int ry = 0; ry < ny; ry++)
        for (int rx = 0; rx < nx; rx++) {
            float *plane = dst + (size_t)(ry * sw + rx) * hq * wq;
            /* plane column x holds input column x*sw + rx - pad_w: valid for x in [lo, hi) */
            int lo = (s->pad_w - rx + sw - 1) / sw, hi = (s->w + s->pad_w - rx + sw - 1) / sw;
            if (lo > wq) lo = wq;
            if (hi > wq) hi = wq;
            if (hi < lo) hi = lo;
            const int x0 = lo * sw + rx - s->pad_w; /* input column of plane column lo */
            for (int y = 0; y < hq; y++) {
                float *row = plane + (size_t)y * wq;
                const int iy = y * sh + ry - s->pad_h;
                if (iy < 0 || iy >= s->h) {
                    lp_zero_floats(row, wq);
                    continue;
                }
                const float *srow = src + (size_t)iy * s->w + x0;
                lp_zero_floats(row, lo);
                if (sw == 1) {
                    lp_copy_floats(row + lo, srow, hi - lo);
                } else if (sw == 2) {
                    lp_copy_even_floats(row + lo, srow, hi - lo);
                } else {
                    for (int x = 0; x < hi - lo; x++) row[lo + x] = srow[x * sw];
                }
                lp_zero_floats(row + hi, wq - hi);
            }
        }
}

/* Zero the slack after the planes, which the last (partial) tiles read as junk columns. */
LP_INLINE void lp_grid_zero_slack(float *scratch, const lp_conv_shape *s) {
    memset(scratch + (size_t)s->c_in * lp_grid_chan(s), 0, sizeof(float) * (size_t)(lp_grid_wq(s) + 512));
}

/* Grid tiles whose columns cross grid rows (k x k layers: junk columns between the rows), with grid rows of at least
 * LP_LANES columns: a vector of grid columns then holds at most two runs of output pixels (the end of one row and the
 * start of the next), each stored at a shifted base (lane l of run k goes to o_k + l): one masked store each on
 * AVX-512, lp_store_lanes elsewhere. Computed once per vector of a tile, shared by all its rows: the finish stays in
 * registers, without the run tables of the general path below. On AVX-512 that path cost 14-16% of a sparse 3x3
 * layer's time at 56x56 and ~8% at 28x28; this one recovers about a third of it (group-of-4 64 -> 64 at 56x56, 80%:
 * 420 -> 397 us). */
#define LP_MASKED_FINISH 1
typedef struct {
#if LP_AVX512
    __mmask16 m0, m1; /* lanes of the first and second run */
#else
    int n0, a1, n1; /* run 0: lanes [0, n0); run 1: lanes [a1, a1 + n1) */
#endif
    ptrdiff_t o0, o1; /* output index of lane 0 for each run */
} lp_vruns;

/* The runs of the vector whose lane 0 is grid column (oy, ox), ox < wq, wq >= LP_LANES. */
LP_INLINE lp_vruns lp_vruns_at(const lp_grid *g, int oy, int ox) {
    lp_vruns q;
    memset(&q, 0, sizeof q);
    const int h_out = g->h_out;
    if (oy < h_out && ox < g->w_out) {
        const int len = g->w_out - ox < LP_LANES ? g->w_out - ox : LP_LANES;
#if LP_AVX512
        q.m0 = (__mmask16)((1u << len) - 1u);
#else
        q.n0 = len;
#endif
        q.o0 = (ptrdiff_t)oy * g->w_out + ox;
    }
    const int l1 = g->wq - ox; /* first lane of the next grid row */
    if (l1 < LP_LANES && oy + 1 < h_out) {
        const int len = g->w_out < LP_LANES - l1 ? g->w_out : LP_LANES - l1;
#if LP_AVX512
        q.m1 = (__mmask16)(((1u << len) - 1u) << l1);
#else
        q.a1 = l1;
        q.n1 = len;
#endif
        q.o1 = (ptrdiff_t)(oy + 1) * g->w_out - l1;
    }
    return q;
}

/* The runs of a tile's nv vectors starting at grid column j. */
LP_INLINE void lp_vruns_tile(const lp_grid *g, int j, int nv, lp_vruns *q) {
    int oy = j / g->wq, ox = j - oy * g->wq;
    for (int v = 0; v < nv; v++) {
        q[v] = lp_vruns_at(g, oy, ox);
        ox += LP_LANES;
        if (ox >= g->wq) {
            ox -= g->wq;
            oy++;
        }
    }
}

#if LP_AVX512
LP_INLINE lp_vf lp_vruns_load(const float *p, lp_vruns q) {
    return (lp_vf)_mm512_mask_loadu_ps(_mm512_maskz_loadu_ps(q.m0, p + q.o0), q.m1, p + q.o1);
}
LP_INLINE void lp_vruns_store(float *p, lp_vruns q, lp_vf x) {
    _mm512_mask_storeu_ps(p + q.o0, q.m0, (__m512)x);
    _mm512_mask_storeu_ps(p + q.o1, q.m1, (__m512)x);
}
#else
LP_INLINE lp_vf lp_vruns_load(const float *p, lp_vruns q) {
    lp_vf x = q.n0 ? lp_load_lanes(p + q.o0, 0, q.n0) : lp_vsplat(0.f);
    if (q.n1) x += lp_load_lanes(p + q.o1 + q.a1, q.a1, q.n1);
    return x;
}
LP_INLINE void lp_vruns_store(float *p, lp_vruns q, lp_vf x) {
    if (q.n0) lp_store_lanes(p + q.o0, x, 0, q.n0);
    if (q.n1) lp_store_lanes(p + q.o1 + q.a1, x, q.a1, q.n1);
}
#endif


/* Finish a rows x (nv * LP_LANES) accumulator tile at grid column j: bias, residual, activation, store.
 * acc is row-major [rows][LP_MAXNV]; out/residual/bias point at the tile's first output channel. */
LP_INLINE void lp_tile_finish(lp_vf acc[][LP_MAXNV], int rows, const int nv, int j, const lp_grid *g,
                              const float *bias, const float *residual, float *out, int act) {
    const size_t hw = (size_t)g->hw_out;
    if (g->wq == g->w_out && j + nv * LP_LANES <= g->n) { /* no junk columns: grid column == output pixel */
        for (int r = 0; r < rows; r++) {
            const lp_vf b = lp_vsplat(bias[r]);
            for (int v = 0; v < nv; v++) {
                lp_vf x = acc[r][v] + b;
                if (residual) x += lp_vload(residual + r * hw + j + v * LP_LANES);
                lp_vstore(out + r * hw + j + v * LP_LANES, lp_vact(x, act));
            }
        }
        return;
    }
#if LP_MASKED_FINISH
    if (g->wq >= LP_LANES) {
        lp_vruns q[LP_MAXNV];
        lp_vruns_tile(g, j, nv, q);
        for (int r = 0; r < rows; r++) {
            const lp_vf b = lp_vsplat(bias[r]);
            for (int v = 0; v < nv; v++) {
                lp_vf x = acc[r][v] + b;
                if (residual) x += lp_vruns_load(residual + r * hw, q[v]);
                lp_vruns_store(out + r * hw, q[v], lp_vact(x, act));
            }
        }
        return;
    }
#endif
    /* Each vector's lanes split into runs of valid columns (a grid row's w_out pixels) separated by junk lanes.
     * (oy, ox) of column c is tracked incrementally: one division per tile, not one per run. */
    int c = j, oy = j / g->wq, ox = j - oy * g->wq;
    for (int v = 0; v < nv; v++) {
        const int c0 = j + v * LP_LANES;
        const int cend = c0 + LP_LANES < g->n ? c0 + LP_LANES : g->n;
        int run_a[LP_LANES], run_len[LP_LANES], nruns = 0;
        size_t run_o[LP_LANES];
        while (c < cend) {
            if (ox >= g->w_out) { /* junk columns up to the next grid row */
                c += g->wq - ox;
                ox = 0;
                oy++;
                continue;
            }
            int len = g->w_out - ox;
            if (c + len > cend) len = cend - c;
            run_a[nruns] = c - c0;
            run_len[nruns] = len;
            run_o[nruns++] = (size_t)oy * g->w_out + ox;
            c += len;
            ox += len;
        }
        for (int r = 0; r < rows; r++) {
            lp_vf x = acc[r][v] + lp_vsplat(bias[r]);
            if (residual) {
                lp_vf res = lp_vsplat(0.f);
                for (int k = 0; k < nruns; k++)
                    res += lp_load_lanes(residual + r * hw + run_o[k], run_a[k], run_len[k]);
                x += res;
            }
            x = lp_vact(x, act);
            for (int k = 0; k < nruns; k++) lp_store_lanes(out + r * hw + run_o[k], x, run_a[k], run_len[k]);
        }
    }
}

/* Column tiles of the grid: full tiles of nv vectors, then at most two narrower ones for the remainder, so a 14x14
 * image (196 columns) costs 13 vectors rather than 16. In direct mode a tile never reads past the input: the
 * remainder tile is shifted left to end at the last column (recomputing a few columns, same values); in grid mode
 * it reads junk columns from the zeroed slack. When 1-3 columns are left over in direct mode (7x7 = 3 vectors + 1
 * column), they form a "column tail" tile (nv 0) computed one column at a time with the rows in the vector lanes,
 * instead of a whole vector tile for one column. lp_tile_count / lp_tile_at enumerate tiles without a table. */
#define LP_COL_TAIL_MAX 3
LP_INLINE int lp_col_tail(const lp_grid *g) {
    const int t = g->n % LP_LANES;
    return (g->direct && g->n >= LP_LANES && t <= LP_COL_TAIL_MAX) ? t : 0;
}

LP_INLINE int lp_tile_count(const lp_grid *g, int nv) {
    const int tail = lp_col_tail(g), n = g->n - tail;
    const int nr = nv * LP_LANES, full = n / nr, r = n - full * nr;
    const int extra = tail > 0;
    if (r == 0) return full + extra;
    const int v = (r + LP_LANES - 1) / LP_LANES;
    if (!g->direct || n >= v * LP_LANES) return full + 1 + extra;
    return full + 1 + (r % LP_LANES != 0) + extra; /* no full tile, n < v lanes: floor(r/L) vectors + a shifted one */
}

/* Tile t: its first grid column *j and width *tnv in vectors (0: the column tail, columns *j .. n-1). */
LP_INLINE void lp_tile_at(const lp_grid *g, int nv, int t, int *j, int *tnv) {
    const int tail = lp_col_tail(g), n = g->n - tail;
    if (tail && t == lp_tile_count(g, nv) - 1) {
        *j = n;
        *tnv = 0;
        return;
    }
    const int nr = nv * LP_LANES, full = n / nr, r = n - full * nr;
    if (t < full) {
        *j = t * nr;
        *tnv = nv;
        return;
    }
    const int v = (r + LP_LANES - 1) / LP_LANES;
    if (!g->direct) {
        *j = full * nr;
        *tnv = v;
    } else if (n >= v * LP_LANES) {
        *j = n - v * LP_LANES;
        *tnv = v;
    } else if (t == full) {
        *j = 0;
        *tnv = r / LP_LANES;
    } else {
        *j = n - LP_LANES;
        *tnv = 1;
    }
}

/* ---------------------------------------------------------------------------------------------------------------
 * Dense convolution (any kernel, stride, padding, groups): per group a GEMM of the (Mg x K) weight, packed in
 * panels of LP_DENSE_MR rows stored k-major (K x MR), with the K shifted grid rows of the input.
 * Packed arrays: w (groups * panels * K * MR floats), off (groups * K int32 tap offsets into the grid). */
/* The first npf steps each prefetch one cache line of pf (the next panel's weights) into L2. */
LP_INLINE void lp_dense_tile(const lp_grid *g, const int32_t *LP_RESTRICT off, const float *LP_RESTRICT w, int K,
                             int j, ptrdiff_t o, int rows, const float *bias, const float *residual, float *out,
                             int act, const int nv, const float *pf, int npf) {
    lp_vf acc[LP_DENSE_MR][LP_MAXNV];
    for (int r = 0; r < LP_DENSE_MR; r++)
        for (int v = 0; v < nv; v++) acc[r][v] = lp_vsplat(0.f);
    const float *src = g->src + j;
    if (npf > K) npf = K;
#define LP_DENSE_STEP(PF)                                                                                             \
    do {                                                                                                               \
        const float *p = src + off[k];                                                                                 \
        lp_vf b[LP_MAXNV];                                                                                             \
        for (int v = 0; v < nv; v++) b[v] = lp_vload(p + v * LP_LANES);                                                \
        const float *wk = w + (size_t)k * LP_DENSE_MR;                                                                 \
        if (PF) __builtin_prefetch(pf + (size_t)k * 16, 0, 2);                                                         \
        for (int r = 0; r < LP_DENSE_MR; r++) {                                                                        \
            const lp_vf a = lp_vsplat(wk[r]);                                                                          \
            for (int v = 0; v < nv; v++) acc[r][v] += a * b[v];                                                        \
            LP_KEEP(a);                                                                                                \
        }                                                                                                              \
        for (int v = 0; v < nv; v++) LP_KEEP(b[v]);                                                                    \
    } while (0)
    int k = 0;
    for (; k < npf; k++) LP_DENSE_STEP(1);
    for (; k < K; k++) LP_DENSE_STEP(0);
#undef LP_DENSE_STEP
    if (o >= 0 && rows == LP_DENSE_MR) { /* a row tile: whole vectors of output pixels o, o + 1, ... */
        const size_t hw = (size_t)g->hw_out;
        for (int r = 0; r < LP_DENSE_MR; r++) {
            const lp_vf b = lp_vsplat(bias[r]);
            for (int v = 0; v < nv; v++) {
                const size_t i = r * hw + (size_t)o + v * LP_LANES;
                lp_vf x = acc[r][v] + b;
                if (residual) x += lp_vload(residual + i);
                lp_vstore(out + i, lp_vact(x, act));
            }
        }
    } else if (rows == LP_DENSE_MR) /* constant row count: the finish is unrolled and acc never leaves the registers */
        lp_tile_finish(acc, LP_DENSE_MR, nv, j, g, bias, residual, out, act);
    else
        lp_tile_finish(acc, rows, nv, j, g, bias, residual, out, act);
}

/* The tile functions are kept out of line (LP_NOINLINE): inlined into a caller's loop (an OpenMP dynamic schedule's,
 * say), GCC spilled two of AVX2's 12 accumulators to the stack in the tap loop, and a 3x3 layer ran 1.9x slower. */
#define LP_NOINLINE __attribute__((noinline))
LP_NOINLINE
static void lp_dense_tile_nv1(const lp_grid *g, const int32_t *off, const float *w, int K, int j, ptrdiff_t o,
                              int rows, const float *bias, const float *residual, float *out, int act, const float *pf,
                              int npf) {
    lp_dense_tile(g, off, w, K, j, o, rows, bias, residual, out, act, 1, pf, npf);
}
LP_NOINLINE
static void lp_dense_tile_nv2(const lp_grid *g, const int32_t *off, const float *w, int K, int j, ptrdiff_t o,
                              int rows, const float *bias, const float *residual, float *out, int act, const float *pf,
                              int npf) {
    lp_dense_tile(g, off, w, K, j, o, rows, bias, residual, out, act, 2, pf, npf);
}
LP_NOINLINE
static void lp_dense_tile_nv3(const lp_grid *g, const int32_t *off, const float *w, int K, int j, ptrdiff_t o,
                              int rows, const float *bias, const float *residual, float *out, int act, const float *pf,
                              int npf) {
    lp_dense_tile(g, off, w, K, j, o, rows, bias, residual, out, act, 3, pf, npf);
}

/* Column tail (direct mode, 1-3 columns): the panel's LP_DENSE_MR rows in the lanes of one vector per column. */
typedef float lp_vmr __attribute__((vector_size(LP_DENSE_MR * 4)));
typedef float lp_vmr_u __attribute__((vector_size(LP_DENSE_MR * 4), aligned(4), may_alias));
LP_INLINE lp_vmr lp_vmr_load(const float *p) { return *(const lp_vmr_u *)p; } /* not memcpy: see lp_vload */
LP_NOINLINE
static void lp_dense_cols(const lp_grid *g, const int32_t *LP_RESTRICT off, const float *LP_RESTRICT w, int K, int j,
                          int rows, const float *bias, const float *residual, float *out, int act) {
    for (int c = j; c < g->n; c++) {
        lp_vmr acc = {0}, acc1 = {0}, acc2 = {0}, acc3 = {0}; /* four chains hide the FMA latency */
        const float *src = g->src + c;
        int k = 0;
        for (; k + 4 <= K; k += 4) {
            const float *wk = w + (size_t)k * LP_DENSE_MR;
            acc += lp_vmr_load(wk) * (src[off[k]] - (lp_vmr){0});
            acc1 += lp_vmr_load(wk + LP_DENSE_MR) * (src[off[k + 1]] - (lp_vmr){0});
            acc2 += lp_vmr_load(wk + 2 * LP_DENSE_MR) * (src[off[k + 2]] - (lp_vmr){0});
            acc3 += lp_vmr_load(wk + 3 * LP_DENSE_MR) * (src[off[k + 3]] - (lp_vmr){0});
        }
        for (; k < K; k++) acc += lp_vmr_load(w + (size_t)k * LP_DENSE_MR) * (src[off[k]] - (lp_vmr){0});
        acc += (acc1 + acc2) + acc3;
        for (int r = 0; r < rows; r++) {
            const size_t o = (size_t)r * g->hw_out + c;
            out[o] = lp_act(acc[r] + bias[r] + (residual ? residual[o] : 0.f), act);
        }
    }
}

LP_INLINE void lp_dense_tile_any(const lp_grid *g, const int32_t *off, const float *w, int K, int j, ptrdiff_t o,
                                  int rows, const float *bias, const float *residual, float *out, int act, int nv,
                                  const float *pf, int npf) {
    if (nv == 0)
        lp_dense_cols(g, off, w, K, j, rows, bias, residual, out, act);
    else if (nv >= 3)
        lp_dense_tile_nv3(g, off, w, K, j, o, rows, bias, residual, out, act, pf, npf);
    else if (nv == 2)
        lp_dense_tile_nv2(g, off, w, K, j, o, rows, bias, residual, out, act, pf, npf);
    else
        lp_dense_tile_nv1(g, off, w, K, j, o, rows, bias, residual, out, act, pf, npf);
}

/* ---------------------------------------------------------------------------------------------------------------
 * Channel-major tiles for small outputs (<= 64 pixels, e.g. 7x7): a pixel-major tile of a 7x7 map wastes a third of
 * its lanes (49 pixels in 64 lanes, 63 with the grid's junk columns). Here the lanes hold LP_CM output channels
 * (2 vectors) and the registers hold up to LP_CM_NP consecutive output pixels, which may cross output rows (no junk,
 * no tail): per tap, LP_CM / LANES weight vectors and one broadcast per pixel, each from its own grid column (base +
 * index addressing, the indices in registers). Weights are packed k-major in panels of LP_CM channels (K x LP_CM).
 * Tiles used to stop at the end of an output row: a 7-pixel row was 4 + 3 pixels on AVX2 (8 and 6 accumulators, too
 * few for the FMA latency; ResNet20's 64 -> 64 3x3 at 7x7 took 1.2x its 14x14 twin's time, ENGINE_NOTES.md). */
#define LP_CM_NV (LP_CM / LP_LANES) /* LP_CM and LP_CM_NP (pixels per tile) come from the ISA prelude */
#if LP_CM_NP > 12
#error "LP_CM_NP > 12: lp_cm_tile_any has cases up to 12 pixels"
#endif

/* Must match uses_channel_major() in kernels/dense.py, which packs the weights for it (the override exists only
 * for A/B timing of the two tile shapes in a C driver). */
#ifndef LP_CM_MAX_PIXELS
#define LP_CM_MAX_PIXELS 64
#endif
/* Only k x k layers: a 1x1 layer's pixel-major tiles waste nothing (direct grid + column tail) and reuse each weight
 * over 48 pixels instead of <= 12 (measured: channel-major 1.2x slower on 1024x1024 7x7 1x1, 1.5x faster on
 * 512x512 7x7 3x3; slower again at 14x14). */
LP_INLINE int lp_dense_use_cm(const lp_conv_shape *s) {
    return s->groups == 1 && s->kh * s->kw > 1 && s->h_out * s->w_out <= LP_CM_MAX_PIXELS;
}

/* Tiles of at most LP_CM_NP consecutive output pixels (row-major, across rows), balanced: 49 -> 9 tiles of 5-6 pixels
 * on AVX2, 5 of 9-10 on AVX-512. */
LP_INLINE int lp_cm_segs(const lp_conv_shape *s) { return (s->h_out * s->w_out + LP_CM_NP - 1) / LP_CM_NP; }
LP_INLINE void lp_cm_segment(const lp_conv_shape *s, int t, int *p0, int *np) {
    const int n = s->h_out * s->w_out, nseg = lp_cm_segs(s), base = n / nseg, rem = n % nseg;
    *p0 = t * base + (t < rem ? t : rem);
    *np = base + (t < rem);
}

/* The grid column of output pixel p0 (returned) and those of pixels p0 .. p0 + np - 1 relative to it (in gq). */
LP_INLINE int lp_cm_columns(const lp_grid *g, int p0, int np, int32_t *gq) {
    int oy = p0 / g->w_out, ox = p0 - oy * g->w_out;
    const int base = oy * g->wq + ox;
    for (int q = 0; q < np; q++) {
        gq[q] = oy * g->wq + ox - base;
        if (++ox == g->w_out) {
            ox = 0;
            oy++;
        }
    }
    return base;
}

/* One tile over taps [0, K) of the panel (w and off start at the block's first tap); pixel q reads grid column
 * src + gq[q] and writes output o0 + q. part: this segment's partial sums (np x LP_CM floats), read unless first and
 * written unless last; the last block finishes the tile. The first npf steps each prefetch one cache line of pf (the
 * next block's weights) into L2. */
LP_INLINE void lp_cm_tile(const float *src, const int32_t *gq_in, const int32_t *LP_RESTRICT off,
                          const float *LP_RESTRICT w, int K, int co, int c_out, size_t hw, size_t o0, const float *bias,
                          const float *residual, float *out, int act, const int np, float *part, int first, int last,
                          const float *pf, int npf) {
    int32_t gq[12]; /* a local copy, so the indices stay in registers across the taps */
    for (int q = 0; q < np; q++) gq[q] = gq_in[q];
    lp_vf acc[12][LP_CM_NV];
    for (int q = 0; q < np; q++)
        for (int v = 0; v < LP_CM_NV; v++)
            acc[q][v] = first ? lp_vsplat(0.f) : lp_vload(part + q * LP_CM + v * LP_LANES);
    if (npf > K) npf = K;
#define LP_CM_STEP(PF)                                                                                                \
    do {                                                                                                               \
        const float *p = src + off[k];                                                                                 \
        lp_vf wv[LP_CM_NV];                                                                                            \
        for (int v = 0; v < LP_CM_NV; v++) wv[v] = lp_vload(w + (size_t)k * LP_CM + v * LP_LANES);                    \
        if (PF) __builtin_prefetch(pf + (size_t)k * 16, 0, 2);                                                         \
        for (int q = 0; q < np; q++) {                                                                                 \
            const lp_vf x = lp_vsplat(p[gq[q]]);                                                                       \
            for (int v = 0; v < LP_CM_NV; v++) acc[q][v] += wv[v] * x;                                                 \
            LP_KEEP(x);                                                                                                \
        }                                                                                                              \
        for (int v = 0; v < LP_CM_NV; v++) LP_KEEP(wv[v]);                                                             \
    } while (0)
    int k = 0;
    for (; k < npf; k++) LP_CM_STEP(1);
    for (; k < K; k++) LP_CM_STEP(0);
#undef LP_CM_STEP
    for (int q = 0; q < np; q++)
        for (int v = 0; v < LP_CM_NV; v++) lp_vstore(part + q * LP_CM + v * LP_LANES, acc[q][v]);
    if (!last) return;
    const int lanes = c_out - co < LP_CM ? c_out - co : LP_CM;
    for (int l = 0; l < lanes; l++) {
        const size_t o = (size_t)(co + l) * hw + o0;
        for (int q = 0; q < np; q++) {
            float y = part[q * LP_CM + l] + bias[co + l];
            if (residual) y += residual[o + q];
            out[o + q] = lp_act(y, act);
        }
    }
}

#define LP_CM_CASE(n)                                                                                                \
    case n:                                                                                                          \
        lp_cm_tile(src, gq, off, w, K, co, c_out, hw, o0, bias, residual, out, act, n, part, first, last, pf, npf);  \
        break;
LP_NOINLINE
static void lp_cm_tile_any(const float *src, const int32_t *gq, const int32_t *off, const float *w, int K, int co,
                           int c_out, size_t hw, size_t o0, const float *bias, const float *residual, float *out,
                           int act, int np, float *part, int first, int last, const float *pf, int npf) {
    switch (np) {
        LP_CM_CASE(1) LP_CM_CASE(2) LP_CM_CASE(3)
#if LP_CM_NP > 3
        LP_CM_CASE(4) LP_CM_CASE(5) LP_CM_CASE(6)
#endif
#if LP_CM_NP > 6
        LP_CM_CASE(7) LP_CM_CASE(8) LP_CM_CASE(9) LP_CM_CASE(10) LP_CM_CASE(11) LP_CM_CASE(12)
#endif
    default: break;
    }
}
#undef LP_CM_CASE

/* Taps per block of the blocked order below: 256 x 32 weights = 32 KB, which stay in L1 across the segments. */
#define LP_CM_KB 256

/* Dense convolution with channel-major tiles. Variant < 3, blocked: each thread takes whole panels, and per block of
 * LP_CM_KB taps runs every pixel tile (partial sums in a small buffer), so each weight comes from memory once and
 * is reused by all segments from L1. Panel by panel with the segments inside, the first segment streamed the whole
 * panel from memory and waited on it (the 9.4 MB of weights of a ResNet18 512 x 512 3x3 layer at 7x7 never stay in
 * cache between inferences). Variant >= 3, or too few panels to share: one tile per (panel, segment), the segment
 * outermost for variant >= 3. */
static void lp_dense_conv_cm(const float *in, float *out, const float *bias, const float *residual, float *scratch,
                             const lp_conv_shape *s, int act, int variant, int nthreads, const float *w,
                             const int32_t *off) {
    const lp_grid g = lp_grid_make(in, scratch, s);
    const int K = s->c_in * s->kh * s->kw, panels = (s->c_out + LP_CM - 1) / LP_CM;
    const int segs = lp_cm_segs(s), seg_outer = variant >= 3;
    const int blocked = variant < 3 && K > LP_CM_KB && panels >= 2 * nthreads;
    const long items = (long)panels * segs;
    const size_t hw = (size_t)g.hw_out;
#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
    {
        if (!g.direct) {
#pragma omp for schedule(static)
            for (int ci = 0; ci < s->c_in; ci++) lp_grid_prep_channel(in, scratch, s, ci);
#pragma omp single
            lp_grid_zero_slack(scratch, s);
        }
        float part[LP_CM_MAX_PIXELS * LP_CM] __attribute__((aligned(64))); /* segments x np x LP_CM partial sums */
        if (blocked) {
#pragma omp for schedule(dynamic, 1)
            for (int p = 0; p < panels; p++)
                for (int k0 = 0; k0 < K; k0 += LP_CM_KB) {
                    const int kb = K - k0 < LP_CM_KB ? K - k0 : LP_CM_KB;
                    /* the next block's weights (this panel's, or the next panel's first), in cache lines shared out
                     * over the segments, so memory streams them while this block computes (measured, 512 x 512 3x3
                     * at 7x7 with cold weights: 2121 us panel by panel, 1669 blocked, 1536 blocked + prefetch) */
                    const float *nxt = w + ((size_t)p * K + k0 + kb) * LP_CM;
                    const int left = k0 + kb < K ? K - k0 - kb : (p + 1 < panels ? K : 0);
                    const int lines = (left < LP_CM_KB ? left : LP_CM_KB) * (LP_CM / 16);
                    const int share = (lines + segs - 1) / segs;
                    for (int t = 0; t < segs; t++) {
                        int p0, np;
                        int32_t gq[12];
                        lp_cm_segment(s, t, &p0, &np);
                        const int base = lp_cm_columns(&g, p0, np, gq);
                        const int l0 = t * share < lines ? t * share : lines;
                        const int npf = lines - l0 < share ? lines - l0 : share;
                        lp_cm_tile_any(g.src + base, gq, off + k0, w + ((size_t)p * K + k0) * LP_CM, kb, p * LP_CM,
                                       s->c_out, hw, (size_t)p0, bias, residual, out, act, np, part + p0 * LP_CM,
                                       k0 == 0, k0 + kb == K, nxt + (size_t)l0 * 16, npf);
                    }
                }
        } else {
#pragma omp for schedule(dynamic, LP_DYN_CHUNK(items, nthreads))
            for (long it = 0; it < items; it++) {
                const int p = (int)(seg_outer ? it % panels : it / segs);
                const int t = (int)(seg_outer ? it / panels : it % segs);
                int p0, np;
                int32_t gq[12];
                lp_cm_segment(s, t, &p0, &np);
                const int base = lp_cm_columns(&g, p0, np, gq);
                lp_cm_tile_any(g.src + base, gq, off, w + (size_t)p * K * LP_CM, K, p * LP_CM, s->c_out, hw,
                               (size_t)p0, bias, residual, out, act, np, part, 1, 1, w, 0);
            }
        }
    }
}

/* ---------------------------------------------------------------------------------------------------------------
 * 1x1 stride-1 layers (direct grid, one group) as a packed GEMM: out (c_out x HW) = W (c_out x c_in) * in (c_in x HW).
 * In place, every k step of an AVX-512 8 x 48 tile reads three vectors from a different input row (HW floats apart), so
 * the hardware prefetchers see c_in streams and the tile waits on L2. Here each 48-column block of the input is first
 * copied, LP_PK_KB rows at a time, into a contiguous (KB x 48) panel on the stack (48 KB, L1/L2), which every
 * weight panel then streams sequentially. Partial sums over the K blocks live in out; the last block finishes
 * the tile (bias, residual, activation). Column remainders use the in-place tiles.
 * The panel is 48 columns on every ISA, the register tile LP_PK_SUB = LP_DENSE_NV vectors (48 on AVX-512, 24 on
 * AVX2, 12 with 4 lanes): each weight panel then runs the panel's sub-tiles back to back from L1, so the layer's
 * weights stream from L2/L3 once per 48 columns. With one 24-column panel per weight pass, AVX2 read them twice:
 * 1024 x 1024 at 7x7 (4 MB of weights) 1.48 ms against AVX-512's 0.97 (ENGINE_NOTES.md). */
#define LP_PK_KB 128
#ifndef LP_PK_PREFETCH
#define LP_PK_PREFETCH 512 /* floats ahead in the weight stream (64 k steps) */
#endif
#define LP_PK_NV LP_DENSE_NV
#define LP_PK_SUB (LP_PK_NV * LP_LANES) /* columns of one register tile */
#define LP_PK_COLS 48                   /* columns of one input panel: whole register tiles on every ISA */
#if LP_PK_COLS % LP_PK_SUB != 0
#error "LP_PK_COLS must be a whole number of register tiles (LP_DENSE_NV * LP_LANES columns)"
#endif
/* Whether a panel's fused tail column rides inside its last register tile: where the tail's accumulator, weight vector
 * and broadcast fit beside the tile's (AVX-512: 24 + 3 + 1 + 2 of 32 registers). Elsewhere (AVX2's 4 x 3 tile uses
 * all 16) it runs after the tiles from the L1-resident weight block (lp_pk_tail_column). AVX2, 1024 x 1024 at 7x7:
 * the tail inside the 4 x 3 tile spilled (1.48 ms); 24 + 8 + (16 + tail) columns 1.16; 3 x (16) + tail 1.08-1.10;
 * tail after the tiles 1.10 (0.96-1.0 of 3 x 16); no tail at all (6x8 = 48 pixels) 0.95-1.0; AVX-512 0.95. */
#define LP_PK_TAIL_IN (LP_DENSE_MR * LP_PK_NV + LP_PK_NV + 3 <= LP_REGISTERS)

/* bp: the sub-tile's first column in the panel (rows LP_PK_COLS apart); bt: the panel's tail1 column (kb,). */
LP_INLINE void lp_pk_tile(const float *LP_RESTRICT bp, const float *LP_RESTRICT bt, const float *LP_RESTRICT wp,
                          int kb, int first, int last, int j, int cols, int rows, const lp_grid *g, const float *bias,
                          const float *residual, float *out, float *part, size_t phw, int act, const int nv,
                          const int tail1) {
    const size_t hw = (size_t)g->hw_out;
    const int tc = j + cols; /* tail1: the output column after the tile */
    lp_vmr acct = {0}; /* tail1: the panel's LP_DENSE_MR rows in the lanes */
    if (tail1 && !first)
        for (int r = 0; r < rows; r++) acct[r] = out[r * hw + tc];
    lp_vf acc[LP_DENSE_MR][LP_MAXNV];
    if (first) {
        for (int r = 0; r < LP_DENSE_MR; r++)
            for (int v = 0; v < nv; v++) acc[r][v] = lp_vsplat(0.f);
    } else {
        for (int r = 0; r < LP_DENSE_MR; r++)
            for (int v = 0; v < nv; v++) {
                const float *o = part + r * phw + v * LP_LANES;
                acc[r][v] = r >= rows ? lp_vsplat(0.f)
                            : cols >= (v + 1) * LP_LANES ? lp_vload(o)
                                                         : lp_load_lanes(o, 0, cols - v * LP_LANES);
            }
    }
    for (int k = 0; k < kb; k++) {
        const float *p = bp + (size_t)k * LP_PK_COLS;
        lp_vf b[LP_MAXNV];
        for (int v = 0; v < nv; v++) b[v] = lp_vload(p + v * LP_LANES);
        const float *wk = wp + (size_t)k * LP_DENSE_MR;
        __builtin_prefetch(wk + LP_PK_PREFETCH); /* weights stream from L3 when the layer's do not fit L2 */
        for (int r = 0; r < LP_DENSE_MR; r++) {
            const lp_vf a = lp_vsplat(wk[r]);
            for (int v = 0; v < nv; v++) acc[r][v] += a * b[v];
            LP_KEEP(a);
        }
        for (int v = 0; v < nv; v++) LP_KEEP(b[v]);
        if (tail1) acct += lp_vmr_load(wk) * (bt[k] - (lp_vmr){0});
    }
    if (tail1)
        for (int r = 0; r < rows; r++) {
            const size_t o = r * hw + tc;
            out[o] = last ? lp_act(acct[r] + bias[r] + (residual ? residual[o] : 0.f), act) : acct[r];
        }
    if (last) {
        if (rows == LP_DENSE_MR)
            lp_tile_finish(acc, LP_DENSE_MR, nv, j, g, bias, residual, out, act);
        else
            lp_tile_finish(acc, rows, nv, j, g, bias, residual, out, act);
    } else {
        for (int r = 0; r < rows; r++)
            for (int v = 0; v < nv; v++) {
                if (cols >= (v + 1) * LP_LANES)
                    lp_vstore(part + r * phw + v * LP_LANES, acc[r][v]);
                else
                    lp_store_lanes(part + r * phw + v * LP_LANES, acc[r][v], 0, cols - v * LP_LANES);
            }
    }
}

#define LP_PK_CALL(f, l, n, t)                                                                                        \
    lp_pk_tile(bp, bt, wp, kb, f, l, j, cols, rows, g, bias, residual, out, part, phw, act, n, t)
#define LP_PK_NV_CASES(f, l)                                                                                          \
    if (tail1) LP_PK_CALL(f, l, LP_PK_NV, 1);                                                                         \
    else if (nv == 3) LP_PK_CALL(f, l, 3, 0);                                                                         \
    else if (nv == 2) LP_PK_CALL(f, l, 2, 0);                                                                         \
    else LP_PK_CALL(f, l, 1, 0);
/* tail1 (only with nv == LP_PK_NV): the tile also computes the single column after it (7x7 = 48 + 1 columns). */
LP_NOINLINE
static void lp_pk_tile_any(const float *bp, const float *bt, const float *wp, int kb, int first, int last, int j,
                           int cols, int rows, const lp_grid *g, const float *bias, const float *residual, float *out,
                           float *part, size_t phw, int act, int nv, int tail1) {
    if (first && last) {
        LP_PK_NV_CASES(1, 1)
    } else if (first) {
        LP_PK_NV_CASES(1, 0)
    } else if (last) {
        LP_PK_NV_CASES(0, 1)
    } else {
        LP_PK_NV_CASES(0, 0)
    }
}
#undef LP_PK_NV_CASES
#undef LP_PK_CALL

/* The fused tail column of a panel on its own (ISAs whose register tile leaves no room for it, !LP_PK_TAIL_IN): the
 * weight block just used by the tiles (kb x MR, in L1) times the column's kb inputs, four FMA chains.
 * Partial sums live in out like the tiles'. */
LP_NOINLINE
static void lp_pk_tail_column(const float *bt, const float *wp, int kb, int first, int last, int rows,
                              const float *bias, const float *residual, float *out, size_t hw, int act) {
    lp_vmr a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
    if (!first)
        for (int r = 0; r < rows; r++) a0[r] = out[r * hw];
    int k = 0;
    for (; k + 4 <= kb; k += 4) {
        const float *wk = wp + (size_t)k * LP_DENSE_MR;
        a0 += lp_vmr_load(wk) * (bt[k] - (lp_vmr){0});
        a1 += lp_vmr_load(wk + LP_DENSE_MR) * (bt[k + 1] - (lp_vmr){0});
        a2 += lp_vmr_load(wk + 2 * LP_DENSE_MR) * (bt[k + 2] - (lp_vmr){0});
        a3 += lp_vmr_load(wk + 3 * LP_DENSE_MR) * (bt[k + 3] - (lp_vmr){0});
    }
    for (; k < kb; k++) a0 += lp_vmr_load(wp + (size_t)k * LP_DENSE_MR) * (bt[k] - (lp_vmr){0});
    a0 += (a1 + a2) + a3;
    for (int r = 0; r < rows; r++)
        out[r * hw] = last ? lp_act(a0[r] + bias[r] + (residual ? residual[r * hw] : 0.f), act) : a0[r];
}

/* A whole direct 1x1 layer through packed input panels: 48-column tiles, then a narrower zero-padded one for the
 * remainder (1-3 leftover columns go to lp_dense_cols instead, one column at a time, or when it is a single column
 * after a full tile, to that tile). Measured: 48 + 1 column tiles for every map whose pixel count is a multiple of 49
 * gain nothing at 14x14 and lose 10-20% at 28x28 and up (unaligned output rows). With several threads and fewer
 * than two column tiles per thread (7x7: one tile), the threads also split the weight panels: each packs the input
 * panel itself (cheap against the panels it then runs) and runs its share of the panels, instead of falling back to
 * the in-place tiles. Returns 0, doing nothing, when even that leaves a thread without panels. */
static int lp_dense_conv_packed(const lp_grid *g, const float *w, const int32_t *off, int K, int c_out,
                                const float *bias, const float *residual, float *out, int act, int nthreads) {
    const int n = g->n, full = n / LP_PK_COLS, rem = n - full * LP_PK_COLS;
    const int col_tail = rem <= LP_COL_TAIL_MAX ? rem : 0, tiles = full + (rem > col_tail);
    const int fuse_tail = col_tail == 1 && full > 0; /* the last full tile computes the one leftover column */
    const int panels = (c_out + LP_DENSE_MR - 1) / LP_DENSE_MR;
    const int pchunks = nthreads > 1 && tiles < 2 * nthreads ? nthreads : 1; /* weight panel ranges per tile */
    if (panels < 2 * pchunks && pchunks > 1) return 0;
    const size_t hw = (size_t)g->hw_out;
#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
    {
#pragma omp for schedule(dynamic, 1) nowait
        for (int it = 0; it < tiles * pchunks; it++) {
            const int t = it / pchunks, pc = it % pchunks;
            const int p_lo = (int)((long)panels * pc / pchunks), p_hi = (int)((long)panels * (pc + 1) / pchunks);
            float bp[LP_PK_KB * (LP_PK_COLS + 1)] __attribute__((aligned(64))); /* (KB, 48) panel, then (KB,) */
            const int j = t * LP_PK_COLS, cols = n - j < LP_PK_COLS ? n - j : LP_PK_COLS;
            const int tail1 = fuse_tail && t == full - 1;
            const int nv = (cols + LP_LANES - 1) / LP_LANES; /* vectors of the panel's columns */
            /* the tail column inside the last register tile where it fits (LP_PK_TAIL_IN), else after the tiles */
            const int tail_in = tail1 && LP_PK_TAIL_IN, tail_after = tail1 && !tail_in;
            for (int k0 = 0; k0 < K; k0 += LP_PK_KB) {
                const int kb = K - k0 < LP_PK_KB ? K - k0 : LP_PK_KB;
                for (int k = 0; k < kb; k++) { /* (kb, 48) panel: input rows k0.. of columns j .. j + cols - 1 */
                    const float *src = g->src + (size_t)(k0 + k) * hw + j;
                    float *dst = bp + k * LP_PK_COLS;
                    if (tail1) bp[LP_PK_KB * LP_PK_COLS + k] = src[LP_PK_COLS];
                    if (cols == LP_PK_COLS)
                        for (int v = 0; v < LP_PK_COLS / LP_LANES; v++)
                            lp_vstore(dst + v * LP_LANES, lp_vload(src + v * LP_LANES));
                    else
                        for (int v = 0; v < nv; v++) {
                            const int len = cols - v * LP_LANES < LP_LANES ? cols - v * LP_LANES : LP_LANES;
                            lp_vstore(dst + v * LP_LANES, lp_load_lanes(src + v * LP_LANES, 0, len));
                        }
                }
                const float *bt = bp + LP_PK_KB * LP_PK_COLS;
                for (int p = p_lo; p < p_hi; p++) {
                    const int co = p * LP_DENSE_MR, rows = c_out - co < LP_DENSE_MR ? c_out - co : LP_DENSE_MR;
                    const float *wp = w + ((size_t)p * K + k0) * LP_DENSE_MR;
                    for (int c0 = 0; c0 < cols; c0 += LP_PK_SUB) { /* the panel's register tiles, weights in L1 */
                        const int sc = cols - c0 < LP_PK_SUB ? cols - c0 : LP_PK_SUB;
                        lp_pk_tile_any(bp + c0, bt, wp, kb, k0 == 0, k0 + kb == K, j + c0, sc, rows, g, bias + co,
                                       residual ? residual + co * hw : NULL, out + co * hw, out + co * hw + j + c0, hw,
                                       act, (sc + LP_LANES - 1) / LP_LANES, tail_in && c0 + sc == cols);
                    }
                    if (tail_after)
                        lp_pk_tail_column(bt, wp, kb, k0 == 0, k0 + kb == K, rows, bias + co,
                                          residual ? residual + co * hw + j + cols : NULL, out + co * hw + j + cols, hw,
                                          act);
                }
            }
        }
        if (col_tail && !fuse_tail) {
#pragma omp for schedule(static)
            for (int p = 0; p < panels; p++) {
                const int co = p * LP_DENSE_MR, rows = c_out - co < LP_DENSE_MR ? c_out - co : LP_DENSE_MR;
                lp_dense_cols(g, off, w + (size_t)p * K * LP_DENSE_MR, K, n - col_tail, rows, bias + co,
                              residual ? residual + co * hw : NULL, out + co * hw, act);
            }
        }
    }
    return 1;
}

#define LP_ROW_MAXT 64      /* row tiles per output row (below): up to 512 columns at 8 lanes */
#define LP_GP_MAX_COUT 512 /* output channels whose partial sums fit the stack buffer of the grid-packed path */

/* Small k x k outputs (<= 64 pixels, groups == 1) use the channel-major tiles above. Otherwise
 * variant: tile width 3, 2 or 1 vectors (0, 1, 2) with the weight panel outermost (it stays in L1 while the
 * thread sweeps the columns); 3, 4, 5: the same widths with the column tile outermost. */
void lp_dense_conv(const float *in, float *out, const float *bias, const float *residual, float *scratch,
                   const lp_conv_shape *s, int act, int variant, int nthreads, const float *w, const int32_t *off) {
    if (lp_dense_use_cm(s)) {
        lp_dense_conv_cm(in, out, bias, residual, scratch, s, act, variant, nthreads, w, off);
        return;
    }
    static const int widths[3] = {LP_DENSE_NV, 2, 1};
    const lp_grid g = lp_grid_make(in, scratch, s);
    const int nv = widths[variant % 3], col_outer = variant >= 3;
    const int groups = s->groups, mg = s->c_out / groups;
    const int K = (s->c_in / groups) * s->kh * s->kw;
    const int panels = (mg + LP_DENSE_MR - 1) / LP_DENSE_MR;
    /* Row tiles: where the output rows are whole vectors (w_out % LP_LANES == 0, e.g. the 112-wide stems of the
     * MobileNets and ResNet18), a k x k layer's tiles stay inside one output row: no junk grid columns computed and
     * plain vector stores (a tile crossing a grid row stores through lp_vruns). A row of rv vectors is tiles of nv
     * with the remainder kept off 1 vector where it can (7 = 3 + 2 + 2: a 1-vector tile is FMA latency bound). */
    int rt_start[LP_ROW_MAXT], rt_nv[LP_ROW_MAXT], tpr = 0;
    if (!g.direct && s->w_out % LP_LANES == 0 && s->w_out >= 2 * LP_LANES && s->w_out / LP_LANES <= LP_ROW_MAXT) {
        const int rv = s->w_out / LP_LANES;
        for (int c = 0; c < rv;) {
            int w = rv - c < nv ? rv - c : nv;
            if (rv - c == nv + 1 && nv >= 3) w = nv - 1; /* ..., 3, 1 -> ..., 2, 2 */
            rt_start[tpr] = c * LP_LANES;
            rt_nv[tpr++] = w;
            c += w;
        }
    }
    const int tiles = tpr ? s->h_out * tpr : lp_tile_count(&g, nv);
    /* variant 0 on a direct 1x1 layer: packed input panels (above) */
    if (variant == 0 && g.direct && groups == 1 &&
        lp_dense_conv_packed(&g, w, off, K, s->c_out, bias, residual, out, act, nthreads))
        return;
    const long gp_count = (long)groups * panels, items = gp_count * tiles;
    const int pf_lines = K * LP_DENSE_MR / 16, pf_share = (pf_lines + tiles - 1) / tiles;
    /* variant 0 on a k x k layer with 4-row tiles (16 registers: AVX2, generic): the packed panels of the 1x1 path,
     * copied from the grid's shifted rows. A 4-row tile loads twice the input vectors per FMA of an 8-row one; from
     * an L1 panel (aligned, sequential) instead of L2 (unaligned grid rows, one stream per tap) they cost less. A/B
     * on AVX2, noisy machine: 64 -> 64 3x3 at 56x56 0.91-1.09, 128 -> 128 at 28x28 0.91, 64 -> 128 stride 2 0.75,
     * 128 -> 256 stride 2 0.80; loses below K = 512 (16 -> 16 at 28x28: 1.10) and on AVX-512's 8-row tiles (1.05-1.2).
     * Partial sums over the K blocks stay in a per-tile buffer on the stack (up to 512 output channels); the column
     * tiles are the parallel work, so few of them against the threads keep the in-place order. */
    const int ct = (g.hw_out + LP_PK_COLS - 1) / LP_PK_COLS; /* grid-packed panels hold output pixels, no junk */
    const int grid_packed = LP_DENSE_MR < 8 && variant == 0 && !g.direct && groups == 1 && s->c_out <= LP_GP_MAX_COUT &&
                            K >= 512 && (nthreads == 1 || ct >= 4 * nthreads);
    lp_grid pg = g; /* output pixels as grid columns, for the finish of the grid-packed tiles */
    pg.wq = g.w_out;
    pg.n = g.hw_out;
#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
    {
        if (!g.direct) {
#pragma omp for schedule(static)
            for (int ci = 0; ci < s->c_in; ci++) lp_grid_prep_channel(in, scratch, s, ci);
#pragma omp single
            lp_grid_zero_slack(scratch, s);
        }
        if (grid_packed) {
#pragma omp for schedule(dynamic, 1)
            for (int t = 0; t < ct; t++) {
                float bp[LP_PK_KB * LP_PK_COLS + LP_LANES] __attribute__((aligned(64)));
                float part[(LP_GP_MAX_COUT + LP_DENSE_MR) * LP_PK_COLS] __attribute__((aligned(64)));
                /* Panel t holds output pixels j .. j + cols - 1: runs of each output row's pixels, copied from
                 * their grid columns (the grid's junk columns are not packed: 256 x 256 3x3 at 14x14 is 25 vectors
                 * of pixels, not 30 of grid columns). The finish sees pixel indices (grid pg: wq == w_out). */
                const int j = t * LP_PK_COLS, cols = g.hw_out - j < LP_PK_COLS ? g.hw_out - j : LP_PK_COLS;
                int run_c[LP_PK_COLS], run_g[LP_PK_COLS], run_n[LP_PK_COLS], nruns = 0;
                for (int c = 0; c < cols;) {
                    const int p = j + c, oy = p / g.w_out, ox = p - oy * g.w_out;
                    const int len = g.w_out - ox < cols - c ? g.w_out - ox : cols - c;
                    run_c[nruns] = c;
                    run_g[nruns] = oy * g.wq + ox;
                    run_n[nruns++] = len;
                    c += len;
                }
                const int pad = (cols + LP_LANES - 1) / LP_LANES * LP_LANES; /* columns the tiles read */
                for (int k0 = 0; k0 < K; k0 += LP_PK_KB) {
                    const int kb = K - k0 < LP_PK_KB ? K - k0 : LP_PK_KB;
                    for (int k = 0; k < kb; k++) {
                        const float *src = g.src + off[k0 + k];
                        float *dst = bp + k * LP_PK_COLS;
                        /* whole vectors: a run's last one spills into the next run's place (written after it),
                         * the zero padding or the next row of bp (packed after it; bp has a vector of slack), and
                         * reads at most a vector past the run in the grid (zeroed slack after the last plane) */
                        for (int r = 0; r < nruns; r++)
                            for (int i = 0; i < run_n[r]; i += LP_LANES)
                                lp_vstore(dst + run_c[r] + i, lp_vload(src + run_g[r] + i));
                        if (cols < pad) lp_zero_floats(dst + cols, pad - cols);
                    }
                    for (int p = 0; p < panels; p++) {
                        const int co = p * LP_DENSE_MR;
                        const int rows = s->c_out - co < LP_DENSE_MR ? s->c_out - co : LP_DENSE_MR;
                        const float *wp = w + ((size_t)p * K + k0) * LP_DENSE_MR;
                        for (int c0 = 0; c0 < cols; c0 += LP_PK_SUB) {
                            const int sc = cols - c0 < LP_PK_SUB ? cols - c0 : LP_PK_SUB;
                            lp_pk_tile_any(bp + c0, bp, wp, kb, k0 == 0, k0 + kb == K, j + c0, sc, rows, &pg,
                                           bias + co, residual ? residual + (size_t)co * g.hw_out : NULL,
                                           out + (size_t)co * g.hw_out, part + (size_t)co * LP_PK_COLS + c0,
                                           LP_PK_COLS, act, (sc + LP_LANES - 1) / LP_LANES, 0);
                        }
                    }
                }
            }
        } else
#pragma omp for schedule(dynamic, LP_DYN_CHUNK(items, nthreads))
        for (long it = 0; it < items; it++) {
            const int t = (int)(col_outer ? it / gp_count : it % tiles);
            const int gp = (int)(col_outer ? it % gp_count : it / tiles);
            const int grp = gp / panels, p = gp % panels;
            const int co = grp * mg + p * LP_DENSE_MR;
            const int rows = mg - p * LP_DENSE_MR < LP_DENSE_MR ? mg - p * LP_DENSE_MR : LP_DENSE_MR;
            int j, tnv;
            ptrdiff_t o = -1;
            if (tpr) {
                const int oy = t / tpr, k = t - oy * tpr;
                j = oy * g.wq + rt_start[k];
                o = (ptrdiff_t)oy * g.w_out + rt_start[k];
                tnv = rt_nv[k];
            } else
                lp_tile_at(&g, nv, t, &j, &tnv);
            const float *wp = w + (size_t)(grp * panels + p) * K * LP_DENSE_MR;
            const float *res = residual ? residual + (size_t)co * g.hw_out : NULL;
            /* weight panel outermost: the tiles share out the next panel's cache lines to prefetch. Measured with
             * the weights cold, as a model's are between inferences: ResNet18's 256 x 256 3x3 at 14x14 2170 -> 1378
             * us (warm: 1366), 64 x 64 at 56x56 1479 -> 1386 us. */
            const int l0 = col_outer || gp + 1 >= gp_count ? pf_lines : t * pf_share;
            const int npf = l0 < pf_lines ? (pf_lines - l0 < pf_share ? pf_lines - l0 : pf_share) : 0;
            lp_dense_tile_any(&g, off + (size_t)grp * K, wp, K, j, o, rows, bias + co, res,
                              out + (size_t)co * g.hw_out, act, tnv, wp + (size_t)K * LP_DENSE_MR + (size_t)l0 * 16,
                              npf);
        }
    }
}

/* ---------------------------------------------------------------------------------------------------------------
 * Depthwise convolution (c_in == c_out == groups, any kernel/stride/padding): per channel, pad + phase-split it
 * into its own scratch planes (still hot in cache), then every tile of grid columns sums kh*kw shifted loads.
 * Packed arrays: w (C x kh*kw floats), off (kh*kw int32 tap offsets within one channel's planes). */
LP_INLINE void lp_dw_tile(const lp_grid *g, const int32_t *off, const float *w, int taps, int j,
                          const float *bias, const float *residual, float *out, int act, const int nv) {
    lp_vf acc[1][LP_MAXNV];
    for (int v = 0; v < nv; v++) acc[0][v] = lp_vsplat(0.f);
    const float *src = g->src + j;
    for (int k = 0; k < taps; k++) {
        const lp_vf a = lp_vsplat(w[k]);
        const float *p = src + off[k];
        for (int v = 0; v < nv; v++) acc[0][v] += a * lp_vload(p + v * LP_LANES);
    }
    lp_tile_finish(acc, 1, nv, j, g, bias, residual, out, act);
}

static void lp_dw_channel(const lp_grid *g, const int32_t *off, const float *w, int taps, const float *bias,
                          const float *residual, float *out, int act, int nv) {
    const int tiles = lp_tile_count(g, nv);
    for (int t = 0; t < tiles; t++) {
        int j, tnv;
        lp_tile_at(g, nv, t, &j, &tnv);
        switch (tnv) {
        case 4: lp_dw_tile(g, off, w, taps, j, bias, residual, out, act, 4); break;
        case 3: lp_dw_tile(g, off, w, taps, j, bias, residual, out, act, 3); break;
        case 2: lp_dw_tile(g, off, w, taps, j, bias, residual, out, act, 2); break;
        case 1: lp_dw_tile(g, off, w, taps, j, bias, residual, out, act, 1); break;
        default: /* column tail */
            for (int c = j; c < g->n; c++) {
                float acc = bias[0] + (residual ? residual[c] : 0.f);
                for (int k = 0; k < taps; k++) acc += w[k] * g->src[off[k] + c];
                out[c] = lp_act(acc, act);
            }
            break;
        }
    }
}

/* 3x3, padding 1, stride 1 or 2 (every depthwise layer of MobileNet V1/V2) on AVX-512, without the padded grid:
 * out-of-image taps are masked-off lanes of the loads (masked lanes never fault and read as 0 = the padding).
 * Stride 1 runs over the FLAT channel (pixel j = oy*w + ox, tap (dy, dx) reads j + dy*w + dx), so a 7x7 or 14x14 map
 * fills whole vectors instead of one short vector per row; the 9 tap masks of each 16-pixel chunk are the same for
 * every channel and are computed once per call. Stride 2 runs per output row: two loads of 32 input floats and lane
 * shuffles give the even (dx = 0) and odd (dx = +-1) columns, with several rows in one vector when w_out <= 8. */
#if LP_AVX512
#define LP_DW3_MAX_CHUNKS 1024 /* stride 1: 16-pixel chunks per channel (112x112 = 784) */
#define LP_DW3_MAX_W 512       /* stride 2: input row width */
LP_INLINE int lp_dw3_applies(const lp_conv_shape *s) {
    return s->kh == 3 && s->kw == 3 && s->pad_h == 1 && s->pad_w == 1 && s->stride_h == s->stride_w &&
           ((s->stride_h == 1 && (s->h * s->w + 15) / 16 <= LP_DW3_MAX_CHUNKS) ||
            (s->stride_h == 2 && s->w <= LP_DW3_MAX_W));
}

/* Lanes 0 .. k - 1 of 16 (none for k <= 0, all for k >= 16). */
LP_INLINE unsigned lp_lanes_below(int k) { return k <= 0 ? 0u : k >= 16 ? 0xffffu : (1u << k) - 1u; }

/* Lanes l of a 16-float load at row position p whose column p + l lies in [0, w). */
LP_INLINE __mmask16 lp_range_mask(int p, int w) {
    const int lo = p < 0 ? -p : 0, hi = w - p < 16 ? w - p : 16;
    if (hi <= lo) return 0;
    return (__mmask16)((((1u << hi) - 1u) >> lo) << lo);
}

LP_INLINE __m512 lp_dw3_finish(__m512 acc, const float *residual, float *out, __mmask16 m, int act) {
    if (residual) acc = _mm512_add_ps(acc, _mm512_maskz_loadu_ps(m, residual));
    acc = (__m512)lp_vact((lp_vf)acc, act);
    _mm512_mask_storeu_ps(out, m, acc);
    return acc;
}


/* One 16-pixel chunk of a stride-1 channel whose tap rows are all readable (interior rows):
 * *u0, *u1, *u2 hold each kernel row's 16 floats from column -1 and advance to the next chunk's. */
LP_INLINE void lp_dw3_s1_chunk(const float *p, int wd, const __m512 *wt, __m512 b, const __mmask16 *colmask,
                               __m512 *u0, __m512 *u1, __m512 *u2, const float *res, float *dst, __mmask16 m,
                               int act) {
    const __m512 n0 = _mm512_loadu_ps(p - wd + 15), n1 = _mm512_loadu_ps(p + 15), n2 = _mm512_loadu_ps(p + wd + 15);
#define LP_SHIFT(hi, lo, k)                                                                                            \
    _mm512_castsi512_ps(_mm512_alignr_epi32(_mm512_castps_si512(hi), _mm512_castps_si512(lo), k))
    __m512 l = _mm512_mul_ps(wt[0], *u0);
    __m512 c = _mm512_fmadd_ps(wt[1], LP_SHIFT(n0, *u0, 1), b);
    __m512 r = _mm512_mul_ps(wt[2], LP_SHIFT(n0, *u0, 2));
    l = _mm512_fmadd_ps(wt[3], *u1, l);
    c = _mm512_fmadd_ps(wt[4], LP_SHIFT(n1, *u1, 1), c);
    r = _mm512_fmadd_ps(wt[5], LP_SHIFT(n1, *u1, 2), r);
    l = _mm512_fmadd_ps(wt[6], *u2, l);
    c = _mm512_fmadd_ps(wt[7], LP_SHIFT(n2, *u2, 1), c);
    r = _mm512_fmadd_ps(wt[8], LP_SHIFT(n2, *u2, 2), r);
#undef LP_SHIFT
    *u0 = n0;
    *u1 = n1;
    *u2 = n2;
    c = _mm512_mask_add_ps(c, colmask[0], c, l);
    c = _mm512_mask_add_ps(c, colmask[1], c, r);
    lp_dw3_finish(c, res, dst, m, act);
}

static void lp_dw3_s1(const float *in, float *out, const float *bias, const float *residual, const lp_conv_shape *s,
                      int act, int nthreads, const float *w) {
    const int h = s->h, wd = s->w, n = h * wd, chunks = (n + 15) / 16;
    __mmask16 masks[LP_DW3_MAX_CHUNKS][9], colmask[LP_DW3_MAX_CHUNKS][2];
    /* Per chunk, in O(1) (a loop over its 16 lanes cost ~8 cycles a pixel: 27 us on a 112x112 map). Lane l of chunk q
     * is pixel j = 16q + l, at column (ox0 + l) % wd. */
    for (int q = 0, ox0 = 0; q < chunks; q++, ox0 = (ox0 + 16) % wd) {
        const int j0 = q * 16;
        const unsigned valid = lp_lanes_below(n - j0), top = valid & ~lp_lanes_below(wd - j0);
        const unsigned bot = lp_lanes_below(n - wd - j0);
        unsigned left = valid, right = valid;
        for (int l = (wd - ox0) % wd; l < 16; l += wd) left &= ~(1u << l);           /* ox == 0 */
        for (int l = (2 * wd - 1 - ox0) % wd; l < 16; l += wd) right &= ~(1u << l);  /* ox == wd - 1 */
        const unsigned rows[3] = {top, valid, bot}, cols[3] = {left, valid, right};
        for (int t = 0; t < 9; t++) masks[q][t] = (__mmask16)(rows[t / 3] & cols[t % 3]);
        colmask[q][0] = (__mmask16)left;
        colmask[q][1] = (__mmask16)right;
    }
    /* Chunks q_in0 .. q_in1 - 1 lie wholly in rows 1 .. h - 2 (every tap row is inside the image) and their loads,
     * below, stay inside the channel. There each kernel row costs one load: the row's 16 + 16 floats from column
     * -1 are two loads, the last of which is the next chunk's first, and the centre and right taps are lane shifts
     * (valignd) of the pair, instead of nine unaligned loads that mostly split cache lines (measured, 1 thread:
     * 512 x 14x14 35 -> 32 us, 128 x 56x56 132 -> 106 us with the O(1) masks above). */
    const int q_in0 = (wd + 1 + 15) / 16, q_in1 = n - wd - 31 >= 0 ? (n - wd - 31) / 16 + 1 : 0;
#pragma omp parallel for schedule(dynamic, LP_DYN_CHUNK(s->c_out, nthreads)) num_threads(nthreads) if (nthreads > 1)
    for (int c = 0; c < s->c_out; c++) {
        const float *src = in + (size_t)c * n;
        const float *res = residual ? residual + (size_t)c * n : NULL;
        float *dst = out + (size_t)c * n;
        __m512 wt[9];
        for (int t = 0; t < 9; t++) wt[t] = _mm512_set1_ps(w[c * 9 + t]);
        const __m512 b = _mm512_set1_ps(bias[c]);
        __m512 u0 = b, u1 = b, u2 = b; /* each kernel row's 16 floats from column -1 of the current chunk */
        if (q_in0 < q_in1) {
            const float *p = src + q_in0 * 16;
            u0 = _mm512_loadu_ps(p - wd - 1);
            u1 = _mm512_loadu_ps(p - 1);
            u2 = _mm512_loadu_ps(p + wd - 1);
        }
        for (int q = 0; q < chunks; q++) {
            const float *p = src + q * 16;
            if (q >= q_in0 && q < q_in1) { /* interior rows: the column borders masked once per column */
                lp_dw3_s1_chunk(p, wd, wt, b, colmask[q], &u0, &u1, &u2, res ? res + q * 16 : NULL, dst + q * 16,
                                (__mmask16)0xffff, act);
                continue;
            }
            __mmask16 m[9]; /* straight into mask registers (kmovw from memory, not through a GPR and port 5) */
            for (int t = 0; t < 9; t++) m[t] = _load_mask16(&masks[q][t]);
            __m512 a0 = b, a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(); /* one chain per kernel row */
            a0 = _mm512_fmadd_ps(wt[0], _mm512_maskz_loadu_ps(m[0], p - wd - 1), a0);
            a1 = _mm512_fmadd_ps(wt[3], _mm512_maskz_loadu_ps(m[3], p - 1), a1);
            a2 = _mm512_fmadd_ps(wt[6], _mm512_maskz_loadu_ps(m[6], p + wd - 1), a2);
            a0 = _mm512_fmadd_ps(wt[1], _mm512_maskz_loadu_ps(m[1], p - wd), a0);
            a1 = _mm512_fmadd_ps(wt[4], _mm512_maskz_loadu_ps(m[4], p), a1);
            a2 = _mm512_fmadd_ps(wt[7], _mm512_maskz_loadu_ps(m[7], p + wd), a2);
            a0 = _mm512_fmadd_ps(wt[2], _mm512_maskz_loadu_ps(m[2], p - wd + 1), a0);
            a1 = _mm512_fmadd_ps(wt[5], _mm512_maskz_loadu_ps(m[5], p + 1), a1);
            a2 = _mm512_fmadd_ps(wt[8], _mm512_maskz_loadu_ps(m[8], p + wd + 1), a2);
            lp_dw3_finish(_mm512_add_ps(_mm512_add_ps(a0, a1), a2), res ? res + q * 16 : NULL, dst + q * 16, m[4],
                          act);
        }
    }
}

/* Stride 2, one output row segment of <= 16 pixels starting at output column ox0: columns x = 2*ox + dx of one input
 * row, from three loads at x = 2*ox0 - 1, +16, +32 whose in-row lanes are m[0..2] (the same for every row and channel:
 * computed once per call, measured 40 -> 25 cycles a segment on 14x14 maps against computing them per load). */
LP_INLINE __m512 lp_dw3_s2_row(const float *row, int ox0, const __mmask16 *m, const __m512 *wt, __m512 acc) {
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    const int p = 2 * ox0 - 1; /* x of dx = -1 for lane 0 */
    const __m512 v0 = _mm512_maskz_loadu_ps(m[0], row + p);
    const __m512 v1 = _mm512_maskz_loadu_ps(m[1], row + p + 16);
    const __m512 v2 = _mm512_maskz_loadu_ps(m[2], row + p + 32);
    const __m512 xm = _mm512_permutex2var_ps(v0, even, v1); /* x = 2*ox - 1 */
    const __m512 x0 = _mm512_permutex2var_ps(v0, odd, v1);  /* x = 2*ox */
    /* x = 2*ox + 1: xm shifted down one lane, lane 15 from v2[0] */
    const __m512 xp = _mm512_permutex2var_ps(xm, _mm512_setr_epi32(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14,
                                                                    15, 16), v2);
    acc = _mm512_fmadd_ps(wt[0], xm, acc);
    acc = _mm512_fmadd_ps(wt[1], x0, acc);
    return _mm512_fmadd_ps(wt[2], xp, acc);
}

static void lp_dw3_s2(const float *in, float *out, const float *bias, const float *residual, const lp_conv_shape *s,
                      int act, int nthreads, const float *w) {
    const int h = s->h, wd = s->w, ho = s->h_out, wo = s->w_out, segs = (wo + 15) / 16;
    const size_t hw = (size_t)h * wd, hwo = (size_t)ho * wo;
    __mmask16 m[LP_DW3_MAX_W / 32 + 1][4]; /* per segment: the three loads' lanes, and the stored lanes */
    for (int k = 0; k < segs; k++) {
        const int p = 2 * (16 * k) - 1, len = wo - 16 * k < 16 ? wo - 16 * k : 16;
        for (int t = 0; t < 3; t++) m[k][t] = lp_range_mask(p + 16 * t, wd);
        m[k][3] = (__mmask16)((1u << len) - 1u);
    }
#pragma omp parallel for schedule(dynamic, LP_DYN_CHUNK(s->c_out, nthreads)) num_threads(nthreads) if (nthreads > 1)
    for (int c = 0; c < s->c_out; c++) {
        const float *src = in + (size_t)c * hw;
        const float *res = residual ? residual + (size_t)c * hwo : NULL;
        float *dst = out + (size_t)c * hwo;
        __m512 wt[9];
        for (int t = 0; t < 9; t++) wt[t] = _mm512_set1_ps(w[c * 9 + t]);
        const __m512 b = _mm512_set1_ps(bias[c]);
        for (int oy = 0; oy < ho; oy++) {
            const int iy = 2 * oy;
            for (int k = 0; k < segs; k++) {
                const int ox0 = 16 * k;
                __m512 a0 = b, a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps();
                if (iy > 0) a0 = lp_dw3_s2_row(src + (size_t)(iy - 1) * wd, ox0, m[k], wt, a0);
                a1 = lp_dw3_s2_row(src + (size_t)iy * wd, ox0, m[k], wt + 3, a1);
                if (iy + 1 < h) a2 = lp_dw3_s2_row(src + (size_t)(iy + 1) * wd, ox0, m[k], wt + 6, a2);
                const size_t o = (size_t)oy * wo + ox0;
                lp_dw3_finish(_mm512_add_ps(_mm512_add_ps(a0, a1), a2), res ? res + o : NULL, dst + o, m[k][3], act);
            }
        }
    }
}
#else
/* The same layers on the narrower ISAs (AVX2, NEON, generic: 8 or 4 lanes), per output row with portable vector code:
 * a row of 8 or 4 lanes wastes at most 1/8 of them on MobileNet's maps (7, 14, 28 ...), so there is no need for the
 * flat layout and its per-chunk masks. Out-of-image taps come from lane shuffles that shift a zero in (the first and
 * last vector of a row) and from partial loads (lp_load_lanes) past the end of a row; the last vector of a stride-1
 * row is shifted left to end at the row's end (recomputing a few pixels) instead of being partial. One accumulator
 * per kernel row keeps three independent FMA chains. The grid path (variant >= 1) costs a padded copy per channel
 * and a run-table finish: MobileNetV1's 13 depthwise layers took 5.7 ms on AVX2 that way (ENGINE_NOTES.md). */
#if LP_LANES == 8
#define LP_PREV_IDX 7, 8, 9, 10, 11, 12, 13, 14 /* lane L-1 of a, then lanes 0 .. L-2 of b */
#define LP_NEXT_IDX 1, 2, 3, 4, 5, 6, 7, 8      /* lanes 1 .. L-1 of a, then lane 0 of b */
#define LP_ODD_IDX 1, 3, 5, 7, 9, 11, 13, 15
#elif LP_LANES == 4
#define LP_PREV_IDX 3, 4, 5, 6
#define LP_NEXT_IDX 1, 2, 3, 4
#define LP_ODD_IDX 1, 3, 5, 7
#endif
#if defined(__clang__)
#define LP_SHUFFLE2(a, b, IDX) __builtin_shufflevector(a, b, IDX)
#else
#define LP_SHUFFLE2(a, b, IDX) __builtin_shuffle(a, b, (lp_vi){IDX})
#endif

LP_INLINE int lp_dw3_applies(const lp_conv_shape *s) {
    return s->kh == 3 && s->kw == 3 && s->pad_h == 1 && s->pad_w == 1 && s->stride_h == s->stride_w &&
           (s->stride_h == 1 || s->stride_h == 2);
}

/* One kernel row's three taps for the LP_LANES pixels of a stride-1 output row from column x0 (row: the input row).
 * first / last (constants): the vector starts at column 0 / ends at the row's end, so the left / right tap shifts a
 * zero in instead of loading past the row. */
LP_INLINE lp_vf lp_dw3_s1_taps(const float *row, int x0, const lp_vf *wt, lp_vf acc, const int first, const int last) {
    const lp_vf zero = lp_vsplat(0.f);
    const lp_vf c = lp_vload(row + x0);
    const lp_vf l = first ? LP_SHUFFLE2(zero, c, LP_PREV_IDX) : lp_vload(row + x0 - 1);
    const lp_vf r = last ? LP_SHUFFLE2(c, zero, LP_NEXT_IDX) : lp_vload(row + x0 + 1);
    acc += wt[0] * l;
    acc += wt[1] * c;
    return acc + wt[2] * r;
}

/* The vector of output row oy at column x0; top / bottom / first / last / act are constants at every call. */
LP_INLINE void lp_dw3_s1_vec(const float *row, int wd, int x0, const lp_vf *wt, lp_vf b, const float *res, float *dst,
                             const int top, const int bottom, const int first, const int last, const int act) {
    const lp_vf zero = lp_vsplat(0.f);
    lp_vf a0 = b, a1 = zero, a2 = zero; /* one FMA chain per kernel row */
    if (!top) a0 = lp_dw3_s1_taps(row - wd, x0, wt, a0, first, last);
    a1 = lp_dw3_s1_taps(row, x0, wt + 3, a1, first, last);
    if (!bottom) a2 = lp_dw3_s1_taps(row + wd, x0, wt + 6, a2, first, last);
    lp_vf x = (a0 + a1) + a2;
    if (res) x += lp_vload(res + x0);
    lp_vstore(dst + x0, lp_vact(x, act));
}

/* One output row (wd >= LP_LANES): the first vector, the inner ones, and the last one shifted left to end at the row's
 * end (recomputing a few pixels rather than storing a partial vector). */
LP_INLINE void lp_dw3_s1_row(const float *row, int wd, const lp_vf *wt, lp_vf b, const float *res, float *dst,
                             const int top, const int bottom, const int act) {
    if (wd == LP_LANES) {
        lp_dw3_s1_vec(row, wd, 0, wt, b, res, dst, top, bottom, 1, 1, act);
        return;
    }
    lp_dw3_s1_vec(row, wd, 0, wt, b, res, dst, top, bottom, 1, 0, act);
    int x0 = LP_LANES;
    for (; x0 + LP_LANES < wd; x0 += LP_LANES) lp_dw3_s1_vec(row, wd, x0, wt, b, res, dst, top, bottom, 0, 0, act);
    lp_dw3_s1_vec(row, wd, wd - LP_LANES, wt, b, res, dst, top, bottom, 0, 1, act);
}

/* A row shorter than a vector: partial loads (lanes >= wd read as zero, the right padding) and a partial store. */
static void lp_dw3_s1_short_row(const float *row, int wd, int h, int oy, const lp_vf *wt, lp_vf b, const float *res,
                                float *dst, int act) {
    const lp_vf zero = lp_vsplat(0.f);
    lp_vf acc = b;
    for (int dy = -1; dy <= 1; dy++) {
        if (oy + dy < 0 || oy + dy >= h) continue;
        const lp_vf c = lp_load_lanes(row + dy * wd, 0, wd);
        const lp_vf *k = wt + 3 * (dy + 1);
        acc += k[0] * LP_SHUFFLE2(zero, c, LP_PREV_IDX) + k[1] * c + k[2] * LP_SHUFFLE2(c, zero, LP_NEXT_IDX);
    }
    if (res) acc += lp_load_lanes(res, 0, wd);
    lp_store_lanes(dst, lp_vact(acc, act), 0, wd);
}

LP_INLINE void lp_dw3_s1_channel(const float *src, int h, int wd, const lp_vf *wt, lp_vf b, const float *res,
                                 float *dst, const int act) {
    const size_t w = (size_t)wd;
    if (wd < LP_LANES) {
        for (int oy = 0; oy < h; oy++)
            lp_dw3_s1_short_row(src + oy * w, wd, h, oy, wt, b, res ? res + oy * w : NULL, dst + oy * w, act);
        return;
    }
    if (h == 1) {
        lp_dw3_s1_row(src, wd, wt, b, res, dst, 1, 1, act);
        return;
    }
    lp_dw3_s1_row(src, wd, wt, b, res, dst, 1, 0, act);
    for (int oy = 1; oy + 1 < h; oy++)
        lp_dw3_s1_row(src + oy * w, wd, wt, b, res ? res + oy * w : NULL, dst + oy * w, 0, 0, act);
    const size_t last = (size_t)(h - 1) * w;
    lp_dw3_s1_row(src + last, wd, wt, b, res ? res + last : NULL, dst + last, 0, 1, act);
}

static void lp_dw3_s1(const float *in, float *out, const float *bias, const float *residual, const lp_conv_shape *s,
                      int act, int nthreads, const float *w) {
    const int h = s->h, wd = s->w;
    const size_t hw = (size_t)h * wd;
#pragma omp parallel for schedule(dynamic, LP_DYN_CHUNK(s->c_out, nthreads)) num_threads(nthreads) if (nthreads > 1)
    for (int c = 0; c < s->c_out; c++) {
        const float *res = residual ? residual + c * hw : NULL;
        lp_vf wt[9];
        for (int t = 0; t < 9; t++) wt[t] = lp_vsplat(w[c * 9 + t]);
        const lp_vf b = lp_vsplat(bias[c]);
        switch (act) { /* the activation a constant inside the row loops */
        case LP_ACT_RELU: lp_dw3_s1_channel(in + c * hw, h, wd, wt, b, res, out + c * hw, LP_ACT_RELU); break;
        case LP_ACT_RELU6: lp_dw3_s1_channel(in + c * hw, h, wd, wt, b, res, out + c * hw, LP_ACT_RELU6); break;
        default: lp_dw3_s1_channel(in + c * hw, h, wd, wt, b, res, out + c * hw, act); break;
        }
    }
}

/* One kernel row's three taps for the LP_LANES outputs of a stride-2 row from output column ox0: input columns
 * 2*ox - 1, 2*ox, 2*ox + 1, from two loads at 2*ox0 split into even and odd lanes and the odd lanes shifted by one
 * with the previous odd column shifted in. tail (a constant): the loads may pass the row's end, so they are partial
 * (the right padding reads as zero). */
LP_INLINE lp_vf lp_dw3_s2_taps(const float *row, int ox0, int wd, const lp_vf *wt, lp_vf acc, const int tail) {
    const int p = 2 * ox0, n = wd - p; /* floats of the row from p */
    lp_vf va, vb;
    if (!tail) {
        va = lp_vload(row + p);
        vb = lp_vload(row + p + LP_LANES);
    } else {
        const int n1 = n - LP_LANES;
        va = n >= LP_LANES ? lp_vload(row + p) : lp_load_lanes(row + p, 0, n);
        vb = n1 >= LP_LANES ? lp_vload(row + p + LP_LANES)
                            : (n1 > 0 ? lp_load_lanes(row + p + LP_LANES, 0, n1) : lp_vsplat(0.f));
    }
    const lp_vf ev = LP_SHUFFLE2(va, vb, LP_EVEN_IDX); /* x = 2*ox */
    const lp_vf od = LP_SHUFFLE2(va, vb, LP_ODD_IDX);  /* x = 2*ox + 1 */
    const lp_vf prev = lp_vsplat(p > 0 ? row[p - 1] : 0.f);
    const lp_vf l = LP_SHUFFLE2(prev, od, LP_PREV_IDX); /* x = 2*ox - 1 */
    acc += wt[0] * l;
    acc += wt[1] * ev;
    return acc + wt[2] * od;
}

/* The vector of output row oy from output column ox0 (input row iy = 2 * oy); top / bottom / tail / act are constants
 * at every call; tail: the last vector of the row (partial loads, and a partial store when len < LP_LANES). */
LP_INLINE void lp_dw3_s2_vec(const float *row, int wd, int ox0, int len, const lp_vf *wt, lp_vf b, const float *res,
                             float *dst, const int top, const int bottom, const int tail, const int act) {
    const lp_vf zero = lp_vsplat(0.f);
    lp_vf a0 = b, a1 = zero, a2 = zero;
    if (!top) a0 = lp_dw3_s2_taps(row - wd, ox0, wd, wt, a0, tail);
    a1 = lp_dw3_s2_taps(row, ox0, wd, wt + 3, a1, tail);
    if (!bottom) a2 = lp_dw3_s2_taps(row + wd, ox0, wd, wt + 6, a2, tail);
    lp_vf x = (a0 + a1) + a2;
    if (!tail || len >= LP_LANES) {
        if (res) x += lp_vload(res + ox0);
        lp_vstore(dst + ox0, lp_vact(x, act));
    } else {
        if (res) x += lp_load_lanes(res + ox0, 0, len);
        lp_store_lanes(dst + ox0, lp_vact(x, act), 0, len);
    }
}

/* One output row: vectors whose two loads (2 * LP_LANES floats from 2 * ox0) stay inside the row, then the rest. */
LP_INLINE void lp_dw3_s2_row(const float *row, int wd, int wo, const lp_vf *wt, lp_vf b, const float *res, float *dst,
                             const int top, const int bottom, const int act) {
    int ox0 = 0;
    for (; ox0 < wo && 2 * ox0 + 2 * LP_LANES <= wd; ox0 += LP_LANES)
        lp_dw3_s2_vec(row, wd, ox0, LP_LANES, wt, b, res, dst, top, bottom, 0, act);
    for (; ox0 < wo; ox0 += LP_LANES)
        lp_dw3_s2_vec(row, wd, ox0, wo - ox0, wt, b, res, dst, top, bottom, 1, act);
}

LP_INLINE void lp_dw3_s2_channel(const float *src, int h, int wd, int ho, int wo, const lp_vf *wt, lp_vf b,
                                 const float *res, float *dst, const int act) {
    for (int oy = 0; oy < ho; oy++) {
        const int iy = 2 * oy;
        const float *row = src + (size_t)iy * wd;
        const float *r = res ? res + (size_t)oy * wo : NULL;
        float *d = dst + (size_t)oy * wo;
        if (iy > 0 && iy + 1 < h)
            lp_dw3_s2_row(row, wd, wo, wt, b, r, d, 0, 0, act);
        else
            lp_dw3_s2_row(row, wd, wo, wt, b, r, d, iy == 0, iy + 1 >= h, act);
    }
}

static void lp_dw3_s2(const float *in, float *out, const float *bias, const float *residual, const lp_conv_shape *s,
                      int act, int nthreads, const float *w) {
    const int h = s->h, wd = s->w, ho = s->h_out, wo = s->w_out;
    const size_t hw = (size_t)h * wd, hwo = (size_t)ho * wo;
#pragma omp parallel for schedule(dynamic, LP_DYN_CHUNK(s->c_out, nthreads)) num_threads(nthreads) if (nthreads > 1)
    for (int c = 0; c < s->c_out; c++) {
        const float *src = in + c * hw;
        const float *res = residual ? residual + c * hwo : NULL;
        float *dst = out + c * hwo;
        lp_vf wt[9];
        for (int t = 0; t < 9; t++) wt[t] = lp_vsplat(w[c * 9 + t]);
        const lp_vf b = lp_vsplat(bias[c]);
        switch (act) { /* the activation a constant inside the row loops */
        case LP_ACT_RELU: lp_dw3_s2_channel(src, h, wd, ho, wo, wt, b, res, dst, LP_ACT_RELU); break;
        case LP_ACT_RELU6: lp_dw3_s2_channel(src, h, wd, ho, wo, wt, b, res, dst, LP_ACT_RELU6); break;
        default: lp_dw3_s2_channel(src, h, wd, ho, wo, wt, b, res, dst, act); break;
        }
    }
}
#endif

/* variant: 0 -> the in-place 3x3 path above where it applies, else tiles 4 vectors wide; 1 -> 2, 2 -> 1, 3 -> 3. */
void lp_dense_depthwise(const float *in, float *out, const float *bias, const float *residual, float *scratch,
                        const lp_conv_shape *s, int act, int variant, int nthreads, const float *w,
                        const int32_t *off) {
    if (variant == 0 && lp_dw3_applies(s)) {
        if (s->stride_h == 1)
            lp_dw3_s1(in, out, bias, residual, s, act, nthreads, w);
        else
            lp_dw3_s2(in, out, bias, residual, s, act, nthreads, w);
        return;
    }
    static const int widths[4] = {4, 2, 1, 3};
    const lp_grid g0 = lp_grid_make(in, scratch, s);
    const int taps = s->kh * s->kw, nv = widths[variant & 3];
    const size_t chan = lp_grid_chan(s);
    if (!g0.direct) lp_grid_zero_slack(scratch, s);
#pragma omp parallel for schedule(dynamic, LP_DYN_CHUNK(s->c_out, nthreads)) num_threads(nthreads) if (nthreads > 1)
    for (int c = 0; c < s->c_out; c++) {
        lp_grid g = g0;
        if (!g.direct) {
            lp_grid_prep_channel(in, scratch, s, c);
            g.src = scratch + c * chan;
        } else {
            g.src = in + (size_t)c * s->h * s->w;
        }
        const float *res = residual ? residual + (size_t)c * g.hw_out : NULL;
        lp_dw_channel(&g, off, w + (size_t)c * taps, taps, bias + c, res, out + (size_t)c * g.hw_out, act, nv);
    }
}

/* ---------------------------------------------------------------------------------------------------------------
 * Dense linear (a 1x1 convolution on a 1x1 image): out = W x, four rows at a time, vectorised along c_in.
 * Packed arrays: w (c_out x c_in floats, row-major). */
LP_INLINE float lp_hsum(lp_vf v) {
    float t = 0.f;
    for (int i = 0; i < LP_LANES; i++) t += v[i];
    return t;
}

void lp_dense_linear(const float *in, float *out, const float *bias, const float *residual, float *scratch,
                     const lp_conv_shape *s, int act, int variant, int nthreads, const float *w) {
    (void)scratch;
    (void)variant;
    const int n = s->c_in, m = s->c_out, blocks = (m + 3) / 4;
#pragma omp parallel for schedule(dynamic, LP_DYN_CHUNK(blocks, nthreads)) num_threads(nthreads) if (nthreads > 1)
    for (int bl = 0; bl < blocks; bl++) {
        const int r0 = bl * 4, rows = m - r0 < 4 ? m - r0 : 4;
        lp_vf acc[4] = {lp_vsplat(0.f), lp_vsplat(0.f), lp_vsplat(0.f), lp_vsplat(0.f)};
        float tail[4] = {0.f, 0.f, 0.f, 0.f};
        int k = 0;
        for (; k + LP_LANES <= n; k += LP_LANES) {
            const lp_vf x = lp_vload(in + k);
            for (int r = 0; r < rows; r++) acc[r] += x * lp_vload(w + (size_t)(r0 + r) * n + k);
        }
        for (; k < n; k++)
            for (int r = 0; r < rows; r++) tail[r] += in[k] * w[(size_t)(r0 + r) * n + k];
        for (int r = 0; r < rows; r++) {
            float y = lp_hsum(acc[r]) + tail[r] + bias[r0 + r];
            if (residual) y += residual[r0 + r];
            out[r0 + r] = lp_act(y, act);
        }
    }
}

#endif /* LP_DENSE_C */
