// CUDA paged_kv_append: one thread block per token copies its K and V rows in 16-byte words
// when the row allows it, else in 2-byte words.
#include "common.cuh"
#include "ponder/paged_kv_append.h"

namespace ponder::cuda {
namespace {

template <typename Word>
__global__ void paged_kv_append_kernel(const Word* __restrict__ key, const Word* __restrict__ value,
                                       Word* __restrict__ k_cache, Word* __restrict__ v_cache,
                                       const int64_t* __restrict__ slot_mapping,
                                       int64_t row_words, int64_t num_slots) {
  const int64_t token = blockIdx.x;
  const int64_t slot = slot_mapping[token];
  if (slot < 0 || slot >= num_slots) return;
  const Word* k_src = key + token * row_words;
  const Word* v_src = value + token * row_words;
  Word* k_dst = k_cache + slot * row_words;
  Word* v_dst = v_cache + slot * row_words;
  for (int64_t i = threadIdx.x; i < row_words; i += blockDim.x) {
    k_dst[i] = k_src[i];
    v_dst[i] = v_src[i];
  }
}

}  // namespace

Status paged_kv_append(const PagedKvAppendParams& p, int device, void* stream) {
  if (p.num_tokens == 0) return Status::success();
  DeviceGuard guard(device);
  const int64_t row_bytes = p.row_elems * dtype_size(p.dtype);
  auto s = static_cast<cudaStream_t>(stream);
  const bool wide = row_bytes % 16 == 0 &&
                    (reinterpret_cast<uintptr_t>(p.key) | reinterpret_cast<uintptr_t>(p.value) |
                     reinterpret_cast<uintptr_t>(p.k_cache) | reinterpret_cast<uintptr_t>(p.v_cache)) % 16 == 0;
  const dim3 grid(static_cast<unsigned>(p.num_tokens));
  if (wide) {
    const int64_t words = row_bytes / 16;
    const int threads = words >= 128 ? 128 : (words >= 32 ? 32 * static_cast<int>((words + 31) / 32) : 32);
    paged_kv_append_kernel<uint4><<<grid, threads, 0, s>>>(
        static_cast<const uint4*>(p.key), static_cast<const uint4*>(p.value),
        static_cast<uint4*>(p.k_cache), static_cast<uint4*>(p.v_cache), p.slot_mapping, words,
        p.num_slots);
  } else {
    paged_kv_append_kernel<uint16_t><<<grid, 128, 0, s>>>(
        static_cast<const uint16_t*>(p.key), static_cast<const uint16_t*>(p.value),
        static_cast<uint16_t*>(p.k_cache), static_cast<uint16_t*>(p.v_cache), p.slot_mapping,
        row_bytes / 2, p.num_slots);
  }
  return last_status();
}

}  // namespace ponder::cuda
