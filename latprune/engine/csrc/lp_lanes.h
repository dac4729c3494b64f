/* latprune engine: partial vectors (a run of lanes to or from memory) on every ISA, without scalar lane loops.
 * Tiles end in partial vectors wherever a row of output pixels does not fill whole vectors (tails, grid rows that
 * end mid-vector, 7x7 maps); these helpers are the one place each ISA's technique lives:
 *   AVX-512: one masked load or store (masked-off lanes never fault).
 *   AVX2:    loads are vmaskmovps (also fault-free, ~1.6 ns here); stores are a 4 / 2 / 1-float cascade after a lane
 *            permute, because vmaskmovps stores cost ~5-6.5 ns each on this Zen 4 against ~2 ns for the cascade
 *            (measured with a C driver, ENGINE_NOTES.md; AMD microcodes masked stores).
 *   others (generic SSE2, NEON): the same store cascade through a register spill (the small loads forward from the
 *            one vector store), and lane inserts for loads (at most LP_LANES - 1 = 3 of them).
 * LP_LANES and the tile #defines come from the ISA prelude of the generated source (Isa.c_defines). */
#ifndef LP_LANES_H
#define LP_LANES_H
#include "lp_common.h"

#if LP_LANES == 16 && defined(__AVX512F__)
#include <immintrin.h>
#define LP_AVX512 1
#else
#define LP_AVX512 0
#endif
#if LP_LANES == 8 && defined(__AVX2__)
#include <immintrin.h>
#define LP_AVX2 1
#else
#define LP_AVX2 0
#endif

#if LP_AVX512
/* Lanes [a, a + len) of v to dst[0 .. len), and the matching load (other lanes zero); dst - a may point before the
 * buffer. */
LP_INLINE void lp_store_lanes(float *dst, lp_vf v, int a, int len) {
    const __mmask16 m = (__mmask16)(((1u << len) - 1u) << a);
    _mm512_mask_storeu_ps(dst - a, m, (__m512)v);
}
LP_INLINE lp_vf lp_load_lanes(const float *src, int a, int len) {
    const __mmask16 m = (__mmask16)(((1u << len) - 1u) << a);
    return (lp_vf)_mm512_maskz_loadu_ps(m, src - a);
}
#elif LP_AVX2
LP_INLINE __m256i lp_avx2_iota(void) { return _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7); }

/* The first n (0..8) lanes of v to dst. */
LP_INLINE void lp_store_first(float *dst, __m256 v, int n) {
    if (n >= 8) {
        _mm256_storeu_ps(dst, v);
        return;
    }
    __m128 x = _mm256_castps256_ps128(v);
    if (n & 4) {
        _mm_storeu_ps(dst, x);
        x = _mm256_extractf128_ps(v, 1);
        dst += 4;
    }
    if (n & 2) {
        _mm_storel_pi((__m64 *)(void *)dst, x);
        x = _mm_movehl_ps(x, x);
        dst += 2;
    }
    if (n & 1) _mm_store_ss(dst, x);
}

LP_INLINE void lp_store_lanes(float *dst, lp_vf v, int a, int len) {
    __m256 x = (__m256)v;
    if (a) x = _mm256_permutevar8x32_ps(x, _mm256_add_epi32(lp_avx2_iota(), _mm256_set1_epi32(a)));
    lp_store_first(dst, x, len);
}
LP_INLINE lp_vf lp_load_lanes(const float *src, int a, int len) {
    const __m256i i = lp_avx2_iota();
    const __m256i m = _mm256_andnot_si256(_mm256_cmpgt_epi32(_mm256_set1_epi32(a), i),
                                          _mm256_cmpgt_epi32(_mm256_set1_epi32(a + len), i)); /* a <= l < a + len */
    return (lp_vf)_mm256_maskload_ps(src - a, m);
}
#else
LP_INLINE void lp_store_lanes(float *dst, lp_vf v, int a, int len) {
    if (len >= LP_LANES) {
        lp_vstore(dst, v);
        return;
    }
    float t[LP_LANES] __attribute__((aligned(64)));
    lp_vstore(t, v);
    const float *s = t + a;
    for (int c = LP_LANES / 2; c >= 1; c /= 2) /* unrolled: LP_LANES is a constant */
        if (len & c) {
            memcpy(dst, s, (size_t)c * sizeof(float));
            dst += c;
            s += c;
        }
}
LP_INLINE lp_vf lp_load_lanes(const float *src, int a, int len) {
    if (len >= LP_LANES) return lp_vload(src);
    lp_vf v = lp_vsplat(0.f);
    for (int t = 0; t < len; t++) v[a + t] = src[t];
    return v;
}
#endif

#endif /* LP_LANES_H */
