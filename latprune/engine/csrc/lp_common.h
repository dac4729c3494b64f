/* latprune engine: declarations shared by every kernel and by the generated model code.
 * Kernels compute ONE image in NCHW layout (C x H x W, row-major); the generated code loops over the batch.
 * LP_LANES (floats per vector register) is defined by the code generator for the target ISA before this header. */
#ifndef LP_COMMON_H
#define LP_COMMON_H
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <math.h>

#ifndef LP_LANES
#define LP_LANES 16
#endif

/* GCC/Clang vector extension: one generator targets AVX-512 (16 lanes), AVX2 (8) and NEON (4). */
typedef float lp_vf __attribute__((vector_size(LP_LANES * 4), aligned(4)));

#define LP_RESTRICT __restrict__
#define LP_INLINE static inline __attribute__((always_inline))

/* Activations fused into every kernel's epilogue (codes as in latprune/engine/activations.py). */
enum {
    LP_ACT_NONE = 0, LP_ACT_RELU = 1, LP_ACT_RELU6 = 2, LP_ACT_HARDSWISH = 3, LP_ACT_SIGMOID = 4, LP_ACT_SILU = 5,
    LP_ACT_HARDSIGMOID = 6, LP_ACT_GELU = 7, LP_ACT_GELU_TANH = 8, LP_ACT_TANH = 9
};

/* The shape of one convolution (a linear layer is a 1x1 convolution on a 1x1 image). */
typedef struct {
    int c_in, h, w;          /* input image */
    int c_out, h_out, w_out; /* output image */
    int kh, kw;              /* kernel */
    int stride_h, stride_w;
    int pad_h, pad_w;
    int groups;
} lp_conv_shape;

/* r = x - n ln2 (ln2 split in two for exactness) and p = e^r by Cephes' polynomial, |r| <= ln2 / 2; any float or
 * vector type. */
#define LP_EXP_POLY(r, p, x, n)                                                                                      \
    r = (x) - (n) * 0.693359375f - (n) * -2.12194440e-4f;                                                        \
    p = r * 1.9875691500e-4f + 1.3981999507e-3f;                                                                 \
    p = p * r + 8.3334519073e-3f;                                                                                \
    p = p * r + 4.1665795894e-2f;                                                                                \
    p = p * r + 1.6666665459e-1f;                                                                                \
    p = p * r + 5.0000001201e-1f;                                                                                \
    p = p * r * r + r + 1.f;

/* exp, sigmoid, tanh and erf by range reduction and polynomials (Cephes' expf, Abramowitz & Stegun 7.1.26 for
 * erf, |error| <= 1.5e-7), written once as a macro over float or vector types so the scalar tails and the vector
 * bodies of every kernel do the same arithmetic. LP_EXP_BODY(F, I, MIN, MAX): F the float type, I the
 * matching int32 type, MIN/MAX clamp functions. x is clamped to [-87, 87]: 2^n stays a normal float and 1 + e^x
 * stays below 2^126, where lp_vrcp's first guess is valid. */
#define LP_EXP_BODY(F, I, MIN, MAX, x)                                                                               \
    F xc_ = MIN(MAX((x), (F){0} - 87.f), (F){0} + 87.f);                                                         \
    F t_ = xc_ * 1.44269504088896341f + 12582912.f; /* 1.5 * 2^23: rounds x * log2(e) to an integer n */       \
    F n_ = t_ - 12582912.f;                                                                                      \
    F r_, p_;                                                                                                    \
    LP_EXP_POLY(r_, p_, xc_, n_)                                                                                 \
    I bits_;                                                                                                     \
    memcpy(&bits_, &t_, sizeof bits_);                                                                           \
    bits_ = (bits_ - 0x4B400000 + 127) << 23; /* 2^n: the exponent field of a float */                           \
    F scale_;                                                                                                    \
    memcpy(&scale_, &bits_, sizeof scale_);

