// ParticleFilter and ParticleGibbs (csrc/core/search/particle.h, its_hub semantics).
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <cmath>

#include "../core/search/particle.h"
#include "bind_tree.h"

namespace ponder::bindings {

namespace {

void check_particle_args(int32_t n, double temperature) {
  if (n < 1) throw nb::value_error("n must be >= 1");
  if (!(temperature > 0.0) || !std::isfinite(temperature))
    throw nb::value_error("temperature must be a finite number > 0");
}

core::Aggregation aggregation_arg(const std::string& name) {
  try {
    return core::parse_aggregation(name);
  } catch (const std::invalid_argument& e) {
    throw nb::value_error(e.what());
  }
}

}  // namespace

void bind_strategy_particle(nb::module_& m) {
  using core::ParticleGibbs;
  using core::ParticleResampling;

  nb::class_<ParticleResampling>(
      m, "ParticleResampling",
      "One resampling of a particle population (round >= 1), or the draw of the reference "
      "particles at the end of an iteration (round 0).")
      .def_ro("iteration", &ParticleResampling::iteration)
      .def_ro("round", &ParticleResampling::round)
      .def_ro("nodes", &ParticleResampling::nodes)
      .def_ro("log_weights", &ParticleResampling::log_weights)
      .def_ro("weights", &ParticleResampling::weights)
      .def_ro("indices", &ParticleResampling::indices);

  nb::class_<ParticleGibbs, core::Strategy>(m, "ParticleGibbsStrategy")
      .def("__init__",
           [](ParticleGibbs* self, int32_t n, int32_t iterations, double temperature,
              uint64_t seed, const std::string& aggregation, int32_t num_ref_particles,
              int64_t max_tokens, int64_t max_score_calls, int32_t max_steps) {
             check_particle_args(n, temperature);
             if (iterations < 1) throw nb::value_error("iterations must be >= 1");
             if (num_ref_particles < 0 || num_ref_particles >= n)
               throw nb::value_error("num_ref_particles must be >= 0 and < n");
             new (self) ParticleGibbs(n, iterations, num_ref_particles, temperature, seed,
                                      aggregation_arg(aggregation),
                                      make_budget(max_tokens, max_score_calls, max_steps));
           },
           nb::arg("n"), nb::arg("iterations"), nb::arg("temperature") = 1.0,
           nb::arg("seed") = 0, nb::arg("aggregation") = "last",
           nb::arg("num_ref_particles") = 1, nb::arg("max_tokens") = 0,
           nb::arg("max_score_calls") = 0, nb::arg("max_steps") = 40,
           "its_hub's ParticleGibbs: `iterations` rounds of particle filtering with n "
           "particles each, num_ref_particles of which are references kept from the last.")
      .def_prop_ro("particles", &ParticleGibbs::particles,
                   "The population's last nodes, in particle order.")
      .def_prop_ro("history", &ParticleGibbs::history, nb::rv_policy::copy,
                   "Every resampling so far, in order.")
      .def("log_weight", &ParticleGibbs::log_weight, nb::arg("node"),
           "logit of the node's clipped aggregated score.");

  nb::class_<core::ParticleFilter, ParticleGibbs>(m, "ParticleFilterStrategy")
      .def("__init__",
           [](core::ParticleFilter* self, int32_t n, double temperature, uint64_t seed,
              const std::string& aggregation, int64_t max_tokens, int64_t max_score_calls,
              int32_t max_steps) {
             check_particle_args(n, temperature);
             new (self) core::ParticleFilter(n, temperature, seed, aggregation_arg(aggregation),
                                             make_budget(max_tokens, max_score_calls, max_steps));
           },
           nb::arg("n"), nb::arg("temperature") = 1.0, nb::arg("seed") = 0,
           nb::arg("aggregation") = "last", nb::arg("max_tokens") = 0,
           nb::arg("max_score_calls") = 0, nb::arg("max_steps") = 40,
           "its_hub's ParticleFiltering: n particles, resampled after every step.");
}

}  // namespace ponder::bindings
