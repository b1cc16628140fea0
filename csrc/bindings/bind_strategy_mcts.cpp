// _core.MCTSStrategy: openr-style MCTS (csrc/core/search/mcts.h).
#include <nanobind/stl/vector.h>

#include <cmath>

#include "../core/search/mcts.h"
#include "bind_tree.h"

namespace ponder::bindings {

void bind_strategy_mcts(nb::module_& m) {
  nb::class_<core::MCTS, core::Strategy>(
      m, "MCTSStrategy",
      "MCTS with openr's semantics: PUCT selection, priors from the steps' mean token "
      "log-probabilities, optional root Dirichlet noise, k children per expansion, verifier "
      "scores as values, mean backup; the answer follows the most visited path.")
      .def("__init__",
           [](core::MCTS* self, int32_t simulations, int32_t k, double c_puct, double dirichlet,
              uint64_t seed, int64_t max_tokens, int64_t max_score_calls, int32_t max_steps) {
             try {
               new (self) core::MCTS(simulations, k, c_puct, dirichlet, seed,
                                     make_budget(max_tokens, max_score_calls, max_steps));
             } catch (const std::invalid_argument& e) {
               throw nb::value_error(e.what());
             }
           },
           nb::arg("simulations"), nb::arg("k"), nb::arg("c_puct") = 1.25,
           nb::arg("dirichlet") = 0.0, nb::arg("seed") = 0, nb::arg("max_tokens") = 0,
           nb::arg("max_score_calls") = 0, nb::arg("max_steps") = 40)
      .def_prop_ro("simulations_done", &core::MCTS::simulations_done)
      .def("q", &core::MCTS::q, nb::arg("id"), "Mean backed-up value (the score if unvisited).");
  m.def("philox_gamma",
        [](double alpha, uint64_t seed, uint64_t seq_id) {
          if (!(alpha > 0.0) || !std::isfinite(alpha))
            throw nb::value_error("alpha must be finite and > 0");
          return core::philox_gamma(alpha, seed, seq_id);
        },
        nb::arg("alpha"), nb::arg("seed"), nb::arg("seq_id"),
        "One Gamma(alpha, 1) draw (Marsaglia-Tsang from Philox uniforms; see mcts.h).");
}

}  // namespace ponder::bindings