LP_INLINE float lp_fmin1(float a, float b) { return a < b ? a : b; }
LP_INLINE float lp_fmax1(float a, float b) { return a > b ? a : b; }

LP_INLINE float lp_exp1(float x) {
    LP_EXP_BODY(float, int32_t, lp_fmin1, lp_fmax1, x)
    return p_ * scale_;
}

/* GELU(x) = x/2 (1 + erf(x / sqrt 2)) with erf(|z|) = 1 - q, q = poly(t) exp(-z^2): written as x (1 - q/2) for
 * x >= 0 and x q / 2 below, so the tail for large negative x keeps its relative precision (no 1 - 1). */
#define LP_GELU_Q(F, EXP, RCP, ABS, MINF, x)                                                                                 \
    F z_ = MINF(ABS(x) * 0.70710678118654752f, (F){0} + 10.f); /* erf(10) = 1 in floats */                     \
    F t_ = RCP(z_ * 0.3275911f + 1.f);                                                                            \
    F q_ = t_ * 1.061405429f - 1.453152027f;                                                                     \
    q_ = q_ * t_ + 1.421413741f;                                                                                 \
    q_ = q_ * t_ - 0.284496736f;                                                                                 \
    q_ = q_ * t_ + 0.254829592f;                                                                                 \
    q_ = q_ * t_ * EXP((F){0} - z_ * z_);

LP_INLINE float lp_rcp1(float x) { return 1.f / x; }
LP_INLINE float lp_fabs1(float x) { return x < 0.f ? -x : x; }

/* The activations beyond the clamps, out of line: inlined into every kernel epilogue's switch they would grow
 * each kernel's code for layers that never use them. */
static __attribute__((noinline, unused)) float lp_act_ext(float x, int act) {
    switch (act) {
    case LP_ACT_SIGMOID: return 1.f / (1.f + lp_exp1(-x));
    case LP_ACT_SILU: return x / (1.f + lp_exp1(-x));
    case LP_ACT_HARDSIGMOID: return lp_fmin1(lp_fmax1(x + 3.f, 0.f), 6.f) * (1.f / 6.f);
    case LP_ACT_GELU: {
        LP_GELU_Q(float, lp_exp1, lp_rcp1, lp_fabs1, lp_fmin1, x)
        return x >= 0.f ? x - 0.5f * x * q_ : 0.5f * x * q_;
    }
    case LP_ACT_GELU_TANH: { /* x/2 (1 + tanh(u)) = x sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3) */
        float u = 0.79788456080286536f * (x + 0.044715f * x * x * x);
        return x / (1.f + lp_exp1(-2.f * u));
    }
    case LP_ACT_TANH: return 2.f / (1.f + lp_exp1(-2.f * x)) - 1.f;
    default: return x;
    }
}

LP_INLINE float lp_act(float x, int act) {
    switch (act) {
    case LP_ACT_NONE: return x;
    case LP_ACT_RELU: return x > 0.f ? x : 0.f;
    case LP_ACT_RELU6: return x < 0.f ? 0.f : (x > 6.f ? 6.f : x);
    case LP_ACT_HARDSWISH: {
        float r = x + 3.f;
        r = r < 0.f ? 0.f : (r > 6.f ? 6.f : r);
        return x * r * (1.f / 6.f);
    }
    default: return lp_act_ext(x, act);
    }
}

/* Unaligned vector loads and stores through a may_alias type, not memcpy: GCC 12 expands a 32-byte memcpy under
 * -mavx2 as two 16-byte moves through a stack slot and one 32-byte reload, a failed store-to-load forward on every
 * load (~10x slower AVX2 kernels, measured: dense linear 1024 -> 1000 1114 -> 60 us). */
typedef float lp_vf_u __attribute__((vector_size(LP_LANES * 4), aligned(4), may_alias));
LP_INLINE lp_vf lp_vload(const float *p) { return *(const lp_vf_u *)p; }
LP_INLINE void lp_vstore(float *p, lp_vf v) { *(lp_vf_u *)p = v; }
/* x - 0 (not x + 0, which is not exact for -0.f) so the compiler folds it to a bare broadcast. */
LP_INLINE lp_vf lp_vsplat(float x) { return x - (lp_vf){0}; }

