/* latprune engine: NPAS-style weight-sparse kernels: block-punched kxk, pattern 3x3, unstructured, block-sparse linear.
 * Hand-written source; packed formats are produced by latprune/engine/kernels/npas.py (keep the two in step).
 *
 * The conv kernels share one input layout in scratch (lp_npas_fill): the image is zero-padded once, split into its
 * stride phases (padded pixel (y, x) lives in phase (y % sh, x % sw) at (y / sh, x / sw)) and every group's channels
 * are padded to a multiple of 4 with zero planes. Then tap (kh, kw) of output pixel (oh, ow) reads phase plane
 * (kh % sh, kw % sw) at (oh + kh / sh, ow + kw / sw): in the "wide" pixel index p = oh * Ws + ow every tap is a
 * constant shift, so each kernel vectorises over p with contiguous loads (the Ws - w_out columns past the row end are
 * computed and thrown away by the epilogue). */
#ifndef LP_NPAS_C
#define LP_NPAS_C
#include "lp_common.h"

#define LP_NPAS_BO 4 /* filters per block-punched row block */
#define LP_NPAS_BI 4 /* input channels per block-punched channel block */
#define LP_NPAS_MAXV 4 /* vectors per pixel tile (variants use 4, 2 or 1) */
/* Widest block-punched tile, from the ISA's registers (isa.py: tile_shape): 4 rows x V accumulators + V inputs + 1
 * broadcast: 4 with 32 registers, 3 with AVX2's 16 (4 x 4 spilled there). */
#ifndef LP_NPAS_BP_NV
#define LP_NPAS_BP_NV 4
#endif
#define LP_NPAS_NPAT 8 /* four-entry 3x3 patterns; pattern id 8 is the full kernel */

/* Geometry of the padded, phase-split scratch image (mirrored by _geometry() in kernels/npas.py). */
typedef struct {
    int Hs, Ws;    /* rows and columns of one phase plane */
    long PL;       /* floats per plane (Hs * Ws) */
    int cpg;       /* input channels per group */
    int cpg_pad;   /* cpg rounded up to a multiple of 4 */
    int opg;       /* output channels per group */
    int nphase;    /* stride_h * stride_w */
    long Pw;       /* wide output pixels h_out * Ws */
} lp_npas_geom;

static lp_npas_geom lp_npas_geometry(const lp_conv_shape *s) {
    lp_npas_geom g;
    int hp = s->h + 2 * s->pad_h, wp = s->w + 2 * s->pad_w;
    g.Hs = (hp + s->stride_h - 1) / s->stride_h;
    g.Ws = (wp + s->stride_w - 1) / s->stride_w;
    g.PL = (long)g.Hs * g.Ws;
    g.cpg = s->c_in / s->groups;
    g.cpg_pad = (g.cpg + 3) / 4 * 4;
    g.opg = s->c_out / s->groups;
    g.nphase = s->stride_h * s->stride_w;
    g.Pw = (long)s->h_out * g.Ws;
    return g;
}

/* Floats after the planes that the last, partial pixel tile may read (mirrored by conv_scratch_floats). */
#define LP_NPAS_SLACK(g) (512 + (g)->Ws + 16) /* > the widest tile (4 vectors of <= 16 lanes) + a row */

/* Offset of tap kpos = kh * kw_size + kw from the start of its group's channel-0 plane of phase 0. */
static void lp_npas_tap_offsets(const lp_conv_shape *s, const lp_npas_geom *g, int *tapoff) {
    for (int kh = 0; kh < s->kh; ++kh)
        for (int kw = 0; kw < s->kw; ++kw) {
            int ph = (kh % s->stride_h) * s->stride_w + kw % s->stride_w;
            tapoff[kh * s->kw + kw] = (int)((long)ph * s->groups * g->cpg_pad * g->PL
                                            + (long)(kh / s->stride_h) * g->Ws + kw / s->stride_w);
        }
}

/* Fill scratch with the padded, phase-split, channel-padded image and zero the tail slack read by the last tile. */
static void lp_npas_fill(const float *LP_RESTRICT in, float *LP_RESTRICT scratch, const lp_conv_shape *s,
                         const lp_npas_geom *g, int nthreads) {
    const long nplanes = (long)g->nphase * s->groups * g->cpg_pad;
    const int sh = s->stride_h, sw = s->stride_w;
#pragma omp parallel for num_threads(nthreads) schedule(static) if (nthreads > 1)
    for (long q = 0; q < nplanes; ++q) {
        const long gq = q / g->cpg_pad; /* (phase, group) index */
        int c = (int)(q % g->cpg_pad), grp = (int)(gq % s->groups), ph = (int)(gq / s->groups);
        int a = ph / sw, b = ph % sw;
        float *dst = scratch + q * g->PL;
        if (c >= g->cpg) {
            memset(dst, 0, sizeof(float) * g->PL);
            continue;
        }
        const float *src = in + (long)(grp * g->cpg + c) * s->h * s->w;
        for (int i = 0; i < g->Hs; ++i) {
            float *row = dst + (long)i * g->Ws;
            int y = i * sh + a - s->pad_h;
            if (y < 0 || y >= s->h) {
                memset(row, 0, sizeof(float) * g->Ws);
                continue;
            }
            const float *srow = src + (long)y * s->w;
            if (sw == 1) {
                int left = s->pad_w < g->Ws ? s->pad_w : g->Ws;
                memset(row, 0, sizeof(float) * left);
                memcpy(row + left, srow, sizeof(float) * s->w);
                memset(row + left + s->w, 0, sizeof(float) * (g->Ws - left - s->w));
            } else {
                for (int j = 0; j < g->Ws; ++j) {
                    int x = j * sw + b - s->pad_w;
                    row[j] = (x >= 0 && x < s->w) ? srow[x] : 0.f;
                }
            }
        }
    }
    memset(scratch + nplanes * g->PL, 0, sizeof(float) * LP_NPAS_SLACK(g));
}

