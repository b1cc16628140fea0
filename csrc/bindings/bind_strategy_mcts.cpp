#include "bind_tree.h"
namespace ponder::bindings {
void bind_strategy_mcts(nb::module_&) {}
}  // namespace ponder::bindings