/* C (unlike C++) has no vector ?:, so max/min select through the comparison's lane mask. */
typedef int32_t lp_vi __attribute__((vector_size(LP_LANES * 4), aligned(4)));
LP_INLINE lp_vf lp_vmax(lp_vf a, lp_vf b) { lp_vi m = a > b; return (lp_vf)(((lp_vi)a & m) | ((lp_vi)b & ~m)); }
LP_INLINE lp_vf lp_vmin(lp_vf a, lp_vf b) { lp_vi m = a < b; return (lp_vf)(((lp_vi)a & m) | ((lp_vi)b & ~m)); }

#if defined(__AVX512F__) && LP_LANES == 16
#include <immintrin.h>
/* AVX-512: the same exp with a rounding instruction and vscalefps for 2^n, and 1/d as vrcp14ps (14 bits) plus
 * one Newton step (28 bits): 20 instructions per SiLU vector instead of 35. Measured on a 16->96 1x1 conv at
 * 112x112 with SiLU fused (dense_conv, 1 thread, CPU time): 0.84 ms against 1.07 ms with the portable code;
 * 0.46 ms with ReLU. */
LP_INLINE lp_vf lp_vexp(lp_vf x) {
    __m512 v = _mm512_min_ps(_mm512_max_ps((__m512)x, _mm512_set1_ps(-87.f)), _mm512_set1_ps(87.f));
    __m512 n = _mm512_roundscale_ps(v * 1.44269504088896341f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r, p;
    LP_EXP_POLY(r, p, v, n)
    return (lp_vf)_mm512_scalef_ps(p, n);
}
LP_INLINE lp_vf lp_vrcp(lp_vf d) {
    __m512 y = _mm512_rcp14_ps((__m512)d);
    return (lp_vf)(y * (2.f - (__m512)d * y));
}
#elif defined(__AVX2__) && LP_LANES == 8
#include <immintrin.h>
/* AVX2: the same exp, 2^n built with integer intrinsics. LP_EXP_BODY's memcpy between the float and int vectors
 * compiles under -mavx2 to two 16-byte stores and a 32-byte reload (a failed store-to-load forward, the cause of
 * the engine's first 10x on AVX2), twice per exp. */
LP_INLINE lp_vf lp_vexp(lp_vf x) {
    __m256 v = _mm256_min_ps(_mm256_max_ps((__m256)x, _mm256_set1_ps(-87.f)), _mm256_set1_ps(87.f));
    __m256 n = _mm256_round_ps(v * 1.44269504088896341f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r, p;
    LP_EXP_POLY(r, p, v, n)
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return (lp_vf)(p * _mm256_castsi256_ps(e));
}
/* AVX2: vrcpps (12 bits) plus one Newton step (24 bits). */
LP_INLINE lp_vf lp_vrcp(lp_vf d) {
    __m256 y = _mm256_rcp_ps((__m256)d);
    return (lp_vf)(y * (2.f - (__m256)d * y));
}
#else
LP_INLINE lp_vf lp_vexp(lp_vf x) {
    LP_EXP_BODY(lp_vf, lp_vi, lp_vmin, lp_vmax, x)
    return p_ * scale_;
}

/* 1 / d for 1 <= d < 2^126 without a divide (the slowest vector op): a bit-trick first guess, 12% off, and
 * three Newton steps, each squaring the error, to 5e-8. */
LP_INLINE lp_vf lp_vrcp(lp_vf d) {
    lp_vi i;
    memcpy(&i, &d, sizeof i);
    i = 0x7EF311C3 - i;
    lp_vf y;
    memcpy(&y, &i, sizeof y);
    y = y * (2.f - d * y);
    y = y * (2.f - d * y);
    return y * (2.f - d * y);
}
#endif
LP_INLINE lp_vf lp_vabs(lp_vf x) { return (lp_vf)((lp_vi)x & ((lp_vi){0} + 0x7FFFFFFF)); }

/* Vector twin of lp_act_ext (out of line for the same reason), lane by lane the same arithmetic. Storing a tile first
 * and applying this once per row instead of per accumulator was measured slower (1.08x on AVX2, 1.18x on AVX-512,
 * a 32->64 1x1 conv at 112x112 with SiLU). */
static __attribute__((noinline, unused)) lp_vf lp_vact_ext(lp_vf x, int act) {
    const lp_vf zero = lp_vsplat(0.f), one = lp_vsplat(1.f);
    switch (act) {
    case LP_ACT_SIGMOID: return lp_vrcp(one + lp_vexp(zero - x));
    case LP_ACT_SILU: return x * lp_vrcp(one + lp_vexp(zero - x));
    case LP_ACT_HARDSIGMOID: return lp_vmin(lp_vmax(x + 3.f, zero), lp_vsplat(6.f)) * (1.f / 6.f);
    case LP_ACT_GELU: {
        LP_GELU_Q(lp_vf, lp_vexp, lp_vrcp, lp_vabs, lp_vmin, x)
        lp_vi neg = x < zero;
        lp_vf pos_v = x - 0.5f * x * q_, neg_v = 0.5f * x * q_;
        return (lp_vf)(((lp_vi)neg_v & neg) | ((lp_vi)pos_v & ~neg));
    }
    case LP_ACT_GELU_TANH: {
        lp_vf u = 0.79788456080286536f * (x + 0.044715f * x * x * x);
        return x * lp_vrcp(one + lp_vexp(-2.f * u));
    }
    case LP_ACT_TANH: return 2.f * lp_vrcp(one + lp_vexp(-2.f * x)) - 1.f;
    default: return x;
    }
}

LP_INLINE lp_vf lp_vact(lp_vf x, int act) {
    const lp_vf zero = lp_vsplat(0.f), six = lp_vsplat(6.f);
    switch (act) {
    case LP_ACT_NONE: return x;
    case LP_ACT_RELU: return lp_vmax(x, zero);
    case LP_ACT_RELU6: return lp_vmin(lp_vmax(x, zero), six);
    case LP_ACT_HARDSWISH: {
        lp_vf r = lp_vmin(lp_vmax(x + 3.f, zero), six);
        return x * r * (1.f / 6.f);
    }
    default: return lp_vact_ext(x, act);
    }
}

/* Keep a vector live in a register. After the last FMA that reads an input vector, GCC likes to overwrite the input
 * instead of the accumulator (vfmadd132ps) and then copies the result back at the loop edge: 4-5 extra register
 * moves per 16 FMAs, on the FMA ports. Marking the inputs as still used forces the accumulator form. */
#if defined(__x86_64__) || defined(__i386__)
#define LP_KEEP(x) __asm__ volatile("" ::"v"(x))
#elif defined(__aarch64__)
#define LP_KEEP(x) __asm__ volatile("" ::"w"(x))
#else
#define LP_KEEP(x) ((void)(x))
#endif

/* The even lanes of the concatenation a:b (a stride-2 gather of 2 * LP_LANES floats). */
#if LP_LANES == 16
#define LP_EVEN_IDX 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30
#elif LP_LANES == 8
#define LP_EVEN_IDX 0, 2, 4, 6, 8, 10, 12, 14
#else
#define LP_EVEN_IDX 0, 2, 4, 6
#endif
#if defined(__clang__) /* same lane shuffle, each compiler's spelling */
#define LP_EVEN_LANES(a, b) __builtin_shufflevector(a, b, LP_EVEN_IDX)
#else
#define LP_EVEN_LANES(a, b) __builtin_shuffle(a, b, (lp_vi){LP_EVEN_IDX})
#endif

#endif /* LP_COMMON_H */
