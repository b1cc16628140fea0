// MCTS with openr's semantics (openreasoner/openr, reason/guided_search/tree.py: SearchTree
// _simulate / _select_child / _ucb_score / _expand_leaf_node / _add_exploration_noise, and
// envs/MATH/env.py for the priors), one simulation per plan()/observe() round:
//   select   from the root, while the node has children, go to the child maximising
//            Q + c_puct * P * sqrt(N_parent) / (1 + N_child); Q = value_sum / visits, or the
//            child's verifier score while it is unvisited (openr's `_initial_value`, with
//            init_critic_value on); ties keep the first child in generation order (openr's
//            strict `>` over an insertion-ordered dict). openr's pb_c also has the slowly
//            growing log((N + 19652 + 1) / 19652) term (< 0.003 for 50 visits); it is dropped,
//            c_puct plays pb_c_init (1.25 there).
//   expand   the leaf reached gets k children (one round of generation); every child is scored
//            and its prior is P_i = exp(m_i) / sum_j exp(m_j) over the k siblings, where
//            m_i = logprob_sum / num_tokens is the step's mean token log-probability (0 for an
//            empty step), computed as exp(m_i - max m) for range.
//   evaluate as openr does after an expansion: select one of the new children with the same
//            rule (N_parent = the leaf's visits) and back its score up.
//   backup   visits += 1 and value_sum += value on that child and every ancestor up to the root.
//   terminal a selected leaf that is terminal (finished, or depth == max_steps) is not
//            expanded: its value is backed up (openr with no_terminal_reward: node.value, i.e.
//            Q, the mean of its own score so far, or its score if unvisited) and the simulation
//            ends inside plan(), without a generation round.
//   root     the first simulation expands the root. With dirichlet = alpha > 0, the root
//            children's priors become 0.75 * P + 0.25 * eta, eta ~ Dirichlet(alpha, ..., alpha),
//            once, right after the root's expansion (AlphaZero, openr root_noise_weight 0.25).
//   noise    eta_i = G_i / sum_j G_j, G_i ~ Gamma(alpha, 1) by Marsaglia-Tsang (2000) from
//            Philox uniforms u(j) = philox_uniform(seed, kDirichletStream + i, j): with
//            a = alpha < 1 ? alpha + 1 : alpha, d = a - 1/3, c = 1 / sqrt(9 d), attempt t uses
//            j = 1 + 3t, 2 + 3t, 3 + 3t: z = sqrt(-2 log(1 - u(j))) cos(2 pi u(j+1))
//            (Box-Muller), v = (1 + c z)^3, rejected if 1 + c z <= 0, accepted if
//            log(1 - u(j+2)) < z^2 / 2 + d - d v + d log v, giving d v; for alpha < 1 the
//            result is multiplied by (1 - u(0))^(1 / alpha). If all G_i are 0, eta is uniform.
//   answer   ranking(): descend from the root to the most visited child (ties: first) until a
//            finished node or a leaf; that node first if finished, then the other finished
//            nodes by (visits desc, Q desc, id). Nothing finished: the end of that path alone.
//   stop     after `simulations` simulations, or when max_tokens / max_score_calls is spent
//            (checked before each simulation).
//   KV:      a node is expanded at most once: it is released once its children exist,
//            terminal children at once, the other unexpanded leaves when the search ends.
// Differences from openr: openr expands a leaf on its second visit (the first backs up its
// score without generating); here a round always generates, so a leaf is expanded when first
// selected. openr also merges sibling steps with identical text; the tree keeps them apart.
#pragma once

#include "strategy.h"

namespace ponder::core {

class MCTS : public Strategy {
 public:
  static constexpr uint64_t kDirichletStream = 0x4D43545300000000ull;  // "MCTS" << 32
  static constexpr double kNoiseWeight = 0.25;

  MCTS(int32_t simulations, int32_t k, double c_puct, double dirichlet, uint64_t seed,
       SearchBudget budget);
  std::string name() const override { return "mcts"; }
  std::vector<Expansion> plan() override;
  void observe(const std::vector<int64_t>& children) override;
  bool done() const override { return done_; }
  std::vector<int64_t> ranking() const override;

  int32_t simulations_done() const { return simulations_done_; }
  double q(int64_t id) const;
  double puct(int64_t parent, int64_t child) const;

 private:
  int64_t select_child(int64_t parent) const;
  void backup(int64_t id, double value);
  void add_root_noise();
  void finish();

  int32_t simulations_;
  int32_t k_;
  double c_puct_;
  double dirichlet_;
  uint64_t seed_;
  int32_t simulations_done_ = 0;
  int64_t expanding_ = -1;
  bool done_ = false;
};

// One Gamma(alpha, 1) draw from the Philox stream (seed, seq_id), as documented above.
double philox_gamma(double alpha, uint64_t seed, uint64_t seq_id);

}  // namespace ponder::core
