// CPU linear for any number of rows of x: every weight row is streamed from memory once and
// multiplied against all rows of x while it is in cache. Threads split the output features,
// so both cores pull weights at once (torch's fp32 GEMV runs on one thread).
//
// At m = 1 the kernel is memory-bound; at m = 8..16 it is bound by FMAs and their operand
// loads. A tile of 4 weight rows x 4 rows of x keeps 16 accumulators, so each chunk costs
// 8 loads for 16 FMAs (one load per FMA when blocking x rows only). With avx512_bf16, bf16
// weights and x feed _mm512_dpbf16_ps directly: 32 products per instruction, exact in fp32,
// summed in a different order than torch's (within the bf16 output's rounding).
#include "ponder/linear.h"

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "avx512_dot.h"

namespace ponder::cpu {
namespace {

using avx512::Bf16Dot;
using avx512::FmaDot;
using avx512::has_avx512_bf16;
using avx512::reduce4;

constexpr int64_t kRowsPerTask = 16;              // output features per scheduling unit
constexpr int64_t kParallelMinBytes = 128 * 1024;  // weight bytes below which one thread runs
constexpr int kTileN = 4;                          // weight rows per tile
constexpr int kTileM = 4;                          // rows of x per tile
// Weights are also prefetched into L2 this far ahead (at least two tiles): the tile's own
// prefetch of the next tile alone leaves the first pass over each tile waiting on memory, so
// compute and memory did not overlap (fp32, 8 rows: 27 -> 20 ms of linears per step).
constexpr int64_t kFarPrefetchBytes = 16 * 1024;

// out[m0 + r, n0 + c] for r < kRows, c < kCols; x rows at xs (stride k).
template <typename Dot, typename T, int kRows, int kCols>
__attribute__((target(PONDER_AVX512_BF16), always_inline)) inline void tile(
    const LinearParams& p, const typename Dot::XT* xs, int64_t m0, int64_t n0) {
  constexpr int kStep = Dot::kStep;
  const int64_t k = p.k;
  const T* w = static_cast<const T*>(p.weight) + n0 * k;
  const typename Dot::XT* x = xs + m0 * k;
  __m512 acc[kRows][kCols];
#pragma GCC unroll 4
  for (int r = 0; r < kRows; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < kCols; ++c) acc[r][c] = _mm512_setzero_ps();
  // Each weight vector feeds kRows products, each x vector kCols. The next tile's weights are
  // prefetched into L1, and those far ahead into L2: four rows read side by side defeat the
  // hardware stream prefetcher at k = 576. Whole chunks load unmasked; the tail's mask zeroes
  // the loads past k. (A macro, not a lambda: a lambda would not inherit the target, and
  // passing acc by reference would keep it in memory.)
  using Mask = typename Dot::Mask;
  const T* far = w + std::max<int64_t>(2 * kCols, kFarPrefetchBytes / (k * sizeof(T))) * k;
#define PONDER_TILE_STEP(mask)                                                  \
  {                                                                             \
    decltype(Dot::load_w(w, mask)) wv[kCols];                                   \
    _Pragma("GCC unroll 4") for (int c = 0; c < kCols; ++c) {                   \
      wv[c] = Dot::load_w(w + c * k + i, mask);                                 \
      _mm_prefetch(reinterpret_cast<const char*>(w + (kCols + c) * k + i),      \
                   _MM_HINT_T0);                                                \
      _mm_prefetch(reinterpret_cast<const char*>(far + c * k + i), _MM_HINT_T1); \
    }                                                                           \
    _Pragma("GCC unroll 4") for (int r = 0; r < kRows; ++r) {                   \
      const auto xv = Dot::load_x(x + r * k + i, mask);                         \
      _Pragma("GCC unroll 4") for (int c = 0; c < kCols; ++c) acc[r][c] =       \
          Dot::dot(acc[r][c], wv[c], xv);                                       \
    }                                                                           \
  }
  int64_t i = 0;
  for (; i + kStep <= k; i += kStep) PONDER_TILE_STEP(static_cast<Mask>(-1))
  if (i < k) PONDER_TILE_STEP(static_cast<Mask>((uint64_t{1} << (k - i)) - 1))
#undef PONDER_TILE_STEP
  const T* bias = static_cast<const T*>(p.bias);
  T* out = static_cast<T*>(p.out) + m0 * p.n + n0;
#pragma GCC unroll 4
  for (int r = 0; r < kRows; ++r) {
    float sums[kCols];
    if constexpr (kCols == 4) {
      _mm_storeu_ps(sums, reduce4(acc[r][0], acc[r][1], acc[r][2], acc[r][3]));
    } else {
      for (int c = 0; c < kCols; ++c) sums[c] = _mm512_reduce_add_ps(acc[r][c]);
    }
    for (int c = 0; c < kCols; ++c)
      out[r * p.n + c] = from_f32<T>(sums[c] + (bias != nullptr ? to_f32(bias[n0 + c]) : 0.0f));
  }
}

// tile<Dot, T, 1, 4> for a single row of x (a batch-1 decode step), bitwise the same: each
// output is the same one chain of products in the same order, reduced by the same reduce4.
// The four weight rows are read one after another instead of side by side, one sequential
// stream the hardware prefetcher follows, so no software prefetches (batch-1 decode of
// SmolLM2 ran ~10% (fp32) to ~20% (bf16) slower through the side-by-side tile).
template <typename Dot, typename T>
__attribute__((target(PONDER_AVX512_BF16), always_inline)) inline void one_row_tile(
    const LinearParams& p, const typename Dot::XT* x, int64_t n0) {
  constexpr int kStep = Dot::kStep;
  using Mask = typename Dot::Mask;
  const int64_t k = p.k;
  const T* w = static_cast<const T*>(p.weight) + n0 * k;
  const int64_t full = k / kStep * kStep;
  const Mask tail = static_cast<Mask>((uint64_t{1} << (k - full)) - 1);
  __m512 acc[kTileN];
#pragma GCC unroll 4
  for (int c = 0; c < kTileN; ++c) {
    const T* wr = w + c * k;
    __m512 a = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i < full; i += kStep)
      a = Dot::dot(a, Dot::load_w(wr + i, static_cast<Mask>(-1)),
                   Dot::load_x(x + i, static_cast<Mask>(-1)));
    if (i < k) a = Dot::dot(a, Dot::load_w(wr + i, tail), Dot::load_x(x + i, tail));
    acc[c] = a;
  }
  const T* bias = static_cast<const T*>(p.bias);
  T* out = static_cast<T*>(p.out) + n0;
  float sums[kTileN];
  _mm_storeu_ps(sums, reduce4(acc[0], acc[1], acc[2], acc[3]));
  for (int c = 0; c < kTileN; ++c)
    out[c] = from_f32<T>(sums[c] + (bias != nullptr ? to_f32(bias[n0 + c]) : 0.0f));
}

template <typename Dot, typename T, int kCols>
__attribute__((target(PONDER_AVX512_BF16))) void tile_rows(const LinearParams& p,
                                                           const typename Dot::XT* xs,
                                                           int64_t n0) {
  if constexpr (kCols == kTileN) {
    if (p.m == 1) {
      one_row_tile<Dot, T>(p, xs, n0);
      return;
    }
  }
  int64_t m0 = 0;
  for (; m0 + kTileM <= p.m; m0 += kTileM) tile<Dot, T, kTileM, kCols>(p, xs, m0, n0);
  switch (p.m - m0) {
    case 3: tile<Dot, T, 3, kCols>(p, xs, m0, n0); break;
    case 2: tile<Dot, T, 2, kCols>(p, xs, m0, n0); break;
    case 1: tile<Dot, T, 1, kCols>(p, xs, m0, n0); break;
    default: break;
  }
}

// Weight rows [n0, n1): a tile's 4 weight rows stay in L1 while every row block of x passes.
template <typename Dot, typename T>
void block_avx512(const LinearParams& p, const typename Dot::XT* xs, int64_t n0, int64_t n1) {
  int64_t n = n0;
  // Every row count takes the same tiles, so a row's sums never depend on the rows beside it
  // (batch invariance: a seeded sequence draws the same tokens whatever it is batched with).
  // (A single row takes one_row_tile: the same sums, read as one stream.)
  for (; n + kTileN <= n1; n += kTileN) tile_rows<Dot, T, kTileN>(p, xs, n);
  for (; n < n1; ++n) tile_rows<Dot, T, 1>(p, xs, n);
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

template <typename Body>
void for_each_task(const LinearParams& p, Body body) {
  const int64_t num_tasks = (p.n + kRowsPerTask - 1) / kRowsPerTask;
  const bool parallel = p.n * p.k * dtype_size(p.dtype) > kParallelMinBytes;
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t t = 0; t < num_tasks; ++t)
    body(t * kRowsPerTask, std::min(p.n, (t + 1) * kRowsPerTask));
}

template <typename T>
void run(const LinearParams& p, bool use_bf16_dot) {
  static const bool avx512 = has_avx512();
  if constexpr (std::is_same_v<T, bf16>) {
    if (use_bf16_dot) {
      static const bool dot = has_avx512_bf16();
      if (dot) {
        const bf16* xs = static_cast<const bf16*>(p.x);
        for_each_task(p, [&](int64_t n0, int64_t n1) {
          block_avx512<Bf16Dot, bf16>(p, xs, n0, n1);
        });
        return;
      }
    }
  }
  // x widened to fp32 once; every thread reads it.
  thread_local std::vector<float> x32;
  if (static_cast<int64_t>(x32.size()) < p.m * p.k) x32.resize(p.m * p.k);
  const T* x = static_cast<const T*>(p.x);
  for (int64_t i = 0; i < p.m * p.k; ++i) x32[i] = to_f32(x[i]);
  const float* xs = x32.data();
  for_each_task(p, [&](int64_t n0, int64_t n1) {
    if (avx512)
      block_avx512<FmaDot<T>, T>(p, xs, n0, n1);
    else
      block_generic<T>(p, xs, n0, n1);
  });
}

}  // namespace

bool linear_has_bf16_dot() { return has_avx512_bf16(); }

Status linear(const LinearParams& p, bool use_bf16_dot) {
  // Any number of rows: each thread's weight tiles stay in L1 while every row of x passes,
  // and a row's arithmetic is the same whatever the other rows (tile_rows).
  switch (p.dtype) {
    case DType::kFloat32: run<float>(p, use_bf16_dot); break;
    case DType::kBFloat16: run<bf16>(p, use_bf16_dot); break;
    case DType::kFloat16: run<_Float16>(p, use_bf16_dot); break;
  }
  return Status::success();
}

}  // namespace ponder::cpu
