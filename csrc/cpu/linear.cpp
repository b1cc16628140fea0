// CPU linear for decode-sized inputs (m <= 16 rows): every weight row is streamed from memory
// once and multiplied against all rows of x while it is in registers. Threads split the
// output features, so both cores pull weights at once (torch's fp32 GEMV runs on one thread).
#include "ponder/linear.h"

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <vector>

namespace ponder::cpu {
namespace {

constexpr int64_t kRowsPerTask = 16;                  // output features per scheduling unit
constexpr int64_t kParallelMinBytes = 128 * 1024;      // weight bytes below which one thread runs

#define PONDER_AVX512 "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,prefer-vector-width=512"

template <typename T>
__attribute__((target(PONDER_AVX512), always_inline)) inline __m512 load16(const T* src);
template <>
__attribute__((target(PONDER_AVX512), always_inline)) inline __m512 load16<float>(const float* s) {
  return _mm512_loadu_ps(s);
}
template <>
__attribute__((target(PONDER_AVX512), always_inline)) inline __m512 load16<bf16>(const bf16* s) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
template <>
__attribute__((target(PONDER_AVX512), always_inline)) inline __m512 load16<_Float16>(
    const _Float16* s) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s)));
}

// Up to 4 rows of x against weight rows [n0, n1); x is fp32, k a multiple of 16.
template <typename T, int kRows>
__attribute__((target(PONDER_AVX512))) void rows_avx512(const LinearParams& p, const float* xs,
                                                        int64_t m0, int64_t n0, int64_t n1) {
  const T* w = static_cast<const T*>(p.weight);
  const T* bias = static_cast<const T*>(p.bias);
  T* out = static_cast<T*>(p.out);
  const int64_t k = p.k;
  for (int64_t n = n0; n < n1; ++n) {
    const T* wr = w + n * k;
    __m512 acc[kRows][2];
    for (int r = 0; r < kRows; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= k; i += 32) {  // two independent chains hide the FMA latency
      const __m512 w0 = load16(wr + i), w1 = load16(wr + i + 16);
      for (int r = 0; r < kRows; ++r) {
        const float* xr = xs + (m0 + r) * k + i;
        acc[r][0] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(xr), acc[r][0]);
        acc[r][1] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(xr + 16), acc[r][1]);
      }
    }
    for (; i < k; i += 16) {
      const __m512 w0 = load16(wr + i);
      for (int r = 0; r < kRows; ++r)
        acc[r][0] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(xs + (m0 + r) * k + i), acc[r][0]);
    }
    const float b = bias != nullptr ? to_f32(bias[n]) : 0.0f;
    for (int r = 0; r < kRows; ++r)
      out[(m0 + r) * p.n + n] =
          from_f32<T>(_mm512_reduce_add_ps(_mm512_add_ps(acc[r][0], acc[r][1])) + b);
  }
}

template <typename T>
__attribute__((target(PONDER_AVX512))) void block_avx512(const LinearParams& p, const float* xs,
                                                         int64_t n0, int64_t n1) {
  int64_t m0 = 0;
  for (; m0 + 4 <= p.m; m0 += 4) rows_avx512<T, 4>(p, xs, m0, n0, n1);
  switch (p.m - m0) {
    case 3: rows_avx512<T, 3>(p, xs, m0, n0, n1); break;
    case 2: rows_avx512<T, 2>(p, xs, m0, n0, n1); break;
    case 1: rows_avx512<T, 1>(p, xs, m0, n0, n1); break;
    default: break;
  }
}

// Portable fallback: plain loops the compiler vectorizes.
template <typename T>
void block_generic(const LinearParams& p, const float* xs, int64_t n0, int64_t n1) {
  const T* w = static_cast<const T*>(p.weight);
  const T* bias = static_cast<const T*>(p.bias);
  T* out = static_cast<T*>(p.out);
  for (int64_t n = n0; n < n1; ++n) {
    for (int64_t m = 0; m < p.m; ++m) {
      const float* xr = xs + m * p.k;
      const T* wr = w + n * p.k;
      float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
      for (int64_t i = 0; i < p.k; ++i) acc += to_f32(wr[i]) * xr[i];
      out[m * p.n + n] = from_f32<T>(acc + (bias != nullptr ? to_f32(bias[n]) : 0.0f));
    }
  }
}

bool has_avx512() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
}

template <typename T>
void run(const LinearParams& p) {
  static const bool avx512 = has_avx512();
  // x widened to fp32 once; every thread reads it (it is at most 16 rows).
  thread_local std::vector<float> x32;
  if (static_cast<int64_t>(x32.size()) < p.m * p.k) x32.resize(p.m * p.k);
  const T* x = static_cast<const T*>(p.x);
  for (int64_t i = 0; i < p.m * p.k; ++i) x32[i] = to_f32(x[i]);
  const float* xs = x32.data();
  const bool wide = avx512 && p.k % 16 == 0;
  const int64_t num_tasks = (p.n + kRowsPerTask - 1) / kRowsPerTask;
  const bool parallel = p.n * p.k * static_cast<int64_t>(sizeof(T)) > kParallelMinBytes;
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t t = 0; t < num_tasks; ++t) {
    const int64_t n0 = t * kRowsPerTask, n1 = std::min(p.n, n0 + kRowsPerTask);
    if (wide)
      block_avx512<T>(p, xs, n0, n1);
    else
      block_generic<T>(p, xs, n0, n1);
  }
}

}  // namespace

Status linear(const LinearParams& p) {
  if (p.m > kLinearMaxRows) return Status::error("linear: at most 16 rows of x");
  switch (p.dtype) {
    case DType::kFloat32: run<float>(p); break;
    case DType::kBFloat16: run<bf16>(p); break;
    case DType::kFloat16: run<_Float16>(p); break;
  }
  return Status::success();
}

}  // namespace ponder::cpu
