// CPU decode through the whole decoder stack in one call. A decode step of a 135M model runs
// ~12 small kernels per layer; called one by one from Python, the calls, output allocations
// and views cost more than a third of the step. Here the same kernels run back to back on
// scratch buffers that are reused across calls, so the results are bitwise the per-op path's.
#include "ponder/decode_layers.h"

#include <cstring>
#include <vector>

#include "ponder/layer_ops.h"
#include "ponder/linear.h"
#include "ponder/paged_attention.h"
#include "ponder/paged_kv_append.h"

namespace ponder::cpu {
namespace {

// Scratch of the largest shape seen, reused: no allocation per call once warm.
char* scratch(int64_t bytes) {
  thread_local std::vector<char> buf;
  if (static_cast<int64_t>(buf.size()) < bytes) buf.resize(bytes);
  return buf.data();
}

}  // namespace

Status decode_layers(const DecodeLayersParams& p) {
  if (p.num_tokens > kLinearMaxRows) return Status::error("decode_layers: at most 16 tokens");
  if (p.num_tokens == 0) return Status::success();
  const int64_t m = p.num_tokens, h = p.hidden, d = p.head_dim;
  const int64_t q_size = p.num_heads * d, kv_size = p.num_kv_heads * d;
  const int64_t qkv_size = q_size + 2 * kv_size;
  const int64_t es = dtype_size(p.dtype);
  // Buffers, in elements of the model dtype, each [m, width].
  const int64_t widths[] = {h, h, h, qkv_size, q_size, q_size, kv_size, kv_size, q_size,
                            2 * p.inter, p.inter};
  int64_t total = 0;
  for (int64_t w : widths) total += m * w * es;
  char* base = scratch(total);
  void* bufs[11];
  for (int i = 0; i < 11; ++i) {
    bufs[i] = base;
    base += m * widths[i] * es;
  }
  void *residual = bufs[0], *normed = bufs[1], *y = bufs[2], *qkv = bufs[3], *q = bufs[4],
       *q_normed = bufs[5], *k = bufs[6], *v = bufs[7], *attn = bufs[8], *gate_up = bufs[9],
       *act = bufs[10];

#define PONDER_RUN(call) \
  if (const Status s = (call); !s.ok()) return s;
  std::memcpy(residual, p.x, m * h * es);
  for (int64_t l = 0; l < p.num_layers; ++l) {
    const DecoderLayerWeights& w = p.layers[l];
    // Layer 0 normalizes the embeddings; later layers first add the previous MLP output.
    PONDER_RUN(rms_norm({l == 0 ? residual : y, l == 0 ? nullptr : residual, w.input_norm,
                         normed, m, h, p.eps, p.dtype}));
    PONDER_RUN(linear({normed, w.qkv, w.qkv_bias, qkv, m, qkv_size, h, p.dtype}));
    for (int64_t t = 0; t < m; ++t) {  // split q | k | v into contiguous tensors
      const char* row = static_cast<const char*>(qkv) + t * qkv_size * es;
      std::memcpy(static_cast<char*>(q) + t * q_size * es, row, q_size * es);
      std::memcpy(static_cast<char*>(k) + t * kv_size * es, row + q_size * es, kv_size * es);
      std::memcpy(static_cast<char*>(v) + t * kv_size * es, row + (q_size + kv_size) * es,
                  kv_size * es);
    }
    void* q_rot = q;
    if (w.q_norm != nullptr) {
      PONDER_RUN(rms_norm({q, nullptr, w.q_norm, q_normed, m * p.num_heads, d, p.eps, p.dtype}));
      // k is normalized in place: each output element depends only on its own input element
      // and the row's sum, which is complete before the first write.
      PONDER_RUN(rms_norm({k, nullptr, w.k_norm, k, m * p.num_kv_heads, d, p.eps, p.dtype}));
      q_rot = q_normed;
    }
    PONDER_RUN(rotary({q_rot, k, p.cos, p.sin, p.positions, m, p.num_heads, p.num_kv_heads, d,
                       p.max_positions, p.dtype}));
    PONDER_RUN(paged_kv_append({k, v, w.k_cache, w.v_cache, p.slot_mapping, m, kv_size,
                                p.num_blocks * p.block_size, p.dtype}));
    PagedAttentionParams ap{};
    ap.query = q_rot;
    ap.out = attn;
    ap.k_cache = w.k_cache;
    ap.v_cache = w.v_cache;
    ap.block_tables = p.block_tables;
    ap.seq_lens = p.seq_lens;
    ap.cu_query_lens = nullptr;
    ap.num_tokens = m;
    ap.batch = m;
    ap.num_heads = p.num_heads;
    ap.num_kv_heads = p.num_kv_heads;
    ap.head_dim = d;
    ap.block_size = p.block_size;
    ap.max_blocks_per_seq = p.max_blocks_per_seq;
    ap.max_query_len = 1;
    ap.scale = p.scale;
    ap.dtype = p.dtype;
    ap.num_splits = 1;
    PONDER_RUN(paged_attention(ap));
    PONDER_RUN(linear({attn, w.o, w.o_bias, y, m, h, q_size, p.dtype}));
    PONDER_RUN(rms_norm({y, residual, w.post_norm, normed, m, h, p.eps, p.dtype}));
    PONDER_RUN(linear({normed, w.gate_up, w.gate_up_bias, gate_up, m, 2 * p.inter, h, p.dtype}));
    PONDER_RUN(silu_and_mul({gate_up, act, m, p.inter, p.dtype}));
    PONDER_RUN(linear({act, w.down, w.down_bias, y, m, h, p.inter, p.dtype}));
  }
  PONDER_RUN(rms_norm({p.num_layers > 0 ? y : residual, p.num_layers > 0 ? residual : nullptr,
                       p.final_norm, p.out, m, h, p.eps, p.dtype}));
#undef PONDER_RUN
  return Status::success();
}

}  // namespace ponder::cpu
