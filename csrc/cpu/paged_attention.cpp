// CPU paged attention: one task per (sequence, tile of query tokens, KV heads).
//
// All query heads that share a KV head are processed together, so each K/V row is read from
// memory once per group instead of once per query head. With enough sequences a task takes
// every KV head of its sequence, so it streams whole contiguous blocks; with few it takes one
// KV head, so that the threads still have work. Keys are visited one block at a time
// with an fp32 online softmax (running max, running sum, rescaled accumulator), so no buffer
// grows with the context. The hot loop is compiled for AVX-512 and AVX2 and picked at run time.
#include "ponder/paged_attention.h"

#include "ponder/cpu_math.h"

#include <omp.h>

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

namespace ponder::cpu {
namespace {

constexpr int64_t kQueryTile = 16;  // query tokens per task in extend (prefill) mode
constexpr int64_t kParallelMinBytes = 64 * 1024;  // K/V bytes read below which one thread runs
// Decode over a long context splits each sequence's keys into chunks of this many (rounded
// down to whole blocks), attended by separate tasks and merged by their log-sum-exp, so one
// long sequence keeps every thread busy. The split depends only on the sequence's own
// length, never on the batch, so a request's numbers do not depend on what runs beside it.
// (512 rather than 1024: SmolLM2's three KV-head tasks at batch 1 leave one of two threads
// idle a third of the time; two chunks at 1000 keys made its bf16 decode step ~10% faster.)
constexpr int64_t kSplitKeys = 512;

struct Scratch {
  std::vector<float> q;    // [rows, head_dim], pre-scaled
  std::vector<float> acc;  // [rows, head_dim]
  std::vector<float> kv;   // [2, block_size, head_dim]: a K and a V block in fp32 (half types)
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

// Widens a block's n K and V rows (one KV head, row_stride elements apart) of a
// half-precision cache to fp32 scratch: the portable path.
template <typename T>
struct WidenRows {
  void operator()(const T* k, const T* v, int64_t row_stride, int64_t n, int64_t hd,
                  float* k_wide, float* v_wide) const {
    for (int64_t t = 0; t < n; ++t) {
      load_row(k + t * row_stride, k_wide + t * hd, hd);
      load_row(v + t * row_stride, v_wide + t * hd, hd);
    }
  }
};

// The work of one task. Its rows are (KV head hh, query token i, query head g of the group),
// r = (hh * len + i) * group + g, so each KV head's rows are contiguous. Token i sits at
// absolute position pos0 + i and attends keys [0, pos0 + i].
struct Tile {
  int64_t seq, kv_begin, num_kv, first_token, pos0, len;
  int64_t key_end;  // keys [key_begin, key_end) only: one split (decode)
  int64_t key_begin = 0;
  float* partial = nullptr;  // split mode: [num_heads, head_dim + 2] of (acc, max, sum) here
};

struct TileState {
  int64_t rows, rows_per_head, group, hd, bs, row_stride;
  float *q, *acc, *s, *m, *l;
};

template <typename T>
__attribute__((always_inline)) inline TileState begin_tile(const PagedAttentionParams& p,
                                                           const Tile& tile) {
  TileState st;
  st.hd = p.head_dim;
  st.bs = p.block_size;
  st.group = p.num_heads / p.num_kv_heads;
  st.rows_per_head = tile.len * st.group;
  st.rows = tile.num_kv * st.rows_per_head;
  st.row_stride = p.num_kv_heads * st.hd;
  Scratch& sc = scratch();
  if (static_cast<int64_t>(sc.q.size()) < st.rows * st.hd) {
    sc.q.resize(st.rows * st.hd);
    sc.acc.resize(st.rows * st.hd);
  }
  if (static_cast<int64_t>(sc.s.size()) < st.rows * st.bs) sc.s.resize(st.rows * st.bs);
  if (static_cast<int64_t>(sc.kv.size()) < 2 * st.bs * st.hd) sc.kv.resize(2 * st.bs * st.hd);
  if (static_cast<int64_t>(sc.m.size()) < st.rows) {
    sc.m.resize(st.rows);
    sc.l.resize(st.rows);
  }
  st.q = sc.q.data();
  st.acc = sc.acc.data();
  st.s = sc.s.data();
  st.m = sc.m.data();
  st.l = sc.l.data();
  const T* query = static_cast<const T*>(p.query);
  for (int64_t hh = 0; hh < tile.num_kv; ++hh) {
    for (int64_t i = 0; i < tile.len; ++i) {
      const T* src = query + ((tile.first_token + i) * p.num_heads +
                              (tile.kv_begin + hh) * st.group) * st.hd;
      float* dst = st.q + (hh * tile.len + i) * st.group * st.hd;
#pragma omp simd
      for (int64_t d = 0; d < st.group * st.hd; ++d) dst[d] = to_f32(src[d]) * p.scale;
    }
  }
  std::fill(st.acc, st.acc + st.rows * st.hd, 0.0f);
  std::fill(st.m, st.m + st.rows, -std::numeric_limits<float>::infinity());
  std::fill(st.l, st.l + st.rows, 0.0f);
  return st;
}

template <typename T>
__attribute__((always_inline)) inline void end_tile(const PagedAttentionParams& p,
                                                    const Tile& tile, const TileState& st) {
  if (tile.partial != nullptr) {  // one split of a decode token: kept unnormalized for merging
    for (int64_t hh = 0; hh < tile.num_kv; ++hh) {
      for (int64_t g = 0; g < st.group; ++g) {
        const int64_t r = hh * st.group + g;
        float* dst = tile.partial + ((tile.kv_begin + hh) * st.group + g) * (st.hd + 2);
        std::copy(st.acc + r * st.hd, st.acc + (r + 1) * st.hd, dst);
        dst[st.hd] = st.m[r];
        dst[st.hd + 1] = st.l[r];
      }
    }
    return;
  }
  T* out = static_cast<T*>(p.out);
  for (int64_t hh = 0; hh < tile.num_kv; ++hh) {
    for (int64_t i = 0; i < tile.len; ++i) {
      for (int64_t g = 0; g < st.group; ++g) {
        const int64_t r = (hh * tile.len + i) * st.group + g;
        const float inv = st.l[r] > 0.0f ? 1.0f / st.l[r] : 0.0f;
        T* dst = out + ((tile.first_token + i) * p.num_heads +
                        (tile.kv_begin + hh) * st.group + g) * st.hd;
        const float* ar = st.acc + r * st.hd;
#pragma omp simd
        for (int64_t d = 0; d < st.hd; ++d) dst[d] = from_f32<T>(ar[d] * inv);
      }
    }
  }
}

// Keys of row r visible in the block [key0, key0 + n).
__attribute__((always_inline)) inline int64_t visible_keys(const Tile& tile, const TileState& st,
                                                           int64_t r, int64_t key0, int64_t n) {
  const int64_t i = (r / st.group) % tile.len;
  return std::max<int64_t>(0, std::min(n, tile.pos0 + i + 1 - key0));
}

// One KV block for the rows [r0, r1) of one KV head. kb/vb point at the block's first key
// for that head (fp32), consecutive keys kv_stride floats apart. Portable loops that the
// compiler vectorizes for whatever target the caller is built for.
__attribute__((always_inline)) inline void block_step(const Tile& tile, TileState& st,
                                                      const float* kb, const float* vb,
                                                      int64_t kv_stride, int64_t key0,
                                                      int64_t n, int64_t r0, int64_t r1) {
  const int64_t hd = st.hd, bs = st.bs;
  float *q = st.q, *acc = st.acc, *s = st.s, *m = st.m, *l = st.l;
  for (int64_t t = 0; t < n; ++t) {
    const float* krow = kb + t * kv_stride;
    for (int64_t r = r0; r < r1; ++r) {
      const float* qr = q + r * hd;
      float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
      for (int64_t d = 0; d < hd; ++d) dot += qr[d] * krow[d];
      s[r * bs + t] = dot;
    }
  }
  for (int64_t r = r0; r < r1; ++r) {
    float* sr = s + r * bs;
    const int64_t visible = visible_keys(tile, st, r, key0, n);
    float block_max = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : block_max)
    for (int64_t t = 0; t < visible; ++t) block_max = std::max(block_max, sr[t]);
    const float m_new = std::max(m[r], block_max);
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t t = 0; t < visible; ++t) {
      const float e = fast_exp(sr[t] - m_new);
      sr[t] = e;
      sum += e;
    }
    for (int64_t t = visible; t < n; ++t) sr[t] = 0.0f;
    if (visible == 0) continue;  // every key of this block is masked: the row keeps its state
    const float alpha = fast_exp(m[r] - m_new);
    m[r] = m_new;
    l[r] = l[r] * alpha + sum;
    if (alpha != 1.0f) {
      float* ar = acc + r * hd;
#pragma omp simd
      for (int64_t d = 0; d < hd; ++d) ar[d] *= alpha;
    }
  }
  for (int64_t t = 0; t < n; ++t) {
    const float* vrow = vb + t * kv_stride;
    for (int64_t r = r0; r < r1; ++r) {
      const float pr = s[r * bs + t];
      if (pr == 0.0f) continue;
      float* ar = acc + r * hd;
#pragma omp simd
      for (int64_t d = 0; d < hd; ++d) ar[d] += pr * vrow[d];
    }
  }
}

// Blocks are scattered and, at decode, cold: the last step streamed every layer's weights
// through the caches since this layer's K/V was read. Software prefetches of a block are no
// help on this machine: a block's worth of them retires in nanoseconds and leaves the block
// cold (the miss buffers fill and the rest are dropped). A tight loop of independent loads
// keeps every miss buffer busy instead, so each group of blocks is first touched this way and
// then computed from L1/L2. SmolLM2 bf16 decode step at 1000 keys, old and new alternated:
// -11% at batch 1, -25% at batch 16; greedy generation of 1024 tokens 80-87 -> 87-110 tok/s.
constexpr int64_t kTouchBytes = 128 * 1024;  // K/V bytes touched per group

// Touches the K and V rows [0, rows) of a block, KV heads [kv_begin, kv_begin + num_kv): every
// cache line they overlap, also where a head's span does not start on a line.
template <typename T>
__attribute__((always_inline)) inline void touch_block(const PagedAttentionParams& p,
                                                       const TileState& st, int32_t block,
                                                       int64_t rows, int64_t kv_begin,
                                                       int64_t num_kv) {
  const int64_t base = static_cast<int64_t>(block) * st.bs * st.row_stride + kv_begin * st.hd;
  const auto* k = reinterpret_cast<const char*>(static_cast<const T*>(p.k_cache) + base);
  const auto* v = reinterpret_cast<const char*>(static_cast<const T*>(p.v_cache) + base);
  const int64_t span = num_kv * st.hd * static_cast<int64_t>(sizeof(T));
  const int64_t stride = st.row_stride * static_cast<int64_t>(sizeof(T));
  const int64_t lead = reinterpret_cast<uintptr_t>(k) % 64;  // K and V share the layout
  unsigned sum = 0;
  for (int64_t t = 0; t < rows; ++t)
    for (int64_t off = -lead; off < span; off += 64) {
      const int64_t at = t * stride + std::max<int64_t>(off, 0);
      sum += *reinterpret_cast<const volatile unsigned char*>(k + at) +
             *reinterpret_cast<const volatile unsigned char*>(v + at);
    }
  asm volatile("" : : "r"(sum));  // the loads are the point; keep them
}

// Visits the tile's KV blocks in order and, within a block, its KV heads; half-precision
// K/V are widened to fp32 scratch once per (block, head). Step is block_step or an ISA
// specialization of it.
template <typename T, typename Step, typename Widen = WidenRows<T>>
__attribute__((always_inline)) inline void attend_blocks(const PagedAttentionParams& p,
                                                         const Tile& tile, Step step,
                                                         Widen widen = Widen()) {
  TileState st = begin_tile<T>(p, tile);
  const int64_t hd = st.hd, bs = st.bs, row_stride = st.row_stride;
  const int32_t* table = p.block_tables + tile.seq * p.max_blocks_per_seq;
  const int64_t last_pos = std::min(tile.pos0 + tile.len, tile.key_end) - 1;
  const T* k_cache = static_cast<const T*>(p.k_cache);
  const T* v_cache = static_cast<const T*>(p.v_cache);
  float* k_wide = scratch().kv.data();
  float* v_wide = k_wide + bs * hd;
  // Whole blocks, as many as fit kTouchBytes; a block larger than that (long blocks, many
  // heads) is touched one KV head at a time, just before the head is computed.
  const int64_t block_bytes = 2 * bs * tile.num_kv * hd * static_cast<int64_t>(sizeof(T));
  const bool per_head = block_bytes > kTouchBytes;
  const int64_t touch_group = std::max<int64_t>(1, kTouchBytes / block_bytes);
  int64_t touched = tile.key_begin / bs;  // blocks before this one have been touched
  for (int64_t j = tile.key_begin / bs; j <= last_pos / bs; ++j) {
    const int64_t key0 = j * bs;
    const int64_t n = std::min(bs, last_pos + 1 - key0);
    const int64_t block_base = static_cast<int64_t>(table[j]) * bs * row_stride;
    if (!per_head && j == touched) {
      for (const int64_t end = std::min(last_pos / bs + 1, j + touch_group); touched < end;
           ++touched)
        touch_block<T>(p, st, table[touched], std::min(bs, last_pos + 1 - touched * bs),
                       tile.kv_begin, tile.num_kv);
    }
    for (int64_t hh = 0; hh < tile.num_kv; ++hh) {
      if (per_head) touch_block<T>(p, st, table[j], n, tile.kv_begin + hh, 1);
      const int64_t offset = block_base + (tile.kv_begin + hh) * hd;
      const int64_t r0 = hh * st.rows_per_head, r1 = r0 + st.rows_per_head;
      if constexpr (sizeof(T) == 4) {
        step(tile, st, reinterpret_cast<const float*>(k_cache + offset),
             reinterpret_cast<const float*>(v_cache + offset), row_stride, key0, n, r0, r1);
      } else {
        widen(k_cache + offset, v_cache + offset, row_stride, n, hd, k_wide, v_wide);
        step(tile, st, k_wide, v_wide, hd, key0, n, r0, r1);
      }
    }
  }
  end_tile<T>(p, tile, st);
}

#define PONDER_AVX512 "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,prefer-vector-width=512"
#define PONDER_AVX2 "avx2,fma,f16c"

// --- AVX-512: the head dimension in registers, scores reduced 16 keys at a time ----------

template <typename T>
__attribute__((target(PONDER_AVX512), always_inline)) inline __m512 load16(const T* src);
template <>
__attribute__((target(PONDER_AVX512), always_inline)) inline __m512 load16<float>(const float* src) {
  return _mm512_loadu_ps(src);
}
template <>
__attribute__((target(PONDER_AVX512), always_inline)) inline __m512 load16<bf16>(const bf16* src) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
template <>
__attribute__((target(PONDER_AVX512), always_inline)) inline __m512 load16<_Float16>(
    const _Float16* src) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src)));
}

