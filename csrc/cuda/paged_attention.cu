// CUDA paged attention (decode and extend) with optional split-KV (flash-decoding).
//
// Grid: (query token, KV head x chunk of up to kMaxHeadsPerBlock query heads, KV split).
// A block's warps take keys round-robin; a lane holds head_dim / 32 strided elements, so a
// warp reads each K/V row with coalesced loads, once for all the query heads of its GQA group.
// Each warp keeps an fp32 online softmax per head; warps merge through shared memory. With
// several splits each block writes its normalized partial output and log-sum-exp, and a
// second kernel merges the splits.
#include <cmath>

#include "common.cuh"
#include "ponder/paged_attention.h"

namespace ponder::cuda {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kHeads = static_cast<int>(kMaxHeadsPerBlock);

template <typename T, int kDimPerLane>
__global__ void __launch_bounds__(kThreads)
    paged_attention_kernel(const PagedAttentionParams p, int head_chunks) {
  constexpr int kHeadDim = kDimPerLane * 32;
  __shared__ float sm_m[kWarps][kHeads];
  __shared__ float sm_l[kWarps][kHeads];
  __shared__ float sm_acc[kWarps][kHeads][kHeadDim];

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t token = blockIdx.x;
  const int64_t group = p.num_heads / p.num_kv_heads;
  const int64_t kv_head = blockIdx.y / head_chunks;
  const int64_t g0 = (blockIdx.y % head_chunks) * kHeads;
  const int ng = static_cast<int>(group - g0 < kHeads ? group - g0 : kHeads);
  const int split = blockIdx.z, num_splits = gridDim.z;

  int64_t seq = token, q_len = 1, q_index = 0;
  if (p.cu_query_lens != nullptr) {
    int64_t lo = 0, hi = p.batch - 1;  // the last sequence whose first token is <= token
    while (lo < hi) {
      const int64_t mid = (lo + hi + 1) / 2;
      if (p.cu_query_lens[mid] <= token) lo = mid; else hi = mid - 1;
    }
    seq = lo;
    q_len = p.cu_query_lens[seq + 1] - p.cu_query_lens[seq];
    q_index = token - p.cu_query_lens[seq];
  }
  const int64_t num_keys = p.seq_lens[seq] - q_len + q_index + 1;  // causal: keys [0, pos]
  const int64_t bs = p.block_size;
  int64_t chunk = (num_keys + num_splits - 1) / num_splits;
  chunk = (chunk + bs - 1) / bs * bs;
  const int64_t key_begin = split * chunk;
  const int64_t key_end = key_begin + chunk < num_keys ? key_begin + chunk : num_keys;

  const T* query = static_cast<const T*>(p.query);
  float q[kHeads][kDimPerLane], acc[kHeads][kDimPerLane], m[kHeads], l[kHeads];
#pragma unroll
  for (int g = 0; g < kHeads; ++g) {
    m[g] = -INFINITY;
    l[g] = 0.0f;
#pragma unroll
    for (int i = 0; i < kDimPerLane; ++i) {
      acc[g][i] = 0.0f;
      q[g][i] = g < ng ? to_float(query[(token * p.num_heads + kv_head * group + g0 + g) * kHeadDim +
                                        i * 32 + lane]) * p.scale
                       : 0.0f;
    }
  }

  const T* k_cache = static_cast<const T*>(p.k_cache);
  const T* v_cache = static_cast<const T*>(p.v_cache);
  const int32_t* table = p.block_tables + seq * p.max_blocks_per_seq;
  for (int64_t t = key_begin + warp; t < key_end; t += kWarps) {
    const int64_t block = table[t / bs];
    const int64_t offset = ((block * bs + t % bs) * p.num_kv_heads + kv_head) * kHeadDim + lane;
    float k[kDimPerLane], v[kDimPerLane];
#pragma unroll
    for (int i = 0; i < kDimPerLane; ++i) {
      k[i] = to_float(k_cache[offset + i * 32]);
      v[i] = to_float(v_cache[offset + i * 32]);
    }
#pragma unroll
    for (int g = 0; g < kHeads; ++g) {
      if (g < ng) {
        float dot = 0.0f;
#pragma unroll
        for (int i = 0; i < kDimPerLane; ++i) dot += q[g][i] * k[i];
        const float s = warp_sum(dot);
        const float m_new = fmaxf(m[g], s);
        const float alpha = __expf(m[g] - m_new);
        const float e = __expf(s - m_new);
        l[g] = l[g] * alpha + e;
#pragma unroll
        for (int i = 0; i < kDimPerLane; ++i) acc[g][i] = acc[g][i] * alpha + e * v[i];
        m[g] = m_new;
      }
    }
  }

#pragma unroll
  for (int g = 0; g < kHeads; ++g) {
    if (lane == 0) {
      sm_m[warp][g] = m[g];
      sm_l[warp][g] = l[g];
    }
#pragma unroll
    for (int i = 0; i < kDimPerLane; ++i) sm_acc[warp][g][i * 32 + lane] = acc[g][i];
  }
  __syncthreads();

  float* ws_out = p.workspace;
  float* ws_lse = p.workspace + p.num_tokens * p.num_heads * num_splits * kHeadDim;
  for (int idx = threadIdx.x; idx < ng * kHeadDim; idx += kThreads) {
    const int g = idx / kHeadDim, d = idx % kHeadDim;
    float m_max = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) m_max = fmaxf(m_max, sm_m[w][g]);
    float sum = 0.0f, o = 0.0f;
    if (m_max != -INFINITY) {
#pragma unroll
      for (int w = 0; w < kWarps; ++w) {
        const float scale = __expf(sm_m[w][g] - m_max);
        sum += sm_l[w][g] * scale;
        o += sm_acc[w][g][d] * scale;
      }
      o /= sum;
    }
    const int64_t head = kv_head * group + g0 + g;
    if (num_splits == 1) {
      static_cast<T*>(p.out)[(token * p.num_heads + head) * kHeadDim + d] = from_float<T>(o);
    } else {
      const int64_t row = (token * p.num_heads + head) * num_splits + split;
      ws_out[row * kHeadDim + d] = o;
      if (d == 0) ws_lse[row] = m_max == -INFINITY ? -INFINITY : m_max + __logf(sum);
    }
  }
}

