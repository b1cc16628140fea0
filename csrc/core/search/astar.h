// AStar: A*-decoding (Chatziveroglou, "A*-Decoding: Token-Efficient Inference Scaling",
// arXiv 2505.13672). The open set holds partial solutions (tree nodes); each round pops the node
// with the lowest f = g + h, samples k next steps from it, has every child scored by the
// verifier and pushes the children.
//   h(n) = 1 - score(n): the verifier's score of n's latest step, read as the probability that
//          the path still leads to a correct answer, so 1 - score estimates the cost to go (the
//          paper's heuristic, h(s) = 1 - r(s)).
//   g(n) = depth_cost * depth(n). The paper's exact g could not be read here, so the choice is
//          ours: a PRM step score already judges the whole prefix, so summing 1 - score over the
//          path (a cumulative cost) would count the same evidence once per step and push the
//          search towards breadth-first on short prefixes. A per-step cost depth_cost >= 0 keeps
//          A*'s form and lets a user trade depth for score; the default 0 is greedy best-first
//          on the latest step score.
//   ties:  equal f pops the older node (smaller id).
//   stop:  a terminal node (finished, or depth == max_steps) on top of the open set is the
//          answer (goal test on pop); otherwise the search stops when `budget` expansions
//          (the root's included), max_tokens or max_score_calls are spent, or the open set is
//          empty. ranking(): finished nodes by (f, id), so the popped solution comes first and,
//          without one, the best finished solution found; if nothing finished, the best
//          partial (the open set's top) alone.
//   KV:    a popped node is never pushed again, so it is released once its children exist;
//          terminal children at once; the rest of the open set when the search ends.
#pragma once

#include <set>
#include <utility>

#include "strategy.h"

namespace ponder::core {

class AStar : public Strategy {
 public:
  AStar(int32_t k, int64_t budget, double depth_cost, SearchBudget search_budget);
  std::string name() const override { return "astar"; }
  std::vector<Expansion> plan() override;
  void observe(const std::vector<int64_t>& children) override;
  bool done() const override { return done_; }
  std::vector<int64_t> ranking() const override;

  double f(int64_t id) const;
  int64_t expansions() const { return expansions_; }
  int64_t solution() const { return solution_; }  // the terminal node popped, -1 if none

 private:
  void finish();

  int32_t k_;
  int64_t budget_expansions_;
  double depth_cost_;
  int64_t expansions_ = 0;
  int64_t expanding_ = -1;
  int64_t solution_ = -1;
  bool started_ = false;
  bool done_ = false;
  std::set<std::pair<double, int64_t>> open_;  // (f, id): begin() is the next pop
};

}  // namespace ponder::core
