// CPU copy_blocks: one memcpy per (layer, K or V, pair).
#include "ponder/copy_blocks.h"

#include <cstring>

namespace ponder::cpu {

Status copy_blocks(const CopyBlocksParams& p) {
  const int64_t num_jobs = p.num_layers * 2 * p.num_pairs;
#pragma omp parallel for schedule(static) if (num_jobs * p.block_bytes > (1 << 20))
  for (int64_t job = 0; job < num_jobs; ++job) {
    const int64_t pair = job % p.num_pairs;
    const int64_t which = (job / p.num_pairs) % 2;
    const int64_t layer = job / (2 * p.num_pairs);
    char* base = static_cast<char*>(which == 0 ? p.k_caches[layer] : p.v_caches[layer]);
    std::memcpy(base + p.dst[pair] * p.block_bytes, base + p.src[pair] * p.block_bytes,
                p.block_bytes);
  }
  return Status::success();
}

}  // namespace ponder::cpu