__attribute__((target(PONDER_AVX512), always_inline)) inline __m512 exp16(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0f)), _mm512_set1_ps(88.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 y = _mm512_set1_ps(1.9875691500e-4f);
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.3981999507e-3f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(8.3334519073e-3f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(4.1665795894e-2f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.6666665459e-1f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(5.0000001201e-1f));
  y = _mm512_fmadd_ps(y, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(y, n);
}

// Sums each of 16 vectors across its lanes: out[t] = sum(v[t]). Three shuffle-add rounds
// leave the sums in a 4x4-transposed order that one permute puts back.
__attribute__((target(PONDER_AVX512), always_inline)) inline __m512 reduce16(const __m512* v) {
  __m512 w[8], x[4], y[2];
  for (int i = 0; i < 8; ++i)
    w[i] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0x44),
                         _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0xEE));
  for (int i = 0; i < 4; ++i)
    x[i] = _mm512_add_ps(_mm512_shuffle_f32x4(w[2 * i], w[2 * i + 1], 0x88),
                         _mm512_shuffle_f32x4(w[2 * i], w[2 * i + 1], 0xDD));
  for (int i = 0; i < 2; ++i)
    y[i] = _mm512_add_ps(_mm512_shuffle_ps(x[2 * i], x[2 * i + 1], 0x44),
                         _mm512_shuffle_ps(x[2 * i], x[2 * i + 1], 0xEE));
  const __m512 z = _mm512_add_ps(_mm512_shuffle_ps(y[0], y[1], 0x88),
                                 _mm512_shuffle_ps(y[0], y[1], 0xDD));
  const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  return _mm512_permutexvar_ps(order, z);
}