/* Broadcast without lp_vsplat's "0 + x" (which costs a scalar add per weight: 0 + -0.0 is not -0.0). */
LP_INLINE lp_vf lp_npas_bcast(float x) {
    lp_vf v;
    for (int l = 0; l < LP_LANES; ++l) v[l] = x;
    return v;
}

typedef int lp_npas_vi __attribute__((vector_size(LP_LANES * 4), aligned(4)));

/* Vector activation with bitwise selects (C has no vector ?:); matches lp_act lane by lane. */
LP_INLINE lp_vf lp_npas_vact(lp_vf x, int act) {
    const lp_vf zero = lp_npas_bcast(0.f), six = lp_npas_bcast(6.f);
    lp_npas_vi pos, big;
    switch (act) {
    case LP_ACT_RELU:
        pos = x > zero;
        return (lp_vf)((lp_npas_vi)x & pos);
    case LP_ACT_RELU6:
        pos = x > zero;
        x = (lp_vf)((lp_npas_vi)x & pos);
        big = x > six;
        return (lp_vf)(((lp_npas_vi)x & ~big) | ((lp_npas_vi)six & big));
    case LP_ACT_HARDSWISH: {
        lp_vf r = x + 3.f;
        pos = r > zero;
        r = (lp_vf)((lp_npas_vi)r & pos);
        big = r > six;
        r = (lp_vf)(((lp_npas_vi)r & ~big) | ((lp_npas_vi)six & big));
        return x * r * (1.f / 6.f);
    }
    default: return lp_vact(x, act); /* sigmoid, SiLU, GELU, ...: the shared definitions in lp_common.h */
    }
}

/* out[k] = act(acc[k] + bias (+ res[k])) for k < n: vectors, then a scalar tail. */
LP_INLINE void lp_npas_epilogue(float *LP_RESTRICT o, const float *LP_RESTRICT a, const float *LP_RESTRICT r, int n,
                                float bias, int act) {
    const lp_vf vb = lp_npas_bcast(bias);
    int k = 0;
    for (; k + LP_LANES <= n; k += LP_LANES) {
        lp_vf v = lp_vload(a + k) + vb;
        if (r) v += lp_vload(r + k);
        lp_vstore(o + k, lp_npas_vact(v, act));
    }
    for (; k < n; ++k) o[k] = lp_act(a[k] + bias + (r ? r[k] : 0.f), act);
}

/* Write a register tile of V vectors (wide pixels [p0, p0 + V * LANES) of one output channel): skip the garbage
 * columns past each row's end and the pixels past the image, add bias and residual, activate. */
LP_INLINE void lp_npas_flush(const lp_vf *acc, int V, float *out_c, long p0, const lp_conv_shape *s,
                             const lp_npas_geom *g, float bias, const float *res_c, int act) {
    const long T = (long)V * LP_LANES;
    if (g->Ws == s->w_out && p0 + T <= g->Pw) { /* no garbage columns: the tile is contiguous in the output */
        const lp_vf vb = lp_npas_bcast(bias);
        for (int v = 0; v < V; ++v) {
            lp_vf x = acc[v] + vb;
            if (res_c) x += lp_vload(res_c + p0 + v * LP_LANES);
            lp_vstore(out_c + p0 + v * LP_LANES, lp_npas_vact(x, act));
        }
        return;
    }
    float tmp[LP_NPAS_MAXV * LP_LANES];
    for (int v = 0; v < V; ++v) lp_vstore(tmp + v * LP_LANES, acc[v]);
    int np = (int)(g->Pw - p0 < T ? g->Pw - p0 : T);
    int oh = (int)(p0 / g->Ws), ow = (int)(p0 % g->Ws), i = 0;
    while (i < np) {
        int seg = g->Ws - ow;
        if (seg > np - i) seg = np - i;
        int valid = ow < s->w_out ? (s->w_out - ow < seg ? s->w_out - ow : seg) : 0;
        long o = (long)oh * s->w_out + ow;
        lp_npas_epilogue(out_c + o, tmp + i, res_c ? res_c + o : NULL, valid, bias, act);
        i += seg;
        ow = 0;
        ++oh;
    }
}

