// CUDA sample: one thread block per row. Thresholds are found by bisection over the 32-bit
// order-preserving keys of the scaled logits (float_key): each step is one counting pass
// (top-k) or one mass pass (top-p) and a block reduction, so no sort and no scratch memory, for
// any vocab size. The row is re-read from global memory each pass; it stays in L2.
// Scaling uses __frcp_rn/__fmul_rn so that --use_fast_math cannot change the values the
// thresholds are compared against: they are the CPU kernel's values bit for bit.
#include <climits>

#include "common.cuh"
#include "ponder/sample.h"

namespace ponder::cuda {
namespace {

constexpr int kMaxThreads = 512;
constexpr int kMaxWarps = kMaxThreads / 32;

struct Best {
  float value;
  int index;
};

// Larger value first, ties to the lower index (torch.argmax / topk order).
__device__ __forceinline__ bool better(const Best& a, const Best& b) {
  return a.value > b.value || (a.value == b.value && a.index < b.index);
}

struct Shared {
  float f[kMaxWarps];
  int i[kMaxWarps];
  Best best[kMaxWarps];
  int token;
};

// Block-wide reductions: every thread gets the result. The leading barrier lets a call reuse
// the buffer of the previous one.
__device__ float block_sum(float v, Shared& sh) {
  v = warp_sum(v);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) sh.f[warp] = v;
  __syncthreads();
  v = lane < static_cast<int>(blockDim.x >> 5) ? sh.f[lane] : 0.f;
  return warp_sum(v);
}

template <typename Op>
__device__ int block_reduce_int(int v, int identity, Op op, Shared& sh) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1)
    v = op(v, __shfl_xor_sync(0xffffffffu, v, offset));
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) sh.i[warp] = v;
  __syncthreads();
  v = lane < static_cast<int>(blockDim.x >> 5) ? sh.i[lane] : identity;
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1)
    v = op(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

struct Add {
  __device__ int operator()(int a, int b) const { return a + b; }
};
struct Min {
  __device__ int operator()(int a, int b) const { return a < b ? a : b; }
};
struct Max {
  __device__ int operator()(int a, int b) const { return a > b ? a : b; }
};

__device__ __forceinline__ Best warp_best(Best b) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    const Best o{__shfl_xor_sync(0xffffffffu, b.value, offset),
                 __shfl_xor_sync(0xffffffffu, b.index, offset)};
    if (better(o, b)) b = o;
  }
  return b;
}

__device__ Best block_best(Best b, Shared& sh) {
  b = warp_best(b);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) sh.best[warp] = b;
  __syncthreads();
  b = lane < static_cast<int>(blockDim.x >> 5) ? sh.best[lane] : Best{-INFINITY, INT_MAX};
  return warp_best(b);
}

// Exclusive prefix sum over threads in thread order; total gets the block's sum.
__device__ float block_exclusive_scan(float v, float& total, Shared& sh) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  float incl = v;
#pragma unroll
  for (int offset = 1; offset < 32; offset <<= 1) {
    const float o = __shfl_up_sync(0xffffffffu, incl, offset);
    if (lane >= offset) incl += o;
  }
  __syncthreads();
  if (lane == 31) sh.f[warp] = incl;
  __syncthreads();
  const int num_warps = blockDim.x >> 5;
  float warp_incl = lane < num_warps ? sh.f[lane] : 0.f;
#pragma unroll
  for (int offset = 1; offset < 32; offset <<= 1) {
    const float o = __shfl_up_sync(0xffffffffu, warp_incl, offset);
    if (lane >= offset) warp_incl += o;
  }
  total = __shfl_sync(0xffffffffu, warp_incl, num_warps - 1);
  const float warp_offset = __shfl_sync(0xffffffffu, warp_incl, warp > 0 ? warp - 1 : 0);
  return (warp > 0 ? warp_offset : 0.f) + incl - v;
}

// Ceil midpoint of [lo, hi] without overflowing at hi - lo = 2^32 - 1.
__device__ __forceinline__ uint32_t upper_mid(uint32_t lo, uint32_t hi) {
  const uint32_t d = hi - lo;
  return lo + d / 2 + (d & 1u);
}

