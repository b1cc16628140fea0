// sample: one token per row of logits, with temperature, top-k, top-p and min-p, drawn from a
// counter-based RNG keyed by (seed, seq_id, position), plus raw log-probabilities.
//
// Semantics (HF transformers' warper order: temperature, top-k, top-p, min-p), per row:
//   temperature == 0: greedy, the first index of the largest logit (like torch.argmax).
//   x = logit * (1 / temperature), e = exp(x - max x).
//   top-k (0 < k < vocab): keep x >= the k-th largest x. Ties at the threshold are all kept, so
//     more than k tokens may survive (HF's `scores < topk(...)[-1]` does the same).
//   top-p (< 1): among top-k survivors with mass Z, keep token i iff the mass of survivors with
//     x strictly greater than x_i is < top_p * Z (at least the most probable token; equal x
//     are kept or dropped together, so the result never depends on a sort order).
//   min-p (> 0): keep e >= min_p (e of the most probable token is exactly 1).
//   Draw: u = philox_uniform(seed, seq_id, position); the token is the first index, in vocab
//     order, whose running sum of kept e exceeds u * (sum of kept e).
// logprob is log_softmax of the raw logits (before temperature and filters) at the token;
// top_ids/top_logprobs are the num_logprobs largest raw log-probs, descending, ties to the lower
// index. CPU and CUDA compute the same thresholds and the same u; they differ only by float
// rounding of sums and exp, which moves a token only when u falls within rounding of a boundary.
// Logits must be finite or -inf, with at least one finite value per row.
#pragma once

#include <cstring>

#include "ponder/common.h"
#include "ponder/philox.h"

namespace ponder {

struct SampleParams {
  const void* logits;         // [num_rows, vocab], dtype
  const float* temperature;   // [num_rows], >= 0; 0 = greedy
  const int32_t* top_k;       // [num_rows]; <= 0 or >= vocab disables
  const float* top_p;         // [num_rows], in (0, 1]; 1 disables
  const float* min_p;         // [num_rows], in [0, 1]; 0 disables
  const int64_t* seeds;       // [num_rows]
  const int64_t* seq_ids;     // [num_rows]
  const int64_t* positions;   // [num_rows]
  int64_t* tokens;            // [num_rows] out
  float* logprobs;            // [num_rows] out
  int64_t* top_ids;           // [num_rows, num_logprobs] out
  float* top_logprobs;        // [num_rows, num_logprobs] out
  int64_t num_rows;
  int64_t vocab;              // < 2^31
  int64_t num_logprobs;       // in [0, vocab]
  DType dtype;
};

// Orders floats like their values, with -0 == +0, so the CUDA kernel can bisect thresholds
// over 32-bit keys and land on exactly the values the CPU kernel compares.
PONDER_HOST_DEVICE uint32_t float_key(float x) {
  uint32_t bits;
  memcpy(&bits, &x, sizeof(bits));
  if (bits == 0x80000000u) bits = 0;
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

namespace cpu {
Status sample(const SampleParams& params);
}
namespace cuda {
Status sample(const SampleParams& params, int device, void* stream);
}

}  // namespace ponder
