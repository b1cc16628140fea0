// CPU paged attention: one task per (sequence, KV head, tile of query tokens).
//
// All query heads that share a KV head are processed together, so each K/V row is read from
// memory once per group instead of once per query head. Keys are visited one block at a time
// with an fp32 online softmax (running max, running sum, rescaled accumulator), so no buffer
// grows with the context. The hot loop is compiled for AVX-512 and AVX2 and picked at run time.
#include "ponder/paged_attention.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace ponder::cpu {
namespace {

constexpr int64_t kQueryTile = 16;  // query tokens per task in extend (prefill) mode
constexpr int64_t kMaxBlockSize = 256;

struct Scratch {
  std::vector<float> q;    // [rows, head_dim], pre-scaled
  std::vector<float> acc;  // [rows, head_dim]
  std::vector<float> kv;   // [block_size, head_dim] fp32 copy of a K or V block (half types)
  std::vector<float> s;    // [rows, block_size]
  std::vector<float> m, l; // [rows]
};

Scratch& scratch() {
  // Grows to the largest shape seen and is then reused: no allocation per call.
  thread_local Scratch s;
  return s;
}

template <typename T>
__attribute__((always_inline)) inline void load_row(const T* src, float* dst, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dst[i] = to_f32(src[i]);
}

// Rows r = (query token i, head g): token i of the tile at absolute position pos0 + i attends
// keys [0, pos0 + i]. Rows are ordered token-major: r = i * group + g.
template <typename T>
__attribute__((always_inline)) inline void attend_tile(const PagedAttentionParams& p,
                                                       int64_t seq, int64_t kv_head,
                                                       int64_t first_token, int64_t pos0,
                                                       int64_t tile_len) {
  const int64_t hd = p.head_dim;
  const int64_t bs = p.block_size;
  const int64_t group = p.num_heads / p.num_kv_heads;
  const int64_t rows = tile_len * group;
  const int64_t row_stride = p.num_kv_heads * hd;  // between consecutive tokens of one head
  Scratch& sc = scratch();
  if (static_cast<int64_t>(sc.q.size()) < rows * hd) {
    sc.q.resize(rows * hd);
    sc.acc.resize(rows * hd);
  }
  if (static_cast<int64_t>(sc.s.size()) < rows * bs) sc.s.resize(rows * bs);
  if (static_cast<int64_t>(sc.kv.size()) < bs * hd) sc.kv.resize(bs * hd);
  if (static_cast<int64_t>(sc.m.size()) < rows) {
    sc.m.resize(rows);
    sc.l.resize(rows);
  }
  float* q = sc.q.data();
  float* acc = sc.acc.data();
  float* s = sc.s.data();
  float* m = sc.m.data();
  float* l = sc.l.data();

  const T* query = static_cast<const T*>(p.query);
  for (int64_t i = 0; i < tile_len; ++i) {
    for (int64_t g = 0; g < group; ++g) {
      const T* src = query + ((first_token + i) * p.num_heads + kv_head * group + g) * hd;
      float* dst = q + (i * group + g) * hd;
#pragma omp simd
      for (int64_t d = 0; d < hd; ++d) dst[d] = to_f32(src[d]) * p.scale;
    }
  }
  std::fill(acc, acc + rows * hd, 0.0f);
  std::fill(m, m + rows, -std::numeric_limits<float>::infinity());
  std::fill(l, l + rows, 0.0f);

  const int32_t* table = p.block_tables + seq * p.max_blocks_per_seq;
  const int64_t last_pos = pos0 + tile_len - 1;
  const int64_t num_kv_blocks = last_pos / bs + 1;
  const T* k_cache = static_cast<const T*>(p.k_cache);
  const T* v_cache = static_cast<const T*>(p.v_cache);
  constexpr bool kIsF32 = sizeof(T) == 4;

  for (int64_t j = 0; j < num_kv_blocks; ++j) {
    const int64_t key0 = j * bs;
    const int64_t n = std::min(bs, last_pos + 1 - key0);
    const int64_t block_offset = static_cast<int64_t>(table[j]) * bs * row_stride + kv_head * hd;
    const T* kb = k_cache + block_offset;
    const T* vb = v_cache + block_offset;

    // Scores s[r][t] = q[r] . k[t], keys the row may not see set to -inf.
    for (int64_t t = 0; t < n; ++t) {
      const float* krow;
      if constexpr (kIsF32) {
        krow = reinterpret_cast<const float*>(kb + t * row_stride);
      } else {
        load_row(kb + t * row_stride, sc.kv.data(), hd);
        krow = sc.kv.data();
      }
      for (int64_t r = 0; r < rows; ++r) {
        const float* qr = q + r * hd;
        float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
        for (int64_t d = 0; d < hd; ++d) dot += qr[d] * krow[d];
        s[r * bs + t] = dot;
      }
    }
    const bool needs_mask = key0 + n - 1 > pos0;
    for (int64_t r = 0; r < rows; ++r) {
      float* sr = s + r * bs;
      const int64_t visible =
          needs_mask ? std::max<int64_t>(0, std::min(n, pos0 + r / group + 1 - key0)) : n;
      float block_max = -std::numeric_limits<float>::infinity();
      for (int64_t t = 0; t < visible; ++t) block_max = std::max(block_max, sr[t]);
      const float m_new = std::max(m[r], block_max);
      // A row whose keys in this block are all masked keeps its state (visible == 0).
      const float alpha = visible > 0 ? std::exp(m[r] - m_new) : 1.0f;
      float sum = 0.0f;
      for (int64_t t = 0; t < visible; ++t) {
        const float e = std::exp(sr[t] - m_new);
        sr[t] = e;
        sum += e;
      }
      for (int64_t t = visible; t < n; ++t) sr[t] = 0.0f;
      if (visible > 0) {
        m[r] = m_new;
        l[r] = l[r] * alpha + sum;
        if (alpha != 1.0f) {
          float* ar = acc + r * hd;
#pragma omp simd
          for (int64_t d = 0; d < hd; ++d) ar[d] *= alpha;
        }
      }
    }
    // acc[r] += sum_t p[r][t] * v[t]
    for (int64_t t = 0; t < n; ++t) {
      const float* vrow;
      if constexpr (kIsF32) {
        vrow = reinterpret_cast<const float*>(vb + t * row_stride);
      } else {
        load_row(vb + t * row_stride, sc.kv.data(), hd);
        vrow = sc.kv.data();
      }
      for (int64_t r = 0; r < rows; ++r) {
        const float pr = s[r * bs + t];
        if (pr == 0.0f) continue;
        float* ar = acc + r * hd;
#pragma omp simd
        for (int64_t d = 0; d < hd; ++d) ar[d] += pr * vrow[d];
      }
    }
  }

  T* out = static_cast<T*>(p.out);
  for (int64_t i = 0; i < tile_len; ++i) {
    for (int64_t g = 0; g < group; ++g) {
      const int64_t r = i * group + g;
      const float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
      T* dst = out + ((first_token + i) * p.num_heads + kv_head * group + g) * hd;
      const float* ar = acc + r * hd;
#pragma omp simd
      for (int64_t d = 0; d < hd; ++d) dst[d] = from_f32<T>(ar[d] * inv);
    }
  }
}

#define PONDER_AVX512 "avx512f,avx512bw,avx512vl,avx512dq,avx512fp16,avx2,fma,f16c,prefer-vector-width=512"
#define PONDER_AVX2 "avx2,fma,f16c"

template <typename T>
__attribute__((target(PONDER_AVX512))) void attend_avx512(const PagedAttentionParams& p,
                                                          int64_t seq, int64_t kv_head,
                                                          int64_t first, int64_t pos0,
                                                          int64_t len) {
  attend_tile<T>(p, seq, kv_head, first, pos0, len);
}

template <typename T>
__attribute__((target(PONDER_AVX2))) void attend_avx2(const PagedAttentionParams& p, int64_t seq,
                                                      int64_t kv_head, int64_t first,
                                                      int64_t pos0, int64_t len) {
  attend_tile<T>(p, seq, kv_head, first, pos0, len);
}

template <typename T>
void attend_generic(const PagedAttentionParams& p, int64_t seq, int64_t kv_head, int64_t first,
                    int64_t pos0, int64_t len) {
  attend_tile<T>(p, seq, kv_head, first, pos0, len);
}

enum class Isa { kGeneric, kAvx2, kAvx512 };

Isa detect_isa() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512fp16"))
    return Isa::kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
      __builtin_cpu_supports("f16c"))
    return Isa::kAvx2;
  return Isa::kGeneric;
}