template <typename T>
__global__ void __launch_bounds__(kMaxThreads) sample_kernel(const SampleParams p) {
  __shared__ Shared sh;
  const int64_t row = blockIdx.x;
  const int vocab = static_cast<int>(p.vocab);
  const T* in = static_cast<const T*>(p.logits) + row * p.vocab;
  const int tid = threadIdx.x, num_threads = blockDim.x;

  // Raw log-partition: max (first index on ties), then sum of exp.
  Best best{-INFINITY, INT_MAX};
  for (int i = tid; i < vocab; i += num_threads) {
    const Best c{to_float(in[i]), i};
    if (better(c, best)) best = c;
  }
  best = block_best(best, sh);
  const float max_logit = best.value;
  const int argmax = best.index;
  float sum = 0.f;
  for (int i = tid; i < vocab; i += num_threads) sum += expf(to_float(in[i]) - max_logit);
  const float log_z = max_logit + logf(block_sum(sum, sh));

  // Top log-probs by repeated arg-max below the previous pick: meant for the few (<= 20)
  // that serving asks for; costs num_logprobs passes.
  Best prev{INFINITY, -1};
  for (int64_t j = 0; j < p.num_logprobs; ++j) {
    Best b{-INFINITY, INT_MAX};
    for (int i = tid; i < vocab; i += num_threads) {
      const Best c{to_float(in[i]), i};
      if (better(prev, c) && better(c, b)) b = c;
    }
    b = block_best(b, sh);
    if (tid == 0) {
      p.top_ids[row * p.num_logprobs + j] = b.index;
      p.top_logprobs[row * p.num_logprobs + j] = b.value - log_z;
    }
    prev = b;
  }

  const float temperature = p.temperature[row];
  if (!(temperature > 0.f)) {
    if (tid == 0) {
      p.tokens[row] = argmax;
      p.logprobs[row] = max_logit - log_z;
    }
    return;
  }

  const float inv_t = __frcp_rn(temperature);
  const float x_max = __fmul_rn(max_logit, inv_t);
  const auto scaled = [&](int i) { return __fmul_rn(to_float(in[i]), inv_t); };

  // top-k: the largest key with at least k keys >= it is the k-th largest value.
  uint32_t min_key = 0;
  const int top_k = p.top_k[row];
  if (top_k > 0 && top_k < vocab) {
    uint32_t lo = 0, hi = 0xffffffffu;
    while (lo < hi) {
      const uint32_t mid = upper_mid(lo, hi);
      int count = 0;
      for (int i = tid; i < vocab; i += num_threads) count += float_key(scaled(i)) >= mid;
      if (block_reduce_int(count, 0, Add{}, sh) >= top_k) lo = mid;
      else hi = mid - 1;
    }
    min_key = lo;
  }

  // top-p: the smallest key K whose strictly-greater surviving mass is < top_p * mass.
  const float top_p = p.top_p[row];
  if (top_p < 1.f) {
    float mass = 0.f;
    for (int i = tid; i < vocab; i += num_threads) {
      const float x = scaled(i);
      if (float_key(x) >= min_key) mass += expf(x - x_max);
    }
    const float limit = top_p * block_sum(mass, sh);
    uint32_t lo = min_key, hi = float_key(x_max);  // nothing is greater than the max
    while (lo < hi) {
      const uint32_t mid = lo + (hi - lo) / 2;
      float greater = 0.f;
      for (int i = tid; i < vocab; i += num_threads) {
        const float x = scaled(i);
        const uint32_t key = float_key(x);
        if (key > mid && key >= min_key) greater += expf(x - x_max);
      }
      if (block_sum(greater, sh) < limit) hi = mid;
      else lo = mid + 1;
    }
    min_key = lo;
  }

  const float min_p = p.min_p[row];
  const auto weight = [&](int i) {
    const float x = scaled(i);
    const float e = expf(x - x_max);
    return float_key(x) >= min_key && e >= min_p ? e : 0.f;
  };

  // Inverse CDF in vocab order: each thread owns a contiguous range, an exclusive scan of the
  // range sums finds the owner of the crossing, and the owner walks its range.
  const int chunk = (vocab + num_threads - 1) / num_threads;
  const int begin = min(vocab, tid * chunk), end = min(vocab, begin + chunk);
  float own = 0.f;
  int last_kept = -1;
  for (int i = begin; i < end; ++i) {
    const float w = weight(i);
    if (w > 0.f) {
      own += w;
      last_kept = i;
    }
  }
  float total;
  const float before = block_exclusive_scan(own, total, sh);
  const double u = philox_uniform(static_cast<uint64_t>(p.seeds[row]),
                                  static_cast<uint64_t>(p.seq_ids[row]),
                                  static_cast<uint64_t>(p.positions[row]));
  const double target = u * static_cast<double>(total);
  const bool crosses = own > 0.f && static_cast<double>(before + own) > target;
  const int owner = block_reduce_int(crosses ? tid : INT_MAX, INT_MAX, Min{}, sh);
  // Rounding can leave every range short of target: then the last kept token is the pick.
  const int fallback = block_reduce_int(last_kept, -1, Max{}, sh);
  if (tid == 0) sh.token = fallback >= 0 ? fallback : argmax;
  __syncthreads();
  if (tid == owner) {
    float running = before;
    int token = last_kept;
    for (int i = begin; i < end; ++i) {
      const float w = weight(i);
      if (w <= 0.f) continue;
      running += w;
      if (static_cast<double>(running) > target) {
        token = i;
        break;
      }
    }
    sh.token = token;
  }
  __syncthreads();
  if (tid == 0) {
    const int token = sh.token;
    p.tokens[row] = token;
    p.logprobs[row] = to_float(in[token]) - log_z;
  }
}

}  // namespace

Status sample(const SampleParams& p, int device, void* stream) {
  if (p.num_rows == 0) return Status::success();
  DeviceGuard guard(device);
  auto s = static_cast<cudaStream_t>(stream);
  // Small vocabularies (tests, toy models) would leave most of a 512-thread block idle.
  const int64_t warps = (p.vocab + 31) / 32;
  const int threads = warps >= kMaxWarps ? kMaxThreads : 32 * static_cast<int>(warps);
  const dim3 grid(static_cast<unsigned>(p.num_rows));
  switch (p.dtype) {
    case DType::kFloat32: sample_kernel<float><<<grid, threads, 0, s>>>(p); break;
    case DType::kBFloat16: sample_kernel<__nv_bfloat16><<<grid, threads, 0, s>>>(p); break;
    case DType::kFloat16: sample_kernel<__half><<<grid, threads, 0, s>>>(p); break;
  }
  return last_status();
}

}  // namespace ponder::cuda
