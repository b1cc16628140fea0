// Bindings of the search tree and the strategy interface (csrc/core/search). Each strategy's
// constructor is bound in its own bind_strategy_*.cpp.
#include "bind_tree.h"

#include <nanobind/stl/string.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/vector.h>

#include <cmath>

#include "../core/search/best_of_n.h"

namespace ponder::bindings {

using core::SearchBudget;
using core::SearchNode;
using core::SearchTree;
using core::Strategy;

SearchBudget make_budget(int64_t max_tokens, int64_t max_score_calls, int32_t max_steps) {
  if (max_tokens < 0) throw nb::value_error("max_tokens must be >= 0 (0: unlimited)");
  if (max_score_calls < 0) throw nb::value_error("max_score_calls must be >= 0 (0: unlimited)");
  if (max_steps < 1) throw nb::value_error("max_steps must be >= 1");
  return SearchBudget{max_tokens, max_score_calls, max_steps};
}

void bind_tree(nb::module_& m) {
  nb::class_<SearchNode>(m, "SearchNode", "One step of a search (read-only view).")
      .def_ro("id", &SearchNode::id)
      .def_ro("parent", &SearchNode::parent)
      .def_ro("children", &SearchNode::children)
      .def_ro("depth", &SearchNode::depth)
      .def_ro("num_tokens", &SearchNode::num_tokens)
      .def_ro("logprob_sum", &SearchNode::logprob_sum)
      .def_ro("finished", &SearchNode::finished)
      .def_ro("scored", &SearchNode::scored)
      .def_ro("score", &SearchNode::score)
      .def_ro("path_scores", &SearchNode::path_scores)
      .def_ro("answer", &SearchNode::answer)
      .def_ro("visits", &SearchNode::visits)
      .def_ro("value_sum", &SearchNode::value_sum)
      .def_ro("prior", &SearchNode::prior)
      .def_ro("pruned", &SearchNode::pruned);

  nb::class_<SearchTree>(m, "SearchTree")
      .def("__len__", &SearchTree::size)
      .def("node", &SearchTree::node, nb::arg("id"), nb::rv_policy::reference_internal)
      .def("add_child", &SearchTree::add_child, nb::arg("parent"), nb::arg("num_tokens"),
           nb::arg("logprob_sum"), nb::arg("finished"))
      .def("set_score", &SearchTree::set_score, nb::arg("id"), nb::arg("score"),
           "The verifier's score of this node's step (appended to its path scores).")
      .def("set_path_scores",
           [](SearchTree& t, int64_t id, const std::vector<double>& scores) {
             SearchNode& n = t.node_mut(id);
             if (static_cast<int64_t>(scores.size()) != n.depth)
               throw nb::value_error("scores must have one value per step of the path");
             for (double s : scores)
               if (!std::isfinite(s)) throw nb::value_error("scores must be finite");
             n.path_scores = scores;
             n.score = scores.empty() ? 0.0 : scores.back();
             n.scored = true;
           },
           nb::arg("id"), nb::arg("scores"))
      .def("set_answer", [](SearchTree& t, int64_t id, const std::string& a) { t.node_mut(id).answer = a; },
           nb::arg("id"), nb::arg("answer"))
      .def("set_prior", [](SearchTree& t, int64_t id, double p) { t.node_mut(id).prior = p; },
           nb::arg("id"), nb::arg("prior"))
      .def("path", &SearchTree::path, nb::arg("id"))
      .def_prop_ro("total_tokens", &SearchTree::total_tokens);

  nb::class_<Strategy>(m, "Strategy", "A search algorithm as a state machine (see strategy.h).")
      .def_prop_ro("name", &Strategy::name)
      .def_prop_ro("tree", [](Strategy& s) -> SearchTree& { return s.tree(); },
                   nb::rv_policy::reference_internal)
      .def("plan",
           [](Strategy& s) {
             std::vector<std::pair<int64_t, int32_t>> out;
             for (const auto& e : s.plan()) out.emplace_back(e.node, e.num_children);
             return out;
           },
           "[(node, num_children)] to expand next; [] once done.")
      .def("needs_score", [](const Strategy& s, int64_t id) { return s.needs_score(s.tree().node(id)); },
           nb::arg("id"))
      .def("observe", &Strategy::observe, nb::arg("children"))
      .def_prop_ro("done", &Strategy::done)
      .def("ranking", &Strategy::ranking, "Finished solutions, best first.")
      .def("take_released", &Strategy::take_released,
           "Nodes that will not be expanded again since the last call.")
      .def("count_score_calls", &Strategy::count_score_calls, nb::arg("n"))
      .def_prop_ro("score_calls", &Strategy::score_calls)
      .def_prop_ro("over_budget", &Strategy::over_budget)
      .def_prop_ro("max_steps", [](const Strategy& s) { return s.budget().max_steps; });

  nb::class_<core::BestOfN, Strategy>(m, "BestOfNStrategy")
      .def("__init__",
           [](core::BestOfN* self, int32_t n, const std::string& aggregation,
              const std::string& select, int64_t max_tokens, int64_t max_score_calls,
              int32_t max_steps) {
             try {
               new (self) core::BestOfN(n, core::parse_aggregation(aggregation),
                                        core::parse_selection(select),
                                        make_budget(max_tokens, max_score_calls, max_steps));
             } catch (const std::invalid_argument& e) {
               throw nb::value_error(e.what());
             }
           },
           nb::arg("n"), nb::arg("aggregation") = "last", nb::arg("select") = "naive",
           nb::arg("max_tokens") = 0, nb::arg("max_score_calls") = 0, nb::arg("max_steps") = 40);
}

}  // namespace ponder::bindings
