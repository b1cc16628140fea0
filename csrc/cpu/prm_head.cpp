// CPU prm_head (semantics in ponder/prm_head.h).
//
// The optional first layer is nearly all of the work and all of the memory traffic: at
// hidden_size 3584 its weight is 25 MB (bf16) to 50 MB (fp32), so it is read from memory once
// for all rows, never once per row. The selected rows are gathered into one contiguous block
// (widened to fp32, or kept bf16 for avx512_bf16's dot product); threads split the layer's
// output features; within a thread, hidden_size is cut into equal chunks of at most
// kChunkBytes of a gathered row, so that a tile of 4 weight rows stays in L1 while every 4-row
// tile of the gathered rows (at 64 rows, one chunk of all of them fits in L2) passes it: 16
// accumulators, 8 loads per 16 FMAs, as in linear.cpp. Partial sums of the chunks add up in
// the fp32 layer-1 output; bias and ReLU follow the last chunk. On one Zen 4 core this runs
// layer 1 at ~90-100 GFLOP/s in fp32 and ~170-200 in bf16 (3 KB chunks measured best of 2-16 KB).
// The second layer (1 or 2 outputs per row) is one pass over that output, parallel over rows.
#include "ponder/prm_head.h"

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "avx512_dot.h"

namespace ponder::cpu {
namespace {

using avx512::Bf16Dot;
using avx512::FmaDot;
using avx512::reduce4;

constexpr int64_t kFeaturesPerTask = 16;   // layer-1 outputs per scheduling unit
constexpr int64_t kChunkBytes = 3072;      // of a gathered row per pass: 768 fp32, 1536 bf16
// Products below which one thread runs a layer: a parallel region costs a few us, layer 2's
// 1 << 18 products about 15.
constexpr int64_t kLayer1ParallelMin = 1 << 16;
constexpr int64_t kLayer2ParallelMin = 1 << 18;
constexpr int kTileN = 4;                  // layer-1 weight rows per tile
constexpr int kTileM = 4;                  // gathered rows per tile

// Layer 1 on the gathered rows: h[m, n] = relu(x[m] . w[n] + b[n]), all fp32.
template <typename XT>
struct Layer1 {
  const XT* x;    // [m, k]
  const void* w;  // [n, k]
  const void* b;  // [n] or nullptr
  float* h;       // [m, n]
  int64_t m, n, k;
};

// h[m0 + r, n0 + c] = (k0 > 0 ? h : 0) + x[m0 + r, k0:k1] . w[n0 + c, k0:k1], r < kRows,
// c < kCols.
template <typename Dot, typename T, int kRows, int kCols>
__attribute__((target(PONDER_AVX512_BF16), always_inline)) inline void tile(
    const Layer1<typename Dot::XT>& l, int64_t m0, int64_t n0, int64_t k0, int64_t k1) {
  constexpr int kStep = Dot::kStep;
  using Mask = typename Dot::Mask;
  const int64_t k = l.k;
  const T* w = static_cast<const T*>(l.w) + n0 * k;
  const typename Dot::XT* x = l.x + m0 * k;
  __m512 acc[kRows][kCols];
#pragma GCC unroll 4
  for (int r = 0; r < kRows; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < kCols; ++c) acc[r][c] = _mm512_setzero_ps();
  // The next tile's weights are prefetched: four rows read side by side defeat the hardware
  // stream prefetcher. A macro, not a lambda: a lambda would not inherit the target.
#define PONDER_TILE_STEP(mask)                                                  \
  {                                                                             \
    decltype(Dot::load_w(w, mask)) wv[kCols];                                   \
    _Pragma("GCC unroll 4") for (int c = 0; c < kCols; ++c) {                   \
      wv[c] = Dot::load_w(w + c * k + i, mask);                                 \
      _mm_prefetch(reinterpret_cast<const char*>(w + (kCols + c) * k + i),      \
                   _MM_HINT_T0);                                                \
    }                                                                           \
    _Pragma("GCC unroll 4") for (int r = 0; r < kRows; ++r) {                   \
      const auto xv = Dot::load_x(x + r * k + i, mask);                         \
      _Pragma("GCC unroll 4") for (int c = 0; c < kCols; ++c) acc[r][c] =       \
          Dot::dot(acc[r][c], wv[c], xv);                                       \
    }                                                                           \
  }
  int64_t i = k0;
  for (; i + kStep <= k1; i += kStep) PONDER_TILE_STEP(static_cast<Mask>(-1))
  if (i < k1) PONDER_TILE_STEP(static_cast<Mask>((uint64_t{1} << (k1 - i)) - 1))
#undef PONDER_TILE_STEP
  float* h = l.h + m0 * l.n + n0;
#pragma GCC unroll 4
  for (int r = 0; r < kRows; ++r) {
    float sums[kCols];
    if constexpr (kCols == 4) {
      _mm_storeu_ps(sums, reduce4(acc[r][0], acc[r][1], acc[r][2], acc[r][3]));
    } else {
      for (int c = 0; c < kCols; ++c) sums[c] = _mm512_reduce_add_ps(acc[r][c]);
    }
    for (int c = 0; c < kCols; ++c) h[r * l.n + c] = (k0 > 0 ? h[r * l.n + c] : 0.0f) + sums[c];
  }
}

template <typename Dot, typename T, int kCols>
__attribute__((target(PONDER_AVX512_BF16))) void tile_rows(const Layer1<typename Dot::XT>& l,
                                                           int64_t n0, int64_t k0, int64_t k1) {
  int64_t m0 = 0;
  for (; m0 + kTileM <= l.m; m0 += kTileM) tile<Dot, T, kTileM, kCols>(l, m0, n0, k0, k1);
  switch (l.m - m0) {
    case 3: tile<Dot, T, 3, kCols>(l, m0, n0, k0, k1); break;
    case 2: tile<Dot, T, 2, kCols>(l, m0, n0, k0, k1); break;
    case 1: tile<Dot, T, 1, kCols>(l, m0, n0, k0, k1); break;
    default: break;
  }
}

// Layer-1 outputs [n0, n1) before bias and ReLU. Chunks are equal (a multiple of 32, so that
// only the last one has a masked tail): 576 = 576, not 512 + 64. At least one chunk, so that
// hidden_size 0 still writes zeros.
template <typename Dot, typename T>
void block_avx512(const Layer1<typename Dot::XT>& l, int64_t n0, int64_t n1) {
  constexpr int64_t kMaxChunk = kChunkBytes / sizeof(typename Dot::XT);
  const int64_t num_chunks = std::max<int64_t>(1, (l.k + kMaxChunk - 1) / kMaxChunk);
  const int64_t chunk = ((l.k + num_chunks - 1) / num_chunks + 31) / 32 * 32;
  for (int64_t c = 0; c < num_chunks; ++c) {
    const int64_t k0 = c * chunk, k1 = std::min(l.k, k0 + chunk);
    int64_t n = n0;
    for (; n + kTileN <= n1; n += kTileN) tile_rows<Dot, T, kTileN>(l, n, k0, k1);
    for (; n < n1; ++n) tile_rows<Dot, T, 1>(l, n, k0, k1);
  }
}

// Portable fallback: plain loops the compiler vectorizes.
template <typename T>
void block_generic(const Layer1<float>& l, int64_t n0, int64_t n1) {
  const T* w = static_cast<const T*>(l.w);
  for (int64_t n = n0; n < n1; ++n) {
    const T* wr = w + n * l.k;
    for (int64_t m = 0; m < l.m; ++m) {
      const float* xr = l.x + m * l.k;
      float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
      for (int64_t i = 0; i < l.k; ++i) acc += to_f32(wr[i]) * xr[i];
      l.h[m * l.n + n] = acc;
    }
  }
}

template <typename T, typename XT>
void bias_relu(const Layer1<XT>& l, int64_t n0, int64_t n1) {
  const T* b = static_cast<const T*>(l.b);
  for (int64_t m = 0; m < l.m; ++m) {
    float* h = l.h + m * l.n;
    for (int64_t n = n0; n < n1; ++n) {
      const float v = h[n] + (b != nullptr ? to_f32(b[n]) : 0.0f);
      h[n] = v > 0.0f || std::isnan(v) ? v : 0.0f;  // NaN passes, as in torch.relu
    }
  }
}

// Threads split layer 1's output features in tasks of kFeaturesPerTask.
template <typename XT, typename Block>
void layer1(const Layer1<XT>& l, Block block) {
  const int64_t num_tasks = (l.n + kFeaturesPerTask - 1) / kFeaturesPerTask;
  const bool parallel = l.m * l.n * l.k > kLayer1ParallelMin;
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t t = 0; t < num_tasks; ++t) {
    const int64_t n0 = t * kFeaturesPerTask, n1 = std::min(l.n, n0 + kFeaturesPerTask);
    block(n0, n1);
  }
}

// logits[c] = w[c] . x for c < kClasses (w is [kClasses, n]): two FMA chains per class.
template <typename TW, typename TX, int kClasses>
__attribute__((target(PONDER_AVX512))) void logits_avx512(const TW* w, const TX* x, int64_t n,
                                                          float* logits) {
  __m512 acc[kClasses][2];
  for (int c = 0; c < kClasses; ++c) acc[c][0] = acc[c][1] = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m512 x0 = FmaDot<TX>::load_w(x + i, 0xffff);
    const __m512 x1 = FmaDot<TX>::load_w(x + i + 16, 0xffff);
    for (int c = 0; c < kClasses; ++c) {
      acc[c][0] = _mm512_fmadd_ps(FmaDot<TW>::load_w(w + c * n + i, 0xffff), x0, acc[c][0]);
      acc[c][1] = _mm512_fmadd_ps(FmaDot<TW>::load_w(w + c * n + i + 16, 0xffff), x1, acc[c][1]);
    }
  }
  for (; i < n; i += 16) {
    const __mmask16 mask = n - i >= 16 ? 0xffff : static_cast<__mmask16>((1u << (n - i)) - 1);
    const __m512 x0 = FmaDot<TX>::load_w(x + i, mask);
    for (int c = 0; c < kClasses; ++c)
      acc[c][0] = _mm512_fmadd_ps(FmaDot<TW>::load_w(w + c * n + i, mask), x0, acc[c][0]);
  }
  for (int c = 0; c < kClasses; ++c)
    logits[c] = _mm512_reduce_add_ps(_mm512_add_ps(acc[c][0], acc[c][1]));
}

