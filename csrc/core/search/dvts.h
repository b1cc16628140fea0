// DVTS: diverse verifier tree search, as huggingface/search-and-learn's `_dvts`
// (src/sal/search/diverse_verifier_tree_search.py) runs it for one prompt.
//  - n / width independent subtrees, each holding one beam. The first iteration expands the
//    root once into n children; subtree b owns children [b * width, (b + 1) * width).
//  - Each later iteration expands every active subtree's beam into width children (plan in
//    subtree order). All children are scored; the subtree's beam becomes its child with the
//    highest aggregated score (np.argmax: the first on ties).
//  - A subtree stops when that best child ends the solution (the model finished: EOS or a
//    boxed answer; or depth == max_steps, search-and-learn's last iteration that generates to
//    EOS). The search is done when every subtree stopped, or a budget (over_budget) ends it.
// The result (ranking) is search-and-learn's output: for every subtree, all width children of
// its last expansion (the kept one and its siblings, which may be unfinished steps when the
// kept one finished), n nodes in all; an answer is selected over them (selection.h).
// KV: the expanded beam and the children not kept are released at once; the kept one when
// it is expanded, its subtree stops, or a budget ends the search. Children of an earlier
// expansion that were not kept are marked pruned once they leave the result.
#pragma once

#include "selection.h"
#include "strategy.h"

namespace ponder::core {

class DVTS : public Strategy {
 public:
  DVTS(int32_t n, int32_t width, Aggregation aggregation, Selection select, SearchBudget budget);
  std::string name() const override { return "dvts"; }
  std::vector<Expansion> plan() override;
  void observe(const std::vector<int64_t>& children) override;
  bool done() const override { return done_; }
  std::vector<int64_t> ranking() const override;

 private:
  struct Subtree {
    int64_t beam = 0;
    bool active = true;
    std::vector<int64_t> last;  // children of the last expansion
  };
  void advance(Subtree& s, std::vector<int64_t> kids);

  int32_t n_;
  int32_t width_;
  Aggregation aggregation_;
  Selection select_;
  bool started_ = false;
  bool rooted_ = false;  // the root's children were observed
  bool done_ = false;
  std::vector<Subtree> subtrees_;
};

}  // namespace ponder::core