template <typename T>
void run(const PagedAttentionParams& p) {
  static const Isa isa = detect_isa();
  auto* attend = isa == Isa::kAvx512 ? &attend_avx512<T>
                 : isa == Isa::kAvx2 ? &attend_avx2<T>
                                     : &attend_generic<T>;
  const int64_t tiles_per_seq = p.cu_query_lens == nullptr
                                    ? 1
                                    : (p.max_query_len + kQueryTile - 1) / kQueryTile;
  const int64_t num_tasks = p.batch * p.num_kv_heads * tiles_per_seq;
  // Tiles past a sequence's q_len are empty tasks; dynamic scheduling absorbs them.
#pragma omp parallel for schedule(dynamic, 1) if (num_tasks > 1)
  for (int64_t task = 0; task < num_tasks; ++task) {
    const int64_t tile = task % tiles_per_seq;
    const int64_t kv_head = (task / tiles_per_seq) % p.num_kv_heads;
    const int64_t seq = task / (tiles_per_seq * p.num_kv_heads);
    int64_t first_token = seq, q_len = 1;
    if (p.cu_query_lens != nullptr) {
      first_token = p.cu_query_lens[seq];
      q_len = p.cu_query_lens[seq + 1] - first_token;
    }
    const int64_t begin = tile * kQueryTile;
    if (begin >= q_len) continue;
    const int64_t len = std::min(kQueryTile, q_len - begin);
    const int64_t pos0 = p.seq_lens[seq] - q_len + begin;
    attend(p, seq, kv_head, first_token + begin, pos0, len);
  }
}

}  // namespace

Status paged_attention(const PagedAttentionParams& p) {
  if (p.block_size > kMaxBlockSize) return Status::error("block_size must be at most 256");
  switch (p.dtype) {
    case DType::kFloat32: run<float>(p); break;
    case DType::kBFloat16: run<bf16>(p); break;
    case DType::kFloat16: run<_Float16>(p); break;
  }
  return Status::success();
}

}  // namespace ponder::cpu
