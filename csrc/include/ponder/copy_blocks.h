// copy_blocks: copy whole KV blocks (copy-on-write of forked sequences) in every layer.
#pragma once

#include "ponder/common.h"

namespace ponder {

struct CopyBlocksParams {
  void* const* k_caches;  // num_layers pointers to [num_blocks, block_size, num_kv_heads, head_dim]
  void* const* v_caches;
  int64_t num_layers;
  const int64_t* src;     // [num_pairs]
  const int64_t* dst;     // [num_pairs]; distinct, and no dst is also a src
  int64_t num_pairs;
  int64_t block_bytes;    // block_size * num_kv_heads * head_dim * dtype size
  int64_t num_blocks;     // CUDA skips pairs outside [0, num_blocks)
};

namespace cpu {
Status copy_blocks(const CopyBlocksParams& params);
}
namespace cuda {
// src and dst are device pointers; the cache pointers are device pointers held in host memory.
Status copy_blocks(const CopyBlocksParams& params, int device, void* stream);
}

}  // namespace ponder