template <typename TW, typename TX>
void logits_generic(const TW* w, const TX* x, int64_t n, int64_t num_classes, float* logits) {
  for (int64_t c = 0; c < num_classes; ++c) {
    const TW* wc = w + c * n;
    float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
    for (int64_t i = 0; i < n; ++i) acc += to_f32(wc[i]) * to_f32(x[i]);
    logits[c] = acc;
  }
}

// Layer 2 and the activation for every row; row r's input is x_of(r), inner_size long.
template <typename T, typename TX, typename XOf>
void layer2(const PrmHeadParams& p, bool vec, XOf x_of) {
  const T* w2 = static_cast<const T*>(p.w2);
  const T* b2 = static_cast<const T*>(p.b2);
  const int64_t n = p.inner_size;
  const bool parallel = p.num_rows * p.num_classes * n > kLayer2ParallelMin;
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t r = 0; r < p.num_rows; ++r) {
    const TX* x = x_of(r);
    float logits[2] = {0.0f, 0.0f};
    if (vec && p.num_classes == 1)
      logits_avx512<T, TX, 1>(w2, x, n, logits);
    else if (vec)
      logits_avx512<T, TX, 2>(w2, x, n, logits);
    else
      logits_generic(w2, x, n, p.num_classes, logits);
    if (b2 != nullptr)
      for (int64_t c = 0; c < p.num_classes; ++c) logits[c] += to_f32(b2[c]);
    // softmax([l0, l1])[1] == sigmoid(l1 - l0)
    const float z = p.num_classes == 1 ? logits[0] : logits[1] - logits[0];
    p.out[r] = 1.0f / (1.0f + std::exp(-z));
  }
}

