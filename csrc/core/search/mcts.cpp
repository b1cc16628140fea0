#include "mcts.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>

#include "ponder/philox.h"

namespace ponder::core {

double philox_gamma(double alpha, uint64_t seed, uint64_t seq_id) {
  const double a = alpha < 1.0 ? alpha + 1.0 : alpha;
  const double d = a - 1.0 / 3.0, c = 1.0 / std::sqrt(9.0 * d);
  constexpr double kTwoPi = 6.283185307179586;
  double g = 0.0;
  for (uint64_t j = 1;; j += 3) {
    const double u1 = philox_uniform(seed, seq_id, j);
    const double u2 = philox_uniform(seed, seq_id, j + 1);
    const double z = std::sqrt(-2.0 * std::log(1.0 - u1)) * std::cos(kTwoPi * u2);
    const double t = 1.0 + c * z;
    if (t <= 0.0) continue;
    const double v = t * t * t;
    const double u3 = philox_uniform(seed, seq_id, j + 2);
    if (std::log(1.0 - u3) < 0.5 * z * z + d - d * v + d * std::log(v)) {
      g = d * v;
      break;
    }
  }
  if (alpha < 1.0) g *= std::pow(1.0 - philox_uniform(seed, seq_id, 0), 1.0 / alpha);
  return g;
}

MCTS::MCTS(int32_t simulations, int32_t k, double c_puct, double dirichlet, uint64_t seed,
           SearchBudget budget)
    : Strategy(budget), simulations_(simulations), k_(k), c_puct_(c_puct),
      dirichlet_(dirichlet), seed_(seed) {
  if (simulations < 1) throw std::invalid_argument("simulations must be >= 1");
  if (k < 1) throw std::invalid_argument("k must be >= 1");
  if (!(c_puct >= 0.0) || !std::isfinite(c_puct))
    throw std::invalid_argument("c_puct must be finite and >= 0");
  if (!(dirichlet >= 0.0) || !std::isfinite(dirichlet))
    throw std::invalid_argument("dirichlet must be finite and >= 0 (0 disables the noise)");
}

double MCTS::q(int64_t id) const {
  const SearchNode& n = tree_.node(id);
  return n.visits > 0 ? n.value_sum / static_cast<double>(n.visits) : n.score;
}

double MCTS::puct(int64_t parent, int64_t child) const {
  const SearchNode& c = tree_.node(child);
  return q(child) + c_puct_ * c.prior * std::sqrt(static_cast<double>(tree_.node(parent).visits)) /
                        (1.0 + static_cast<double>(c.visits));
}

int64_t MCTS::select_child(int64_t parent) const {
  int64_t best = -1;
  double best_score = -std::numeric_limits<double>::infinity();
  for (int64_t c : tree_.node(parent).children) {
    const double s = puct(parent, c);
    if (best < 0 || s > best_score) {
      best = c;
      best_score = s;
    }
  }
  return best;
}

void MCTS::backup(int64_t id, double value) {
  for (int64_t cur = id; cur >= 0; cur = tree_.node(cur).parent) {
    SearchNode& n = tree_.node_mut(cur);
    n.visits += 1;
    n.value_sum += value;
  }
  ++simulations_done_;
}

std::vector<Expansion> MCTS::plan() {
  if (done_) return {};
  while (simulations_done_ < simulations_ && !over_budget()) {
    int64_t node = 0;
    while (!tree_.node(node).children.empty()) node = select_child(node);
    if (node != 0 && is_terminal(tree_.node(node))) {
      backup(node, q(node));  // openr: node.value, not the raw score (they differ by ulps)
      continue;
    }
    expanding_ = node;
    return {{node, k_}};
  }
  finish();
  return {};
}

void MCTS::add_root_noise() {
  const std::vector<int64_t>& kids = tree_.node(0).children;
  std::vector<double> g(kids.size());
  double total = 0.0;
  for (size_t i = 0; i < kids.size(); ++i) {
    g[i] = philox_gamma(dirichlet_, seed_, kDirichletStream + i);
    total += g[i];
  }
  for (size_t i = 0; i < kids.size(); ++i) {
    const double eta = total > 0.0 ? g[i] / total : 1.0 / static_cast<double>(kids.size());
    SearchNode& n = tree_.node_mut(kids[i]);
    n.prior = n.prior * (1.0 - kNoiseWeight) + eta * kNoiseWeight;
  }
}

void MCTS::observe(const std::vector<int64_t>& children) {
  const int64_t leaf = expanding_;
  expanding_ = -1;
  if (leaf < 0 || children.empty()) return;
  release(leaf);
  double max_mean = -std::numeric_limits<double>::infinity();
  std::vector<double> mean(children.size());
  for (size_t i = 0; i < children.size(); ++i) {
    SearchNode& n = tree_.node_mut(children[i]);
    if (is_terminal(n)) {
      n.finished = true;
      release(children[i]);
    }
    mean[i] = n.num_tokens > 0 ? n.logprob_sum / static_cast<double>(n.num_tokens) : 0.0;
    max_mean = std::max(max_mean, mean[i]);
  }
  double total = 0.0;
  for (size_t i = 0; i < children.size(); ++i) total += std::exp(mean[i] - max_mean);
  for (size_t i = 0; i < children.size(); ++i)
    tree_.node_mut(children[i]).prior = std::exp(mean[i] - max_mean) / total;
  if (leaf == 0 && dirichlet_ > 0.0) add_root_noise();
  const int64_t pick = select_child(leaf);
  backup(pick, tree_.node(pick).score);
}

void MCTS::finish() {
  done_ = true;
  for (int64_t id = 0; id < tree_.size(); ++id) {
    const SearchNode& n = tree_.node(id);
    if (n.children.empty() && !n.finished && !(id > 0 && is_terminal(n))) release(id);
  }
}

std::vector<int64_t> MCTS::ranking() const {
  int64_t node = 0;
  while (!tree_.node(node).children.empty() && !(node > 0 && tree_.node(node).finished)) {
    int64_t best = -1;
    for (int64_t c : tree_.node(node).children)
      if (best < 0 || tree_.node(c).visits > tree_.node(best).visits) best = c;
    node = best;
  }
  std::vector<int64_t> rest;
  for (int64_t id = 1; id < tree_.size(); ++id)
    if (tree_.node(id).finished && id != node) rest.push_back(id);
  std::sort(rest.begin(), rest.end(), [&](int64_t x, int64_t y) {
    const SearchNode &a = tree_.node(x), &b = tree_.node(y);
    if (a.visits != b.visits) return a.visits > b.visits;
    if (q(x) != q(y)) return q(x) > q(y);
    return x < y;
  });
  std::vector<int64_t> out;
  if (node > 0 && (tree_.node(node).finished || rest.empty())) out.push_back(node);
  out.insert(out.end(), rest.begin(), rest.end());
  return out;
}

}  // namespace ponder::core
