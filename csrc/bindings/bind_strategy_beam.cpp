// Constructors of the step-level beam strategies (csrc/core/search/step_beam.h, dvts.h).
#include <nanobind/stl/string.h>

#include "../core/search/dvts.h"
#include "../core/search/step_beam.h"
#include "bind_tree.h"

namespace ponder::bindings {

void bind_strategy_beam(nb::module_& m) {
  nb::class_<core::StepBeamSearch, core::Strategy>(
      m, "BeamSearchStrategy",
      "Step-level beam search with a verifier (huggingface/search-and-learn semantics).")
      .def("__init__",
           [](core::StepBeamSearch* self, int32_t n, int32_t width, int32_t lookahead,
              bool filter_duplicates, const std::string& aggregation, const std::string& select,
              int64_t max_tokens, int64_t max_score_calls, int32_t max_steps) {
             try {
               new (self) core::StepBeamSearch(n, width, lookahead, filter_duplicates,
                                           core::parse_aggregation(aggregation),
                                           core::parse_selection(select),
                                           make_budget(max_tokens, max_score_calls, max_steps));
             } catch (const std::invalid_argument& e) {
               throw nb::value_error(e.what());
             }
           },
           nb::arg("n"), nb::arg("width"), nb::arg("lookahead") = 0,
           nb::arg("filter_duplicates") = true, nb::arg("aggregation") = "last",
           nb::arg("select") = "naive", nb::arg("max_tokens") = 0,
           nb::arg("max_score_calls") = 0, nb::arg("max_steps") = 40);

  nb::class_<core::DVTS, core::Strategy>(
      m, "DVTSStrategy",
      "Diverse verifier tree search (huggingface/search-and-learn semantics).")
      .def("__init__",
           [](core::DVTS* self, int32_t n, int32_t width, const std::string& aggregation,
              const std::string& select, int64_t max_tokens, int64_t max_score_calls,
              int32_t max_steps) {
             try {
               new (self) core::DVTS(n, width, core::parse_aggregation(aggregation),
                                     core::parse_selection(select),
                                     make_budget(max_tokens, max_score_calls, max_steps));
             } catch (const std::invalid_argument& e) {
               throw nb::value_error(e.what());
             }
           },
           nb::arg("n"), nb::arg("width"), nb::arg("aggregation") = "last",
           nb::arg("select") = "naive", nb::arg("max_tokens") = 0,
           nb::arg("max_score_calls") = 0, nb::arg("max_steps") = 40);
}

}  // namespace ponder::bindings
