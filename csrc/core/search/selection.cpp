#include "selection.h"

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

std::vector<int64_t> rank_solutions(const SearchTree& tree, const std::vector<int64_t>& pool,
                                    Aggregation aggregation, Selection select) {
  auto agg = [&](int64_t id) { return aggregate(tree.node(id).path_scores, aggregation); };
  std::map<std::string, double> weight;
  std::map<std::string, int64_t> count, first_seen;
  std::vector<int64_t> sols;
  std::map<int64_t, bool> seen;
  for (size_t i = 0; i < pool.size(); ++i) {
    const std::string& a = tree.node(pool[i]).answer;
    weight[a] += agg(pool[i]);
    count[a] += 1;
    first_seen.emplace(a, static_cast<int64_t>(i));
    if (seen.emplace(pool[i], true).second) sols.push_back(pool[i]);
  }
  auto key = [&](int64_t id) {
    const std::string& a = tree.node(id).answer;
    switch (select) {
      case Selection::kWeighted: return weight[a];
      case Selection::kMajority: return static_cast<double>(count[a]);
      case Selection::kNaive: break;
    }
    return agg(id);
  };
  std::stable_sort(sols.begin(), sols.end(), [&](int64_t x, int64_t y) {
    const double kx = key(x), ky = key(y);
    if (kx != ky) return kx > ky;
    if (select != Selection::kNaive) {
      const std::string &ax = tree.node(x).answer, &ay = tree.node(y).answer;
      if (ax != ay) return first_seen.at(ax) < first_seen.at(ay);  // ties: first answer seen
      return agg(x) > agg(y);
    }
    return false;
  });
  return sols;
}

}  // namespace ponder::core