// Rows per register block in the P.V product: kRows x kVecs accumulators stay in registers.
template <int kVecs>
constexpr int kRowsPerBlock = kVecs <= 4 ? 4 : (kVecs <= 8 ? 2 : 1);

// q . k for 16 consecutive keys (kv_stride floats apart) as one vector of 16 scores. kCount
// 16: a full group, fixed trip counts so the 16 partial sums live in registers; 0: the first
// cnt keys only (a block's tail), the rest zero. Two FMA chains per key halve the latency.
template <int kVecs, int kCount>
__attribute__((target(PONDER_AVX512), always_inline)) inline __m512 scores16(
    const float* qr, const float* kb, int64_t kv_stride, int64_t cnt = 16) {
  // q stays in registers up to 8 vectors; at head_dim 256 it would leave no room for the
  // partial sums, so it is read from L1 instead.
  constexpr bool kQInRegs = kVecs <= 8;
  __m512 qv[kQInRegs ? kVecs : 1];
  if constexpr (kQInRegs) {
#pragma GCC unroll 16
    for (int c = 0; c < kVecs; ++c) qv[c] = _mm512_loadu_ps(qr + c * 16);
  }
  // (A macro, not a lambda: a lambda would not inherit the target.)
#define PONDER_Q_AT(c) (kQInRegs ? qv[kQInRegs ? (c) : 0] : _mm512_loadu_ps(qr + (c) * 16))
  __m512 part[16];
#pragma GCC unroll 16
  for (int t = 0; t < 16; ++t) {
    __m512 even = _mm512_setzero_ps(), odd = _mm512_setzero_ps();
    if (kCount == 16 || t < cnt) {
      const float* kr = kb + t * kv_stride;
#pragma GCC unroll 16
      for (int c = 0; c + 1 < kVecs; c += 2) {
        even = _mm512_fmadd_ps(PONDER_Q_AT(c), _mm512_loadu_ps(kr + c * 16), even);
        odd = _mm512_fmadd_ps(PONDER_Q_AT(c + 1), _mm512_loadu_ps(kr + (c + 1) * 16), odd);
      }
      if constexpr (kVecs % 2 == 1)
        even = _mm512_fmadd_ps(PONDER_Q_AT(kVecs - 1), _mm512_loadu_ps(kr + (kVecs - 1) * 16), even);
    }
    part[t] = _mm512_add_ps(even, odd);
  }
#undef PONDER_Q_AT
  return reduce16(part);
}

