// SearchTree: the nodes of one search. A node is one reasoning step: its tokens were sampled
// from the policy after its parent's path. The engine owns the KV (one sequence per node it
// may still expand); the tree holds the bookkeeping strategies decide on.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ponder::core {

struct SearchNode {
  int64_t id = 0;
  int64_t parent = -1;
  std::vector<int64_t> children;
  int32_t depth = 0;           // steps from the root (the root, the question, is depth 0)
  int64_t num_tokens = 0;      // tokens of this step
  double logprob_sum = 0.0;    // policy log-probability of this step's tokens
  bool finished = false;       // the solution ends here (EOS, max steps or max tokens)
  bool scored = false;
  double score = 0.0;          // verifier score of this step (given the path)
  std::vector<double> path_scores;  // step scores along the path, root excluded
  std::string answer;          // extracted answer of a finished solution ("" if none)
  // MCTS statistics
  int64_t visits = 0;
  double value_sum = 0.0;
  double prior = 0.0;
  bool pruned = false;         // no longer part of the search (its KV may be released)
};

enum class Aggregation { kLast, kMin, kProd, kMean };
Aggregation parse_aggregation(const std::string& name);
double aggregate(const std::vector<double>& scores, Aggregation agg);

class SearchTree {
 public:
  SearchTree();
  const SearchNode& node(int64_t id) const;
  SearchNode& node_mut(int64_t id);
  int64_t size() const { return static_cast<int64_t>(nodes_.size()); }
  int64_t add_child(int64_t parent, int64_t num_tokens, double logprob_sum, bool finished);
  void set_score(int64_t id, double score);
  // Marks a subtree pruned; returns the ids newly pruned (for the engine to release KV).
  std::vector<int64_t> prune(int64_t id);
  std::vector<int64_t> path(int64_t id) const;  // root's child ... id
  int64_t total_tokens() const { return total_tokens_; }

 private:
  std::vector<SearchNode> nodes_;
  int64_t total_tokens_ = 0;
};

}  // namespace ponder::core
