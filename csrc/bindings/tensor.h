// Import of tensor arguments. nanobind's ndarray caster calls `tensor.__dlpack__()` (a Python
// call plus a capsule, ~2 us per tensor). Frameworks that publish DLPack's C exchange API
// (torch >= 2.10: `type(t).__dlpack_c_exchange_api__`) can instead fill a non-owning DLTensor
// in ~50 ns; we use that when it is there and fall back to nanobind's import otherwise (older
// torch, numpy, other frameworks). The fast path neither syncs streams nor keeps the tensor
// alive: the view is valid for the duration of the call, while the Python caller holds the
// tensor, and kernels run on the stream the caller passes.
#pragma once

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "checks.h"

namespace ponder::bindings {

// Field-for-field copies of the DLPack 1.x declarations we use (dlpack.h v1.3: DLPackVersion,
// DLDevice, DLDataType, DLTensor, DLPackExchangeAPIHeader, DLPackExchangeAPI), written out
// because the extension must not include torch's headers. Layout is fixed by the DLPack ABI
// within a major version; the static_asserts guard our transcription.
namespace dlpack_abi {

constexpr uint32_t kMajorVersion = 1;
constexpr const char* kExchangeApiCapsule = "dlpack_exchange_api";

struct Version {
  uint32_t major;
  uint32_t minor;
};

struct Device {
  int32_t device_type;  // DLDeviceType, a C enum (int)
  int32_t device_id;
};

struct DataType {
  uint8_t code;
  uint8_t bits;
  uint16_t lanes;
};

struct Tensor {
  void* data;
  Device device;
  int32_t ndim;
  DataType dtype;
  int64_t* shape;
  int64_t* strides;  // may be null for ndim > 0 only before DLPack 1.2 (C order)
  uint64_t byte_offset;
};

struct ExchangeApiHeader {
  Version version;
  ExchangeApiHeader* prev_api;
};

struct ExchangeApi {
  ExchangeApiHeader header;
  void* managed_tensor_allocator;
  void* managed_tensor_from_py_object_no_sync;
  void* managed_tensor_to_py_object_no_sync;
  int (*dltensor_from_py_object_no_sync)(void* py_object, Tensor* out);  // may be null
  void* current_work_stream;
};

static_assert(sizeof(DataType) == 4 && sizeof(Device) == 8);
static_assert(offsetof(Tensor, ndim) == 16 && offsetof(Tensor, dtype) == 20);
static_assert(offsetof(Tensor, shape) == 24 && offsetof(Tensor, byte_offset) == 40);
static_assert(sizeof(Tensor) == 48);
static_assert(offsetof(ExchangeApi, dltensor_from_py_object_no_sync) ==
              sizeof(ExchangeApiHeader) + 3 * sizeof(void*));

}  // namespace dlpack_abi

namespace detail {

constexpr int32_t kMaxNdim = 64;
constexpr int kApiCacheSize = 16;

// The exchange API of a Python type, or null. Per DLPack, the table lives as long as the
// process, so only the pointer is kept; if the major version is newer than ours, an older
// table may be chained behind it.
inline const dlpack_abi::ExchangeApi* find_exchange_api(nb::handle type) {
  nb::object cap = nb::getattr(type, "__dlpack_c_exchange_api__", nb::none());
  if (!PyCapsule_IsValid(cap.ptr(), dlpack_abi::kExchangeApiCapsule)) return nullptr;
  auto* header = static_cast<const dlpack_abi::ExchangeApiHeader*>(
      PyCapsule_GetPointer(cap.ptr(), dlpack_abi::kExchangeApiCapsule));
  while (header && header->version.major > dlpack_abi::kMajorVersion) header = header->prev_api;
  if (!header || header->version.major != dlpack_abi::kMajorVersion) return nullptr;
  const auto* api = reinterpret_cast<const dlpack_abi::ExchangeApi*>(header);
  return api->dltensor_from_py_object_no_sync ? api : nullptr;
}

// Cached per type, misses included, so numpy arrays do not pay an attribute lookup per call.
// Cached types are kept alive so that a freed type's address is never mistaken for a new one;
// the cache is small and types beyond it are looked up each time. Guarded by the GIL.
inline const dlpack_abi::ExchangeApi* exchange_api(nb::handle type) {
  struct Entry {
    PyObject* type;
    const dlpack_abi::ExchangeApi* api;
  };
  static Entry cache[kApiCacheSize];
  static int num_cached = 0;
  for (int i = 0; i < num_cached; ++i)
    if (cache[i].type == type.ptr()) return cache[i].api;
  const dlpack_abi::ExchangeApi* api = find_exchange_api(type);
  if (num_cached < kApiCacheSize) cache[num_cached++] = {type.inc_ref().ptr(), api};
  return api;
}

// A view without an owner: valid while the producer's object is alive.
inline Array view_of(const dlpack_abi::Tensor& t, const char* name) {
  if (t.ndim < 0 || t.ndim > kMaxNdim)
    fail_value(std::string(name) + " has " + std::to_string(t.ndim) + " dimensions, at most " +
               std::to_string(kMaxNdim) + " are supported");
  size_t shape[kMaxNdim];
  for (int32_t i = 0; i < t.ndim; ++i) shape[i] = static_cast<size_t>(t.shape[i]);
  const nb::dlpack::dtype dtype{t.dtype.code, t.dtype.bits, t.dtype.lanes};
  return Array(t.data, static_cast<size_t>(t.ndim), shape, nb::handle(), t.strides, dtype,
               t.device.device_type, t.device.device_id, '\0', t.byte_offset);
}

// nanobind's import without conversion (the `.noconvert()` the bindings used to ask for).
inline std::optional<Array> import_with_nanobind(nb::handle obj) {
  nb::detail::make_caster<Array> caster;
  if (!caster.from_python(obj, 0, nullptr)) return std::nullopt;
  return std::move(caster.value);
}

}  // namespace detail

// Imports a tensor argument; TypeError naming the argument if obj is not a tensor.
inline Array import_tensor(nb::handle obj, const char* name) {
  std::string exchange_error;
  if (const auto* api = detail::exchange_api(obj.type())) {
    dlpack_abi::Tensor t;
    if (api->dltensor_from_py_object_no_sync(obj.ptr(), &t) == 0) return detail::view_of(t, name);
    // The producer refused (e.g. a meta tensor); let nanobind try, and if that fails too,
    // report the first line of the producer's reason (torch appends a C++ backtrace).
    nb::python_error err;  // takes (and clears) the pending Python error
    exchange_error = nb::str(err.value()).c_str();
    exchange_error = exchange_error.substr(0, exchange_error.find('\n'));
  }
  if (auto a = detail::import_with_nanobind(obj)) return std::move(*a);
  std::string msg = std::string(name) + " must be a tensor (DLPack or buffer protocol), got " +
                    nb::type_name(obj.type()).c_str();
  if (!exchange_error.empty()) msg += " that DLPack cannot export: " + exchange_error;
  fail_type(msg);
}

// A tensor parameter: nanobind passes None through, so import_tensor names the argument.
inline auto tensor_arg(const char* name) { return nb::arg(name).none(); }

inline std::optional<Array> import_optional_tensor(nb::handle obj, const char* name) {
  if (obj.is_none()) return std::nullopt;
  return import_tensor(obj, name);
}

// Which import import_tensor takes for obj: "exchange" (the C exchange API), "dlpack"
// (nanobind: __dlpack__ or the buffer protocol) or "none". For tests.
inline const char* tensor_import_path(nb::handle obj) {
  if (const auto* api = detail::exchange_api(obj.type())) {
    dlpack_abi::Tensor t;
    if (api->dltensor_from_py_object_no_sync(obj.ptr(), &t) == 0) return "exchange";
    PyErr_Clear();
  }
  return detail::import_with_nanobind(obj) ? "dlpack" : "none";
}

// A snapshot of a sequence of tensors. The tuple holds a reference to each tensor, whose
// imported views have no owner, while the kernel runs without the GIL.
inline nb::tuple tensor_sequence(nb::handle obj, const char* name) {
  if (!PySequence_Check(obj.ptr()) || nb::isinstance<nb::str>(obj) ||
      nb::isinstance<nb::bytes>(obj))
    fail_type(std::string(name) + " must be a sequence of tensors, got " +
              nb::type_name(obj.type()).c_str());
  PyObject* items = PySequence_Tuple(obj.ptr());
  if (!items) throw nb::python_error();
  return nb::steal<nb::tuple>(items);
}

inline std::vector<Array> import_tensors(const nb::tuple& items, const char* name) {
  std::vector<Array> arrays;
  arrays.reserve(items.size());
  for (size_t i = 0; i < items.size(); ++i)
    arrays.push_back(import_tensor(items[i], (name + ("[" + std::to_string(i) + "]")).c_str()));
  return arrays;
}

}  // namespace ponder::bindings
