// CPU fused layer ops. Compiled without FMA contraction so that products and sums round
// exactly as transformers' separate torch ops do.
//
// The loops are written to vectorize (branch-free conversions, the vectorizable exp of
// cpu_math.h) and are compiled twice: for AVX-512, picked at run time, and for the baseline
// ISA. At decode sizes they run on the calling thread: 16 tokens of a 576-wide model are a
// few microseconds of work.
#pragma GCC optimize("fp-contract=off")

#include <omp.h>

#include <cmath>

#include "ponder/cpu_math.h"
#include "ponder/layer_ops.h"

namespace ponder::cpu {
namespace {

constexpr int64_t kParallelMinElems = 1 << 16;

#define PONDER_AVX512 "avx512f,avx512bw,avx512vl,avx512dq,avx2,f16c,prefer-vector-width=512"

// transformers rounds to the model dtype after each op; T == float makes this a no-op.
template <typename T>
__attribute__((always_inline)) inline float round_to(float v) {
  return to_f32(from_f32<T>(v));
}

// Each op's body handles tokens [t0, t1); run() below splits the tokens over threads. (The
// bodies hold no OpenMP region: GCC outlines a region before inlining, so its body would not
// be compiled for the caller's target.)
template <typename T>
__attribute__((always_inline)) inline void rms_norm_rows(const RmsNormParams& p, int64_t t0,
                                                         int64_t t1) {
  const T* x = static_cast<const T*>(p.x);
  T* res = static_cast<T*>(p.residual);
  const T* w = static_cast<const T*>(p.weight);
  T* out = static_cast<T*>(p.out);
  const int64_t h = p.hidden;
  for (int64_t t = t0; t < t1; ++t) {
    const T* src = x + t * h;
    if (res != nullptr) {  // residual += x, rounded like a torch add in the model dtype
      T* r = res + t * h;
#pragma omp simd
      for (int64_t i = 0; i < h; ++i) r[i] = from_f32<T>(to_f32(r[i]) + to_f32(src[i]));
      src = r;
    }
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < h; ++i) sum += to_f32(src[i]) * to_f32(src[i]);
    const float inv = 1.0f / std::sqrt(sum / static_cast<float>(h) + p.eps);
    T* o = out + t * h;
    // o may be src (an in-place norm): each element is read before it is written.
#pragma omp simd
    for (int64_t i = 0; i < h; ++i)
      o[i] = from_f32<T>(to_f32(w[i]) * round_to<T>(to_f32(src[i]) * inv));
  }
}

template <typename T>
__attribute__((always_inline)) inline void rotate_rows(T* x, int64_t rows, int64_t d, const T* c,
                                                       const T* s) {
  const int64_t half = d / 2;
  for (int64_t r = 0; r < rows; ++r) {
    T* v = x + r * d;
    // x * cos + rotate_half(x) * sin, rotate_half(x) = [-x2, x1]; the halves do not overlap.
#pragma omp simd
    for (int64_t i = 0; i < half; ++i) {
      const float a = to_f32(v[i]), b = to_f32(v[i + half]);
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
__attribute__((always_inline)) inline void rotary_rows(const RotaryParams& p, int64_t t0,
                                                       int64_t t1) {
  T* q = static_cast<T*>(p.q);
  T* k = static_cast<T*>(p.k);
  const T* cos = static_cast<const T*>(p.cos);
  const T* sin = static_cast<const T*>(p.sin);
  const int64_t d = p.head_dim;
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t pos = p.positions[t];
    rotate_rows(q + t * p.num_heads * d, p.num_heads, d, cos + pos * d, sin + pos * d);
    rotate_rows(k + t * p.num_kv_heads * d, p.num_kv_heads, d, cos + pos * d, sin + pos * d);
  }
}

template <typename T>
__attribute__((always_inline)) inline void silu_mul_rows(const SiluMulParams& p, int64_t t0,
                                                         int64_t t1) {
  const T* in = static_cast<const T*>(p.gate_up);
  T* out = static_cast<T*>(p.out);
  const int64_t n = p.inter;
  for (int64_t t = t0; t < t1; ++t) {
    const T* g = in + t * 2 * n;
    const T* u = g + n;
    T* o = out + t * n;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      const float x = to_f32(g[i]);
      // silu(x) = x / (1 + exp(-x)); below -87 exp(-x) overflows fp32 and silu is -0. (Both
      // sides computed, then selected: a branch would keep the loop from vectorizing.)
      const float quotient = x / (1.0f + fast_exp(-x));
      const float silu = x < -87.0f ? 0.0f * x : quotient;
      o[i] = from_f32<T>(round_to<T>(silu) * to_f32(u[i]));
    }
  }
}

// Op<T>::run(p): the rows body compiled for AVX-512 and for the baseline ISA, picked at run
// time; large inputs (prefill) split their tokens over the threads.
#define PONDER_DISPATCHED_OP(Name, Params, rows, elems_per_token)                           \
  template <typename T>                                                                   \
  struct Name {                                                                           \
    __attribute__((target(PONDER_AVX512))) static void avx512(const Params& p, int64_t t0, \
                                                              int64_t t1) {               \
      rows<T>(p, t0, t1);                                                                 \
    }                                                                                     \
    static void baseline(const Params& p, int64_t t0, int64_t t1) { rows<T>(p, t0, t1); } \
    static void run(const Params& p) {                                                    \
      static const bool avx = has_avx512() && __builtin_cpu_supports("f16c");            \
      const auto body = avx ? &avx512 : &baseline;                                        \
      const int64_t n = p.num_tokens;                                                     \
      if (n * (elems_per_token) <= kParallelMinElems) return body(p, 0, n);               \
      _Pragma("omp parallel") {                                                           \
        const int64_t threads = omp_get_num_threads(), id = omp_get_thread_num();         \
        body(p, n * id / threads, n * (id + 1) / threads);                                \
      }                                                                                   \
    }                                                                                     \
  };
PONDER_DISPATCHED_OP(RmsNormOp, RmsNormParams, rms_norm_rows, p.hidden)
PONDER_DISPATCHED_OP(RotaryOp, RotaryParams, rotary_rows,
                     (p.num_heads + p.num_kv_heads) * p.head_dim)
PONDER_DISPATCHED_OP(SiluMulOp, SiluMulParams, silu_mul_rows, p.inter)
#undef PONDER_DISPATCHED_OP

template <template <typename> class F, typename P>
Status dispatch(const P& p) {
  switch (p.dtype) {
    case DType::kFloat32: F<float>::run(p); break;
    case DType::kBFloat16: F<bf16>::run(p); break;
    case DType::kFloat16: F<_Float16>::run(p); break;
  }
  return Status::success();
}

}  // namespace

Status rms_norm(const RmsNormParams& p) { return dispatch<RmsNormOp>(p); }
Status rotary(const RotaryParams& p) {
  if (p.head_dim % 2 != 0) return Status::error("rotary: head_dim must be even");
  return dispatch<RotaryOp>(p);
}
Status silu_and_mul(const SiluMulParams& p) { return dispatch<SiluMulOp>(p); }

}  // namespace ponder::cpu
