// Shared by the strategy bindings: the budget every strategy constructor takes.
#pragma once

#include <nanobind/nanobind.h>

#include "../core/search/strategy.h"

namespace ponder::bindings {
namespace nb = nanobind;
core::SearchBudget make_budget(int64_t max_tokens, int64_t max_score_calls, int32_t max_steps);
void bind_tree(nb::module_& m);
}  // namespace ponder::bindings
