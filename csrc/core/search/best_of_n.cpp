#include "best_of_n.h"

#include <algorithm>
#include <map>
#include <stdexcept>

namespace ponder::core {

Selection parse_selection(const std::string& name) {
  if (name == "naive") return Selection::kNaive;
  if (name == "weighted") return Selection::kWeighted;
  if (name == "majority") return Selection::kMajority;
  throw std::invalid_argument("select must be naive, weighted or majority, got '" + name + "'");
}

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
  auto agg = [&](int64_t id) { return aggregate(tree_.node(id).path_scores, aggregation_); };
  std::map<std::string, double> weight;
  std::map<std::string, int64_t> count, first_seen;
  for (size_t i = 0; i < sols.size(); ++i) {
    const std::string& a = tree_.node(sols[i]).answer;
    weight[a] += agg(sols[i]);
    count[a] += 1;
    first_seen.emplace(a, static_cast<int64_t>(i));
  }
  auto key = [&](int64_t id) {
    const std::string& a = tree_.node(id).answer;
    switch (select_) {
      case Selection::kWeighted: return weight[a];
      case Selection::kMajority: return static_cast<double>(count[a]);
      case Selection::kNaive: break;
    }
    return agg(id);
  };
  std::stable_sort(sols.begin(), sols.end(), [&](int64_t x, int64_t y) {
    const double kx = key(x), ky = key(y);
    if (kx != ky) return kx > ky;
    if (select_ != Selection::kNaive) {
      const std::string &ax = tree_.node(x).answer, &ay = tree_.node(y).answer;
      if (ax != ay) return first_seen.at(ax) < first_seen.at(ay);  // ties: first answer seen
      return agg(x) > agg(y);
    }
    return false;
  });
  return sols;
}

}  // namespace ponder::core
