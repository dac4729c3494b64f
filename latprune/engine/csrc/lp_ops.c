/* latprune engine: the non-convolution ops the compiler emits (pooling, add, activation, copy, squeeze-excite
 * scale, channel LayerNorm).
 * Hand-written, #included by the generated model source (latprune/engine/codegen.py) after lp_common.h.
 * Every function works on ONE image in NCHW layout and may run with in == out where noted. */
#include "lp_common.h"

/* Max or average pooling. Output size comes from the compiler (it resolved ceil_mode); windows are clipped to
 * the image, and for average pooling the divisor counts padding cells only when count_include_pad is set and
 * only up to the padded border, exactly as torch.nn.functional.avg_pool2d does.
 * Separable: for each output row, the kh input rows are reduced into one padded row with full-width vector
 * ops, then each output reduces kw consecutive entries of that row (padding cells hold -inf or 0). */
void lp_pool2d(const float *LP_RESTRICT in, float *LP_RESTRICT out, int c, int h, int w, int oh, int ow, int kh, int kw,
               int sh, int sw, int ph, int pw, int is_max, int count_include_pad, int act, int nthreads) {
    const int tw = (ow - 1) * sw + kw > w + 2 * pw ? (ow - 1) * sw + kw : w + 2 * pw; /* padded row length */
    const float fill = is_max ? -INFINITY : 0.f;
    const int rw = tw + 2 * LP_LANES + kw; /* + the slack the stride-2 max pass reads */
#pragma omp parallel for num_threads(nthreads) if (nthreads > 1)
    for (int ch = 0; ch < c; ++ch) {
        float row[rw];
        const float *src = in + (size_t)ch * h * w;
        float *dst = out + (size_t)ch * oh * ow;
        for (int i = 0; i < rw; ++i) row[i] = fill;
        float *mid = row + pw; /* mid[x] holds input column x */
        for (int oy = 0; oy < oh; ++oy) {
            int y0 = oy * sh - ph, y1 = y0 + kh;
            int py1 = y1 < h + ph ? y1 : h + ph;
            int ys = y0 < 0 ? 0 : y0, ye = y1 < h ? y1 : h;
            int x = 0;
            for (; x + LP_LANES <= w; x += LP_LANES) {
                lp_vf v = lp_vsplat(fill);
                if (is_max) {
                    for (int y = ys; y < ye; ++y) {
                        lp_vf r = lp_vload(src + (size_t)y * w + x);
                        v = lp_vmax(r, v);
                    }
                } else {
                    for (int y = ys; y < ye; ++y) v += lp_vload(src + (size_t)y * w + x);
                }
                lp_vstore(mid + x, v);
            }
            for (; x < w; ++x) {
                float v = fill;
                for (int y = ys; y < ye; ++y) {
                    float r = src[(size_t)y * w + x];
                    v = is_max ? (r > v ? r : v) : v + r;
                }
                mid[x] = v;
            }
            float *drow = dst + (size_t)oy * ow;
            if (is_max && sw == 2) { /* (ResNet's stem pool) kw even-lane gathers per vector of outputs: 64 x
                                      * 112x112 -> 56x56 takes 181 us, 207 with the scalar strided passes below */
                for (int ox = 0; ox < ow; ox += LP_LANES) {
                    lp_vf v = lp_vsplat(fill);
                    for (int k = 0; k < kw; ++k) {
                        const float *p = row + 2 * ox + k;
                        v = lp_vmax(LP_EVEN_LANES(lp_vload(p), lp_vload(p + LP_LANES)), v);
                    }
                    v = lp_vact(v, act);
                    if (ow - ox >= LP_LANES)
                        lp_vstore(drow + ox, v);
                    else
                        for (int l = 0; l < ow - ox; ++l) drow[ox + l] = v[l];
                }
                continue;
            }
            if (is_max) { /* kw strided passes over the row: the compiler vectorises each of them */
                for (int ox = 0; ox < ow; ++ox) drow[ox] = row[ox * sw];
                for (int k = 1; k < kw; ++k)
                    for (int ox = 0; ox < ow; ++ox) {
                        float v = row[ox * sw + k];
                        drow[ox] = v > drow[ox] ? v : drow[ox];
                    }
                if (act != LP_ACT_NONE)
                    for (int ox = 0; ox < ow; ++ox) drow[ox] = lp_act(drow[ox], act);
                continue;
            }
            for (int ox = 0; ox < ow; ++ox) {
                const float *win = row + ox * sw;
                float acc = win[0];
                for (int k = 1; k < kw; ++k) acc += win[k];
                int x0 = ox * sw - pw, x1 = x0 + kw;
                int px1 = x1 < w + pw ? x1 : w + pw;
                int xs = x0 < 0 ? 0 : x0, xe = x1 < w ? x1 : w;
                int cells = count_include_pad ? (py1 - y0) * (px1 - x0) : (ye - ys) * (xe - xs);
                drow[ox] = lp_act(cells > 0 ? acc / (float)cells : 0.f, act);
            }
        }
    }
}

/* Adaptive average pooling: output cell (i, j) averages rows [floor(i*h/oh), ceil((i+1)*h/oh)) and the
 * same for columns, torch's definition. The 1x1 case (global average pooling) gets a vectorised sum. */
