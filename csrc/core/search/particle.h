// ParticleFilter and ParticleGibbs with the semantics of its_hub's `ParticleGibbs`
// (Red-Hat-AI-Innovation-Team/its_hub, its_hub/algorithms/particle_gibbs.py; Puri et al.,
// "A Probabilistic Inference Approach to Inference-Time Scaling of LLMs"):
//   - n particles start empty at the root; every round each unfinished particle is extended
//     by one step and scored; a particle's log weight is logit(clip(aggregate(path scores),
//     1e-7, 1 - 1e-7)) of its last node (its_hub's `_inv_sigmoid` of the PRM's aggregated score);
//   - after every round the whole population, finished particles included (with their final
//     weight), is resampled with replacement: n - (references held) draws from
//     softmax(log_weight / temperature); a node drawn k times is expanded with k children;
//   - an iteration ends when every particle is finished (or reached max_steps);
//   - ParticleGibbs runs `iterations` such iterations (the first with n free particles); at the
//     end of each, num_ref reference particles are drawn from softmax(final log weights /
//     temperature) and kept, unextended, in the next iteration's population (conditional
//     SMC). A reference drawn as a free particle at round t is cut back to its ancestor at
//     depth t and continues from there (its_hub's truncation), otherwise it stays a finished
//     copy;
//   - the answer is the particle of the last population with the highest log weight (first
//     one on ties: np.argmax); ParticleFilter is ParticleGibbs with one iteration, no reference.
// Differences from its_hub: its StepGeneration stops a particle after max_steps + 1 steps,
// here after max_steps (ponder's is_terminal); its resampling draws come from Python's global
// `random`, here from Philox (below), and its softmax has no temperature (temperature = 1).
//
// Randomness: draw j of the resampling after round t (t >= 1) of iteration i uses
// philox_uniform(seed, (i << 32) | t, j); the reference draw j at the end of iteration i uses
// round t = 0. Multinomial draw: cdf = running sum of the normalized weights in particle order,
// index = the first particle whose cdf exceeds u * cdf[last] (Python's random.choices).
#pragma once

#include <set>

#include "strategy.h"

namespace ponder::core {

// One resampling (round >= 1) or reference selection (round 0) of the population.
struct ParticleResampling {
  int32_t iteration = 0;
  int32_t round = 0;
  std::vector<int64_t> nodes;        // the population's last nodes, in particle order
  std::vector<double> log_weights;   // logit of the clipped aggregated score
  std::vector<double> weights;       // softmax(log_weights / temperature)
  std::vector<int64_t> indices;      // drawn particles, in draw order
};

class ParticleGibbs : public Strategy {
 public:
  ParticleGibbs(int32_t n, int32_t iterations, int32_t num_ref, double temperature,
                uint64_t seed, Aggregation aggregation, SearchBudget budget);
  std::string name() const override { return "particle_gibbs"; }
  std::vector<Expansion> plan() override;
  void observe(const std::vector<int64_t>& children) override;
  bool done() const override { return done_; }
  std::vector<int64_t> ranking() const override;

  std::vector<int64_t> particles() const;  // the population's last nodes, in particle order
  const std::vector<ParticleResampling>& history() const { return history_; }
  double log_weight(int64_t node) const;

 private:
  struct Particle {
    int64_t node;
    bool stopped;
  };
  void start_iteration();
  ParticleResampling draw(int32_t round, int32_t num_draws) const;
  void release_unneeded();
  void finish();

  int32_t n_, iterations_, num_ref_;
  double temperature_;
  uint64_t seed_;
  Aggregation aggregation_;
  int32_t iteration_ = 0;
  int32_t round_ = 0;  // rounds propagated in this iteration (its_hub's current_step)
  bool done_ = false;
  std::vector<Particle> population_;   // free particles, then the references
  std::vector<Particle> refs_;
  std::vector<std::vector<size_t>> pending_;  // per planned expansion: its particles
  std::set<int64_t> held_;             // unfinished nodes whose KV is not released yet
  std::vector<ParticleResampling> history_;
};

// its_hub's ParticleFiltering: one iteration, no reference particle.
class ParticleFilter : public ParticleGibbs {
 public:
  ParticleFilter(int32_t n, double temperature, uint64_t seed, Aggregation aggregation,
                 SearchBudget budget)
      : ParticleGibbs(n, 1, 0, temperature, seed, aggregation, budget) {}
  std::string name() const override { return "particle_filter"; }
};

}  // namespace ponder::core