template <typename T, int kDimPerLane>
__global__ void __launch_bounds__(kThreads)
    merge_splits_kernel(const PagedAttentionParams p) {
  constexpr int kHeadDim = kDimPerLane * 32;
  const int64_t row = blockIdx.x;  // token * num_heads + head
  const int64_t S = p.num_splits;
  const float* ws_out = p.workspace + row * S * kHeadDim;
  const float* ws_lse = p.workspace + p.num_tokens * p.num_heads * S * kHeadDim + row * S;
  float lse_max = -INFINITY;
  for (int64_t s = 0; s < S; ++s) lse_max = fmaxf(lse_max, ws_lse[s]);
  for (int d = threadIdx.x; d < kHeadDim; d += kThreads) {
    float sum = 0.0f, o = 0.0f;
    for (int64_t s = 0; s < S; ++s) {
      const float w = ws_lse[s] == -INFINITY ? 0.0f : __expf(ws_lse[s] - lse_max);
      sum += w;
      o += w * ws_out[s * kHeadDim + d];
    }
    static_cast<T*>(p.out)[row * kHeadDim + d] = from_float<T>(sum > 0.0f ? o / sum : 0.0f);
  }
}

template <typename T, int kDimPerLane>
Status launch(const PagedAttentionParams& p, cudaStream_t stream) {
  const int64_t group = p.num_heads / p.num_kv_heads;
  const int head_chunks = static_cast<int>((group + kHeads - 1) / kHeads);
  const dim3 grid(static_cast<unsigned>(p.num_tokens),
                  static_cast<unsigned>(p.num_kv_heads * head_chunks),
                  static_cast<unsigned>(p.num_splits));
  paged_attention_kernel<T, kDimPerLane><<<grid, kThreads, 0, stream>>>(p, head_chunks);
  if (p.num_splits > 1) {
    merge_splits_kernel<T, kDimPerLane>
        <<<static_cast<unsigned>(p.num_tokens * p.num_heads), kThreads, 0, stream>>>(p);
  }
  return last_status();
}

template <typename T>
Status dispatch_head_dim(const PagedAttentionParams& p, cudaStream_t stream) {
  switch (p.head_dim) {
    case 32: return launch<T, 1>(p, stream);
    case 64: return launch<T, 2>(p, stream);
    case 96: return launch<T, 3>(p, stream);
    case 128: return launch<T, 4>(p, stream);
    case 256: return launch<T, 8>(p, stream);
    default: return Status::error("unsupported head_dim for the CUDA paged_attention kernel");
  }
}

}  // namespace

Status paged_attention(const PagedAttentionParams& p, int device, void* stream) {
  if (p.num_tokens == 0) return Status::success();
  if (p.block_size > 256) return Status::error("block_size must be at most 256");
  DeviceGuard guard(device);
  auto s = static_cast<cudaStream_t>(stream);
  switch (p.dtype) {
    case DType::kFloat32: return dispatch_head_dim<float>(p, s);
    case DType::kBFloat16: return dispatch_head_dim<__nv_bfloat16>(p, s);
    case DType::kFloat16: return dispatch_head_dim<__half>(p, s);
  }
  return Status::error("unknown dtype");
}

}  // namespace ponder::cuda