// acc[kRows rows] += p[row, t] * v[t] over the block's n keys, the accumulators in
// registers: kRows and kVecs are compile-time, so no runtime row count spills them.
template <int kVecs, int kRows>
__attribute__((target(PONDER_AVX512), always_inline)) inline void pv_rows(
    float* acc, const float* p, int64_t p_stride, const float* vb, int64_t kv_stride, int64_t n) {
  constexpr int64_t hd = kVecs * 16;
  __m512 a[kRows][kVecs];
#pragma GCC unroll 16
  for (int r = 0; r < kRows; ++r)
#pragma GCC unroll 16
    for (int c = 0; c < kVecs; ++c) a[r][c] = _mm512_loadu_ps(acc + r * hd + c * 16);
  for (int64_t t = 0; t < n; ++t) {
    const float* vr = vb + t * kv_stride;
    __m512 v[kVecs];
#pragma GCC unroll 16
    for (int c = 0; c < kVecs; ++c) v[c] = _mm512_loadu_ps(vr + c * 16);
#pragma GCC unroll 16
    for (int r = 0; r < kRows; ++r) {
      const __m512 b = _mm512_set1_ps(p[r * p_stride + t]);
#pragma GCC unroll 16
      for (int c = 0; c < kVecs; ++c) a[r][c] = _mm512_fmadd_ps(b, v[c], a[r][c]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < kRows; ++r)
#pragma GCC unroll 16
    for (int c = 0; c < kVecs; ++c) _mm512_storeu_ps(acc + r * hd + c * 16, a[r][c]);
}

template <int kVecs>
__attribute__((target(PONDER_AVX512))) void block_step_avx512(
    const Tile& tile, TileState& st, const float* kb, const float* vb, int64_t kv_stride,
    int64_t key0, int64_t n, int64_t r0, int64_t r1) {
  constexpr int64_t hd = kVecs * 16;
  constexpr int kRows = kRowsPerBlock<kVecs>;
  const int64_t bs = st.bs;
  float *q = st.q, *acc = st.acc, *s = st.s, *m = st.m, *l = st.l;
  // Scores: 16 keys at a time, their lane partials reduced together.
  for (int64_t r = r0; r < r1; ++r) {
    const float* qr = q + r * hd;
    int64_t t0 = 0;
    for (; t0 + 16 <= n; t0 += 16)
      _mm512_storeu_ps(s + r * bs + t0, scores16<kVecs, 16>(qr, kb + t0 * kv_stride, kv_stride));
    if (t0 < n) {
      const int64_t cnt = n - t0;
      const __m512 tail = scores16<kVecs, 0>(qr, kb + t0 * kv_stride, kv_stride, cnt);
      _mm512_mask_storeu_ps(s + r * bs + t0, static_cast<__mmask16>((1u << cnt) - 1), tail);
    }
  }
  // Online softmax, one row at a time.
  for (int64_t r = r0; r < r1; ++r) {
    float* sr = s + r * bs;
    const int64_t visible = visible_keys(tile, st, r, key0, n);
    if (visible == 0) {
      std::fill(sr, sr + n, 0.0f);
      continue;
    }
    __m512 vmax = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    for (int64_t t = 0; t < visible; t += 16) {
      const __mmask16 mask = visible - t >= 16 ? 0xffff : (1u << (visible - t)) - 1;
      vmax = _mm512_mask_max_ps(vmax, mask, vmax, _mm512_maskz_loadu_ps(mask, sr + t));
    }
    const float m_new = std::max(m[r], _mm512_reduce_max_ps(vmax));
    const __m512 vm = _mm512_set1_ps(m_new);
    __m512 vsum = _mm512_setzero_ps();
    for (int64_t t = 0; t < n; t += 16) {
      const __mmask16 in_block = n - t >= 16 ? 0xffff : (1u << (n - t)) - 1;
      const int64_t vis = visible - t;
      const __mmask16 mask = vis >= 16 ? 0xffff : vis <= 0 ? 0 : (1u << vis) - 1;
      const __m512 e = _mm512_maskz_mov_ps(
          mask, exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(mask, sr + t), vm)));
      vsum = _mm512_add_ps(vsum, e);
      _mm512_mask_storeu_ps(sr + t, in_block, e);
    }
    const float alpha = fast_exp(m[r] - m_new);
    m[r] = m_new;
    l[r] = l[r] * alpha + _mm512_reduce_add_ps(vsum);
    if (alpha != 1.0f) {
      float* ar = acc + r * hd;
      const __m512 va = _mm512_set1_ps(alpha);
      for (int c = 0; c < kVecs; ++c)
        _mm512_storeu_ps(ar + c * 16, _mm512_mul_ps(_mm512_loadu_ps(ar + c * 16), va));
    }
  }
  // acc += P.V, kRows rows of accumulators at a time.
  for (int64_t rb = r0; rb < r1; rb += kRows) {
    float* a = acc + rb * hd;
    const float* pr = s + rb * bs;
    switch (std::min<int64_t>(kRows, r1 - rb)) {
      case 4: if constexpr (kRows >= 4) pv_rows<kVecs, 4>(a, pr, bs, vb, kv_stride, n); break;
      case 3: if constexpr (kRows >= 3) pv_rows<kVecs, 3>(a, pr, bs, vb, kv_stride, n); break;
      case 2: if constexpr (kRows >= 2) pv_rows<kVecs, 2>(a, pr, bs, vb, kv_stride, n); break;
      default: pv_rows<kVecs, 1>(a, pr, bs, vb, kv_stride, n); break;
    }
  }
}

