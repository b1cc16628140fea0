// decode_layers: a whole stack of Llama-family decoder layers for the few tokens of a decode
// step, in one call: per layer RMSNorm (+ residual), qkv projection, optional q/k RMSNorm,
// rotary, KV append, paged attention, o projection, RMSNorm (+ residual), gate/up projection,
// SiLU-and-mul, down projection; then the final RMSNorm. It runs the same CPU kernels as the
// per-op path in the same order, so its results are bitwise those of the per-op path.
#pragma once

#include "ponder/common.h"

namespace ponder {

struct DecoderLayerWeights {
  const void* input_norm;    // [hidden]
  const void* qkv;           // [(num_heads + 2 * num_kv_heads) * head_dim, hidden]: q, k, v rows
  const void* qkv_bias;      // [(num_heads + 2 * num_kv_heads) * head_dim] or nullptr
  const void* q_norm;        // [head_dim] or nullptr (per-head RMSNorm of q, Qwen3)
  const void* k_norm;        // [head_dim] or nullptr, set exactly when q_norm is
  const void* o;             // [hidden, num_heads * head_dim]
  const void* o_bias;        // [hidden] or nullptr
  const void* post_norm;     // [hidden]
  const void* gate_up;       // [2 * inter, hidden]: gate rows, then up rows
  const void* gate_up_bias;  // [2 * inter] or nullptr
  const void* down;          // [hidden, inter]
  const void* down_bias;     // [hidden] or nullptr
  void* k_cache;             // [num_blocks, block_size, num_kv_heads, head_dim]
  void* v_cache;
};

struct DecodeLayersParams {
  const DecoderLayerWeights* layers;  // [num_layers]
  int64_t num_layers;
  const void* final_norm;       // [hidden]
  const void* x;                // [num_tokens, hidden]: the token embeddings
  void* out;                    // [num_tokens, hidden]: the final-norm hidden states
  int64_t num_tokens;           // one query token per sequence, at most kLinearMaxRows
  int64_t hidden, num_heads, num_kv_heads, head_dim, inter;
  float eps;                    // RMSNorm epsilon of every norm
  float scale;                  // softmax scale
  const void* cos;              // [max_positions, head_dim]
  const void* sin;
  int64_t max_positions;
  const int64_t* positions;     // [num_tokens]
  const int64_t* slot_mapping;  // [num_tokens]: the KV slot of each token (-1: not written)
  const int32_t* block_tables;  // [num_tokens, max_blocks_per_seq]
  const int32_t* seq_lens;      // [num_tokens]; new tokens included
  int64_t num_blocks, block_size, max_blocks_per_seq;
  DType dtype;
};

namespace cpu {
Status decode_layers(const DecodeLayersParams& params);
}

}  // namespace ponder
