// Binding of prm_head: a wall of checks, then dispatch by device. Row indices of CPU tensors
// are checked here; for CUDA tensors ponder.ops checks them with torch, so that nothing here
// reads device memory. An index out of range is an IndexError, as hidden[rows] would raise.
#include <optional>
#include <string>
#include <utility>

#include "checks.h"
#include "tensor.h"
#include "ponder/prm_head.h"

namespace ponder::bindings {
namespace {

void check_float32(const Array& a, const char* name) {
  if (a.dtype() != nb::dtype<float>())
    fail_type(std::string(name) + " must be float32, got " + dtype_name(a.dtype()));
}

void check_vector(const std::optional<Array>& a, const char* name, DType dtype, int64_t size,
                  const char* what) {
  if (!a) return;
  check_ndim(*a, name, 1);
  check_same_dtype(*a, name, dtype, "hidden");
  check_dim(*a, name, 0, size, what);
}

void prm_head(nb::handle hidden_obj, nb::handle rows_obj, nb::handle w2_obj, nb::handle b2_obj,
              nb::handle w1_obj, nb::handle b1_obj, nb::handle out_obj,
              nb::handle workspace_obj, uintptr_t stream, bool simd, bool bf16_dot) {
  const Array hidden = import_tensor(hidden_obj, "hidden");
  const Array rows = import_tensor(rows_obj, "rows");
  const Array w2 = import_tensor(w2_obj, "w2");
  const std::optional<Array> b2 = import_optional_tensor(b2_obj, "b2");
  const std::optional<Array> w1 = import_optional_tensor(w1_obj, "w1");
  const std::optional<Array> b1 = import_optional_tensor(b1_obj, "b1");
  const Array out = import_tensor(out_obj, "out");
  const std::optional<Array> workspace = import_optional_tensor(workspace_obj, "workspace");
  check_device_supported(hidden, "hidden");
  check_ndim(hidden, "hidden", 2);
  check_ndim(rows, "rows", 1);
  check_ndim(w2, "w2", 2);
  check_ndim(out, "out", 1);
  const DType dtype = float_dtype(hidden, "hidden");
  check_int_dtype<int64_t>(rows, "rows", "int64");
  check_same_dtype(w2, "w2", dtype, "hidden");
  check_float32(out, "out");
  const int64_t num_tokens = hidden.shape(0), hidden_size = hidden.shape(1);
  const int64_t num_rows = rows.shape(0);
  if (b1 && !w1) fail_value("b1 is given without w1 (b1 is the bias of the first layer)");
  int64_t inner_size = hidden_size;
  if (w1) {
    check_ndim(*w1, "w1", 2);
    check_same_dtype(*w1, "w1", dtype, "hidden");
    check_dim(*w1, "w1", 1, hidden_size, "hidden_size (hidden.shape[1])");
    inner_size = w1->shape(0);
  }
  check_vector(b1, "b1", dtype, inner_size, "w1.shape[0]");
  const int64_t num_classes = w2.shape(0);
  if (num_classes != 1 && num_classes != 2)
    fail_value("w2 has shape " + shape_str(w2) +
               " but must have 1 row (a value head: sigmoid) or 2 (classes [negative, "
               "positive]: softmax)");
  check_dim(w2, "w2", 1, inner_size, w1 ? "w1.shape[0]" : "hidden_size (hidden.shape[1])");
  check_vector(b2, "b2", dtype, num_classes, "w2.shape[0]");
  check_dim(out, "out", 0, num_rows, "len(rows)");

  for (auto [a, name] : {std::pair{&rows, "rows"}, {&w2, "w2"}, {&out, "out"}})
    check_same_device(*a, name, hidden, "hidden");
  for (auto [a, name] : {std::pair{&b2, "b2"}, {&w1, "w1"}, {&b1, "b1"}})
    if (*a) check_same_device(**a, name, hidden, "hidden");
  for (auto [a, name] : {std::pair{&rows, "rows"}, {&w2, "w2"}, {&out, "out"}})
    check_contiguous(*a, name);
  for (auto [a, name] : {std::pair{&b2, "b2"}, {&w1, "w1"}, {&b1, "b1"}})
    if (*a) check_contiguous(**a, name);
  // Rows may be strided (a view into a larger buffer); each row must be contiguous.
  if (hidden_size > 1 && hidden.stride(1) != 1)
    fail_value("hidden must have contiguous rows (hidden.stride(1) == 1); call .contiguous()");
  const int64_t hidden_stride = num_tokens > 1 ? hidden.stride(0) : hidden_size;

  PrmHeadParams p{hidden.data(), static_cast<const int64_t*>(rows.data()),
                  w1 ? w1->data() : nullptr, b1 ? b1->data() : nullptr, w2.data(),
                  b2 ? b2->data() : nullptr, static_cast<float*>(out.data()), nullptr,
                  num_tokens, num_rows, hidden_size, hidden_stride, inner_size, num_classes,
                  dtype};
  if (num_rows == 0) return;
  if (is_cuda(hidden)) {
#ifdef PONDER_WITH_CUDA
    if (w1) {
      if (!workspace)
        fail_value("workspace is required on CUDA with w1: float32 [len(rows) * w1.shape[0]]");
      check_float32(*workspace, "workspace");
      check_same_device(*workspace, "workspace", hidden, "hidden");
      check_contiguous(*workspace, "workspace");
      if (static_cast<int64_t>(workspace->size()) < num_rows * inner_size)
        fail_value("workspace holds " + std::to_string(workspace->size()) +
                   " floats, fewer than len(rows) * w1.shape[0] = " +
                   std::to_string(num_rows * inner_size));
      p.workspace = static_cast<float*>(workspace->data());
    }
    check_status(cuda::prm_head(p, hidden.device_id(), reinterpret_cast<void*>(stream)),
                 "prm_head");
    return;
#else
    fail_no_cuda("prm_head");
#endif
  }
  for (int64_t i = 0; i < num_rows; ++i)
    if (p.rows[i] < 0 || p.rows[i] >= num_tokens)
      throw nb::index_error(("rows[" + std::to_string(i) + "] = " + std::to_string(p.rows[i]) +
                             " is outside [0, num_tokens = " + std::to_string(num_tokens) + ")")
                                .c_str());
  nb::gil_scoped_release release;
  check_status(cpu::prm_head(p, simd, bf16_dot), "prm_head");
}

}  // namespace

void bind_prm(nb::module_& m) {
  m.def("prm_head", &prm_head, tensor_arg("hidden"), tensor_arg("rows"), tensor_arg("w2"),
        tensor_arg("b2"), tensor_arg("w1"), tensor_arg("b1"), tensor_arg("out"),
        tensor_arg("workspace") = nb::none(), nb::arg("stream") = 0, nb::arg("simd") = true,
        nb::arg("bf16_dot") = true,
        "out[r] = score of hidden[rows[r]]: sigmoid (one class) or softmax(.)[1] (two) of "
        "w2 @ relu(w1 @ x + b1) + b2, or of w2 @ x + b2 without w1. workspace: CUDA with w1, "
        "float32 [len(rows) * w1.shape[0]]. simd / bf16_dot = False select the CPU's slower "
        "paths (for tests).");
}

}  // namespace ponder::bindings