/* ---------------------------------------------------------------- block-punched kxk convolution
 * Packed (pack order): rows int32 [RB][2]          (first output channel, valid rows <= 4) of each row block;
 *                      ptr  int32 [RB + 1]         entry range of each row block;
 *                      ci   int32 [n]              first input channel (within the group) of the entry's block;
 *                      pos  int32 [n]              its kept kernel position kh * kw_size + kw;
 *                      val  float [n][4 ci][4 co]  the dense 4 x 4 block at that position (zero padded).
 * A 1x1, stride-1, unpadded layer whose groups have a multiple of 4 channels reads its input in place ("direct"):
 * only the last, partial pixel tile is copied (zero padded) into scratch, so no load runs past the input. */
LP_INLINE void lp_bp_tile(int V, const float *LP_RESTRICT src, const int *LP_RESTRICT ci, const int *LP_RESTRICT pos,
                          const int *LP_RESTRICT tapoff, const float *LP_RESTRICT val, int j0, int j1, long PL,
                          lp_vf acc[4][LP_NPAS_MAXV]) {
#pragma GCC unroll 4
    for (int r = 0; r < 4; ++r)
#pragma GCC unroll 4
        for (int v = 0; v < LP_NPAS_MAXV; ++v) acc[r][v] = lp_npas_bcast(0.f);
    for (int j = j0; j < j1; ++j) {
        const float *x = src + ci[j] * PL + tapoff[pos[j]];
        const float *w = val + (long)j * 16;
        if (4 * V + 4 + 1 <= LP_REGISTERS) { /* the 4 weights held across the vectors: one load per 4 FMAs */
#pragma GCC unroll 4
            for (int c = 0; c < 4; ++c, x += PL) {
                const float w0 = w[4 * c], w1 = w[4 * c + 1], w2 = w[4 * c + 2], w3 = w[4 * c + 3];
#pragma GCC unroll 4
                for (int v = 0; v < V; ++v) {
                    const lp_vf xv = lp_vload(x + v * LP_LANES);
                    acc[0][v] += w0 * xv;
                    acc[1][v] += w1 * xv;
                    acc[2][v] += w2 * xv;
                    acc[3][v] += w3 * xv;
                }
            }
        } else { /* V inputs, then one broadcast per row: 4V + V + 1 registers (V = 3 on AVX2's 16); not unrolled (the
                  * unrolled c loop spilled an accumulator on AVX2) */
#pragma GCC unroll 1
            for (int c = 0; c < 4; ++c, x += PL) {
                lp_vf xv[LP_NPAS_MAXV];
#pragma GCC unroll 4
                for (int v = 0; v < V; ++v) xv[v] = lp_vload(x + v * LP_LANES);
#pragma GCC unroll 4
                for (int r = 0; r < 4; ++r) {
                    const lp_vf a = lp_vsplat(w[4 * c + r]);
#pragma GCC unroll 4
                    for (int v = 0; v < V; ++v) acc[r][v] += a * xv[v];
                    LP_KEEP(a);
                }
#pragma GCC unroll 4
                for (int v = 0; v < V; ++v) LP_KEEP(xv[v]);
            }
        }
    }
}

/* Where a tile reads its input: the padded image, the input itself (direct), or the copied last tile (direct). */
typedef struct {
    const float *base; /* channel 0 of group 0 at wide pixel 0 */
    long PL;           /* floats between channels */
    long gstride;      /* floats between groups */
    const float *tail; /* direct mode: copied last tile (NULL when every tile is full) */
    long tail_p0;      /* first pixel of the copied tile */
} lp_bp_src;

/* One (row block, pixel tile) work item; V is a literal at every call so the tile lives in registers. */
LP_INLINE void lp_bp_item(int V, long it, int chan_outer, long ntile, long nrb, const lp_bp_src *in_src, float *out,
                          const float *bias, const float *residual, const lp_conv_shape *s, const lp_npas_geom *g,
                          const int *tapoff, int act, const int *rows, const int *ptr, const int *ci, const int *pos,
                          const float *val) {
    const long T = (long)V * LP_LANES, P = (long)s->h_out * s->w_out;
    long rb = chan_outer ? it / ntile : it % nrb, t = chan_outer ? it % ntile : it / nrb;
    int co0 = rows[2 * rb], nr = rows[2 * rb + 1], grp = co0 / g->opg;
    long p0 = t * T;
    const float *src;
    long PL;
    if (in_src->tail && p0 >= in_src->tail_p0) {
        src = in_src->tail + (long)grp * g->cpg_pad * T;
        PL = T;
    } else {
        src = in_src->base + grp * in_src->gstride + p0;
        PL = in_src->PL;
    }
    lp_vf acc[4][LP_NPAS_MAXV];
    lp_bp_tile(V, src, ci, pos, tapoff, val, ptr[rb], ptr[rb + 1], PL, acc);
    for (int r = 0; r < nr; ++r) {
        const long o = (co0 + r) * P;
        lp_npas_flush(acc[r], V, out + o, p0, s, g, bias[co0 + r], residual ? residual + o : NULL, act);
    }
}

/* A parallel loop over work items. Each use is its own OpenMP region, outlined with its own literal tile width
 * (a region inside an inline function would be outlined once, with the width as a run-time value). */
#define LP_NPAS_PARFOR(n, body)                                                                                       \
    _Pragma("omp parallel for num_threads(nthreads) schedule(static) if (nthreads > 1)")                             \
    for (long it = 0; it < (n); ++it) { body; }

