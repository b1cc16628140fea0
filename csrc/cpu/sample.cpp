// CPU sample: one row per OpenMP task, fp32 math in thread-local scratch that only grows.
// Sums over the vocabulary accumulate in double: a float running sum over 150k terms drifts
// by ~1e-4, which would show in log-probs and bias the draw.
// Thresholds come from selection, not a full sort: top-k is one nth_element; top-p sorts a
// prefix of the most probable candidates and doubles it only while the kept mass is short.
#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "ponder/cpu_math.h"
#include "ponder/sample.h"

namespace ponder::cpu {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr size_t kTopPFirstPrefix = 256;

struct Scratch {
  std::vector<float> x;                         // raw, then scaled logits
  std::vector<float> e;                         // exp(x - max x)
  std::vector<float> select;                    // copy for nth_element
  std::vector<std::pair<float, float>> cand;    // (x, e) of the top-k survivors
  std::vector<std::pair<float, int64_t>> heap;  // top log-probs
};

Scratch& thread_scratch() {
  thread_local Scratch s;
  return s;
}

// The smallest survivor value whose strictly-greater mass is < limit (see sample.h).
float top_p_threshold(std::vector<std::pair<float, float>>& cand, double limit) {
  const size_t n = cand.size();
  const auto desc = [](const std::pair<float, float>& a, const std::pair<float, float>& b) {
    return a.first > b.first;
  };
  size_t prefix = std::min(n, kTopPFirstPrefix);
  for (;;) {
    if (prefix < n) std::nth_element(cand.begin(), cand.begin() + (prefix - 1), cand.end(), desc);
    std::sort(cand.begin(), cand.begin() + prefix, desc);
    // Every value greater than the prefix's last one lies inside the prefix, so the mass
    // before each group is exact; only the group straddling the prefix end may be partial.
    double before = 0.0;
    float kept = cand[0].first;
    size_t i = 0;
    bool need_more = false;
    while (i < prefix) {
      const float v = cand[i].first;
      if (!(before < limit)) return kept;
      kept = v;
      double group = 0.0;
      size_t j = i;
      while (j < prefix && cand[j].first == v) group += cand[j++].second;
      if (j == prefix && prefix < n) {
        need_more = true;
        break;
      }
      before += group;
      i = j;
    }
    if (!need_more) return kept;
    prefix = std::min(n, prefix * 2);
  }
}

void top_logprobs(const float* x, int64_t vocab, float log_z, int64_t count, Scratch& s,
                  int64_t* ids, float* values) {
  // Heap of the best `count` so far, worst on top; ties go to the lower index.
  const auto better = [](const std::pair<float, int64_t>& a, const std::pair<float, int64_t>& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  auto& h = s.heap;
  h.clear();
  for (int64_t i = 0; i < vocab; ++i) {
    const std::pair<float, int64_t> c{x[i], i};
    if (static_cast<int64_t>(h.size()) < count) {
      h.push_back(c);
      std::push_heap(h.begin(), h.end(), better);
    } else if (better(c, h.front())) {
      std::pop_heap(h.begin(), h.end(), better);
      h.back() = c;
      std::push_heap(h.begin(), h.end(), better);
    }
  }
  std::sort_heap(h.begin(), h.end(), better);
  for (int64_t j = 0; j < count; ++j) {
    ids[j] = h[j].second;
    values[j] = h[j].first - log_z;
  }
}

// The passes over the vocabulary, written to vectorize and compiled for AVX-512 and for the
// baseline ISA (picked at run time). Sums accumulate in double across the vector lanes:
// before, one sequential double sum per pass waited on each add's latency, and a row cost
// ~100 us of which the sums were over half (49k-token vocabulary).
#define PONDER_VOCAB_PASSES(target_attr, ns)                                                \
  namespace ns {                                                                           \
  /* e[i] = exp(x[i] - shift), 0 for -inf logits (ponder's fast_exp, ~1 ulp); returns the  \
     sum of e. */                                                                          \
  target_attr double exp_shifted(const float* x, float shift, float* e, int64_t n) {      \
    /* computed, then selected: a branch around the exp keeps the loop scalar */           \
    _Pragma("omp simd") for (int64_t i = 0; i < n; ++i) {                                 \
      const float v = fast_exp(x[i] - shift);                                              \
      e[i] = x[i] == -kInf ? 0.f : v;                                                      \
    }                                                                                      \
    /* a separate loop: GCC vectorizes neither when fp32 math and the fp64 sum share one */ \
    double total = 0.0;                                                                    \
    _Pragma("omp simd reduction(+ : total)") for (int64_t i = 0; i < n; ++i) total += e[i]; \
    return total;                                                                          \
  }                                                                                        \
  /* x[i] = float(in[i]) * scale; returns the largest x. Sixteen running maxima updated by  \
     select, which vectorizes (a max reduction stays scalar without -ffinite-math-only). */ \
  template <typename T>                                                                    \
  target_attr float widen_max(const T* in, float scale, float* x, int64_t n) {             \
    float lane[16];                                                                        \
    for (float& v : lane) v = -kInf;                                                       \
    int64_t i = 0;                                                                         \
    for (; i + 16 <= n; i += 16) {                                                         \
      _Pragma("omp simd") for (int l = 0; l < 16; ++l) {                                  \
        const float v = to_f32(in[i + l]) * scale;                                         \
        x[i + l] = v;                                                                      \
        lane[l] = v > lane[l] ? v : lane[l];                                               \
      }                                                                                    \
    }                                                                                      \
    float best = -kInf;                                                                    \
    for (; i < n; ++i) {                                                                   \
      x[i] = to_f32(in[i]) * scale;                                                        \
      best = x[i] > best ? x[i] : best;                                                    \
    }                                                                                      \
    for (const float v : lane) best = v > best ? v : best;                                 \
    return best;                                                                           \
  }                                                                                        \
  /* Zeroes e where a token is dropped: x < threshold or e < min_e. */                   \
  target_attr void drop(const float* x, float* e, int64_t n, float threshold, float min_e) { \
    _Pragma("omp simd") for (int64_t i = 0; i < n; ++i) e[i] =                            \
        x[i] >= threshold && e[i] >= min_e ? e[i] : 0.f;                                   \
  }                                                                                        \
  target_attr double sum(const float* e, int64_t i0, int64_t i1) {                         \
    double total = 0.0;                                                                    \
    _Pragma("omp simd reduction(+ : total)") for (int64_t i = i0; i < i1; ++i) total += e[i]; \
    return total;                                                                          \
  }                                                                                        \
  }
PONDER_VOCAB_PASSES(__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c"))),
                    avx512_passes)
PONDER_VOCAB_PASSES(, baseline_passes)
#undef PONDER_VOCAB_PASSES

struct VocabPasses {
  double (*exp_shifted)(const float*, float, float*, int64_t);
  float (*widen_max_f32)(const float*, float, float*, int64_t);
  float (*widen_max_bf16)(const bf16*, float, float*, int64_t);
  float (*widen_max_f16)(const _Float16*, float, float*, int64_t);
  void (*drop)(const float*, float*, int64_t, float, float);
  double (*sum)(const float*, int64_t, int64_t);

  template <typename T>
  float widen_max(const T* in, float scale, float* x, int64_t n) const {
    if constexpr (std::is_same_v<T, float>) return widen_max_f32(in, scale, x, n);
    else if constexpr (std::is_same_v<T, bf16>) return widen_max_bf16(in, scale, x, n);
    else return widen_max_f16(in, scale, x, n);
  }
};

const VocabPasses& passes() {
#define PONDER_PASSES(ns)                                                                  \
  VocabPasses {                                                                            \
    &ns::exp_shifted, &ns::widen_max<float>, &ns::widen_max<bf16>, &ns::widen_max<_Float16>, \
        &ns::drop, &ns::sum                                                                \
  }
  static const VocabPasses v =
      has_avx512() && __builtin_cpu_supports("f16c") ? PONDER_PASSES(avx512_passes)
                                                      : PONDER_PASSES(baseline_passes);
#undef PONDER_PASSES
  return v;
}

// The first index holding value (the largest: torch.argmax's tie rule). Chunks are tested
// whole, a vectorizable OR, and only the one holding it is scanned.
int64_t first_index_of(const float* x, int64_t n, float value) {
  constexpr int64_t kChunk = 64;
  for (int64_t c = 0; c < n; c += kChunk) {
    const int64_t end = std::min(n, c + kChunk);
    int hit = 0;
#pragma omp simd reduction(| : hit)
    for (int64_t i = c; i < end; ++i) hit |= x[i] == value;
    if (hit)
      for (int64_t i = c; i < end; ++i)
        if (x[i] == value) return i;
  }
  return 0;
}

template <typename T>
void sample_row(const SampleParams& p, int64_t row, Scratch& s) {
  const VocabPasses& vp = passes();
  const int64_t vocab = p.vocab;
  const T* in = static_cast<const T*>(p.logits) + row * vocab;
  s.x.resize(vocab);
  s.e.resize(vocab);
  float* x = s.x.data();
  float* e = s.e.data();

  const float max_logit = vp.widen_max(in, 1.0f, x, vocab);
  const int64_t argmax = first_index_of(x, vocab, max_logit);
  const double sum = vp.exp_shifted(x, max_logit, e, vocab);
  const float log_z = max_logit + static_cast<float>(std::log(sum));
  if (p.num_logprobs > 0)
    top_logprobs(x, vocab, log_z, p.num_logprobs, s, p.top_ids + row * p.num_logprobs,
                 p.top_logprobs + row * p.num_logprobs);

  int64_t token = argmax;
  const float temperature = p.temperature[row];
  if (temperature > 0.f) {
    // x = logits / T (scaling by a positive number keeps the order, so the max is max / T).
    const float x_max = vp.widen_max(in, 1.0f / temperature, x, vocab);

    float threshold = -kInf;
    const int64_t top_k = p.top_k[row];
    if (top_k > 0 && top_k < vocab) {
      s.select.assign(x, x + vocab);
      std::nth_element(s.select.begin(), s.select.begin() + (top_k - 1), s.select.end(),
                       std::greater<float>());
      threshold = s.select[top_k - 1];
    }
    vp.exp_shifted(x, x_max, e, vocab);

    const float top_p = p.top_p[row];
    if (top_p < 1.f) {
      s.cand.clear();
      double mass = 0.0;
      for (int64_t i = 0; i < vocab; ++i) {
        if (x[i] >= threshold) {
          s.cand.emplace_back(x[i], e[i]);
          mass += e[i];
        }
      }
      threshold = top_p_threshold(s.cand, top_p * mass);
    }
    // Dropped tokens get e = 0, so a token is kept exactly where e > 0 from here on.
    vp.drop(x, e, vocab, threshold, p.min_p[row]);

    // Inverse CDF: the first kept token whose running mass passes u * total. Whole chunks
    // whose mass stays short of the target are skipped by their sum.
    constexpr int64_t kChunk = 256;
    const double total = vp.sum(e, 0, vocab);
    const double u = philox_uniform(static_cast<uint64_t>(p.seeds[row]),
                                    static_cast<uint64_t>(p.seq_ids[row]),
                                    static_cast<uint64_t>(p.positions[row]));
    const double target = u * total;
    double running = 0.0;
    bool found = false;
    for (int64_t c = 0; c < vocab && !found; c += kChunk) {
      const int64_t end = std::min(vocab, c + kChunk);
      const double chunk = vp.sum(e, c, end);
      if (running + chunk <= target) {
        running += chunk;
        continue;
      }
      for (int64_t i = c; i < end; ++i) {
        if (e[i] <= 0.f) continue;
        running += e[i];
        token = i;
        if (running > target) {
          found = true;
          break;
        }
      }
    }
    // If rounding leaves the running sum short of target, the last kept token is the pick.
    if (!found)
      for (int64_t i = vocab - 1; i >= 0; --i)
        if (e[i] > 0.f) {
          token = i;
          break;
        }
  }
  p.tokens[row] = token;
  p.logprobs[row] = to_f32(in[token]) - log_z;
}

template <typename T>
void sample_rows(const SampleParams& p) {
  // A row is at least one pass over the vocabulary: threads pay off beyond a few rows.
  const bool parallel = p.num_rows > 1 && p.num_rows * p.vocab > (1 << 15);
#pragma omp parallel for schedule(dynamic, 1) if (parallel)
  for (int64_t row = 0; row < p.num_rows; ++row) sample_row<T>(p, row, thread_scratch());
}

}  // namespace

Status sample(const SampleParams& p) {
  switch (p.dtype) {
    case DType::kFloat32: sample_rows<float>(p); break;
    case DType::kBFloat16: sample_rows<bf16>(p); break;
    case DType::kFloat16: sample_rows<_Float16>(p); break;
  }
  return Status::success();
}

}  // namespace ponder::cpu
