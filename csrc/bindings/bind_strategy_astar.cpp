// _core.AStarStrategy: A*-decoding (csrc/core/search/astar.h).
#include <nanobind/stl/vector.h>

#include "../core/search/astar.h"
#include "bind_tree.h"

namespace ponder::bindings {

void bind_strategy_astar(nb::module_& m) {
  nb::class_<core::AStar, core::Strategy>(
      m, "AStarStrategy",
      "A*-decoding: pop the open node with the lowest f = depth_cost * depth + (1 - score), "
      "expand it with k children, stop at the first terminal node popped or after `budget` "
      "expansions.")
      .def("__init__",
           [](core::AStar* self, int32_t k, int64_t budget, double depth_cost, int64_t max_tokens,
              int64_t max_score_calls, int32_t max_steps) {
             if (k < 1) throw nb::value_error("k must be >= 1");
             if (budget < 1) throw nb::value_error("budget must be >= 1 (expansions)");
             try {
               new (self) core::AStar(k, budget, depth_cost,
                                      make_budget(max_tokens, max_score_calls, max_steps));
             } catch (const std::invalid_argument& e) {
               throw nb::value_error(e.what());
             }
           },
           nb::arg("k"), nb::arg("budget"), nb::arg("depth_cost") = 0.0,
           nb::arg("max_tokens") = 0, nb::arg("max_score_calls") = 0, nb::arg("max_steps") = 40)
      .def("f", &core::AStar::f, nb::arg("id"), "The node's priority g + h (lower pops first).")
      .def_prop_ro("expansions", &core::AStar::expansions)
      .def_prop_ro("solution", &core::AStar::solution,
                   "The terminal node popped (the answer), -1 if the budget ran out first.");
}

}  // namespace ponder::bindings
