// CUDA prm_head (semantics in ponder/prm_head.h): at most two launches on the caller's stream.
//
// Layer 1 (with w1): a warp per output feature and tile of kRowsPerWarp rows. The warp reads
// its weight row once per tile, in coalesced strides of 32 elements, and multiplies it into the
// accumulator of every row of the tile; the rows are read straight from hidden through `rows`,
// so there is no separate gather. blockIdx.x walks the row tiles of one group of features
// before the next group starts, so each weight row comes from DRAM once and from L2 for the
// other tiles. relu(h + b1) goes to the fp32 workspace [num_rows, inner_size].
// Layer 2: a warp per row computes both logits (x is read once) and the score.
// A row index outside [0, num_tokens) (ponder.ops rejects them before the launch) yields NaN
// instead of an out-of-bounds read.
#include <climits>

#include "common.cuh"
#include "ponder/prm_head.h"

namespace ponder::cuda {
namespace {

constexpr int kWarpsPerBlock = 8;
constexpr int kThreads = kWarpsPerBlock * 32;
constexpr int kRowsPerWarp = 8;
constexpr int64_t kMaxGridY = 65535;

__device__ __forceinline__ bool valid_row(int64_t row, int64_t num_tokens) {
  return row >= 0 && row < num_tokens;
}

template <typename T>
__global__ void __launch_bounds__(kThreads) prm_layer1_kernel(const PrmHeadParams p) {
  const int lane = threadIdx.x & 31;
  const int64_t feature = static_cast<int64_t>(blockIdx.y) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (feature >= p.inner_size) return;  // whole warps only: warp_sum below needs all 32 lanes
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kRowsPerWarp;
  const int num = static_cast<int>(min(static_cast<int64_t>(kRowsPerWarp), p.num_rows - r0));
  const T* hidden = static_cast<const T*>(p.hidden);
  const T* x[kRowsPerWarp];
  bool valid[kRowsPerWarp];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int64_t row = r < num ? p.rows[r0 + r] : 0;
    valid[r] = valid_row(row, p.num_tokens);
    x[r] = hidden + (valid[r] ? row : 0) * p.hidden_stride;
  }
  const T* w = static_cast<const T*>(p.w1) + feature * p.hidden_size;
  float acc[kRowsPerWarp];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) acc[r] = 0.f;
  for (int64_t i = lane; i < p.hidden_size; i += 32) {
    const float wv = to_float(w[i]);
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r)
      if (r < num && valid[r]) acc[r] = fmaf(wv, to_float(x[r][i]), acc[r]);
  }
  const float bias = p.b1 != nullptr ? to_float(static_cast<const T*>(p.b1)[feature]) : 0.f;
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const float v = warp_sum(acc[r]) + bias;
    if (lane == 0 && r < num)  // a relu that lets NaN through, as torch.relu does
      p.workspace[(r0 + r) * p.inner_size + feature] =
          !valid[r] ? NAN : (v > 0.f || isnan(v) ? v : 0.f);
  }
}

// x_base: with gather, hidden indexed through rows (no first layer); else the workspace.
template <typename T, typename TX>
__global__ void __launch_bounds__(kThreads) prm_layer2_kernel(const PrmHeadParams p,
                                                               const TX* x_base, bool gather) {
  const int lane = threadIdx.x & 31;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (r >= p.num_rows) return;
  const int64_t n = p.inner_size;
  bool valid = true;
  const TX* x = x_base + r * n;
  if (gather) {
    const int64_t row = p.rows[r];
    valid = valid_row(row, p.num_tokens);
    x = x_base + (valid ? row : 0) * p.hidden_stride;
  }
  const T* w = static_cast<const T*>(p.w2);
  const bool two = p.num_classes == 2;
  float a0 = 0.f, a1 = 0.f;
  if (valid) {
    for (int64_t i = lane; i < n; i += 32) {
      const float xv = to_float(x[i]);
      a0 = fmaf(to_float(w[i]), xv, a0);
      if (two) a1 = fmaf(to_float(w[n + i]), xv, a1);
    }
  }
  a0 = warp_sum(a0);
  a1 = warp_sum(a1);
  if (lane == 0) {
    const T* b = static_cast<const T*>(p.b2);
    if (b != nullptr) {
      a0 += to_float(b[0]);
      if (two) a1 += to_float(b[1]);
    }
    const float z = two ? a1 - a0 : a0;  // softmax([l0, l1])[1] == sigmoid(l1 - l0)
    p.out[r] = valid ? 1.f / (1.f + expf(-z)) : NAN;
  }
}

template <typename T>
void launch(const PrmHeadParams& p, cudaStream_t s) {
  const auto row_blocks =
      static_cast<unsigned>((p.num_rows + kWarpsPerBlock - 1) / kWarpsPerBlock);
  if (p.w1 == nullptr) {
    prm_layer2_kernel<T, T><<<row_blocks, kThreads, 0, s>>>(p, static_cast<const T*>(p.hidden),
                                                            true);
    return;
  }
  if (p.inner_size > 0) {
    const dim3 grid(static_cast<unsigned>((p.num_rows + kRowsPerWarp - 1) / kRowsPerWarp),
                    static_cast<unsigned>((p.inner_size + kWarpsPerBlock - 1) / kWarpsPerBlock));
    prm_layer1_kernel<T><<<grid, kThreads, 0, s>>>(p);
  }
  prm_layer2_kernel<T, float><<<row_blocks, kThreads, 0, s>>>(p, p.workspace, false);
}

}  // namespace

Status prm_head(const PrmHeadParams& p, int device, void* stream) {
  if (p.num_classes != 1 && p.num_classes != 2)
    return Status::error("prm_head: num_classes must be 1 or 2");
  if (p.num_rows == 0) return Status::success();
  if (p.w1 != nullptr && p.workspace == nullptr)
    return Status::error("prm_head: the first layer needs a workspace");
  if ((p.inner_size + kWarpsPerBlock - 1) / kWarpsPerBlock > kMaxGridY)
    return Status::error("prm_head: inner_size is above the launch limit (524280)");
  if ((p.num_rows + kRowsPerWarp - 1) / kRowsPerWarp > INT_MAX)
    return Status::error("prm_head: too many rows for one launch");
  DeviceGuard guard(device);
  auto s = static_cast<cudaStream_t>(stream);
  switch (p.dtype) {
    case DType::kFloat32: launch<float>(p, s); break;
    case DType::kBFloat16: launch<__nv_bfloat16>(p, s); break;
    case DType::kFloat16: launch<__half>(p, s); break;
  }
  return last_status();
}

}  // namespace ponder::cuda
