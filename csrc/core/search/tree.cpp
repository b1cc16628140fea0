#include "tree.h"

#include <cmath>
#include <stdexcept>

namespace ponder::core {

Aggregation parse_aggregation(const std::string& name) {
  if (name == "last") return Aggregation::kLast;
  if (name == "min") return Aggregation::kMin;
  if (name == "prod") return Aggregation::kProd;
  if (name == "mean") return Aggregation::kMean;
  throw std::invalid_argument("aggregation must be last, min, prod or mean, got '" + name + "'");
}

double aggregate(const std::vector<double>& s, Aggregation agg) {
  if (s.empty()) return 0.0;
  switch (agg) {
    case Aggregation::kLast: return s.back();
    case Aggregation::kMin: {
      double m = s[0];
      for (double v : s) m = v < m ? v : m;
      return m;
    }
    case Aggregation::kProd: {
      double p = 1.0;
      for (double v : s) p *= v;
      return p;
    }
    case Aggregation::kMean: {
      double t = 0.0;
      for (double v : s) t += v;
      return t / static_cast<double>(s.size());
    }
  }
  return 0.0;
}

SearchTree::SearchTree() { nodes_.emplace_back(); }

const SearchNode& SearchTree::node(int64_t id) const {
  if (id < 0 || id >= size()) throw std::invalid_argument("unknown node " + std::to_string(id));
  return nodes_[id];
}

SearchNode& SearchTree::node_mut(int64_t id) {
  return const_cast<SearchNode&>(static_cast<const SearchTree*>(this)->node(id));
}

int64_t SearchTree::add_child(int64_t parent, int64_t num_tokens, double logprob_sum,
                              bool finished) {
  node(parent);  // validates
  if (num_tokens < 0) throw std::invalid_argument("num_tokens must be >= 0");
  SearchNode n;
  n.id = size();
  n.parent = parent;
  n.depth = nodes_[parent].depth + 1;
  n.num_tokens = num_tokens;
  n.logprob_sum = logprob_sum;
  n.finished = finished;
  n.path_scores = nodes_[parent].path_scores;
  nodes_.push_back(std::move(n));
  nodes_[parent].children.push_back(nodes_.back().id);
  total_tokens_ += num_tokens;
  return nodes_.back().id;
}

void SearchTree::set_score(int64_t id, double score) {
  SearchNode& n = node_mut(id);
  if (id == 0) throw std::invalid_argument("the root has no step to score");
  if (!std::isfinite(score)) throw std::invalid_argument("scores must be finite");
  if (n.scored) n.path_scores.back() = score; else n.path_scores.push_back(score);
  n.score = score;
  n.scored = true;
}

std::vector<int64_t> SearchTree::prune(int64_t id) {
  std::vector<int64_t> out, stack{id};
  while (!stack.empty()) {
    const int64_t cur = stack.back();
    stack.pop_back();
    SearchNode& n = node_mut(cur);
    if (!n.pruned) {
      n.pruned = true;
      out.push_back(cur);
    }
    for (int64_t c : n.children) stack.push_back(c);
  }
  return out;
}

std::vector<int64_t> SearchTree::path(int64_t id) const {
  std::vector<int64_t> p;
  for (int64_t cur = id; cur > 0; cur = node(cur).parent) p.push_back(cur);
  return {p.rbegin(), p.rend()};
}

}  // namespace ponder::core
