#include <nanobind/nanobind.h>
namespace ponder::bindings {
void bind_search(nanobind::module_&) {}
}  // namespace ponder::bindings
