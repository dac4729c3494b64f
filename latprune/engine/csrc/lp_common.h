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

/* Activations fused into every kernel's epilogue. */
enum { LP_ACT_NONE = 0, LP_ACT_RELU = 1, LP_ACT_RELU6 = 2, LP_ACT_HARDSWISH = 3 };

/* The shape of one convolution (a linear layer is a 1x1 convolution on a 1x1 image). */
typedef struct {
    int c_in, h, w;          /* input image */
    int c_out, h_out, w_out; /* output image */
    int kh, kw;              /* kernel */
    int stride_h, stride_w;
    int pad_h, pad_w;
    int groups;
} lp_conv_shape;

LP_INLINE float lp_act(float x, int act) {
    switch (act) {
    case LP_ACT_RELU: return x > 0.f ? x : 0.f;
    case LP_ACT_RELU6: return x < 0.f ? 0.f : (x > 6.f ? 6.f : x);
    case LP_ACT_HARDSWISH: {
        float r = x + 3.f;
        r = r < 0.f ? 0.f : (r > 6.f ? 6.f : r);
        return x * r * (1.f / 6.f);
    }
    default: return x;
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

LP_INLINE lp_vf lp_vact(lp_vf x, int act) {
    const lp_vf zero = lp_vsplat(0.f), six = lp_vsplat(6.f);
    switch (act) {
    case LP_ACT_RELU: return lp_vmax(x, zero);
    case LP_ACT_RELU6: return lp_vmin(lp_vmax(x, zero), six);
    case LP_ACT_HARDSWISH: {
        lp_vf r = lp_vmin(lp_vmax(x + 3.f, zero), six);
        return x * r * (1.f / 6.f);
    }
    default: return x;
    }
}

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