// Rows of kVecs * 16 elements in whole vectors: a vectorized loop over so short a row,
// called per key, spent more in its prologue and epilogue than converting (bf16 decode: the
// widening was ~30% of the kernel). One call per block and KV head, deliberately not
// inlined: attend_blocks carries no target attribute of its own.
template <typename T, int kVecs>
__attribute__((target(PONDER_AVX512), noinline)) void widen_rows_avx512(
    const T* k, const T* v, int64_t row_stride, int64_t n, float* k_wide, float* v_wide) {
  for (int64_t t = 0; t < n; ++t) {
#pragma GCC unroll 16
    for (int c = 0; c < kVecs; ++c) {
      _mm512_storeu_ps(k_wide + t * kVecs * 16 + c * 16, load16<T>(k + t * row_stride + c * 16));
      _mm512_storeu_ps(v_wide + t * kVecs * 16 + c * 16, load16<T>(v + t * row_stride + c * 16));
    }
  }
}

template <typename T, int kVecs>
struct WidenRowsAvx512 {
  void operator()(const T* k, const T* v, int64_t row_stride, int64_t n, int64_t,
                  float* k_wide, float* v_wide) const {
    widen_rows_avx512<T, kVecs>(k, v, row_stride, n, k_wide, v_wide);
  }
};