void lp_adaptive_avgpool(const float *LP_RESTRICT in, float *LP_RESTRICT out, int c, int h, int w, int oh, int ow,
                         int nthreads) {
    const int hw = h * w;
#pragma omp parallel for num_threads(nthreads) if (nthreads > 1)
    for (int ch = 0; ch < c; ++ch) {
        const float *src = in + (size_t)ch * hw;
        if (oh == 1 && ow == 1) {
            lp_vf vacc = lp_vsplat(0.f);
            int i = 0;
            for (; i + LP_LANES <= hw; i += LP_LANES) vacc += lp_vload(src + i);
            float acc = 0.f;
            for (int l = 0; l < LP_LANES; ++l) acc += vacc[l];
            for (; i < hw; ++i) acc += src[i];
            out[ch] = acc / (float)hw;
            continue;
        }
        for (int oy = 0; oy < oh; ++oy) {
            int ys = oy * h / oh, ye = ((oy + 1) * h + oh - 1) / oh;
            for (int ox = 0; ox < ow; ++ox) {
                int xs = ox * w / ow, xe = ((ox + 1) * w + ow - 1) / ow;
                float acc = 0.f;
                for (int y = ys; y < ye; ++y)
                    for (int x = xs; x < xe; ++x) acc += src[(size_t)y * w + x];
                out[((size_t)ch * oh + oy) * ow + ox] = acc / (float)((ye - ys) * (xe - xs));
            }
        }
    }
}

/* out = act(a + b) over n floats; out may be a or b (in place). */
void lp_add(const float *a, const float *b, float *out, size_t n, int act, int nthreads) {
    const size_t nv = n / LP_LANES * LP_LANES;
#pragma omp parallel for num_threads(nthreads) if (nthreads > 1 && n >= 65536)
    for (size_t i = 0; i < nv; i += LP_LANES) lp_vstore(out + i, lp_vact(lp_vload(a + i) + lp_vload(b + i), act));
    for (size_t i = nv; i < n; ++i) out[i] = lp_act(a[i] + b[i], act);
}

/* out = act(x) over n floats; out may be x (in place). */
void lp_activate(const float *x, float *out, size_t n, int act, int nthreads) {
    const size_t nv = n / LP_LANES * LP_LANES;
#pragma omp parallel for num_threads(nthreads) if (nthreads > 1 && n >= 65536)
    for (size_t i = 0; i < nv; i += LP_LANES) lp_vstore(out + i, lp_vact(lp_vload(x + i), act));
    for (size_t i = nv; i < n; ++i) out[i] = lp_act(x[i], act);
}

void lp_copy(const float *LP_RESTRICT x, float *LP_RESTRICT out, size_t n) { memcpy(out, x, n * sizeof(float)); }

/* out[c][i] = act(x[c][i] * s[c]) over c channels of hw pixels: the squeeze-excite gate multiply, whose gate s
 * the network computed (c floats); out may be x (in place). */
void lp_channel_scale(const float *x, const float *s, float *out, int c, int hw, int act, int nthreads) {
#pragma omp parallel for num_threads(nthreads) if (nthreads > 1 && (size_t)c * hw >= 65536)
    for (int ch = 0; ch < c; ++ch) {
        const float *src = x + (size_t)ch * hw;
        float *dst = out + (size_t)ch * hw;
        const lp_vf g = lp_vsplat(s[ch]);
        int i = 0;
        for (; i + LP_LANES <= hw; i += LP_LANES) lp_vstore(dst + i, lp_vact(lp_vload(src + i) * g, act));
        for (; i < hw; ++i) dst[i] = lp_act(src[i] * s[ch], act);
    }
}

/* LayerNorm over the c channels of each of hw pixels (ConvNeXt's channel LayerNorm), NCHW: a vector of LP_LANES
 * pixels at a time walks down the channels three times (mean, then the variance of x - mean, then the output),
 * the two-pass variance torch computes. out may be x: a pixel is written only after its last read. */
void lp_layernorm_channels(const float *x, float *out, const float *weight, const float *bias, int c, int hw,
                           float eps, int act, int nthreads) {
    const int blocks = (hw + LP_LANES - 1) / LP_LANES;
#pragma omp parallel for num_threads(nthreads) if (nthreads > 1 && (size_t)c * hw >= 65536)
    for (int blk = 0; blk < blocks; ++blk) {
        const int p0 = blk * LP_LANES, n = hw - p0 < LP_LANES ? hw - p0 : LP_LANES;
        float tmp[LP_LANES];
        lp_vf sum = lp_vsplat(0.f), sq = lp_vsplat(0.f);
        for (int ch = 0; ch < c; ++ch) {
            const float *src = x + (size_t)ch * hw + p0;
            lp_vf v;
            if (n == LP_LANES) {
                v = lp_vload(src);
            } else {
                for (int l = 0; l < LP_LANES; ++l) tmp[l] = l < n ? src[l] : 0.f;
                v = lp_vload(tmp);
            }
            sum += v;
        }
        const lp_vf mean = sum * (1.f / (float)c);
        for (int ch = 0; ch < c; ++ch) {
            const float *src = x + (size_t)ch * hw + p0;
            lp_vf d;
            if (n == LP_LANES) {
                d = lp_vload(src) - mean;
            } else {
                for (int l = 0; l < LP_LANES; ++l) tmp[l] = l < n ? src[l] : 0.f;
                d = lp_vload(tmp) - mean;
            }
            sq += d * d;
        }
        lp_vf rstd;
        for (int l = 0; l < LP_LANES; ++l) rstd[l] = 1.f / sqrtf(sq[l] * (1.f / (float)c) + eps);
        for (int ch = 0; ch < c; ++ch) {
            const float *src = x + (size_t)ch * hw + p0;
            float *dst = out + (size_t)ch * hw + p0;
            const lp_vf w = lp_vsplat(weight[ch]), b = lp_vsplat(bias[ch]);
            if (n == LP_LANES) {
                lp_vstore(dst, lp_vact((lp_vload(src) - mean) * rstd * w + b, act));
            } else {
                for (int l = 0; l < n; ++l) dst[l] = lp_act((src[l] - mean[l]) * rstd[l] * weight[ch] + bias[ch], act);
            }
        }
    }
}
