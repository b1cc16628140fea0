#include "best_of_n.h"

#include <stdexcept>

namespace ponder::core {

BestOfN::BestOfN(int32_t n, Aggregation aggregation, Selection select, SearchBudget budget)
    : Strategy(budget), n_(n), aggregation_(aggregation), select_(select) {
  if (n < 1) throw std::invalid_argument("n must be >= 1");
}

std::vector<Expansion> BestOfN::plan() {
  if (done_) return {};
  if (!started_) {
    started_ = true;
    return {{0, n_}};
  }
  std::vector<Expansion> out;
  if (over_budget()) {
    done_ = true;
    return out;
  }
  for (int64_t leaf : open_) out.push_back({leaf, 1});
  if (out.empty()) done_ = true;
  return out;
}

void BestOfN::observe(const std::vector<int64_t>& children) {
  // Each expanded leaf has its one child now: it will not be expanded again.
  for (int64_t leaf : open_) release(leaf);
  open_.clear();
  for (int64_t c : children) {
    SearchNode& n = tree_.node_mut(c);
    if (is_terminal(n)) n.finished = true;
    if (n.finished) {
      release(c);
    } else {
      open_.push_back(c);
    }
  }
  if (open_.empty()) done_ = true;
}

std::vector<int64_t> BestOfN::ranking() const {
  std::vector<int64_t> sols;
  for (int64_t id = 1; id < tree_.size(); ++id)
    if (tree_.node(id).finished) sols.push_back(id);
  return rank_solutions(tree_, sols, aggregation_, select_);
}

}  // namespace ponder::core