template <typename T, int kVecs>
__attribute__((target(PONDER_AVX512))) void attend_avx512(const PagedAttentionParams& p,
                                                          const Tile& tile) {
  attend_blocks<T>(p, tile, &block_step_avx512<kVecs>, WidenRowsAvx512<T, kVecs>());
}

template <typename T>
__attribute__((target(PONDER_AVX512))) void attend_avx512_generic(const PagedAttentionParams& p,
                                                                  const Tile& tile) {
  attend_blocks<T>(p, tile, block_step);
}

template <typename T>
__attribute__((target(PONDER_AVX2))) void attend_avx2(const PagedAttentionParams& p,
                                                      const Tile& tile) {
  attend_blocks<T>(p, tile, block_step);
}

template <typename T>
void attend_generic(const PagedAttentionParams& p, const Tile& tile) {
  attend_blocks<T>(p, tile, block_step);
}

enum class Isa { kGeneric, kAvx2, kAvx512 };

Isa detect_isa() {
  if (has_avx512()) return Isa::kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
      __builtin_cpu_supports("f16c"))
    return Isa::kAvx2;
  return Isa::kGeneric;
}

using AttendFn = void (*)(const PagedAttentionParams&, const Tile&);

template <typename T>
AttendFn pick(int64_t head_dim) {
  static const Isa isa = detect_isa();
  if (isa == Isa::kAvx512) {
    switch (head_dim) {
      case 32: return &attend_avx512<T, 2>;
      case 64: return &attend_avx512<T, 4>;
      case 96: return &attend_avx512<T, 6>;
      case 128: return &attend_avx512<T, 8>;
      case 256: return &attend_avx512<T, 16>;
      default: return &attend_avx512_generic<T>;
    }
  }
  return isa == Isa::kAvx2 ? &attend_avx2<T> : &attend_generic<T>;
}