void lp_npas_block_punched(const float *in, float *out, const float *bias, const float *residual, float *scratch,
                           const lp_conv_shape *s, int act, int variant, int nthreads, const int *rows, const int *ptr,
                           const int *ci, const int *pos, const float *val) {
    lp_npas_geom g = lp_npas_geometry(s);
    int tapoff[s->kh * s->kw];
    lp_npas_tap_offsets(s, &g, tapoff);
    const int co = (variant / 3) & 1, V = variant % 3 == 0 ? LP_NPAS_BP_NV : variant % 3 == 1 ? 2 : 1;
    const long nrb = (long)(g.opg + 3) / 4 * s->groups, T = (long)V * LP_LANES, nt = (g.Pw + T - 1) / T, n = nrb * nt;
    const int direct = s->kh == 1 && s->kw == 1 && s->stride_h == 1 && s->stride_w == 1 && s->pad_h == 0 &&
                       s->pad_w == 0 && g.cpg % 4 == 0;
    lp_bp_src src = {scratch, g.PL, (long)g.cpg_pad * g.PL, NULL, 0};
    if (direct) {
        src.base = in;
        src.gstride = (long)g.cpg * g.PL;
        src.tail_p0 = g.Pw / T * T;
        if (src.tail_p0 < g.Pw) { /* copy the last tile of every channel, zero padded, planes T apart */
            const long m = g.Pw - src.tail_p0;
            for (int c = 0; c < s->c_in; ++c) {
                memcpy(scratch + c * T, in + c * g.PL + src.tail_p0, sizeof(float) * m);
                memset(scratch + c * T + m, 0, sizeof(float) * (T - m));
            }
            src.tail = scratch;
        }
    } else {
        lp_npas_fill(in, scratch, s, &g, nthreads);
    }
#define LP_BP_ITEM(VV)                                                                                                \
    lp_bp_item(VV, it, co, nt, nrb, &src, out, bias, residual, s, &g, tapoff, act, rows, ptr, ci, pos, val)
    switch (V) {
    case LP_NPAS_BP_NV: LP_NPAS_PARFOR(n, LP_BP_ITEM(LP_NPAS_BP_NV)) break; /* 4 or 3 */
    case 2: LP_NPAS_PARFOR(n, LP_BP_ITEM(2)) break;
    default: LP_NPAS_PARFOR(n, LP_BP_ITEM(1)) break;
    }
#undef LP_BP_ITEM
}

/* ---------------------------------------------------------------- tile buffer (pattern / unstructured variants 0..2)
 * Loads at arbitrary tap shifts straddle cache lines; these kernels are load bound (one load per multiply-add), so
 * they first copy the pixel tile of every (channel, tap) row into an aligned buffer (a per-tile im2col, built once and
 * shared by all filters), then run every filter on aligned loads. Row (c * K + kpos) holds tap kpos of channel c. */
LP_INLINE float *lp_npas_tilebuf(float *scratch, const lp_conv_shape *s, const lp_npas_geom *g) {
    float *end = scratch + (long)g->nphase * s->groups * g->cpg_pad * g->PL + LP_NPAS_SLACK(g);
    return (float *)(((uintptr_t)end + 63) & ~(uintptr_t)63);
}

LP_INLINE void lp_npas_build_rows(int V, const float *LP_RESTRICT pad, float *LP_RESTRICT buf, const lp_conv_shape *s,
                                  const lp_npas_geom *g, const int *LP_RESTRICT tapoff, long p0, int c) {
    const int K = s->kh * s->kw, T = V * LP_LANES, grp = c / g->cpg, ci = c % g->cpg;
    const float *src = pad + ((long)grp * g->cpg_pad + ci) * g->PL + p0;
    float *dst = buf + (long)c * K * T;
    for (int k = 0; k < K; ++k)
#pragma GCC unroll 4
        for (int v = 0; v < V; ++v) lp_vstore(dst + k * T + v * LP_LANES, lp_vload(src + tapoff[k] + v * LP_LANES));
}

/* One parallel region per tile width: per pixel tile, the team builds the buffer, then shares out the NITEMS work
 * items (filters, or chunks of filters) of that tile; ITEM sees the tile index t, its width T_ and the item index. */
#define LP_NPAS_TILEBUF_REGION(V, NITEMS, ITEM)                                                                       \
    _Pragma("omp parallel num_threads(nthreads) if (nthreads > 1)") {                                                 \
        const long T_ = (long)(V) * LP_LANES, nt_ = (g.Pw + T_ - 1) / T_;                                             \
        for (long t = 0; t < nt_; ++t) {                                                                               \
            _Pragma("omp for schedule(static)") for (int c = 0; c < s->c_in; ++c)                                     \
                lp_npas_build_rows(V, scratch, buf, s, &g, tapoff, t * T_, c);                                        \
            _Pragma("omp for schedule(static)") for (int item = 0; item < (NITEMS); ++item) { ITEM; }                 \
        }                                                                                                              \
    }

