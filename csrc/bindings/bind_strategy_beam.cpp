#include "bind_tree.h"
namespace ponder::bindings {
void bind_strategy_beam(nb::module_&) {}
}  // namespace ponder::bindings