template <typename T>
void run(const PrmHeadParams& p, bool simd, bool bf16_dot) {
  static const bool avx512 = has_avx512();
  static const bool avx512_bf16 = avx512::has_avx512_bf16();
  const bool vec = simd && avx512;
  const int64_t m = p.num_rows, k = p.hidden_size, n = p.inner_size;
  const T* hidden = static_cast<const T*>(p.hidden);
  const auto hidden_row = [&](int64_t r) { return hidden + p.rows[r] * p.hidden_stride; };
  if (p.w1 == nullptr) {  // a value head straight on the hidden states: nothing to gather
    layer2<T, T>(p, vec, hidden_row);
    return;
  }
  // Reused across calls: page-faulting fresh buffers costs more than the layer at small sizes.
  thread_local std::vector<float> h_buf;
  if (static_cast<int64_t>(h_buf.size()) < m * n) h_buf.resize(m * n);
  float* h = h_buf.data();
  if constexpr (std::is_same_v<T, bf16>) {
    if (vec && bf16_dot && avx512_bf16) {
      thread_local std::vector<bf16> x_buf;
      if (static_cast<int64_t>(x_buf.size()) < m * k) x_buf.resize(m * k);
      for (int64_t r = 0; r < m; ++r)
        std::memcpy(x_buf.data() + r * k, hidden_row(r), k * sizeof(bf16));
      const Layer1<bf16> l{x_buf.data(), p.w1, p.b1, h, m, n, k};
      layer1(l, [&](int64_t n0, int64_t n1) {
        block_avx512<Bf16Dot, bf16>(l, n0, n1);
        bias_relu<T>(l, n0, n1);
      });
      layer2<T, float>(p, vec, [&](int64_t r) { return h + r * n; });
      return;
    }
  }
  thread_local std::vector<float> x_buf;
  if (static_cast<int64_t>(x_buf.size()) < m * k) x_buf.resize(m * k);
  for (int64_t r = 0; r < m; ++r) {
    const T* src = hidden_row(r);
    float* dst = x_buf.data() + r * k;
    for (int64_t i = 0; i < k; ++i) dst[i] = to_f32(src[i]);
  }
  const Layer1<float> l{x_buf.data(), p.w1, p.b1, h, m, n, k};
  layer1(l, [&](int64_t n0, int64_t n1) {
    if (vec)
      block_avx512<FmaDot<T>, T>(l, n0, n1);
    else
      block_generic<T>(l, n0, n1);
    bias_relu<T>(l, n0, n1);
  });
  layer2<T, float>(p, vec, [&](int64_t r) { return h + r * n; });
}

}  // namespace

Status prm_head(const PrmHeadParams& p, bool simd, bool bf16_dot) {
  if (p.num_classes != 1 && p.num_classes != 2)
    return Status::error("prm_head: num_classes must be 1 or 2");
  if (p.num_rows == 0) return Status::success();
  switch (p.dtype) {
    case DType::kFloat32: run<float>(p, simd, bf16_dot); break;
    case DType::kBFloat16: run<bf16>(p, simd, bf16_dot); break;
    case DType::kFloat16: run<_Float16>(p, simd, bf16_dot); break;
  }
  return Status::success();
}

}  // namespace ponder::cpu