/* ---------------------------------------------------------------- pattern 3x3 convolution (PatDNN)
 * Packed: off  int32 [c_out * 9 + 1] kernels of output channel co with pattern id p are the entries
 *                                     [off[co*9+p], off[co*9+p+1]); ids 0..7 are the four-entry patterns, id 8 the full
 *                                     9-entry kernel (PatDNN's filter-kernel reorder: entries are grouped by pattern so
 *                                     the inner loop has fixed taps);
 *         voff int32 [c_out + 1]      first value of each output channel (4 per pattern kernel, then 9 per full one);
 *         ci   int32 [n]              input channel (within the group) of each kept kernel;
 *         val  float [..]             the kept values in tap order;
 *         taps int32 [8][4]           kernel positions kh * 3 + kw of each pattern.
 * Channel ci's tap k is read at src + ci * cstride + tapoff[k]: the padded image (cstride = plane) or the tile buffer
 * (cstride = 9 * T, tapoff[k] = k * T). */
LP_INLINE void lp_pat_tile(int V, const float *LP_RESTRICT src, const int *LP_RESTRICT tapoff,
                           const int *LP_RESTRICT off, const int *LP_RESTRICT ci, const float *LP_RESTRICT w,
                           const int *LP_RESTRICT taps, long cstride, lp_vf *acc) {
    lp_vf a[LP_NPAS_MAXV], b[LP_NPAS_MAXV];
#pragma GCC unroll 4
    for (int v = 0; v < LP_NPAS_MAXV; ++v) a[v] = b[v] = lp_npas_bcast(0.f);
    for (int p = 0; p < LP_NPAS_NPAT; ++p) {
        const int t0 = tapoff[taps[4 * p]], t1 = tapoff[taps[4 * p + 1]];
        const int t2 = tapoff[taps[4 * p + 2]], t3 = tapoff[taps[4 * p + 3]];
        for (int j = off[p]; j < off[p + 1]; ++j, w += 4) {
            const float *xp = src + ci[j] * cstride;
            const float w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3];
#pragma GCC unroll 4
            for (int v = 0; v < V; ++v) {
                a[v] += w0 * lp_vload(xp + t0 + v * LP_LANES);
                b[v] += w1 * lp_vload(xp + t1 + v * LP_LANES);
                a[v] += w2 * lp_vload(xp + t2 + v * LP_LANES);
                b[v] += w3 * lp_vload(xp + t3 + v * LP_LANES);
            }
        }
    }
    for (int j = off[LP_NPAS_NPAT]; j < off[LP_NPAS_NPAT + 1]; ++j, w += 9) {
        const float *xp = src + ci[j] * cstride;
        for (int k = 0; k < 9; ++k) {
            const float wk = w[k];
#pragma GCC unroll 4
            for (int v = 0; v < V; ++v) {
                if (k & 1) b[v] += wk * lp_vload(xp + tapoff[k] + v * LP_LANES);
                else a[v] += wk * lp_vload(xp + tapoff[k] + v * LP_LANES);
            }
        }
    }
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) acc[v] = a[v] + b[v];
}

/* Direct variants (3..5): filter-outer work items reading the padded image. */
LP_INLINE void lp_pat_item(int V, long it, long ntile, const float *in_pad, float *out, const float *bias,
                           const float *residual, const lp_conv_shape *s, const lp_npas_geom *g, const int *tapoff,
                           int act, const int *off, const int *voff, const int *ci, const float *val, const int *taps) {
    const long T = (long)V * LP_LANES, P = (long)s->h_out * s->w_out;
    long co = it / ntile, p0 = (it % ntile) * T;
    const float *src = in_pad + (long)(co / g->opg) * g->cpg_pad * g->PL + p0;
    lp_vf acc[LP_NPAS_MAXV];
    lp_pat_tile(V, src, tapoff, off + co * (LP_NPAS_NPAT + 1), ci, val + voff[co], taps, g->PL, acc);
    lp_npas_flush(acc, V, out + co * P, p0, s, g, bias[co], residual ? residual + co * P : NULL, act);
}

/* Tile-buffer variants (0..2): filter co on the buffered tile at p0. */
LP_INLINE void lp_pat_buffered(int V, int co, long p0, const float *buf, float *out, const float *bias,
                               const float *residual, const lp_conv_shape *s, const lp_npas_geom *g, int act,
                               const int *off, const int *voff, const int *ci, const float *val, const int *taps) {
    const int T = V * LP_LANES;
    const long P = (long)s->h_out * s->w_out;
    int rowoff[9];
    for (int k = 0; k < 9; ++k) rowoff[k] = k * T;
    lp_vf acc[LP_NPAS_MAXV];
    const float *src = buf + (long)(co / g->opg) * g->cpg * 9 * T;
    lp_pat_tile(V, src, rowoff, off + co * (LP_NPAS_NPAT + 1), ci, val + voff[co], taps, 9 * T, acc);
    lp_npas_flush(acc, V, out + co * P, p0, s, g, bias[co], residual ? residual + co * P : NULL, act);
}

