// BeamSearch: token-level beam search for one prompt as a state machine that consumes the
// log-probs of its running beams and emits the next running beams as (parent, token) pairs.
//
// It reproduces Hugging Face transformers' GenerationMixin._beam_search (5.x, do_sample=False,
// decoder-only, batch of one) step for step and bit for bit in float32, including its -1e9
// masking arithmetic and its placeholder slots, so the finished beams, their scores and the
// number of steps are the ones model.generate(num_beams=width, ...) returns:
//   - top K = max(2, 1 + num_eos) * width candidates over all running beams x vocab per step,
//     ranked by accumulated log-prob; at the first step beam 0 has score 0 and the others
//     -1e9 (all copies of the prompt), so in practice only the prompt row competes;
//   - a candidate ending in an eos token, or reaching max_new_tokens, is finished; only the
//     first `width` candidates may enter the finished set, scored
//     sum_logprob / num_generated_tokens ** length_penalty (eos token counted);
//   - the next running beams are the best `width` unfinished candidates;
//   - early_stopping true: stop once `width` hypotheses are finished; false: stop when the best
//     running beam, scored at its current length, cannot beat the worst finished one; never:
//     the same, but scored at max_new_tokens when length_penalty > 0.
// Every ranking reproduces torch.topk on the CPU, tie order included: torch runs
// std::partial_sort (k * 64 <= n) or std::nth_element + std::sort over (value, index) pairs
// with a "greater, NaN first" comparator, and so does this class, over the same sequence.
#pragma once

#include <cstdint>
#include <vector>

namespace ponder::core {

enum class EarlyStopping : int8_t { kFalse, kTrue, kNever };

struct BeamHypothesis {
  std::vector<int32_t> token_ids;  // generated tokens only; ends with the eos token if one ended it
  float score;                     // sum of token log-probs / len(token_ids) ** length_penalty
};

class BeamSearch {
 public:
  BeamSearch(int32_t width, int32_t max_new_tokens, double length_penalty,
             EarlyStopping early_stopping, std::vector<int64_t> eos_token_ids, int32_t num_return);

  int32_t width() const { return width_; }
  int32_t max_new_tokens() const { return max_new_tokens_; }
  double length_penalty() const { return length_penalty_; }
  EarlyStopping early_stopping() const { return early_stopping_; }
  const std::vector<int64_t>& eos_token_ids() const { return eos_token_ids_; }
  int32_t num_return() const { return num_return_; }
  // Candidates ranked per step: max(2, 1 + number of eos ids) * width.
  int64_t num_candidates() const { return num_candidates_; }
  // Rows the next step() takes: 1 (the prompt) before the first step, width while running, 0
  // once done.
  int64_t num_running() const { return done_ ? 0 : (num_steps_ == 0 ? 1 : width_); }
  int32_t num_steps() const { return num_steps_; }
  int64_t vocab_size() const { return vocab_size_; }
  bool done() const { return done_; }
  // Finished hypotheses held (at most width).
  int32_t num_finished() const;

  // logprobs: row-major [num_running(), vocab_size], row i the next-token log-probs of running
  // beam i. Fills parents/tokens (cleared first) with the next running beams, best first: beam j
  // continues running beam parents[j] with tokens[j]. Both stay empty once the search is done.
  void step(const float* logprobs, int64_t num_rows, int64_t vocab_size,
            std::vector<int64_t>& parents, std::vector<int64_t>& tokens);

  // The best num_return hypotheses, best first. Requires done().
  std::vector<BeamHypothesis> finalize() const;

 private:
  struct Node {
    int32_t parent;  // -1: the prompt
    int32_t token;
  };
  struct Slot {        // one of HF's `width` finished-beam slots
    float score;
    int32_t node;      // -1: still the initial placeholder
    bool finished;
  };

  bool is_eos(int64_t token) const;
  std::vector<int32_t> tokens_of(int32_t node) const;

  int32_t width_, max_new_tokens_, num_return_;
  double length_penalty_;
  EarlyStopping early_stopping_;
  std::vector<int64_t> eos_token_ids_;
  int64_t num_candidates_;

  int32_t num_steps_ = 0;
  int64_t vocab_size_ = -1;
  bool done_ = false;
  bool improvement_possible_ = true;  // HF's is_early_stop_heuristic_unsatisfied
  std::vector<float> running_scores_;  // accumulated log-prob of each running beam
  std::vector<int32_t> running_nodes_;
  std::vector<Slot> finished_;         // width slots, best first
  std::vector<Node> nodes_;            // the search tree: every ranked candidate
};

}  // namespace ponder::core
