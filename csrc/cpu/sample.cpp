// CPU sample: one row per OpenMP task, fp32 math in thread-local scratch that only grows.
// Sums over the vocabulary accumulate in double: a float running sum over 150k terms drifts
// by ~1e-4, which would show in log-probs and bias the draw.
// Thresholds come from selection, not a full sort: top-k is one nth_element; top-p sorts a
// prefix of the most probable candidates and doubles it only while the kept mass is short.
#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
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

// e[i] = exp(x[i] - shift), 0 for -inf logits, in one vectorized pass (ponder's fast_exp,
// about 1 ulp), compiled for AVX-512 and for the baseline ISA and picked at run time. The sums
// over e stay sequential, in double.
__attribute__((always_inline)) inline void exp_shifted_body(const float* x, float shift,
                                                            float* e, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float v = fast_exp(x[i] - shift);
    e[i] = x[i] == -kInf ? 0.f : v;
  }
}
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma"))) void exp_shifted_avx512(
    const float* x, float shift, float* e, int64_t n) {
  exp_shifted_body(x, shift, e, n);
}
void exp_shifted_baseline(const float* x, float shift, float* e, int64_t n) {
  exp_shifted_body(x, shift, e, n);
}
void exp_shifted(const float* x, float shift, float* e, int64_t n) {
  static const bool avx512 = has_avx512();
  (avx512 ? exp_shifted_avx512 : exp_shifted_baseline)(x, shift, e, n);
}

template <typename T>
void sample_row(const SampleParams& p, int64_t row, Scratch& s) {
  const int64_t vocab = p.vocab;
  const T* in = static_cast<const T*>(p.logits) + row * vocab;
  s.x.resize(vocab);
  float* x = s.x.data();

  float max_logit = -kInf;
  int64_t argmax = 0;
  for (int64_t i = 0; i < vocab; ++i) {
    x[i] = to_f32(in[i]);
    if (x[i] > max_logit) {
      max_logit = x[i];
      argmax = i;
    }
  }
  s.e.resize(vocab);
  float* e = s.e.data();
  exp_shifted(x, max_logit, e, vocab);
  double sum = 0.0;
  for (int64_t i = 0; i < vocab; ++i) sum += e[i];
  const float log_z = max_logit + static_cast<float>(std::log(sum));
  if (p.num_logprobs > 0)
    top_logprobs(x, vocab, log_z, p.num_logprobs, s, p.top_ids + row * p.num_logprobs,
                 p.top_logprobs + row * p.num_logprobs);

  int64_t token = argmax;
  const float temperature = p.temperature[row];
  if (temperature > 0.f) {
    const float inv_t = 1.0f / temperature;
    for (int64_t i = 0; i < vocab; ++i) x[i] *= inv_t;
    const float x_max = max_logit * inv_t;  // scaling by a positive number keeps the order

    float threshold = -kInf;
    const int64_t top_k = p.top_k[row];
    if (top_k > 0 && top_k < vocab) {
      s.select.assign(x, x + vocab);
      std::nth_element(s.select.begin(), s.select.begin() + (top_k - 1), s.select.end(),
                       std::greater<float>());
      threshold = s.select[top_k - 1];
    }
    exp_shifted(x, x_max, e, vocab);

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
    const float min_p = p.min_p[row];
    const auto kept = [&](int64_t i) { return x[i] >= threshold && e[i] >= min_p && e[i] > 0.f; };

    double total = 0.0;
    for (int64_t i = 0; i < vocab; ++i)
      if (kept(i)) total += e[i];
    const double u = philox_uniform(static_cast<uint64_t>(p.seeds[row]),
                                    static_cast<uint64_t>(p.seq_ids[row]),
                                    static_cast<uint64_t>(p.positions[row]));
    const double target = u * total;
    // If rounding leaves the running sum short of target, the last kept token is the pick.
    double running = 0.0;
    for (int64_t i = 0; i < vocab; ++i) {
      if (!kept(i)) continue;
      running += e[i];
      token = i;
      if (running > target) break;
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
