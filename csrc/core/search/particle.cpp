#include "particle.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <stdexcept>

#include "ponder/philox.h"

namespace ponder::core {

ParticleGibbs::ParticleGibbs(int32_t n, int32_t iterations, int32_t num_ref, double temperature,
                             uint64_t seed, Aggregation aggregation, SearchBudget budget)
    : Strategy(budget),
      n_(n),
      iterations_(iterations),
      num_ref_(num_ref),
      temperature_(temperature),
      seed_(seed),
      aggregation_(aggregation) {
  if (n < 1) throw std::invalid_argument("n must be >= 1");
  if (iterations < 1) throw std::invalid_argument("iterations must be >= 1");
  if (num_ref < 0 || num_ref >= n)
    throw std::invalid_argument("num_ref_particles must be >= 0 and < n");
  if (!(temperature > 0.0) || !std::isfinite(temperature))
    throw std::invalid_argument("temperature must be a finite number > 0");
  start_iteration();
}

void ParticleGibbs::start_iteration() {
  round_ = 0;
  // The first iteration has no references yet: all n particles are free (its_hub).
  population_.assign(n_ - refs_.size(), Particle{0, false});
  population_.insert(population_.end(), refs_.begin(), refs_.end());
  held_.insert(0);
}

double ParticleGibbs::log_weight(int64_t node) const {
  // its_hub's _inv_sigmoid: clip away from 0 and 1, then logit.
  double x = aggregate(tree_.node(node).path_scores, aggregation_);
  x = std::min(std::max(x, 1e-7), 1.0 - 1e-7);
  return std::log(x / (1.0 - x));
}

std::vector<int64_t> ParticleGibbs::particles() const {
  std::vector<int64_t> out;
  for (const Particle& p : population_) out.push_back(p.node);
  return out;
}

std::vector<Expansion> ParticleGibbs::plan() {
  if (done_) return {};
  if (over_budget()) {
    finish();
    return {};
  }
  // Copies of one particle share its node: one expansion with a child per copy, children
  // handed to the copies in particle order.
  std::vector<Expansion> out;
  std::map<int64_t, size_t> slot;
  pending_.clear();
  for (size_t i = 0; i < population_.size(); ++i) {
    if (population_[i].stopped) continue;
    auto [it, fresh] = slot.emplace(population_[i].node, out.size());
    if (fresh) {
      out.push_back({population_[i].node, 0});
      pending_.emplace_back();
    }
    out[it->second].num_children += 1;
    pending_[it->second].push_back(i);
  }
  if (out.empty()) finish();
  return out;
}

ParticleResampling ParticleGibbs::draw(int32_t round, int32_t num_draws) const {
  ParticleResampling r;
  r.iteration = iteration_;
  r.round = round;
  std::vector<double> x;
  for (const Particle& p : population_) {
    r.nodes.push_back(p.node);
    r.log_weights.push_back(log_weight(p.node));
    x.push_back(r.log_weights.back() / temperature_);
  }
  // its_hub's _softmax, then random.choices(weights=...): inverse CDF over the running sum.
  const double m = *std::max_element(x.begin(), x.end());
  double sum = 0.0;
  for (double& v : x) sum += (v = std::exp(v - m));
  std::vector<double> cdf;
  double acc = 0.0;
  for (double v : x) {
    r.weights.push_back(v / sum);
    cdf.push_back(acc += r.weights.back());
  }
  const uint64_t seq_id = (static_cast<uint64_t>(iteration_) << 32) | static_cast<uint32_t>(round);
  for (int32_t j = 0; j < num_draws; ++j) {
    const double u = philox_uniform(seed_, seq_id, static_cast<uint64_t>(j));
    r.indices.push_back(std::upper_bound(cdf.begin(), cdf.end() - 1, u * cdf.back()) - cdf.begin());
  }
  return r;
}

void ParticleGibbs::observe(const std::vector<int64_t>& children) {
  size_t k = 0;
  for (const auto& group : pending_) {
    for (size_t i : group) {
      if (k >= children.size()) throw std::invalid_argument("fewer children than planned");
      const int64_t c = children[k++];
      SearchNode& n = tree_.node_mut(c);
      if (is_terminal(n)) n.finished = true;
      population_[i] = Particle{c, n.finished};
      if (n.finished) {
        release(c);
      } else {
        held_.insert(c);
      }
    }
  }
  if (k != children.size()) throw std::invalid_argument("more children than planned");
  pending_.clear();
  ++round_;

  ParticleResampling r = draw(round_, n_ - static_cast<int32_t>(refs_.size()));
  std::vector<Particle> next;
  for (int64_t idx : r.indices) {
    Particle p = population_[idx];
    // A reference drawn as a free particle continues from its step at this round (its_hub
    // truncates steps to current_step); shorter ones stay finished copies.
    if (tree_.node(p.node).depth > round_) {
      while (tree_.node(p.node).depth > round_) p.node = tree_.node(p.node).parent;
      p.stopped = false;
    }
    next.push_back(p);
  }
  next.insert(next.end(), refs_.begin(), refs_.end());
  population_ = std::move(next);
  history_.push_back(std::move(r));

  const bool all_stopped = std::all_of(population_.begin(), population_.end(),
                                       [](const Particle& p) { return p.stopped; });
  if (all_stopped) {
    if (num_ref_ > 0) {
      ParticleResampling refs = draw(0, num_ref_);
      refs_.clear();
      for (int64_t idx : refs.indices) refs_.push_back(population_[idx]);
      history_.push_back(std::move(refs));
    }
    if (++iteration_ < iterations_) {
      start_iteration();
    } else {
      finish();
      return;
    }
  }
  release_unneeded();
}

void ParticleGibbs::release_unneeded() {
  std::set<int64_t> keep;
  const bool more_iterations = iteration_ + 1 < iterations_;
  if (round_ == 0 || more_iterations) keep.insert(0);  // each iteration starts at the root
  for (const Particle& p : population_)
    if (!p.stopped) keep.insert(p.node);
  // A reference may still be cut back to its step at a later round of this iteration.
  for (const Particle& p : refs_)
    for (int64_t a = p.node; tree_.node(a).depth > round_; a = tree_.node(a).parent)
      keep.insert(a);
  // Any particle may become the next iteration's reference.
  if (more_iterations)
    for (const Particle& p : population_)
      for (int64_t a = p.node; a != 0; a = tree_.node(a).parent) keep.insert(a);
  for (auto it = held_.begin(); it != held_.end();) {
    if (keep.count(*it)) {
      ++it;
    } else {
      release(*it);
      it = held_.erase(it);
    }
  }
}

void ParticleGibbs::finish() {
  done_ = true;
  pending_.clear();
  for (int64_t id : held_) release(id);
  held_.clear();
}

std::vector<int64_t> ParticleGibbs::ranking() const {
  // its_hub's answer is np.argmax of the last population's log weights: best first, ties in
  // particle order; copies of one particle appear once.
  std::vector<size_t> order;
  for (size_t i = 0; i < population_.size(); ++i)
    if (tree_.node(population_[i].node).finished) order.push_back(i);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return log_weight(population_[a].node) > log_weight(population_[b].node);
  });
  std::vector<int64_t> out;
  std::set<int64_t> seen;
  for (size_t i : order)
    if (seen.insert(population_[i].node).second) out.push_back(population_[i].node);
  return out;
}

}  // namespace ponder::core
