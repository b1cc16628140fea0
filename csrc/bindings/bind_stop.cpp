// Bindings of the stop-string matcher: StopMatcher (one per vocabulary and stop list) and the
// per-sequence StopState it updates.
#include <nanobind/nanobind.h>
#include <nanobind/stl/vector.h>

#include <string>
#include <vector>

#include "../core/stop_matcher.h"

namespace ponder::bindings {
namespace nb = nanobind;
using core::StopMatcher;
using core::StopState;

namespace {

std::vector<std::string> byte_strings(nb::handle seq, const char* name) {
  if (!nb::isinstance<nb::sequence>(seq) || nb::isinstance<nb::bytes>(seq) ||
      nb::isinstance<nb::str>(seq))
    throw nb::type_error((std::string(name) + " must be a list of bytes").c_str());
  std::vector<std::string> out;
  out.reserve(nb::len(seq));
  size_t i = 0;
  for (nb::handle item : seq) {
    if (!nb::isinstance<nb::bytes>(item))
      throw nb::type_error((std::string(name) + "[" + std::to_string(i) + "] must be bytes, got " +
                            nb::type_name(item.type()).c_str()).c_str());
    nb::bytes b = nb::borrow<nb::bytes>(item);
    out.emplace_back(b.c_str(), b.size());
    ++i;
  }
  return out;
}

void check_state(const StopMatcher& m, const StopState& s, const char* name) {
  if (s.node < 0 || s.node >= m.num_nodes() || s.num_bytes < 0)
    throw nb::value_error((std::string(name) + " was not made by this StopMatcher").c_str());
}

void check_token(const StopMatcher& m, int64_t token_id, const char* name) {
  if (token_id < 0 || token_id >= m.num_tokens())
    throw nb::value_error((std::string(name) + " " + std::to_string(token_id) +
                           " is outside [0, vocab size = " + std::to_string(m.num_tokens()) +
                           ")").c_str());
}

}  // namespace

void bind_stop(nb::module_& m) {
  nb::class_<StopState>(m, "StopState",
                        "Where one sequence stands in a StopMatcher: its matcher node and the "
                        "bytes it has output. Fork a sequence with copy().")
      .def(nb::init<>())
      .def_prop_ro("num_bytes", [](const StopState& s) { return s.num_bytes; },
                   "Bytes fed so far (the offset the next token's bytes start at).")
      .def("copy", [](const StopState& s) { return StopState(s); })
      .def("__copy__", [](const StopState& s) { return StopState(s); })
      .def("__deepcopy__", [](const StopState& s, nb::handle) { return StopState(s); },
           nb::arg("memo"))
      .def("reset", [](StopState& s) { s = StopState(); })
      .def("__repr__", [](const StopState& s) {
        return "StopState(num_bytes=" + std::to_string(s.num_bytes) + ")";
      });

  nb::class_<StopMatcher>(m, "StopMatcher",
                          "Finds stop strings in the bytes a token sequence decodes to, across "
                          "token boundaries. vocab[i] is the bytes token i adds to the text "
                          "(Tokenizer.token_bytes()); stops are non-empty byte strings. Holds no "
                          "per-sequence state: each sequence carries a StopState.")
      .def("__init__",
           [](StopMatcher* self, nb::handle vocab, nb::handle stops) {
             std::vector<std::string> v = byte_strings(vocab, "vocab");
             std::vector<std::string> s = byte_strings(stops, "stops");
             if (s.empty()) throw nb::value_error("stops must not be empty");
             for (size_t i = 0; i < s.size(); ++i)
               if (s[i].empty())
                 throw nb::value_error(("stops[" + std::to_string(i) + "] is empty").c_str());
             new (self) StopMatcher(v, s);
           },
           nb::arg("vocab"), nb::arg("stops"))
      .def_prop_ro("vocab_size", &StopMatcher::num_tokens)
      .def_prop_ro("num_stops", &StopMatcher::num_stops)
      .def_prop_ro("max_stop_len", &StopMatcher::max_stop_len)
      .def("feed",
           [](const StopMatcher& m, StopState& state, int64_t token_id) {
             check_state(m, state, "state");
             check_token(m, token_id, "token_id");
             return m.feed(state, static_cast<int32_t>(token_id));
           },
           nb::arg("state"), nb::arg("token_id"),
           "Appends token_id's bytes to state's sequence. Returns the byte offset (in the whole "
           "output of the sequence) where the earliest stop string ending in these bytes "
           "starts, or -1.")
      .def("feed_many",
           [](const StopMatcher& m, nb::list states, const std::vector<int64_t>& token_ids) {
             const size_t n = nb::len(states);
             if (n != token_ids.size())
               throw nb::value_error(("states and token_ids differ in length (" +
                                      std::to_string(n) + " vs " +
                                      std::to_string(token_ids.size()) + ")").c_str());
             // Everything is checked before any state moves, so an error changes nothing.
             std::vector<StopState*> ptrs(n);
             for (size_t i = 0; i < n; ++i) {
               if (!nb::isinstance<StopState>(states[i]))
                 throw nb::type_error(("states[" + std::to_string(i) + "] is not a StopState")
                                          .c_str());
               ptrs[i] = nb::inst_ptr<StopState>(states[i]);
               const std::string idx = "[" + std::to_string(i) + "]";
               check_state(m, *ptrs[i], ("states" + idx).c_str());
               check_token(m, token_ids[i], ("token_ids" + idx).c_str());
             }
             std::vector<int64_t> out(n);
             for (size_t i = 0; i < n; ++i)
               out[i] = m.feed(*ptrs[i], static_cast<int32_t>(token_ids[i]));
             return out;
           },
           nb::arg("states"), nb::arg("token_ids"),
           "feed() for many sequences at once: states[i] takes token_ids[i]. A state listed "
           "twice takes its tokens in order.");
}

}  // namespace ponder::bindings
