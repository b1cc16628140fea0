// Strategy: a search algorithm as a state machine over a SearchTree.
//
// The engine loop is: plan() -> for each Expansion sample num_children next steps from the
// node (one forward batch shared with every other live search) and add them with
// tree().add_child -> score the children the strategy asks for (needs_score) and set their
// scores -> observe(children) -> plan() again, until done(). Strategies never see tokens or
// text, only the tree, so the same code runs on a toy model in the tests and on real models.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "tree.h"

namespace ponder::core {

struct Expansion {
  int64_t node;
  int32_t num_children;
};

struct SearchBudget {
  int64_t max_tokens = 0;       // generated tokens over the whole search; 0: unlimited
  int64_t max_score_calls = 0;  // nodes scored by the verifier; 0: unlimited
  int32_t max_steps = 40;       // depth of a solution
};

class Strategy {
 public:
  explicit Strategy(SearchBudget budget) : budget_(budget) {}
  virtual ~Strategy() = default;
  Strategy(const Strategy&) = delete;
  Strategy& operator=(const Strategy&) = delete;

  SearchTree& tree() { return tree_; }
  const SearchTree& tree() const { return tree_; }
  const SearchBudget& budget() const { return budget_; }
  int64_t score_calls() const { return score_calls_; }
  void count_score_calls(int64_t n) { score_calls_ += n; }
  // A node ends its solution: the model finished it or it reached max_steps.
  bool is_terminal(const SearchNode& n) const {
    return n.finished || n.depth >= budget_.max_steps;
  }
  bool over_budget() const {
    return (budget_.max_tokens > 0 && tree_.total_tokens() >= budget_.max_tokens) ||
           (budget_.max_score_calls > 0 && score_calls_ >= budget_.max_score_calls);
  }

  virtual std::string name() const = 0;
  // The next expansions; empty once done().
  virtual std::vector<Expansion> plan() = 0;
  // Whether the verifier should score this new node.
  virtual bool needs_score(const SearchNode&) const { return true; }
  // The planned expansions were all generated, and the nodes needing scores were scored.
  virtual void observe(const std::vector<int64_t>& children) = 0;
  virtual bool done() const = 0;
  // Finished solutions, best first by this strategy's selection rule.
  virtual std::vector<int64_t> ranking() const = 0;
  // Nodes that will never be expanded again: their KV can be released.
  std::vector<int64_t> take_released() {
    std::vector<int64_t> out;
    out.swap(released_);
    return out;
  }

 protected:
  void release(int64_t node) { released_.push_back(node); }
  void release_all(const std::vector<int64_t>& nodes) {
    released_.insert(released_.end(), nodes.begin(), nodes.end());
  }

  SearchBudget budget_;
  SearchTree tree_;
  int64_t score_calls_ = 0;
  std::vector<int64_t> released_;
};

}  // namespace ponder::core
