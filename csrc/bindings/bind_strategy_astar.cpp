#include "bind_tree.h"
namespace ponder::bindings {
void bind_strategy_astar(nb::module_&) {}
}  // namespace ponder::bindings
