// AVX-512 building blocks of the CPU matrix kernels (linear, prm_head): loads that widen a
// weight dtype to fp32, the multiply-accumulate policies the tiles are written against, and the
// runtime CPU checks. Functions carry their own target attributes, so including this header
// does not require compiling the translation unit for AVX-512.
#pragma once

#include <immintrin.h>

#include "ponder/common.h"
#include "ponder/cpu_math.h"

// Target attributes of the functions compiled for AVX-512 (with avx512_bf16: vdpbf16ps).
#define PONDER_AVX512 "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,prefer-vector-width=512"
#define PONDER_AVX512_BF16 PONDER_AVX512 ",avx512bf16"

namespace ponder::cpu::avx512 {

// Multiply-accumulate policies: Step elements of k per instruction; x is in XT.
// Masked loads (zeros past k) cover a k that is not a multiple of Step.
template <typename T>
struct FmaDot {  // x widened to fp32, weights widened as loaded
  using XT = float;
  static constexpr int kStep = 16;
  using Mask = __mmask16;
  __attribute__((target(PONDER_AVX512), always_inline)) static __m512 load_w(const T* s,
                                                                              Mask mask);
  __attribute__((target(PONDER_AVX512), always_inline)) static __m512 load_x(const float* s,
                                                                              Mask mask) {
    return _mm512_maskz_loadu_ps(mask, s);
  }
  __attribute__((target(PONDER_AVX512), always_inline)) static __m512 dot(__m512 acc, __m512 w,
                                                                           __m512 x) {
    return _mm512_fmadd_ps(w, x, acc);
  }
};
template <>
__attribute__((target(PONDER_AVX512), always_inline)) inline __m512 FmaDot<float>::load_w(
    const float* s, __mmask16 mask) {
  return _mm512_maskz_loadu_ps(mask, s);
}
template <>
__attribute__((target(PONDER_AVX512), always_inline)) inline __m512 FmaDot<bf16>::load_w(
    const bf16* s, __mmask16 mask) {
  const __m256i h = _mm256_maskz_loadu_epi16(mask, s);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
template <>
__attribute__((target(PONDER_AVX512), always_inline)) inline __m512 FmaDot<_Float16>::load_w(
    const _Float16* s, __mmask16 mask) {
  return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, s));
}

struct Bf16Dot {  // bf16 pairs straight into vdpbf16ps
  using XT = bf16;
  static constexpr int kStep = 32;
  using Mask = __mmask32;
  __attribute__((target(PONDER_AVX512_BF16), always_inline)) static __m512i load_w(const bf16* s,
                                                                                    Mask mask) {
    return _mm512_maskz_loadu_epi16(mask, s);
  }
  __attribute__((target(PONDER_AVX512_BF16), always_inline)) static __m512i load_x(const bf16* s,
                                                                                    Mask mask) {
    return _mm512_maskz_loadu_epi16(mask, s);
  }
  __attribute__((target(PONDER_AVX512_BF16), always_inline)) static __m512 dot(__m512 acc,
                                                                                __m512i w,
                                                                                __m512i x) {
    return _mm512_dpbf16_ps(acc, reinterpret_cast<__m512bh>(w), reinterpret_cast<__m512bh>(x));
  }
};

// Lane j of the result is the sum of the lanes of a[j], j < 4: three hadds instead of four
// full horizontal reductions.
__attribute__((target(PONDER_AVX512), always_inline)) inline __m128 reduce4(__m512 a0, __m512 a1,
                                                                            __m512 a2, __m512 a3) {
  // By value: taking the accumulators' address would keep them in memory through the k loop.
  const __m512 a[4] = {a0, a1, a2, a3};
  __m256 h[4];
  for (int j = 0; j < 4; ++j)
    h[j] = _mm256_add_ps(_mm512_castps512_ps256(a[j]), _mm512_extractf32x8_ps(a[j], 1));
  const __m256 s = _mm256_hadd_ps(_mm256_hadd_ps(h[0], h[1]), _mm256_hadd_ps(h[2], h[3]));
  return _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
}

inline bool has_avx512_bf16() { return has_avx512() && __builtin_cpu_supports("avx512bf16"); }

}  // namespace ponder::cpu::avx512
