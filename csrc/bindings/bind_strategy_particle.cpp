#include "bind_tree.h"
namespace ponder::bindings {
void bind_strategy_particle(nb::module_&) {}
}  // namespace ponder::bindings
