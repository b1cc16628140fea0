// CUDA copy_blocks: one launch per layer; block (pair, K or V) copies one KV block.
#include "common.cuh"
#include "ponder/copy_blocks.h"

namespace ponder::cuda {
namespace {

template <typename Word>
__global__ void copy_blocks_kernel(Word* __restrict__ k_cache, Word* __restrict__ v_cache,
                                   const int64_t* __restrict__ src, const int64_t* __restrict__ dst,
                                   int64_t block_words, int64_t num_blocks) {
  const int64_t pair = blockIdx.x;
  Word* cache = blockIdx.y == 0 ? k_cache : v_cache;
  const int64_t s = src[pair], d = dst[pair];
  if (s < 0 || s >= num_blocks || d < 0 || d >= num_blocks) return;
  const Word* from = cache + s * block_words;
  Word* to = cache + d * block_words;
  for (int64_t i = threadIdx.x; i < block_words; i += blockDim.x) to[i] = from[i];
}

}  // namespace

Status copy_blocks(const CopyBlocksParams& p, int device, void* stream) {
  if (p.num_pairs == 0) return Status::success();
  DeviceGuard guard(device);
  auto s = static_cast<cudaStream_t>(stream);
  const dim3 grid(static_cast<unsigned>(p.num_pairs), 2);
  for (int64_t layer = 0; layer < p.num_layers; ++layer) {
    const bool wide = p.block_bytes % 16 == 0 &&
                      (reinterpret_cast<uintptr_t>(p.k_caches[layer]) |
                       reinterpret_cast<uintptr_t>(p.v_caches[layer])) % 16 == 0;
    if (wide) {
      copy_blocks_kernel<uint4><<<grid, 256, 0, s>>>(static_cast<uint4*>(p.k_caches[layer]),
                                                     static_cast<uint4*>(p.v_caches[layer]), p.src,
                                                     p.dst, p.block_bytes / 16, p.num_blocks);
    } else {
      copy_blocks_kernel<uint16_t><<<grid, 256, 0, s>>>(
          static_cast<uint16_t*>(p.k_caches[layer]), static_cast<uint16_t*>(p.v_caches[layer]),
          p.src, p.dst, p.block_bytes / 2, p.num_blocks);
    }
  }
  return last_status();
}

}  // namespace ponder::cuda
