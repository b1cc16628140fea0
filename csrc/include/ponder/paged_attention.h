// paged_attention: causal attention of packed query tokens over a paged KV cache.
#pragma once

#include "ponder/common.h"

namespace ponder {

// The largest KV block (tokens per block) the attention kernels take.
constexpr int64_t kPagedAttentionMaxBlockSize = 256;

struct PagedAttentionParams {
  const void* query;            // [num_tokens, num_heads, head_dim]
  void* out;                    // [num_tokens, num_heads, head_dim]
  const void* k_cache;          // [num_blocks, block_size, num_kv_heads, head_dim]
  const void* v_cache;          // [num_blocks, block_size, num_kv_heads, head_dim]
  const int32_t* block_tables;  // [batch, max_blocks_per_seq]
  const int32_t* seq_lens;      // [batch]; total length including the new tokens
  const int32_t* cu_query_lens; // [batch + 1] or nullptr (decode: one query per sequence)
  int64_t num_tokens;
  int64_t batch;
  int64_t num_heads;
  int64_t num_kv_heads;
  int64_t head_dim;
  int64_t block_size;
  int64_t max_blocks_per_seq;
  int64_t max_query_len;        // the longest q_len in the batch (1 for decode)
  float scale;
  DType dtype;
  // CUDA only: scratch for split-KV partial results, see paged_attention_workspace_floats.
  float* workspace;
  int64_t num_splits;
};

namespace cpu {
Status paged_attention(const PagedAttentionParams& params);
}
namespace cuda {
// Query heads one thread block handles; a larger GQA group is split over several blocks.
constexpr int64_t kMaxHeadsPerBlock = 8;

// How many KV splits (flash-decoding) the kernel uses so that small batches still fill the
// device: enough blocks for ~2 waves, never a split shorter than 256 keys.
inline int64_t paged_attention_num_splits(int64_t num_tokens, int64_t num_heads,
                                          int64_t num_kv_heads, int64_t max_seq_len,
                                          int64_t num_sms) {
  if (num_kv_heads <= 0) return 1;
  const int64_t group = num_heads / num_kv_heads;
  const int64_t chunks = (group + kMaxHeadsPerBlock - 1) / kMaxHeadsPerBlock;
  const int64_t blocks = num_tokens * num_kv_heads * chunks;
  if (blocks <= 0) return 1;
  int64_t splits = (2 * num_sms + blocks - 1) / blocks;
  splits = splits < (max_seq_len + 255) / 256 ? splits : (max_seq_len + 255) / 256;
  splits = splits < 32 ? splits : 32;
  return splits > 1 ? splits : 1;
}

// Floats of scratch the split kernel needs: a partial output and a log-sum-exp per split.
inline int64_t paged_attention_workspace_floats(int64_t num_tokens, int64_t num_heads,
                                                int64_t head_dim, int64_t num_splits) {
  return num_splits > 1 ? num_tokens * num_heads * num_splits * (head_dim + 1) : 0;
}
Status paged_attention(const PagedAttentionParams& params, int device, void* stream);
}

}  // namespace ponder
