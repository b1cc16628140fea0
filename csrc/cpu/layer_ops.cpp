// CPU fused layer ops. Compiled without FMA contraction so that products and sums round
// exactly as transformers' separate torch ops do.
#pragma GCC optimize("fp-contract=off")

#include <omp.h>

#include <cmath>

#include "ponder/layer_ops.h"

namespace ponder::cpu {
namespace {

constexpr int64_t kParallelMinElems = 1 << 16;

// transformers rounds to the model dtype after each op; T == float makes this a no-op.
template <typename T>
inline float round_to(float v) {
  return to_f32(from_f32<T>(v));
}

template <typename T>
void rms_norm_impl(const RmsNormParams& p) {
  const T* x = static_cast<const T*>(p.x);
  T* res = static_cast<T*>(p.residual);
  const T* w = static_cast<const T*>(p.weight);
  T* out = static_cast<T*>(p.out);
  const int64_t h = p.hidden;
#pragma omp parallel for schedule(static) if (p.num_tokens * h > kParallelMinElems)
  for (int64_t t = 0; t < p.num_tokens; ++t) {
    const T* src = x + t * h;
    if (res != nullptr) {  // residual += x, rounded like a torch add in the model dtype
      T* r = res + t * h;
      for (int64_t i = 0; i < h; ++i) r[i] = from_f32<T>(to_f32(r[i]) + to_f32(src[i]));
      src = r;
    }
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < h; ++i) sum += to_f32(src[i]) * to_f32(src[i]);
    const float inv = 1.0f / std::sqrt(sum / static_cast<float>(h) + p.eps);
    T* o = out + t * h;
    for (int64_t i = 0; i < h; ++i)
      o[i] = from_f32<T>(to_f32(w[i]) * round_to<T>(to_f32(src[i]) * inv));
  }
}

template <typename T>
void rotate_rows(T* x, int64_t rows, int64_t d, const T* c, const T* s) {
  const int64_t half = d / 2;
  for (int64_t r = 0; r < rows; ++r) {
    T* v = x + r * d;
    for (int64_t i = 0; i < half; ++i) {
      const float a = to_f32(v[i]), b = to_f32(v[i + half]);
      // x * cos + rotate_half(x) * sin, rotate_half(x) = [-x2, x1]
      const float lo = round_to<T>(round_to<T>(a * to_f32(c[i])) +
                                   round_to<T>(-b * to_f32(s[i])));
      const float hi = round_to<T>(round_to<T>(b * to_f32(c[i + half])) +
                                   round_to<T>(a * to_f32(s[i + half])));
      v[i] = from_f32<T>(lo);
      v[i + half] = from_f32<T>(hi);
    }
  }
}

template <typename T>
void rotary_impl(const RotaryParams& p) {
  T* q = static_cast<T*>(p.q);
  T* k = static_cast<T*>(p.k);
  const T* cos = static_cast<const T*>(p.cos);
  const T* sin = static_cast<const T*>(p.sin);
  const int64_t d = p.head_dim;
#pragma omp parallel for schedule(static) if (p.num_tokens * (p.num_heads + p.num_kv_heads) * d > kParallelMinElems)
  for (int64_t t = 0; t < p.num_tokens; ++t) {
    const int64_t pos = p.positions[t];
    rotate_rows(q + t * p.num_heads * d, p.num_heads, d, cos + pos * d, sin + pos * d);
    rotate_rows(k + t * p.num_kv_heads * d, p.num_kv_heads, d, cos + pos * d, sin + pos * d);
  }
}

template <typename T>
void silu_mul_impl(const SiluMulParams& p) {
  const T* in = static_cast<const T*>(p.gate_up);
  T* out = static_cast<T*>(p.out);
  const int64_t n = p.inter;
#pragma omp parallel for schedule(static) if (p.num_tokens * n > kParallelMinElems)
  for (int64_t t = 0; t < p.num_tokens; ++t) {
    const T* g = in + t * 2 * n;
    const T* u = g + n;
    T* o = out + t * n;
    for (int64_t i = 0; i < n; ++i) {
      const float x = to_f32(g[i]);
      o[i] = from_f32<T>(round_to<T>(x / (1.0f + std::exp(-x))) * to_f32(u[i]));
    }
  }
}

template <template <typename> class F, typename P>
Status dispatch(const P& p) {
  switch (p.dtype) {
    case DType::kFloat32: F<float>::run(p); break;
    case DType::kBFloat16: F<bf16>::run(p); break;
    case DType::kFloat16: F<_Float16>::run(p); break;
  }
  return Status::success();
}

template <typename T> struct RmsNormOp { static void run(const RmsNormParams& p) { rms_norm_impl<T>(p); } };
template <typename T> struct RotaryOp { static void run(const RotaryParams& p) { rotary_impl<T>(p); } };
template <typename T> struct SiluMulOp { static void run(const SiluMulParams& p) { silu_mul_impl<T>(p); } };

}  // namespace

Status rms_norm(const RmsNormParams& p) { return dispatch<RmsNormOp>(p); }
Status rotary(const RotaryParams& p) {
  if (p.head_dim % 2 != 0) return Status::error("rotary: head_dim must be even");
  return dispatch<RotaryOp>(p);
}
Status silu_and_mul(const SiluMulParams& p) { return dispatch<SiluMulOp>(p); }

}  // namespace ponder::cpu
