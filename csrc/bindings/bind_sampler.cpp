#include <nanobind/nanobind.h>
namespace ponder::bindings {
void bind_sampler(nanobind::module_&) {}
}  // namespace ponder::bindings
