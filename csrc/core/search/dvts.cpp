#include "dvts.h"

#include <stdexcept>

namespace ponder::core {

DVTS::DVTS(int32_t n, int32_t width, Aggregation aggregation, Selection select,
           SearchBudget budget)
    : Strategy(budget), n_(n), width_(width), aggregation_(aggregation), select_(select) {
  if (n < 1) throw std::invalid_argument("n must be >= 1");
  if (width < 1) throw std::invalid_argument("width must be >= 1");
  if (n % width != 0)
    throw std::invalid_argument("n must be a multiple of width, got n=" + std::to_string(n) +
                                " width=" + std::to_string(width));
  subtrees_.resize(n / width);
}

std::vector<Expansion> DVTS::plan() {
  if (done_) return {};
  if (over_budget()) {
    done_ = true;
    for (Subtree& s : subtrees_) {
      if (s.active) release(s.beam);
      s.active = false;
    }
    return {};
  }
  if (!started_) {
    started_ = true;
    return {{0, n_}};
  }
  std::vector<Expansion> out;
  for (const Subtree& s : subtrees_)
    if (s.active) out.push_back({s.beam, width_});
  if (out.empty()) done_ = true;
  return out;
}

void DVTS::advance(Subtree& s, std::vector<int64_t> kids) {
  if (kids.size() != static_cast<size_t>(width_))
    throw std::logic_error("dvts: a beam did not get width children");
  for (int64_t x : s.last)
    if (x != s.beam) tree_.prune(x);
  size_t best = 0;
  double best_score = 0.0;
  for (size_t i = 0; i < kids.size(); ++i) {
    SearchNode& node = tree_.node_mut(kids[i]);
    if (is_terminal(node)) node.finished = true;
    const double v = aggregate(node.path_scores, aggregation_);
    if (i == 0 || v > best_score) best = i, best_score = v;
  }
  for (size_t i = 0; i < kids.size(); ++i)
    if (i != best) release(kids[i]);
  s.beam = kids[best];
  if (is_terminal(tree_.node(s.beam))) {
    s.active = false;
    release(s.beam);
  }
  s.last = std::move(kids);
}

void DVTS::observe(const std::vector<int64_t>&) {
  if (!rooted_) {
    rooted_ = true;
    const auto& kids = tree_.node(0).children;
    if (kids.size() != static_cast<size_t>(n_))
      throw std::logic_error("dvts: the root did not get n children");
    release(0);
    for (size_t b = 0; b < subtrees_.size(); ++b)
      advance(subtrees_[b], {kids.begin() + b * width_, kids.begin() + (b + 1) * width_});
  } else {
    for (Subtree& s : subtrees_) {
      if (!s.active) continue;
      release(s.beam);
      advance(s, tree_.node(s.beam).children);
    }
  }
  bool any = false;
  for (const Subtree& s : subtrees_) any = any || s.active;
  if (!any) done_ = true;
}

std::vector<int64_t> DVTS::ranking() const {
  std::vector<int64_t> pool;
  for (const Subtree& s : subtrees_) pool.insert(pool.end(), s.last.begin(), s.last.end());
  return rank_solutions(tree_, pool, aggregation_, select_);
}

}  // namespace ponder::core
