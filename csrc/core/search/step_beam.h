// StepBeamSearch (the BeamSearch spec; core::BeamSearch is HF token beam search): step-level
// beam search with a PRM, as huggingface/search-and-learn's
// `_beam_search` (src/sal/search/beam_search.py) runs it for one prompt. One iteration:
//  1. The kept beams (in candidate order) are repeated as (kept * (n // k + 1))[:n], so there
//     are n candidates; candidate j is the (j // k)-th new child of kept beam j % k. The first
//     iteration has one kept beam, the root, so the root gets n children.
//  2. Every candidate gets one sampled step and is scored (path scores aggregated by
//     `aggregation`; search-and-learn's default is "last").
//  3. Candidates that end their solution (the model finished, or depth == max_steps, which is
//     search-and-learn's last iteration that generates to EOS) are appended, in candidate
//     order, to the completed list and leave the pool. No active candidate left: done.
//  4. filter_duplicates: of active candidates with the same text only the first is kept. The
//     tree holds no text, so the key is (parent, num_tokens, logprob_sum): two samples of one
//     step from one parent with the same length and the same log-probability. Kept beams are
//     themselves distinct, so equal full texts can only come from one parent.
//  5. The top n / width active candidates by aggregated score are kept, in candidate order
//     (np.argsort ascending, stable, last n / width: on equal scores the later candidate wins);
//     the others are pruned.
// The result (ranking) is search-and-learn's returned list: the completed beams sorted by
// aggregated score (stable, best first; its `sort_completed=True`), the first n, and when fewer
// than n completed, repeated as (completed * (n // c + 1))[:n]; then an answer is selected over
// that list (selection.h; a repeated solution votes once per copy). ranking() lists each node
// once. A budget (over_budget) ends the search before the next iteration.
// lookahead must be 0: search-and-learn's beam search generates lookahead steps greedily but
// scores only the beam's own text (prm.score(prompts, [current_text])), so lookahead changes
// no decision, only costs tokens; and an Expansion carries no temperature, so the engine
// cannot be asked for greedy rollouts anyway.
// KV: an expanded beam, a completed candidate and a pruned one are released at once; kept
// beams are released when expanded, or when a budget ends the search.
#pragma once

#include "selection.h"
#include "strategy.h"

namespace ponder::core {

class StepBeamSearch : public Strategy {
 public:
  StepBeamSearch(int32_t n, int32_t width, int32_t lookahead, bool filter_duplicates,
             Aggregation aggregation, Selection select, SearchBudget budget);
  std::string name() const override { return "beam_search"; }
  std::vector<Expansion> plan() override;
  void observe(const std::vector<int64_t>& children) override;
  bool done() const override { return done_; }
  std::vector<int64_t> ranking() const override;

 private:
  double agg(int64_t id) const { return aggregate(tree_.node(id).path_scores, aggregation_); }
  void drop(int64_t id) { release_all(tree_.prune(id)); }

  int32_t n_;
  int32_t width_;
  bool filter_duplicates_;
  Aggregation aggregation_;
  Selection select_;
  bool done_ = false;
  std::vector<int64_t> active_{0};  // kept beams, in candidate order
  std::vector<int64_t> completed_;  // in completion order
};

}  // namespace ponder::core