void lp_npas_pattern3x3(const float *in, float *out, const float *bias, const float *residual, float *scratch,
                        const lp_conv_shape *s, int act, int variant, int nthreads, const int *off, const int *voff,
                        const int *ci, const float *val, const int *taps) {
    lp_npas_geom g = lp_npas_geometry(s);
    int tapoff[9];
    lp_npas_tap_offsets(s, &g, tapoff);
    lp_npas_fill(in, scratch, s, &g, nthreads);
    float *buf = lp_npas_tilebuf(scratch, s, &g);
#define LP_PAT_BUF(VV) lp_pat_buffered(VV, item, t * T_, buf, out, bias, residual, s, &g, act, off, voff, ci, val, taps)
#define LP_PAT_ITEM(VV)                                                                                               \
    lp_pat_item(VV, it, nt, scratch, out, bias, residual, s, &g, tapoff, act, off, voff, ci, val, taps)
    switch (variant) {
    case 0: LP_NPAS_TILEBUF_REGION(4, s->c_out, LP_PAT_BUF(4)) break;
    case 1: LP_NPAS_TILEBUF_REGION(2, s->c_out, LP_PAT_BUF(2)) break;
    case 2: LP_NPAS_TILEBUF_REGION(1, s->c_out, LP_PAT_BUF(1)) break;
    default: {
        const int V = variant == 3 ? 4 : variant == 4 ? 2 : 1;
        const long T = (long)V * LP_LANES, nt = (g.Pw + T - 1) / T, n = (long)s->c_out * nt;
        switch (V) {
        case 4: LP_NPAS_PARFOR(n, LP_PAT_ITEM(4)) break;
        case 2: LP_NPAS_PARFOR(n, LP_PAT_ITEM(2)) break;
        default: LP_NPAS_PARFOR(n, LP_PAT_ITEM(1)) break;
        }
    }
    }
#undef LP_PAT_BUF
#undef LP_PAT_ITEM
}

/* ---------------------------------------------------------------- pattern 3x3 convolution by input columns
 * The filter-major kernel above loads one input vector per multiply-add. Here the packed kernels are grouped the
 * other way round, per chunk of filters and per (input channel, pattern) "column": a pixel tile loads the
 * column's 4 input rows once and folds them into the accumulators of every filter of the chunk that keeps that
 * kernel (4 multiply-adds per accumulator load and store; a chunk's accumulators stay in L1/L2). The packer picks
 * the chunk size: 128 filters where there are 256 or more (measured ~25 % faster than 32), fewer on narrower layers
 * so that 2 threads still get a chunk each (chunks are the unit of parallel work).
 * Packed: qc   int32 [1]         filters per chunk;
 *         qptr int32 [nq + 1]    column range of each chunk;
 *         col  int32 [ncol]     (global input channel) * 9 + pattern id (8: a full kernel);
 *         eptr int32 [ncol + 1] entry range of each column;
 *         voff int32 [ncol]     first value of each column (4 values per entry, 9 for a full kernel);
 *         co   int32 [nent]     filter of each entry;
 *         val  float [..]       the kept values in tap order;
 *         taps int32 [8][4]     kernel positions kh * 3 + kw of each pattern. */
LP_INLINE void lp_patc_chunk(int V, int q, int qc, long p0, const float *LP_RESTRICT buf, float *LP_RESTRICT accbuf,
                             float *out, const float *bias, const float *residual, const lp_conv_shape *s,
                             const lp_npas_geom *g, int act, const int *LP_RESTRICT qptr, const int *LP_RESTRICT col,
                             const int *LP_RESTRICT eptr, const int *LP_RESTRICT voff, const int *LP_RESTRICT co,
                             const float *LP_RESTRICT val, const int *LP_RESTRICT taps) {
    const int T = V * LP_LANES, co0 = q * qc;
    const int nco = s->c_out - co0 < qc ? s->c_out - co0 : qc;
    const long P = (long)s->h_out * s->w_out;
    float *acc = accbuf + (long)co0 * T;
    memset(acc, 0, sizeof(float) * nco * T);
    for (int k = qptr[q]; k < qptr[q + 1]; ++k) {
        const int c = col[k] / 9, p = col[k] % 9;
        const float *x = buf + (long)c * 9 * T, *w = val + voff[k];
        if (p < LP_NPAS_NPAT) {
            const float *x0 = x + taps[4 * p] * T, *x1 = x + taps[4 * p + 1] * T;
            const float *x2 = x + taps[4 * p + 2] * T, *x3 = x + taps[4 * p + 3] * T;
            lp_vf r0[LP_NPAS_MAXV], r1[LP_NPAS_MAXV], r2[LP_NPAS_MAXV], r3[LP_NPAS_MAXV];
#pragma GCC unroll 4
            for (int v = 0; v < V; ++v) {
                r0[v] = lp_vload(x0 + v * LP_LANES);
                r1[v] = lp_vload(x1 + v * LP_LANES);
                r2[v] = lp_vload(x2 + v * LP_LANES);
                r3[v] = lp_vload(x3 + v * LP_LANES);
            }
            for (int e = eptr[k]; e < eptr[k + 1]; ++e, w += 4) {
                float *a = acc + (long)(co[e] - co0) * T;
                const float w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3];
#pragma GCC unroll 4
                for (int v = 0; v < V; ++v)
                    lp_vstore(a + v * LP_LANES,
                              lp_vload(a + v * LP_LANES) + ((w0 * r0[v] + w1 * r1[v]) + (w2 * r2[v] + w3 * r3[v])));
            }
        } else {
            for (int e = eptr[k]; e < eptr[k + 1]; ++e, w += 9) {
                float *a = acc + (long)(co[e] - co0) * T;
#pragma GCC unroll 4
                for (int v = 0; v < V; ++v) {
                    lp_vf y = lp_vload(a + v * LP_LANES);
                    for (int t = 0; t < 9; ++t) y += w[t] * lp_vload(x + t * T + v * LP_LANES);
                    lp_vstore(a + v * LP_LANES, y);
                }
            }
        }
    }
    for (int r = 0; r < nco; ++r) {
        lp_vf av[LP_NPAS_MAXV];
#pragma GCC unroll 4
        for (int v = 0; v < V; ++v) av[v] = lp_vload(acc + (long)r * T + v * LP_LANES);
        const long o = (co0 + r) * P;
        lp_npas_flush(av, V, out + o, p0, s, g, bias[co0 + r], residual ? residual + o : NULL, act);
    }
}

