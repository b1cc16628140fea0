// prm_head: the score a process reward model gives selected token rows of a packed forward.
//
// Per row r, with x = hidden[rows[r]] (the final-norm output at that token):
//   h = relu(x @ w1^T + b1) when w1 is given (Qwen2.5-Math-PRM's score head: Linear(H, H),
//       ReLU, Linear(H, 2)); h = x otherwise (a value head straight on the hidden state).
//   logits = h @ w2^T + b2, with num_classes = w2.shape[0] in {1, 2}.
//   out[r] = sigmoid(logits[0]) for one class (Skywork's value head);
//            softmax(logits)[1] = sigmoid(logits[1] - logits[0]) for two (Qwen's PRM, or the two
//            LM-head rows [negative, positive] of a generative PRM).
// Every product is accumulated in fp32, and h stays fp32 between the layers: a bf16 module in
// transformers rounds h to bf16 there, so scores differ from it by that rounding, and agree with
// the same module run in fp32 on the same (widened) weights.
#pragma once

#include "ponder/common.h"

namespace ponder {

struct PrmHeadParams {
  const void* hidden;     // [num_tokens, hidden_size], rows hidden_stride elements apart
  const int64_t* rows;    // [num_rows], each in [0, num_tokens); may repeat
  const void* w1;         // [inner_size, hidden_size] or nullptr (then inner_size == hidden_size)
  const void* b1;         // [inner_size] or nullptr; only with w1
  const void* w2;         // [num_classes, inner_size]
  const void* b2;         // [num_classes] or nullptr
  float* out;             // [num_rows]
  float* workspace;       // CUDA with w1: [num_rows, inner_size] for h; unused otherwise
  int64_t num_tokens, num_rows, hidden_size, hidden_stride, inner_size, num_classes;
  DType dtype;            // of hidden and every weight and bias
};

namespace cpu {
// simd = false runs the portable loops; bf16_dot = false widens bf16 to fp32 instead of using
// avx512_bf16's dot product. Both exist so that tests cover every path this CPU can take.
Status prm_head(const PrmHeadParams& params, bool simd = true, bool bf16_dot = true);
}  // namespace cpu
namespace cuda {
// params.workspace is required when params.w1 is set.
Status prm_head(const PrmHeadParams& params, int device, void* stream);
}  // namespace cuda

}  // namespace ponder
