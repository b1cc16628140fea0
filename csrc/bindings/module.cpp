// ponder._core: the only translation units that include nanobind live in this folder.
#include <nanobind/nanobind.h>
#include <omp.h>

#include "ponder/cuda_runtime.h"
#include "ponder/paged_attention.h"

namespace nb = nanobind;

namespace ponder::bindings {
void bind_kernels(nb::module_& m);
void bind_core(nb::module_& m);
void bind_stop(nb::module_& m);
void bind_sampler(nb::module_& m);
void bind_search(nb::module_& m);
void bind_linear(nb::module_& m);
void bind_layer_ops(nb::module_& m);
void bind_prm(nb::module_& m);
void bind_decode_layers(nb::module_& m);
void bind_tree(nb::module_& m);
void bind_strategy_beam(nb::module_& m);
void bind_strategy_particle(nb::module_& m);
void bind_strategy_astar(nb::module_& m);
void bind_strategy_mcts(nb::module_& m);
}  // namespace ponder::bindings

NB_MODULE(_core, m) {
  m.doc() = "ponder's compiled core: paged KV kernels (CPU, CUDA) and the KV block manager.";
  m.def("cuda_built", &ponder::cuda::built, "Whether this build has CUDA kernels.");
  m.def("cuda_device_count", &ponder::cuda::device_count,
        "CUDA devices visible to the CUDA runtime (0 without a build, driver or device).");
  m.def("cuda_num_sms", &ponder::cuda::num_sms, nb::arg("device"));
  m.def("get_num_threads", []() { return omp_get_max_threads(); },
        "Threads the CPU kernels use (the OpenMP runtime shared with torch).");
  m.def("set_num_threads", [](int n) {
          if (n < 1) throw nb::value_error("n must be at least 1");
          omp_set_num_threads(n);
        }, nb::arg("n"));
  m.def("paged_attention_num_splits", &ponder::cuda::paged_attention_num_splits,
        nb::arg("num_tokens"), nb::arg("num_heads"), nb::arg("num_kv_heads"),
        nb::arg("max_seq_len"), nb::arg("num_sms"));
  m.def("paged_attention_workspace_floats", &ponder::cuda::paged_attention_workspace_floats,
        nb::arg("num_tokens"), nb::arg("num_heads"), nb::arg("head_dim"), nb::arg("num_splits"));
  ponder::bindings::bind_kernels(m);
  ponder::bindings::bind_core(m);
  ponder::bindings::bind_stop(m);
  ponder::bindings::bind_sampler(m);
  ponder::bindings::bind_search(m);
  ponder::bindings::bind_linear(m);
  ponder::bindings::bind_layer_ops(m);
  ponder::bindings::bind_prm(m);
  ponder::bindings::bind_decode_layers(m);
  ponder::bindings::bind_tree(m);
  ponder::bindings::bind_strategy_beam(m);
  ponder::bindings::bind_strategy_particle(m);
  ponder::bindings::bind_strategy_astar(m);
  ponder::bindings::bind_strategy_mcts(m);
}