void lp_npas_pattern3x3_cols(const float *in, float *out, const float *bias, const float *residual, float *scratch,
                             const lp_conv_shape *s, int act, int variant, int nthreads, const int *qc,
                             const int *qptr, const int *col, const int *eptr, const int *voff, const int *co,
                             const float *val, const int *taps) {
    lp_npas_geom g = lp_npas_geometry(s);
    int tapoff[9];
    lp_npas_tap_offsets(s, &g, tapoff);
    lp_npas_fill(in, scratch, s, &g, nthreads);
    float *buf = lp_npas_tilebuf(scratch, s, &g);
    float *accbuf = buf + (long)s->c_in * 9 * 4 * 16; /* after the widest tile buffer; still 64-byte aligned */
    const int nq = (s->c_out + qc[0] - 1) / qc[0];
#define LP_PATC(VV)                                                                                                   \
    lp_patc_chunk(VV, item, qc[0], t * T_, buf, accbuf, out, bias, residual, s, &g, act, qptr, col, eptr, voff, co, \
                  val, taps)
    switch (variant) {
    case 0: LP_NPAS_TILEBUF_REGION(4, nq, LP_PATC(4)) break;
    case 1: LP_NPAS_TILEBUF_REGION(2, nq, LP_PATC(2)) break;
    default: LP_NPAS_TILEBUF_REGION(1, nq, LP_PATC(1)) break;
    }
#undef LP_PATC
}

/* ---------------------------------------------------------------- unstructured convolution (also serves nm24)
 * Packed: ptr int32 [c_out + 1] CSR row pointers;
 *         off int32 [nnz] offset of each nonzero's (ci, kh, kw) tap in the padded image relative to its group's first
 *                         plane (ci * PL + tap offset; direct variants);
 *         row int32 [nnz] its tile-buffer row (g * cpg + ci) * K + kpos (tile-buffer variants);
 *         val float [nnz]. */
LP_INLINE void lp_us_tile(int V, const float *LP_RESTRICT src, const int *LP_RESTRICT idx, long scale,
                          const float *LP_RESTRICT val, int j0, int j1, lp_vf *acc) {
    lp_vf a[LP_NPAS_MAXV], b[LP_NPAS_MAXV];
#pragma GCC unroll 4
    for (int v = 0; v < LP_NPAS_MAXV; ++v) a[v] = b[v] = lp_npas_bcast(0.f);
    int j = j0;
    if (V == 1) { /* one vector per nonzero: four chains hide the multiply-add latency */
        lp_vf c = a[0], d = a[0];
        for (; j + 3 < j1; j += 4) {
            a[0] += val[j] * lp_vload(src + idx[j] * scale);
            b[0] += val[j + 1] * lp_vload(src + idx[j + 1] * scale);
            c += val[j + 2] * lp_vload(src + idx[j + 2] * scale);
            d += val[j + 3] * lp_vload(src + idx[j + 3] * scale);
        }
        a[0] += c;
        b[0] += d;
    }
    for (; j + 1 < j1; j += 2) {
        const float *x0 = src + idx[j] * scale, *x1 = src + idx[j + 1] * scale;
        const float w0 = val[j], w1 = val[j + 1];
#pragma GCC unroll 4
        for (int v = 0; v < V; ++v) {
            a[v] += w0 * lp_vload(x0 + v * LP_LANES);
            b[v] += w1 * lp_vload(x1 + v * LP_LANES);
        }
    }
    if (j < j1) {
        const float *x0 = src + idx[j] * scale;
        const float w0 = val[j];
#pragma GCC unroll 4
        for (int v = 0; v < V; ++v) a[v] += w0 * lp_vload(x0 + v * LP_LANES);
    }
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) acc[v] = a[v] + b[v];
}

LP_INLINE void lp_us_item(int V, long it, long ntile, const float *in_pad, float *out, const float *bias,
                          const float *residual, const lp_conv_shape *s, const lp_npas_geom *g, int act, const int *ptr,
                          const int *off, const float *val) {
    const long T = (long)V * LP_LANES, P = (long)s->h_out * s->w_out;
    long co = it / ntile, p0 = (it % ntile) * T;
    const float *src = in_pad + (long)(co / g->opg) * g->cpg_pad * g->PL + p0;
    lp_vf acc[LP_NPAS_MAXV];
    lp_us_tile(V, src, off, 1, val, ptr[co], ptr[co + 1], acc);
    lp_npas_flush(acc, V, out + co * P, p0, s, g, bias[co], residual ? residual + co * P : NULL, act);
}

