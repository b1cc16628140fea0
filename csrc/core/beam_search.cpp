#include "beam_search.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

namespace ponder::core {

namespace {

// HF's "very large negative" score, added (in float32) to mask a candidate or a beam.
constexpr float kMasked = -1.0e9f;

struct Candidate {
  float value;
  int64_t index;
};

// torch's CPU topk comparator (aten/src/ATen/native/cpu/SortingKernel.cpp): larger first, NaN
// before everything. Ties keep whatever order the STL algorithm leaves, as in torch.
struct TorchGreater {
  bool operator()(const Candidate& x, const Candidate& y) const {
    return (std::isnan(x.value) && !std::isnan(y.value)) || x.value > y.value;
  }
};

// torch.topk(values, k, largest=True, sorted=True) on the CPU: items holds (value, i) for i in
// [0, n) in order; afterwards its first k entries are torch's (values, indices), in its order.
void torch_topk(std::vector<Candidate>& items, int64_t k) {
  const TorchGreater greater;
  const int64_t n = static_cast<int64_t>(items.size());
  if (k * 64 <= n) {
    std::partial_sort(items.begin(), items.begin() + k, items.end(), greater);
  } else {
    std::nth_element(items.begin(), items.begin() + (k - 1), items.end(), greater);
    std::sort(items.begin(), items.begin() + (k - 1), greater);  // torch sorts k - 1 of them
  }
  items.resize(static_cast<size_t>(k));
}

[[noreturn]] void fail_nan() { throw std::invalid_argument("logprobs contains NaN"); }

// The top k of the accumulated scores base[r] + row(r)[t] over r in [0, num_rows), t in
// [0, vocab_size) (flat index r * vocab_size + t), exactly as torch_topk would rank them.
std::vector<Candidate> top_candidates(const std::vector<const float*>& rows,
                                      const std::vector<float>& base, int64_t vocab_size,
                                      int64_t k) {
  const int64_t num_rows = static_cast<int64_t>(rows.size());
  const int64_t n = num_rows * vocab_size;
  std::vector<Candidate> out;
#if defined(__GLIBCXX__)
  if (k * 64 <= n) {
    // std::partial_sort in libstdc++ is __heap_select + sort_heap: a heap of the first k, then
    // each later item that beats the heap's top replaces it through __pop_heap. pop_heap over
    // [0, k] with the new item at k performs that very operation, so streaming the scores
    // gives torch's result without materializing n pairs; most items fail one comparison.
    const TorchGreater greater;
    out.resize(static_cast<size_t>(k + 1));
    int64_t i = 0;
    for (int64_t r = 0; r < num_rows; ++r) {
      const float* row = rows[r];
      const float b = base[r];
      for (int64_t t = 0; t < vocab_size; ++t, ++i) {
        const Candidate c{row[t] + b, i};
        if (i < k) {
          if (std::isnan(c.value)) fail_nan();
          out[i] = c;
          if (i == k - 1) std::make_heap(out.begin(), out.begin() + k, greater);
        } else if (greater(c, out[0])) {
          if (std::isnan(c.value)) fail_nan();
          out[k] = c;
          std::pop_heap(out.begin(), out.begin() + (k + 1), greater);
        }
      }
    }
    out.resize(static_cast<size_t>(k));
    std::sort_heap(out.begin(), out.end(), greater);
    return out;
  }
#endif
  out.resize(static_cast<size_t>(n));
  for (int64_t r = 0, i = 0; r < num_rows; ++r)
    for (int64_t t = 0; t < vocab_size; ++t, ++i) {
      out[i] = Candidate{rows[r][t] + base[r], i};
      if (std::isnan(out[i].value)) fail_nan();
    }
  torch_topk(out, k);
  return out;
}

// Python's `n ** length_penalty` (a double), then the float32 it becomes when it divides a
// float32 tensor.
float length_divisor(int64_t n, double length_penalty) {
  return static_cast<float>(std::pow(static_cast<double>(n), length_penalty));
}

}  // namespace

BeamSearch::BeamSearch(int32_t width, int32_t max_new_tokens, double length_penalty,
                       EarlyStopping early_stopping, std::vector<int64_t> eos_token_ids,
                       int32_t num_return)
    : width_(width),
      max_new_tokens_(max_new_tokens),
      num_return_(num_return),
      length_penalty_(length_penalty),
      early_stopping_(early_stopping),
      eos_token_ids_(std::move(eos_token_ids)) {
  if (width < 1)
    throw std::invalid_argument("width must be at least 1, got " + std::to_string(width));
  if (max_new_tokens < 1)
    throw std::invalid_argument("max_new_tokens must be at least 1, got " +
                                std::to_string(max_new_tokens));
  if (num_return < 1 || num_return > width)
    throw std::invalid_argument("num_return must be in [1, width = " + std::to_string(width) +
                                "], got " + std::to_string(num_return));
  if (!std::isfinite(length_penalty))
    throw std::invalid_argument("length_penalty must be finite");
  for (int64_t id : eos_token_ids_)
    if (id < 0 || id > INT32_MAX)
      throw std::invalid_argument("eos_token_ids must be non-negative token ids, got " +
                                  std::to_string(id));
  // HF keeps this many so that `width` unfinished candidates remain even if every running beam
  // ranks all eos tokens on top. Duplicated eos ids count, as they do in HF.
  num_candidates_ =
      std::max<int64_t>(2, 1 + static_cast<int64_t>(eos_token_ids_.size())) * width;
  finished_.assign(width, Slot{kMasked, -1, false});
}

int32_t BeamSearch::num_finished() const {
  return static_cast<int32_t>(
      std::count_if(finished_.begin(), finished_.end(), [](const Slot& s) { return s.finished; }));
}

bool BeamSearch::is_eos(int64_t token) const {
  return std::find(eos_token_ids_.begin(), eos_token_ids_.end(), token) != eos_token_ids_.end();
}

std::vector<int32_t> BeamSearch::tokens_of(int32_t node) const {
  std::vector<int32_t> out;
  for (; node >= 0; node = nodes_[node].parent) out.push_back(nodes_[node].token);
  std::reverse(out.begin(), out.end());
  return out;
}

void BeamSearch::step(const float* logprobs, int64_t num_rows, int64_t vocab_size,
                      std::vector<int64_t>& parents, std::vector<int64_t>& tokens) {
  parents.clear();
  tokens.clear();
  if (done_) throw std::invalid_argument("step() called after the search is done");
  if (num_rows != num_running())
    throw std::invalid_argument("logprobs must have num_running = " +
                                std::to_string(num_running()) + " rows, got " +
                                std::to_string(num_rows));
  if (vocab_size < 1) throw std::invalid_argument("logprobs must have at least one column");
  if (vocab_size_ >= 0 && vocab_size != vocab_size_)
    throw std::invalid_argument("logprobs has " + std::to_string(vocab_size) +
                                " columns but earlier steps had vocab_size = " +
                                std::to_string(vocab_size_));
  const int64_t k = num_candidates_;
  if (width_ * vocab_size < k)
    throw std::invalid_argument("width * vocab_size = " + std::to_string(width_ * vocab_size) +
                                " is below the " + std::to_string(k) +
                                " candidates beam search ranks per step");

  // HF ranks `width` rows from the first step on: copies of the prompt, all but the first
  // masked with -1e9. They share the caller's single row.
  const bool first = num_steps_ == 0;
  std::vector<const float*> rows(width_);
  std::vector<float> base(width_);
  for (int32_t r = 0; r < width_; ++r) {
    rows[r] = first ? logprobs : logprobs + r * vocab_size;
    base[r] = first ? (r == 0 ? 0.0f : kMasked) : running_scores_[r];
  }
  const std::vector<Candidate> top = top_candidates(rows, base, vocab_size, k);

  // Nothing below throws: the state changes from here on.
  vocab_size_ = vocab_size;
  const int32_t num_generated = num_steps_ + 1;  // tokens per candidate, this one included
  const bool at_max_length = num_generated >= max_new_tokens_;
  std::vector<uint8_t> hit(k);
  std::vector<int32_t> cand_node(k);
  std::vector<int32_t> cand_row(k);
  bool all_hit = true;
  for (int64_t i = 0; i < k; ++i) {
    const int64_t row = top[i].index / vocab_size;
    const int64_t token = top[i].index % vocab_size;
    hit[i] = at_max_length || is_eos(token);
    all_hit = all_hit && hit[i];
    cand_row[i] = static_cast<int32_t>(first ? 0 : row);
    nodes_.push_back(Node{first ? -1 : running_nodes_[row], static_cast<int32_t>(token)});
    cand_node[i] = static_cast<int32_t>(nodes_.size() - 1);
  }

  // Next running beams: the best `width` candidates once finished ones are masked.
  std::vector<Candidate> running(k);
  for (int64_t i = 0; i < k; ++i) running[i] = {hit[i] ? top[i].value + kMasked : top[i].value, i};
  torch_topk(running, width_);

  // Finished slots: merge the length-penalized candidates into the `width` slots. Only the top
  // `width` candidates that finished now may enter; the rest are masked but still ranked, as in
  // HF, so that the slots hold exactly what HF's do.
  const bool slots_full = std::all_of(finished_.begin(), finished_.end(),
                                      [](const Slot& s) { return s.finished; });
  const float divisor = length_divisor(num_generated, length_penalty_);
  std::vector<Candidate> merged(width_ + k);
  std::vector<uint8_t> eligible(k);
  for (int32_t j = 0; j < width_; ++j) merged[j] = {finished_[j].score, j};
  for (int64_t i = 0; i < k; ++i) {
    float score = top[i].value / divisor;
    if (slots_full && early_stopping_ == EarlyStopping::kTrue) score += kMasked;
    if (!improvement_possible_) score += kMasked;
    eligible[i] = i < width_ && hit[i];
    if (!eligible[i]) score += kMasked;
    merged[width_ + i] = {score, width_ + i};
  }
  torch_topk(merged, width_);
  std::vector<Slot> slots(width_);
  for (int32_t j = 0; j < width_; ++j) {
    const int64_t m = merged[j].index;
    slots[j] = m < width_ ? finished_[m]
                          : Slot{merged[j].value, cand_node[m - width_],
                                 static_cast<bool>(eligible[m - width_])};
  }
  finished_ = std::move(slots);

  // Can a running beam still beat the worst finished one? HF scores the best running beam at
  // its current length, or at max length under "never" with a positive length penalty.
  const int64_t hypothetical_length =
      early_stopping_ == EarlyStopping::kNever && length_penalty_ > 0.0 ? max_new_tokens_
                                                                        : num_generated;
  const float best_running =
      running[0].value / length_divisor(hypothetical_length, length_penalty_);
  float worst_finished = finished_[0].score;
  for (const Slot& s : finished_) worst_finished = std::min(worst_finished, s.score);
  bool can_improve = false;
  for (const Slot& s : finished_)
    can_improve = can_improve || best_running > (s.finished ? worst_finished : kMasked);
  improvement_possible_ = improvement_possible_ && can_improve;

  num_steps_ = num_generated;
  const bool all_finished = num_finished() == width_;
  done_ = !improvement_possible_ || (all_finished && early_stopping_ == EarlyStopping::kTrue) ||
          all_hit;
  if (done_) return;

  std::vector<float> next_scores(width_);
  std::vector<int32_t> next_nodes(width_);
  parents.resize(width_);
  tokens.resize(width_);
  for (int32_t j = 0; j < width_; ++j) {
    const int64_t i = running[j].index;
    next_scores[j] = running[j].value;
    next_nodes[j] = cand_node[i];
    parents[j] = cand_row[i];
    tokens[j] = nodes_[cand_node[i]].token;
  }
  running_scores_ = std::move(next_scores);
  running_nodes_ = std::move(next_nodes);
}

std::vector<BeamHypothesis> BeamSearch::finalize() const {
  if (!done_) throw std::invalid_argument("finalize() called before the search is done");
  std::vector<BeamHypothesis> out;
  out.reserve(num_return_);
  for (int32_t j = 0; j < num_return_; ++j)
    out.push_back(BeamHypothesis{tokens_of(finished_[j].node), finished_[j].score});
  return out;
}

}  // namespace ponder::core
