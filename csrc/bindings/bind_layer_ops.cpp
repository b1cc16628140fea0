// Bindings of the fused layer ops (CPU; CUDA callers use the torch formulation in ops.py).
#include <nanobind/stl/optional.h>

#include <optional>

#include "checks.h"
#include "tensor.h"
#include "ponder/layer_ops.h"

namespace ponder::bindings {
namespace {

void check_cpu(const Array& a, const char* name) {
  if (a.device_type() != nb::device::cpu::value)
    fail_value(std::string(name) + " must be a CPU tensor");
  check_contiguous(a, name);
}

void rms_norm(nb::handle x_obj, nb::handle weight_obj, float eps, nb::handle residual_obj,
              nb::handle out_obj) {
  const Array x = import_tensor(x_obj, "x");
  const Array weight = import_tensor(weight_obj, "weight");
  const std::optional<Array> residual = import_optional_tensor(residual_obj, "residual");
  const Array out = import_tensor(out_obj, "out");
  check_ndim(x, "x", 2);
  check_ndim(weight, "weight", 1);
  const DType dtype = float_dtype(x, "x");
  check_same_dtype(weight, "weight", dtype, "x");
  check_same_dtype(out, "out", dtype, "x");
  const int64_t t = x.shape(0), h = x.shape(1);
  check_dim(weight, "weight", 0, h, "hidden (x.shape[1])");
  check_ndim(out, "out", 2);
  check_dim(out, "out", 0, t, "x.shape[0]");
  check_dim(out, "out", 1, h, "x.shape[1]");
  check_cpu(x, "x");
  check_cpu(weight, "weight");
  check_cpu(out, "out");
  if (residual) {
    check_ndim(*residual, "residual", 2);
    check_same_dtype(*residual, "residual", dtype, "x");
    check_dim(*residual, "residual", 0, t, "x.shape[0]");
    check_dim(*residual, "residual", 1, h, "x.shape[1]");
    check_cpu(*residual, "residual");
  }
  if (!(eps >= 0.0f)) fail_value("eps must be >= 0");
  RmsNormParams p{x.data(), residual ? residual->data() : nullptr, weight.data(), out.data(), t,
                  h, eps, dtype};
  nb::gil_scoped_release release;
  check_status(cpu::rms_norm(p), "rms_norm");
}

void rotary(nb::handle q_obj, nb::handle k_obj, nb::handle cos_obj, nb::handle sin_obj,
            nb::handle positions_obj) {
  const Array q = import_tensor(q_obj, "q");
  const Array k = import_tensor(k_obj, "k");
  const Array cos = import_tensor(cos_obj, "cos");
  const Array sin = import_tensor(sin_obj, "sin");
  const Array positions = import_tensor(positions_obj, "positions");
  check_ndim(q, "q", 3);
  check_ndim(k, "k", 3);
  check_ndim(cos, "cos", 2);
  check_ndim(sin, "sin", 2);
  check_ndim(positions, "positions", 1);
  const DType dtype = float_dtype(q, "q");
  check_same_dtype(k, "k", dtype, "q");
  check_same_dtype(cos, "cos", dtype, "q");
  check_same_dtype(sin, "sin", dtype, "q");
  check_int_dtype<int64_t>(positions, "positions", "int64");
  const int64_t t = q.shape(0), d = q.shape(2), max_pos = cos.shape(0);
  check_dim(k, "k", 0, t, "num_tokens (q.shape[0])");
  check_dim(k, "k", 2, d, "head_dim (q.shape[2])");
  check_dim(cos, "cos", 1, d, "head_dim (q.shape[2])");
  check_dim(sin, "sin", 0, max_pos, "cos.shape[0]");
  check_dim(sin, "sin", 1, d, "head_dim (q.shape[2])");
  check_dim(positions, "positions", 0, t, "num_tokens (q.shape[0])");
  if (d % 2) fail_value("q head_dim must be even");
  for (auto [a, name] : {std::pair{&q, "q"}, {&k, "k"}, {&cos, "cos"}, {&sin, "sin"},
                         {&positions, "positions"}})
    check_cpu(*a, name);
  const int64_t* pos = static_cast<const int64_t*>(positions.data());
  for (int64_t i = 0; i < t; ++i)
    if (pos[i] < 0 || pos[i] >= max_pos)
      fail_value("positions[" + std::to_string(i) + "] = " + std::to_string(pos[i]) +
                 " is outside the cos/sin tables [0, " + std::to_string(max_pos) + ")");
  RotaryParams p{q.data(), k.data(), cos.data(), sin.data(), pos, t,
                 static_cast<int64_t>(q.shape(1)), static_cast<int64_t>(k.shape(1)), d, max_pos,
                 dtype};
  nb::gil_scoped_release release;
  check_status(cpu::rotary(p), "rotary");
}

void silu_and_mul(nb::handle gate_up_obj, nb::handle out_obj) {
  const Array gate_up = import_tensor(gate_up_obj, "gate_up");
  const Array out = import_tensor(out_obj, "out");
  check_ndim(gate_up, "gate_up", 2);
  check_ndim(out, "out", 2);
  const DType dtype = float_dtype(gate_up, "gate_up");
  check_same_dtype(out, "out", dtype, "gate_up");
  const int64_t t = gate_up.shape(0), two = gate_up.shape(1);
  if (two % 2) fail_value("gate_up.shape[1] must be even (gate then up)");
  check_dim(out, "out", 0, t, "gate_up.shape[0]");
  check_dim(out, "out", 1, two / 2, "gate_up.shape[1] / 2");
  check_cpu(gate_up, "gate_up");
  check_cpu(out, "out");
  SiluMulParams p{gate_up.data(), out.data(), t, two / 2, dtype};
  nb::gil_scoped_release release;
  check_status(cpu::silu_and_mul(p), "silu_and_mul");
}

}  // namespace

void bind_layer_ops(nb::module_& m) {
  m.def("rms_norm", &rms_norm, tensor_arg("x"), tensor_arg("weight"), nb::arg("eps"),
        tensor_arg("residual"), tensor_arg("out"),
        "out = RMSNorm(x) * weight; with residual: residual += x first, then its norm.");
  m.def("rotary", &rotary, tensor_arg("q"), tensor_arg("k"), tensor_arg("cos"), tensor_arg("sin"),
        tensor_arg("positions"), "Rotary embedding applied in place to q and k.");
  m.def("silu_and_mul", &silu_and_mul, tensor_arg("gate_up"), tensor_arg("out"),
        "out = silu(gate) * up for gate_up = [gate | up].");
}

}  // namespace ponder::bindings
