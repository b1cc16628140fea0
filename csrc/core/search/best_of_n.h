// BestOfN (huggingface/search-and-learn `best_of_n`): n independent solutions from the
// question, each generated to the end; every finished solution's steps are scored, the step
// scores aggregated (last, min, prod or mean) and one answer selected by naive, weighted or
// majority rule (selection.h).
#pragma once

#include "selection.h"
#include "strategy.h"

namespace ponder::core {

class BestOfN : public Strategy {
 public:
  BestOfN(int32_t n, Aggregation aggregation, Selection select, SearchBudget budget);
  std::string name() const override { return "best_of_n"; }
  std::vector<Expansion> plan() override;
  bool needs_score(const SearchNode& node) const override { return is_terminal(node); }
  void observe(const std::vector<int64_t>& children) override;
  bool done() const override { return done_; }
  std::vector<int64_t> ranking() const override;

 private:
  int32_t n_;
  Aggregation aggregation_;
  Selection select_;
  bool started_ = false;
  bool done_ = false;
  std::vector<int64_t> open_;  // unfinished leaves
};

}  // namespace ponder::core
