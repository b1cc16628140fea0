#include "step_beam.h"

#include <algorithm>
#include <numeric>
#include <set>
#include <stdexcept>
#include <tuple>

namespace ponder::core {

StepBeamSearch::StepBeamSearch(int32_t n, int32_t width, int32_t lookahead,
                               bool filter_duplicates, Aggregation aggregation, Selection select,
                               SearchBudget budget)
    : Strategy(budget), n_(n), width_(width), filter_duplicates_(filter_duplicates),
      aggregation_(aggregation), select_(select) {
  if (n < 1) throw std::invalid_argument("n must be >= 1");
  if (width < 1) throw std::invalid_argument("width must be >= 1");
  if (n % width != 0)
    throw std::invalid_argument("n must be a multiple of width, got n=" + std::to_string(n) +
                                " width=" + std::to_string(width));
  if (lookahead != 0)
    throw std::invalid_argument(
        "lookahead must be 0: search-and-learn's beam search scores only the sampled step, "
        "not the greedy lookahead text, and expansions cannot request greedy decoding");
}

std::vector<Expansion> StepBeamSearch::plan() {
  if (done_) return {};
  if (over_budget() || active_.empty()) {
    done_ = true;
    release_all(active_);
    active_.clear();
    return {};
  }
  const int32_t k = static_cast<int32_t>(active_.size());
  std::vector<Expansion> out;
  for (int32_t i = 0; i < k; ++i) out.push_back({active_[i], n_ / k + (i < n_ % k ? 1 : 0)});
  return out;
}

void StepBeamSearch::observe(const std::vector<int64_t>&) {
  const size_t k = active_.size();
  std::vector<int64_t> cands(n_);
  for (size_t j = 0; j < cands.size(); ++j) {
    const auto& kids = tree_.node(active_[j % k]).children;
    if (j / k >= kids.size()) throw std::logic_error("beam search: a planned child is missing");
    cands[j] = kids[j / k];
  }
  release_all(active_);
  active_.clear();

  std::vector<int64_t> open;
  for (int64_t c : cands) {
    SearchNode& node = tree_.node_mut(c);
    if (is_terminal(node)) {
      node.finished = true;
      completed_.push_back(c);
      release(c);
    } else {
      open.push_back(c);
    }
  }
  if (open.empty()) {
    done_ = true;
    return;
  }
  if (filter_duplicates_) {
    std::set<std::tuple<int64_t, int64_t, double>> seen;
    std::vector<int64_t> unique;
    for (int64_t c : open) {
      const SearchNode& node = tree_.node(c);
      if (seen.emplace(node.parent, node.num_tokens, node.logprob_sum).second)
        unique.push_back(c);
      else
        drop(c);
    }
    open.swap(unique);
  }
  std::vector<size_t> order(open.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return agg(open[a]) < agg(open[b]); });
  const size_t keep = std::min(order.size(), static_cast<size_t>(n_ / width_));
  std::vector<bool> kept(open.size(), false);
  for (size_t i = order.size() - keep; i < order.size(); ++i) kept[order[i]] = true;
  for (size_t i = 0; i < open.size(); ++i) {
    if (kept[i])
      active_.push_back(open[i]);
    else
      drop(open[i]);
  }
}

std::vector<int64_t> StepBeamSearch::ranking() const {
  std::vector<int64_t> pool = completed_;
  std::stable_sort(pool.begin(), pool.end(),
                   [&](int64_t a, int64_t b) { return agg(a) > agg(b); });
  if (pool.size() > static_cast<size_t>(n_)) pool.resize(n_);
  if (!pool.empty() && pool.size() < static_cast<size_t>(n_)) {
    std::vector<int64_t> padded;
    for (size_t i = 0; i < static_cast<size_t>(n_); ++i) padded.push_back(pool[i % pool.size()]);
    pool.swap(padded);
  }
  return rank_solutions(tree_, pool, aggregation_, select_);
}

}  // namespace ponder::core
