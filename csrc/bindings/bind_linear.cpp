// Binding of the decode-sized linear kernel (CPU only; CUDA callers use torch's cuBLAS).
#include <nanobind/stl/optional.h>

#include <optional>

#include "checks.h"
#include "tensor.h"
#include "ponder/linear.h"

namespace ponder::bindings {
namespace {

void linear(nb::handle x_obj, nb::handle weight_obj, nb::handle bias_obj, nb::handle out_obj,
            bool bf16_dot) {
  const Array x = import_tensor(x_obj, "x");
  const Array weight = import_tensor(weight_obj, "weight");
  const std::optional<Array> bias = import_optional_tensor(bias_obj, "bias");
  const Array out = import_tensor(out_obj, "out");
  check_ndim(x, "x", 2);
  check_ndim(weight, "weight", 2);
  check_ndim(out, "out", 2);
  const DType dtype = float_dtype(weight, "weight");
  check_same_dtype(x, "x", dtype, "weight");
  check_same_dtype(out, "out", dtype, "weight");
  const int64_t m = x.shape(0), k = x.shape(1), n = weight.shape(0);
  check_dim(weight, "weight", 1, k, "in_features (x.shape[1])");
  check_dim(out, "out", 0, m, "x.shape[0]");
  check_dim(out, "out", 1, n, "out_features (weight.shape[0])");
  for (auto [a, name] : {std::pair{&x, "x"}, {&weight, "weight"}, {&out, "out"}}) {
    if (a->device_type() != nb::device::cpu::value) fail_value(std::string(name) + " must be a CPU tensor");
    check_contiguous(*a, name);
  }
  if (bias) {
    check_ndim(*bias, "bias", 1);
    check_same_dtype(*bias, "bias", dtype, "weight");
    check_dim(*bias, "bias", 0, n, "out_features (weight.shape[0])");
    if (bias->device_type() != nb::device::cpu::value) fail_value("bias must be a CPU tensor");
    check_contiguous(*bias, "bias");
  }
  LinearParams p{x.data(), weight.data(), bias ? bias->data() : nullptr, out.data(), m, n, k,
                 dtype};
  if (m == 0 || n == 0) return;
  nb::gil_scoped_release release;
  check_status(cpu::linear(p, bf16_dot), "linear");
}

}  // namespace

void bind_linear(nb::module_& m) {
  m.attr("LINEAR_MAX_ROWS") = cpu::kLinearMaxRows;
  m.attr("LINEAR_HAS_BF16_DOT") = cpu::linear_has_bf16_dot();
  m.def("linear", &linear, tensor_arg("x"), tensor_arg("weight"), tensor_arg("bias"),
        tensor_arg("out"), nb::arg("bf16_dot") = true,
        "out = x @ weight.T + bias (CPU; each row summed alike at any row count). "
        "bf16_dot: bf16 through avx512_bf16 dot products where available (else widened to fp32).");
}

}  // namespace ponder::bindings
