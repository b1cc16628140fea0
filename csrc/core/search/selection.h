// Answer selection over a pool of finished solutions, shared by the strategies that end like
// huggingface/search-and-learn (best-of-n, beam search, DVTS): each solution's step scores
// are aggregated, then
//   naive    - the solution with the highest aggregated score;
//   weighted - the answer whose solutions' aggregated scores sum highest (weighted BoN);
//   majority - the most frequent answer (ties: the answer seen first).
// Solutions are compared by their extracted answers (SearchNode::answer, set by the engine).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "tree.h"

namespace ponder::core {

enum class Selection { kNaive, kWeighted, kMajority };
Selection parse_selection(const std::string& name);

// The distinct nodes of `pool`, best first. The pool may repeat a node (search-and-learn
// pads its output by duplicating solutions): weights and counts are taken over the pool as
// given, so a repeated solution votes once per copy. Ties keep pool order (the first seen).
std::vector<int64_t> rank_solutions(const SearchTree& tree, const std::vector<int64_t>& pool,
                                    Aggregation aggregation, Selection select);

}  // namespace ponder::core