LP_INLINE void lp_us_buffered(int V, int co, long p0, const float *buf, float *out, const float *bias,
                              const float *residual, const lp_conv_shape *s, const lp_npas_geom *g, int act,
                              const int *ptr, const int *row, const float *val) {
    const long P = (long)s->h_out * s->w_out;
    lp_vf acc[LP_NPAS_MAXV];
    lp_us_tile(V, buf, row, (long)V * LP_LANES, val, ptr[co], ptr[co + 1], acc);
    lp_npas_flush(acc, V, out + co * P, p0, s, g, bias[co], residual ? residual + co * P : NULL, act);
}

void lp_npas_unstructured(const float *in, float *out, const float *bias, const float *residual, float *scratch,
                          const lp_conv_shape *s, int act, int variant, int nthreads, const int *ptr, const int *off,
                          const int *row, const float *val) {
    lp_npas_geom g = lp_npas_geometry(s);
    int tapoff[s->kh * s->kw];
    lp_npas_tap_offsets(s, &g, tapoff);
    lp_npas_fill(in, scratch, s, &g, nthreads);
    float *buf = lp_npas_tilebuf(scratch, s, &g);
#define LP_US_BUF(VV) lp_us_buffered(VV, item, t * T_, buf, out, bias, residual, s, &g, act, ptr, row, val)
#define LP_US_ITEM(VV) lp_us_item(VV, it, nt, scratch, out, bias, residual, s, &g, act, ptr, off, val)
    switch (variant) {
    case 0: LP_NPAS_TILEBUF_REGION(4, s->c_out, LP_US_BUF(4)) break;
    case 1: LP_NPAS_TILEBUF_REGION(2, s->c_out, LP_US_BUF(2)) break;
    case 2: LP_NPAS_TILEBUF_REGION(1, s->c_out, LP_US_BUF(1)) break;
    default: {
        const int V = variant == 3 ? 4 : variant == 4 ? 2 : 1;
        const long T = (long)V * LP_LANES, nt = (g.Pw + T - 1) / T, n = (long)s->c_out * nt;
        switch (V) {
        case 4: LP_NPAS_PARFOR(n, LP_US_ITEM(4)) break;
        case 2: LP_NPAS_PARFOR(n, LP_US_ITEM(2)) break;
        default: LP_NPAS_PARFOR(n, LP_US_ITEM(1)) break;
        }
    }
    }
#undef LP_US_BUF
#undef LP_US_ITEM
}

/* ---------------------------------------------------------------- block-sparse linear (NPAS block-based FC)
 * Packed: ptr  int32 [RB + 1] kept-column range of each block of 4 rows (output features);
 *         cols int32 [n]      kept input features;
 *         val  float [4 n]    row-major per block: the block's 4 rows over its kept columns (zero padded rows).
 * One image is a sparse matrix-vector product: per block, gather the kept inputs once, then 4 dense dot products. */
#define LP_BFC_CHUNK 512

void lp_npas_block_fc(const float *in, float *out, const float *bias, const float *residual, float *scratch,
                      const lp_conv_shape *s, int act, int variant, int nthreads, const int *ptr, const int *cols,
                      const float *val) {
    (void)scratch;
    (void)variant;
    const int nrb = (s->c_out + 3) / 4;
#pragma omp parallel for num_threads(nthreads) schedule(static) if (nthreads > 1)
    for (int rb = 0; rb < nrb; ++rb) {
        const int j0 = ptr[rb], nc = ptr[rb + 1] - j0;
        const float *w = val + 4L * j0;
        float xg[LP_BFC_CHUNK] __attribute__((aligned(64)));
        lp_vf acc[4] = {lp_npas_bcast(0.f), lp_npas_bcast(0.f), lp_npas_bcast(0.f), lp_npas_bcast(0.f)};
        float tail[4] = {0.f, 0.f, 0.f, 0.f};
        for (int c0 = 0; c0 < nc; c0 += LP_BFC_CHUNK) {
            const int m = nc - c0 < LP_BFC_CHUNK ? nc - c0 : LP_BFC_CHUNK;
            for (int k = 0; k < m; ++k) xg[k] = in[cols[j0 + c0 + k]];
            int k = 0;
            for (; k + LP_LANES <= m; k += LP_LANES) {
                const lp_vf x = lp_vload(xg + k);
#pragma GCC unroll 4
                for (int r = 0; r < 4; ++r) acc[r] += x * lp_vload(w + (long)r * nc + c0 + k);
            }
            for (; k < m; ++k)
                for (int r = 0; r < 4; ++r) tail[r] += xg[k] * w[(long)r * nc + c0 + k];
        }
        for (int r = 0; r < 4; ++r) {
            int co = rb * 4 + r;
            if (co >= s->c_out) break;
            float sum = tail[r];
            for (int l = 0; l < LP_LANES; ++l) sum += acc[r][l];
            sum += bias[co];
            if (residual) sum += residual[co];
            out[co] = lp_act(sum, act);
        }
    }
}

#endif /* LP_NPAS_C */