// How many chunks of split_keys keys a decode sequence of seq_len keys is attended in (see
// kSplitKeys): its own length only, never the batch's.
inline int64_t num_key_splits(int64_t seq_len, int64_t split_keys) {
  return (seq_len + split_keys - 1) / split_keys;
}

// Merges the splits of each decode token and head: out = sum_s acc_s e^(m_s - M) / L with
// M = max_s m_s and L = sum_s l_s e^(m_s - M).
template <typename T>
void merge_splits(const PagedAttentionParams& p, const float* partial, int64_t max_splits,
                  int64_t split_keys, bool parallel) {
  const int64_t hd = p.head_dim, stride = hd + 2;
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t sh = 0; sh < p.batch * p.num_heads; ++sh) {
    const int64_t seq = sh / p.num_heads, head = sh % p.num_heads;
    const int64_t splits = num_key_splits(p.seq_lens[seq], split_keys);
    const float* part = partial + (seq * max_splits * p.num_heads + head) * stride;
    float big = -std::numeric_limits<float>::infinity();
    for (int64_t sp = 0; sp < splits; ++sp)
      big = std::max(big, part[sp * p.num_heads * stride + hd]);
    thread_local std::vector<float> acc_buf;
    acc_buf.assign(hd, 0.0f);
    float* acc = acc_buf.data();
    float sum = 0.0f;
    for (int64_t sp = 0; sp < splits; ++sp) {
      const float* ps = part + sp * p.num_heads * stride;
      if (ps[hd + 1] == 0.0f) continue;  // no visible key in this split
      const float w = std::exp(ps[hd] - big);
      sum += ps[hd + 1] * w;
      for (int64_t d = 0; d < hd; ++d) acc[d] += ps[d] * w;
    }
    const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
    T* out = static_cast<T*>(p.out) + (seq * p.num_heads + head) * hd;
    for (int64_t d = 0; d < hd; ++d) out[d] = from_f32<T>(acc[d] * inv);
  }
}

