/* latprune engine: group-of-4 weight-sparse convolution (JCW / Fast Sparse ConvNets), 1x1 and k x k, no im2col.
 * Hand-written source, packed by latprune/engine/kernels/group4.py (pack_group4).
 *
 * Four adjacent output channels share one list of nonzero input positions (ci, ky, kx). Each position is a tap
 * offset into the input grid of lp_dense.c (the input itself for 1x1 layers, padded phase planes otherwise), so a
 * tile of 4 rows x nv*LP_LANES grid columns is accumulated in registers across the whole sparse reduction
 * (4 x 64 floats = 16 zmm on AVX-512), then finished (bias, residual, activation) and stored once.
 * Packed arrays: values (nnz x 4 floats: the group's 4 weights per position), group_ptr (groups + 1 int32: where
 * each group's positions start), offsets (nnz int32 tap offsets into the grid). */
#ifndef LP_GROUP4_C
#define LP_GROUP4_C
#include "lp_common.h"
#include "lp_dense.c"

LP_INLINE void lp_g4_tile(const lp_grid *g, const float *LP_RESTRICT vals, const int32_t *LP_RESTRICT off, int nnz,
                          int j, int rows, const float *bias, const float *residual, float *out, int act,
                          const int nv) {
    lp_vf acc[4][LP_MAXNV];
    for (int r = 0; r < 4; r++)
        for (int v = 0; v < nv; v++) acc[r][v] = lp_vsplat(0.f);
    const float *src = g->src + j;
    /* Not unrolled: 16 accumulators + 4 input vectors + 1 broadcast fit the registers (an unroll by two measured
     * ~3% slower: the second set of inputs forces register shuffles). */
    for (int i = 0; i < nnz; i++) {
        const float *p = src + off[i];
        const float *wi = vals + (size_t)i * 4;
        lp_vf b[LP_MAXNV];
        for (int v = 0; v < nv; v++) b[v] = lp_vload(p + v * LP_LANES);
        for (int r = 0; r < 4; r++) {
            const lp_vf a = lp_vsplat(wi[r]);
            for (int v = 0; v < nv; v++) acc[r][v] += a * b[v];
            LP_KEEP(a);
        }
        for (int v = 0; v < nv; v++) LP_KEEP(b[v]);
    }
    if (rows == 4) /* constant row count: the finish is unrolled and acc never leaves the registers */
        lp_tile_finish(acc, 4, nv, j, g, bias, residual, out, act);
    else
        lp_tile_finish(acc, rows, nv, j, g, bias, residual, out, act);
}

static void lp_g4_tile_nv1(const lp_grid *g, const float *vals, const int32_t *off, int nnz, int j, int rows,
                           const float *bias, const float *residual, float *out, int act) {
    lp_g4_tile(g, vals, off, nnz, j, rows, bias, residual, out, act, 1);
}
static void lp_g4_tile_nv2(const lp_grid *g, const float *vals, const int32_t *off, int nnz, int j, int rows,
                           const float *bias, const float *residual, float *out, int act) {
    lp_g4_tile(g, vals, off, nnz, j, rows, bias, residual, out, act, 2);
}
static void lp_g4_tile_nv3(const lp_grid *g, const float *vals, const int32_t *off, int nnz, int j, int rows,
                           const float *bias, const float *residual, float *out, int act) {
    lp_g4_tile(g, vals, off, nnz, j, rows, bias, residual, out, act, 3);
}
static void lp_g4_tile_nv4(const lp_grid *g, const float *vals, const int32_t *off, int nnz, int j, int rows,
                           const float *bias, const float *residual, float *out, int act) {
    lp_g4_tile(g, vals, off, nnz, j, rows, bias, residual, out, act, 4);
}

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

LP_INLINE void lp_g4_tile_any(const lp_grid *g, const float *vals, const int32_t *off, int nnz, int j, int rows,
                               const float *bias, const float *residual, float *out, int act, int nv) {
    switch (nv) {
    case 4: lp_g4_tile_nv4(g, vals, off, nnz, j, rows, bias, residual, out, act); break;
    case 3: lp_g4_tile_nv3(g, vals, off, nnz, j, rows, bias, residual, out, act); break;
    case 2: lp_g4_tile_nv2(g, vals, off, nnz, j, rows, bias, residual, out, act); break;
    case 1: lp_g4_tile_nv1(g, vals, off, nnz, j, rows, bias, residual, out, act); break;
    default: lp_g4_cols(g, vals, off, nnz, j, rows, bias, residual, out, act); break;
    }
}

/* variant: tile width 4, 2, 3 or 1 vectors (0..3) with the group outermost (its values and the input rows it
 * uses stay in L1 while the thread sweeps the columns); 4..7: the same widths with the column tile outermost. */
void lp_group4_conv(const float *in, float *out, const float *bias, const float *residual, float *scratch,
                    const lp_conv_shape *s, int act, int variant, int nthreads, const float *values,
                    const int32_t *group_ptr, const int32_t *offsets) {
    static const int widths[4] = {4, 2, 3, 1};
    const lp_grid g = lp_grid_make(in, scratch, s);
    const int nv = widths[variant & 3], col_outer = variant >= 4;
    const int groups = (s->c_out + 3) / 4;
    const int tiles = lp_tile_count(&g, nv);
    const long items = (long)groups * tiles;
#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
    {
        if (!g.direct) {
#pragma omp for schedule(static)
            for (int ci = 0; ci < s->c_in; ci++) lp_grid_prep_channel(in, scratch, s, ci);
#pragma omp single
            lp_grid_zero_slack(scratch, s);
        }
#pragma omp for schedule(static)
        for (long it = 0; it < items; it++) {
            const int t = (int)(col_outer ? it / groups : it % tiles);
            const int grp = (int)(col_outer ? it % groups : it / tiles);
            const int co = grp * 4, rows = s->c_out - co < 4 ? s->c_out - co : 4;
            int j, tnv;
            lp_tile_at(&g, nv, t, &j, &tnv);
            const int p0 = group_ptr[grp], nnz = group_ptr[grp + 1] - p0;
            const float *res = residual ? residual + (size_t)co * g.hw_out : NULL;
            lp_g4_tile_any(&g, values + (size_t)p0 * 4, offsets + p0, nnz, j, rows, bias + co, res,
                           out + (size_t)co * g.hw_out, act, tnv);
        }
    }
}

#endif /* LP_GROUP4_C */
