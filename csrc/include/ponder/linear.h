// linear: out = x @ weight^T + bias for the few rows of a decode step (memory-bound GEMV).
#pragma once

#include "ponder/common.h"

namespace ponder {

struct LinearParams {
  const void* x;       // [m, k]
  const void* weight;  // [n, k]
  const void* bias;    // [n] or nullptr
  void* out;           // [m, n]
  int64_t m, n, k;
  DType dtype;         // of every tensor
};

namespace cpu {
// Tokens of the fused CPU decode step (decode_layers); linear itself takes any number of rows.
constexpr int64_t kLinearMaxRows = 16;
// use_bf16_dot: bf16 inputs go through avx512_bf16's dot product where the CPU has it (false:
// widen to fp32 and FMA, the only path before; tests compare the two).
Status linear(const LinearParams& params, bool use_bf16_dot = true);
// Whether this CPU runs the avx512_bf16 dot-product path.
bool linear_has_bf16_dot();
}

}  // namespace ponder
