// Small fused per-token ops of a decoder layer: RMSNorm (with the residual add), rotary
// embedding, SiLU-and-multiply. Each replaces several torch calls; numerics follow
// transformers (fp32 math, rounding to the tensor dtype where transformers rounds).
#pragma once

#include "ponder/common.h"

namespace ponder {

struct RmsNormParams {
  const void* x;        // [num_tokens, hidden]
  void* residual;       // [num_tokens, hidden] or nullptr; if set: residual += x, normalize that
  const void* weight;   // [hidden]
  void* out;            // [num_tokens, hidden]
  int64_t num_tokens, hidden;
  float eps;
  DType dtype;
};

struct RotaryParams {
  void* q;                  // [num_tokens, num_heads, head_dim], rotated in place
  void* k;                  // [num_tokens, num_kv_heads, head_dim], rotated in place
  const void* cos;          // [max_positions, head_dim]
  const void* sin;          // [max_positions, head_dim]
  const int64_t* positions; // [num_tokens]
  int64_t num_tokens, num_heads, num_kv_heads, head_dim, max_positions;
  DType dtype;
};

struct SiluMulParams {
  const void* gate_up;  // [num_tokens, 2 * inter]: gate then up
  void* out;            // [num_tokens, inter]
  int64_t num_tokens, inter;
  DType dtype;
};

namespace cpu {
Status rms_norm(const RmsNormParams& params);
Status rotary(const RotaryParams& params);
Status silu_and_mul(const SiluMulParams& params);
}  // namespace cpu

}  // namespace ponder
