// Argument checks shared by the kernel bindings. Every message names the argument, so a user
// sees which input is wrong; dtype problems raise TypeError, everything else ValueError.
#pragma once

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include <cstdint>
#include <string>
#include <vector>

#include "ponder/common.h"

namespace ponder::bindings {

namespace nb = nanobind;
using Array = nb::ndarray<nb::device::none>;

[[noreturn]] inline void fail_value(const std::string& msg) { throw nb::value_error(msg.c_str()); }
[[noreturn]] inline void fail_type(const std::string& msg) { throw nb::type_error(msg.c_str()); }

inline std::string shape_str(const Array& a) {
  std::string s = "[";
  for (size_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  return s + "]";
}

inline std::string dtype_name(nb::dlpack::dtype t) {
  using code = nb::dlpack::dtype_code;
  const char* kind = t.code == (uint8_t)code::Float    ? "float"
                     : t.code == (uint8_t)code::Bfloat ? "bfloat"
                     : t.code == (uint8_t)code::Int    ? "int"
                     : t.code == (uint8_t)code::UInt   ? "uint"
                     : t.code == (uint8_t)code::Bool   ? "bool"
                                                       : "other";
  return std::string(kind) + std::to_string(t.bits);
}

inline bool is_cuda(const Array& a) { return a.device_type() == nb::device::cuda::value; }

inline void check_ndim(const Array& a, const char* name, size_t ndim) {
  if (a.ndim() != ndim)
    fail_value(std::string(name) + " must have " + std::to_string(ndim) + " dimensions, got shape " +
               shape_str(a));
}

inline void check_dim(const Array& a, const char* name, size_t dim, int64_t expected,
                      const char* what) {
  if (static_cast<int64_t>(a.shape(dim)) != expected)
    fail_value(std::string(name) + " has shape " + shape_str(a) + " but dimension " +
               std::to_string(dim) + " must be " + what + " = " + std::to_string(expected));
}

inline void check_contiguous(const Array& a, const char* name) {
  int64_t expected = 1;
  for (size_t i = a.ndim(); i-- > 0;) {
    if (a.shape(i) != 1 && a.stride(i) != expected)
      fail_value(std::string(name) + " must be contiguous (call .contiguous())");
    expected *= static_cast<int64_t>(a.shape(i));
  }
}

inline void check_same_device(const Array& a, const char* name, const Array& ref,
                              const char* ref_name) {
  if (a.device_type() != ref.device_type() || a.device_id() != ref.device_id())
    fail_value(std::string(name) + " must be on the same device as " + ref_name);
}

inline void check_device_supported(const Array& a, const char* name) {
  if (a.device_type() != nb::device::cpu::value && a.device_type() != nb::device::cuda::value)
    fail_value(std::string(name) + " must be a CPU or CUDA tensor");
}

inline DType float_dtype(const Array& a, const char* name) {
  const auto t = a.dtype();
  if (t == nb::dtype<float>()) return DType::kFloat32;
  if (t.code == (uint8_t)nb::dlpack::dtype_code::Bfloat && t.bits == 16 && t.lanes == 1)
    return DType::kBFloat16;
  if (t.code == (uint8_t)nb::dlpack::dtype_code::Float && t.bits == 16 && t.lanes == 1)
    return DType::kFloat16;
  fail_type(std::string(name) + " must be float32, bfloat16 or float16, got " + dtype_name(t));
}

inline void check_same_dtype(const Array& a, const char* name, DType expected,
                             const char* ref_name) {
  if (float_dtype(a, name) != expected)
    fail_type(std::string(name) + " must have the same dtype as " + ref_name);
}

template <typename T>
inline void check_int_dtype(const Array& a, const char* name, const char* type_name) {
  if (a.dtype() != nb::dtype<T>())
    fail_type(std::string(name) + " must be " + type_name + ", got " + dtype_name(a.dtype()));
}

[[noreturn]] inline void fail_no_cuda(const char* op) {
  fail_value(std::string(op) + ": the tensors are on a CUDA device but this build of ponder has "
                               "no CUDA kernels (rebuild with nvcc available, PONDER_CUDA=ON)");
}

inline void check_status(const Status& s, const char* op) {
  if (!s.ok()) throw std::runtime_error(std::string(op) + " failed: " + s.message);
}

}  // namespace ponder::bindings