template <typename T>
void run(const PagedAttentionParams& p) {
  const AttendFn attend = pick<T>(p.head_dim);
  const bool decode = p.cu_query_lens == nullptr;
  const int64_t tiles_per_seq = decode ? 1 : (p.max_query_len + kQueryTile - 1) / kQueryTile;
  // Decode splits long sequences' keys (see kSplitKeys).
  const int64_t split_keys = std::max<int64_t>(p.block_size, kSplitKeys / p.block_size *
                                                                 p.block_size);
  int64_t max_splits = 1;
  if (decode)
    for (int64_t b = 0; b < p.batch; ++b)
      max_splits = std::max(max_splits, num_key_splits(p.seq_lens[b], split_keys));
  // Whole sequences (all KV heads) stream contiguous blocks; split heads only when there
  // would otherwise be too few tasks to keep every thread busy.
  const int64_t threads = omp_get_max_threads();
  const int64_t units = p.batch * tiles_per_seq * max_splits;
  const int64_t heads_per_task = units >= 4 * threads ? p.num_kv_heads : 1;
  const int64_t head_groups = p.num_kv_heads / heads_per_task;
  const int64_t num_tasks = units * head_groups;
  // Small problems (a short decode) run on the calling thread: waking a team costs more than
  // the work, and on a loaded machine a parallel region waits for a descheduled worker.
  int64_t kv_bytes = 0;
  for (int64_t b = 0; b < p.batch; ++b) kv_bytes += p.seq_lens[b];
  kv_bytes *= 2 * p.num_kv_heads * p.head_dim * static_cast<int64_t>(sizeof(T));
  const bool parallel = num_tasks > 1 && kv_bytes * p.max_query_len > kParallelMinBytes;
  float* partial = nullptr;
  if (max_splits > 1) {
    thread_local std::vector<float> buf;
    const int64_t need = p.batch * max_splits * p.num_heads * (p.head_dim + 2);
    if (static_cast<int64_t>(buf.size()) < need) buf.resize(need);
    partial = buf.data();
  }
  // Tiles past a sequence's q_len (and splits past its length) are empty tasks; dynamic
  // scheduling absorbs them.
#pragma omp parallel for schedule(dynamic, 1) if (parallel)
  for (int64_t task = 0; task < num_tasks; ++task) {
    const int64_t head_group = task % head_groups;
    const int64_t split = (task / head_groups) % max_splits;
    const int64_t tile = (task / (head_groups * max_splits)) % tiles_per_seq;
    const int64_t seq = task / (head_groups * max_splits * tiles_per_seq);
    int64_t first_token = seq, q_len = 1;
    if (!decode) {
      first_token = p.cu_query_lens[seq];
      q_len = p.cu_query_lens[seq + 1] - first_token;
    }
    const int64_t begin = tile * kQueryTile;
    if (begin >= q_len) continue;
    const int64_t len = std::min(kQueryTile, q_len - begin);
    const int64_t pos0 = p.seq_lens[seq] - q_len + begin;
    Tile t{seq, head_group * heads_per_task, heads_per_task, first_token + begin, pos0, len,
           pos0 + len};
    if (partial != nullptr) {
      t.key_begin = split * split_keys;
      if (t.key_begin >= p.seq_lens[seq]) continue;
      t.key_end = std::min<int64_t>(t.key_begin + split_keys, pos0 + len);
      t.partial = partial + (seq * max_splits + split) * p.num_heads * (p.head_dim + 2);
    }
    attend(p, t);
  }
  if (partial != nullptr) merge_splits<T>(p, partial, max_splits, split_keys, parallel);
}

}  // namespace

Status paged_attention(const PagedAttentionParams& p) {
  if (p.block_size > kPagedAttentionMaxBlockSize)
    return Status::error("block_size must be at most 256");
  switch (p.dtype) {
    case DType::kFloat32: run<float>(p); break;
    case DType::kBFloat16: run<bf16>(p); break;
    case DType::kFloat16: run<_Float16>(p); break;
  }
  return Status::success();
}

}  // namespace ponder::cpu
