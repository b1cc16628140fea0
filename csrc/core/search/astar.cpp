#include "astar.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace ponder::core {

AStar::AStar(int32_t k, int64_t budget, double depth_cost, SearchBudget search_budget)
    : Strategy(search_budget), k_(k), budget_expansions_(budget), depth_cost_(depth_cost) {
  if (k < 1) throw std::invalid_argument("k must be >= 1");
  if (budget < 1) throw std::invalid_argument("budget must be >= 1 (expansions)");
  if (!(depth_cost >= 0.0) || !std::isfinite(depth_cost))
    throw std::invalid_argument("depth_cost must be finite and >= 0");
}

double AStar::f(int64_t id) const {
  const SearchNode& n = tree_.node(id);
  if (id == 0) return 0.0;
  return depth_cost_ * static_cast<double>(n.depth) + (1.0 - n.score);
}

std::vector<Expansion> AStar::plan() {
  if (done_) return {};
  if (!started_) {
    started_ = true;
    expansions_ = 1;
    expanding_ = 0;
    return {{0, k_}};
  }
  if (open_.empty()) {
    finish();
    return {};
  }
  const int64_t top = open_.begin()->second;
  if (is_terminal(tree_.node(top))) {  // goal test on pop: free, whatever the budget
    open_.erase(open_.begin());
    solution_ = top;
    finish();
    return {};
  }
  if (expansions_ >= budget_expansions_ || over_budget()) {
    finish();
    return {};
  }
  open_.erase(open_.begin());
  ++expansions_;
  expanding_ = top;
  return {{top, k_}};
}

void AStar::observe(const std::vector<int64_t>& children) {
  if (expanding_ >= 0) release(expanding_);
  expanding_ = -1;
  for (int64_t c : children) {
    SearchNode& n = tree_.node_mut(c);
    if (is_terminal(n)) {
      n.finished = true;
      release(c);
    }
    open_.emplace(f(c), c);
  }
}

void AStar::finish() {
  done_ = true;
  for (const auto& e : open_)
    if (!tree_.node(e.second).finished) release(e.second);
}

std::vector<int64_t> AStar::ranking() const {
  std::vector<std::pair<double, int64_t>> sols;
  for (int64_t id = 1; id < tree_.size(); ++id)
    if (tree_.node(id).finished) sols.emplace_back(f(id), id);
  if (sols.empty()) {
    if (open_.empty()) return {};
    return {open_.begin()->second};
  }
  std::sort(sols.begin(), sols.end());
  std::vector<int64_t> out;
  for (const auto& s : sols) out.push_back(s.second);
  return out;
}

}  // namespace ponder::core
