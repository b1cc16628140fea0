// Binding of the sampler kernel: a wall of checks, then dispatch by device. Per-row value
// checks (temperature, top_p, min_p) read CPU tensors here; for CUDA tensors ponder.ops does
// them with torch so that nothing here reads device memory.
#include <cmath>
#include <string>
#include <utility>

#include "checks.h"
#include "tensor.h"
#include "ponder/sample.h"

namespace ponder::bindings {
namespace {

void check_rows(const float* values, int64_t n, const char* name, const char* range,
                bool (*ok)(float)) {
  for (int64_t i = 0; i < n; ++i)
    if (!ok(values[i]))
      fail_value(std::string(name) + "[" + std::to_string(i) + "] = " + std::to_string(values[i]) +
                 " is outside " + range);
}

void sample(nb::handle logits_obj, nb::handle temperature_obj, nb::handle top_k_obj,
            nb::handle top_p_obj, nb::handle min_p_obj, nb::handle seeds_obj,
            nb::handle seq_ids_obj, nb::handle positions_obj, nb::handle tokens_obj,
            nb::handle logprobs_obj, nb::handle top_ids_obj, nb::handle top_logprobs_obj,
            int64_t num_logprobs, uintptr_t stream) {
  const Array logits = import_tensor(logits_obj, "logits");
  const Array temperature = import_tensor(temperature_obj, "temperature");
  const Array top_k = import_tensor(top_k_obj, "top_k");
  const Array top_p = import_tensor(top_p_obj, "top_p");
  const Array min_p = import_tensor(min_p_obj, "min_p");
  const Array seeds = import_tensor(seeds_obj, "seeds");
  const Array seq_ids = import_tensor(seq_ids_obj, "seq_ids");
  const Array positions = import_tensor(positions_obj, "positions");
  const Array tokens = import_tensor(tokens_obj, "tokens");
  const Array logprobs = import_tensor(logprobs_obj, "logprobs");
  const Array top_ids = import_tensor(top_ids_obj, "top_ids");
  const Array top_logprobs = import_tensor(top_logprobs_obj, "top_logprobs");
  check_device_supported(logits, "logits");
  check_ndim(logits, "logits", 2);
  const DType dtype = float_dtype(logits, "logits");
  const int64_t num_rows = logits.shape(0), vocab = logits.shape(1);
  if (vocab == 0)
    fail_value("logits must have a vocab dimension > 0, got shape " + shape_str(logits));
  if (vocab >= (int64_t{1} << 31)) fail_value("logits vocab dimension must be below 2^31");
  if (num_logprobs < 0 || num_logprobs > vocab)
    fail_value("num_logprobs = " + std::to_string(num_logprobs) + " must be in [0, vocab = " +
               std::to_string(vocab) + "]");

  const std::pair<const Array*, const char*> rows[] = {
      {&temperature, "temperature"}, {&top_k, "top_k"},     {&top_p, "top_p"},
      {&min_p, "min_p"},             {&seeds, "seeds"},     {&seq_ids, "seq_ids"},
      {&positions, "positions"},     {&tokens, "tokens"},   {&logprobs, "logprobs"}};
  for (auto [a, name] : rows) check_ndim(*a, name, 1);
  check_ndim(top_ids, "top_ids", 2);
  check_ndim(top_logprobs, "top_logprobs", 2);
  check_int_dtype<float>(temperature, "temperature", "float32");
  check_int_dtype<int32_t>(top_k, "top_k", "int32");
  check_int_dtype<float>(top_p, "top_p", "float32");
  check_int_dtype<float>(min_p, "min_p", "float32");
  check_int_dtype<int64_t>(seeds, "seeds", "int64");
  check_int_dtype<int64_t>(seq_ids, "seq_ids", "int64");
  check_int_dtype<int64_t>(positions, "positions", "int64");
  check_int_dtype<int64_t>(tokens, "tokens", "int64");
  check_int_dtype<float>(logprobs, "logprobs", "float32");
  check_int_dtype<int64_t>(top_ids, "top_ids", "int64");
  check_int_dtype<float>(top_logprobs, "top_logprobs", "float32");
  for (auto [a, name] : rows) check_dim(*a, name, 0, num_rows, "num_rows (logits.shape[0])");
  check_dim(top_ids, "top_ids", 0, num_rows, "num_rows (logits.shape[0])");
  check_dim(top_ids, "top_ids", 1, num_logprobs, "num_logprobs");
  check_dim(top_logprobs, "top_logprobs", 0, num_rows, "num_rows (logits.shape[0])");
  check_dim(top_logprobs, "top_logprobs", 1, num_logprobs, "num_logprobs");
  for (auto [a, name] : rows) check_same_device(*a, name, logits, "logits");
  check_same_device(top_ids, "top_ids", logits, "logits");
  check_same_device(top_logprobs, "top_logprobs", logits, "logits");
  check_contiguous(logits, "logits");
  for (auto [a, name] : rows) check_contiguous(*a, name);
  if (num_logprobs > 0) {  // torch gives [n, 0] strides that no contiguity rule accepts
    check_contiguous(top_ids, "top_ids");
    check_contiguous(top_logprobs, "top_logprobs");
  }

  SampleParams p{};
  p.logits = logits.data();
  p.temperature = static_cast<const float*>(temperature.data());
  p.top_k = static_cast<const int32_t*>(top_k.data());
  p.top_p = static_cast<const float*>(top_p.data());
  p.min_p = static_cast<const float*>(min_p.data());
  p.seeds = static_cast<const int64_t*>(seeds.data());
  p.seq_ids = static_cast<const int64_t*>(seq_ids.data());
  p.positions = static_cast<const int64_t*>(positions.data());
  p.tokens = static_cast<int64_t*>(tokens.data());
  p.logprobs = static_cast<float*>(logprobs.data());
  p.top_ids = static_cast<int64_t*>(top_ids.data());
  p.top_logprobs = static_cast<float*>(top_logprobs.data());
  p.num_rows = num_rows;
  p.vocab = vocab;
  p.num_logprobs = num_logprobs;
  p.dtype = dtype;
  if (num_rows == 0) return;

  if (is_cuda(logits)) {
#ifdef PONDER_WITH_CUDA
    check_status(cuda::sample(p, logits.device_id(), reinterpret_cast<void*>(stream)), "sample");
    return;
#else
    (void)stream;
    fail_no_cuda("sample");
#endif
  }
  check_rows(p.temperature, num_rows, "temperature", "[0, inf)",
             [](float t) { return t >= 0.f && std::isfinite(t); });
  check_rows(p.top_p, num_rows, "top_p", "(0, 1]", [](float v) { return v > 0.f && v <= 1.f; });
  check_rows(p.min_p, num_rows, "min_p", "[0, 1]", [](float v) { return v >= 0.f && v <= 1.f; });
  nb::gil_scoped_release release;
  check_status(cpu::sample(p), "sample");
}

}  // namespace

void bind_sampler(nb::module_& m) {
  m.def("sample", &sample, tensor_arg("logits"), tensor_arg("temperature"),
        tensor_arg("top_k"), tensor_arg("top_p"), tensor_arg("min_p"), tensor_arg("seeds"),
        tensor_arg("seq_ids"), tensor_arg("positions"), tensor_arg("tokens"),
        tensor_arg("logprobs"), tensor_arg("top_ids"), tensor_arg("top_logprobs"),
        nb::arg("num_logprobs") = 0, nb::arg("stream") = 0,
        "Sample one token per row of logits (see ponder.ops.sample).");
}

}  // namespace ponder::bindings
