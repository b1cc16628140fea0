// Bindings of the search state machines: BeamSearch.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <string>
#include <utility>
#include <vector>

#include "../core/beam_search.h"
#include "checks.h"

namespace ponder::bindings {
using core::BeamSearch;
using core::EarlyStopping;

namespace {

template <typename T>
nb::ndarray<nb::numpy, T> to_numpy(std::vector<T>&& v) {
  auto* heap = new std::vector<T>(std::move(v));
  nb::capsule owner(heap, [](void* p) noexcept { delete static_cast<std::vector<T>*>(p); });
  const size_t shape[1] = {heap->size()};
  return nb::ndarray<nb::numpy, T>(heap->data(), 1, shape, owner);
}

// True/False or "true"/"false"/"never" (HF's early_stopping values; only literal True stops as
// soon as `width` hypotheses are finished).
EarlyStopping parse_early_stopping(const nb::handle& v) {
  if (nb::isinstance<nb::bool_>(v))
    return nb::cast<bool>(v) ? EarlyStopping::kTrue : EarlyStopping::kFalse;
  if (nb::isinstance<nb::str>(v)) {
    const std::string s = nb::cast<std::string>(v);
    if (s == "true") return EarlyStopping::kTrue;
    if (s == "false") return EarlyStopping::kFalse;
    if (s == "never") return EarlyStopping::kNever;
    fail_value("early_stopping must be True, False, \"true\", \"false\" or \"never\", got \"" +
               s + "\"");
  }
  fail_type("early_stopping must be a bool or a str, got " +
            nb::cast<std::string>(nb::str(v.type().attr("__name__"))));
}

const char* early_stopping_name(EarlyStopping e) {
  return e == EarlyStopping::kTrue ? "true" : e == EarlyStopping::kFalse ? "false" : "never";
}

// None, one int, or an iterable of ints.
std::vector<int64_t> parse_eos(const nb::handle& v) {
  std::vector<int64_t> ids;
  if (v.is_none()) return ids;
  const char* expected = "eos_token_ids must be None, an int or a list of ints";
  if (nb::isinstance<nb::bool_>(v) || nb::isinstance<nb::str>(v))
    fail_type(std::string(expected) + ", got " + (nb::isinstance<nb::str>(v) ? "str" : "bool"));
  if (nb::isinstance<nb::int_>(v)) return {nb::cast<int64_t>(v)};
  try {
    for (nb::handle item : nb::iter(v)) {
      if (!nb::isinstance<nb::int_>(item) || nb::isinstance<nb::bool_>(item))
        fail_type("eos_token_ids must contain ints only");
      ids.push_back(nb::cast<int64_t>(item));
    }
  } catch (const nb::python_error&) {
    fail_type(expected);
  }
  return ids;
}

}  // namespace

void bind_search(nb::module_& m) {
  nb::class_<BeamSearch>(
      m, "BeamSearch",
      "Token-level beam search for one prompt, equal to transformers' generate(num_beams=width, "
      "do_sample=False) token for token and score for score. The caller runs the model: each "
      "step() takes the next-token log-probs of the running beams (float32 [num_running, "
      "vocab], log_softmax of the logits; one row, the prompt, at the first step) and returns "
      "(parents, tokens): the next running beams, beam j = running beam parents[j] + tokens[j] "
      "(both empty once done). finalize() returns [(generated token ids, score)], best first.")
      .def("__init__",
           [](BeamSearch* self, int32_t width, int32_t max_new_tokens, double length_penalty,
              nb::handle early_stopping, nb::handle eos_token_ids, int32_t num_return) {
             new (self) BeamSearch(width, max_new_tokens, length_penalty,
                                   parse_early_stopping(early_stopping), parse_eos(eos_token_ids),
                                   num_return);
           },
           nb::arg("width"), nb::arg("max_new_tokens"), nb::arg("length_penalty") = 1.0,
           nb::arg("early_stopping").none() = false, nb::arg("eos_token_ids") = nb::none(),
           nb::arg("num_return") = 1)
      .def_prop_ro("width", &BeamSearch::width)
      .def_prop_ro("max_new_tokens", &BeamSearch::max_new_tokens)
      .def_prop_ro("length_penalty", &BeamSearch::length_penalty)
      .def_prop_ro("early_stopping",
                   [](const BeamSearch& s) {
                     return std::string(early_stopping_name(s.early_stopping()));
                   },
                   "\"true\", \"false\" or \"never\".")
      .def_prop_ro("eos_token_ids", &BeamSearch::eos_token_ids)
      .def_prop_ro("num_return", &BeamSearch::num_return)
      .def_prop_ro("num_candidates", &BeamSearch::num_candidates,
                   "Candidates ranked per step: max(2, 1 + len(eos_token_ids)) * width.")
      .def_prop_ro("num_running", &BeamSearch::num_running,
                   "Rows the next step() takes: 1 before the first step, width while running, "
                   "0 once done.")
      .def_prop_ro("num_steps", &BeamSearch::num_steps, "Steps taken = tokens generated per beam.")
      .def_prop_ro("num_finished", &BeamSearch::num_finished)
      .def_prop_ro("done", &BeamSearch::done)
      .def("step",
           [](BeamSearch& s, Array logprobs) {
             if (logprobs.device_type() != nb::device::cpu::value)
               fail_value("logprobs must be a CPU tensor (call .cpu())");
             if (logprobs.dtype() != nb::dtype<float>())
               fail_type("logprobs must be float32, got " + dtype_name(logprobs.dtype()));
             check_ndim(logprobs, "logprobs", 2);
             if (s.done()) fail_value("step() called after the search is done (done is True)");
             check_dim(logprobs, "logprobs", 0, s.num_running(), "num_running");
             check_contiguous(logprobs, "logprobs");
             std::vector<int64_t> parents, tokens;
             const auto* data = static_cast<const float*>(logprobs.data());
             const int64_t rows = static_cast<int64_t>(logprobs.shape(0));
             const int64_t vocab = static_cast<int64_t>(logprobs.shape(1));
             {
               nb::gil_scoped_release release;
               s.step(data, rows, vocab, parents, tokens);
             }
             return nb::make_tuple(to_numpy(std::move(parents)), to_numpy(std::move(tokens)));
           },
           nb::arg("logprobs"),
           "logprobs: float32 [num_running, vocab_size], C-contiguous, on the CPU. Returns "
           "(parents int64 [k], tokens int64 [k]), k = width while running and 0 once done: "
           "the next running beams, best first; beam j continues running beam parents[j] "
           "(a row of logprobs) with tokens[j].")
      .def("finalize",
           [](const BeamSearch& s) {
             std::vector<std::pair<std::vector<int32_t>, double>> out;
             for (auto& h : s.finalize()) out.emplace_back(std::move(h.token_ids), h.score);
             return out;
           },
           "[(token_ids, score)] * num_return, best first, once done. token_ids are the "
           "generated tokens (the eos token included when one ended the beam); score is the "
           "float32 sum of their log-probs / len(token_ids) ** length_penalty, HF's "
           "sequences_scores.")
      .def("__repr__", [](const BeamSearch& s) {
        return "BeamSearch(width=" + std::to_string(s.width()) +
               ", max_new_tokens=" + std::to_string(s.max_new_tokens()) +
               ", num_steps=" + std::to_string(s.num_steps()) +
               ", num_finished=" + std::to_string(s.num_finished()) +
               ", done=" + (s.done() ? "True" : "False") + ")";
      });
}

}  // namespace ponder::bindings
