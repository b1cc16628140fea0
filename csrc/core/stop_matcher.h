// StopMatcher: finds stop strings in the bytes a sequence of tokens decodes to, so a stop
// string split across tokens is still found. One matcher is built per (vocabulary, stops);
// each sequence carries only a StopState, which forks by plain copy.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ponder::core {

// Where one sequence stands: the Aho-Corasick node for its output so far (the longest suffix
// that is a prefix of some stop string, which is all of the last max_stop_len - 1 bytes that
// can still matter) and how many bytes it has output. Only meaningful with the matcher that
// updated it.
struct StopState {
  int32_t node = 0;
  int64_t num_bytes = 0;
};

class StopMatcher {
 public:
  // vocab[i] is the bytes token i adds to the decoded text (empty for skipped tokens); stops
  // must be non-empty strings. Throws std::invalid_argument otherwise.
  StopMatcher(const std::vector<std::string>& vocab, const std::vector<std::string>& stops);

  int64_t num_tokens() const { return static_cast<int64_t>(token_offsets_.size()) - 1; }
  int64_t num_stops() const { return num_stops_; }
  int64_t max_stop_len() const { return max_stop_len_; }
  int32_t num_nodes() const { return static_cast<int32_t>(out_len_.size()); }

  // Appends token_id's bytes to the sequence of state. Returns the byte offset (in the
  // sequence's whole output) where the earliest stop string ending inside these bytes starts,
  // or -1. Assumes 0 <= token_id < num_tokens() and a state of this matcher.
  int64_t feed(StopState& state, int32_t token_id) const {
    const int64_t begin = token_offsets_[token_id];
    return feed_bytes(state, bytes_.data() + begin, token_offsets_[token_id + 1] - begin);
  }
  int64_t feed_bytes(StopState& state, const uint8_t* data, int64_t n) const;

 private:
  // The automaton works on byte classes: every byte that occurs in no stop string shares
  // class 0, which keeps the transition table small for any number of stops.
  uint8_t byte_class_[256] = {};
  int32_t num_classes_ = 1;
  std::vector<int32_t> next_;     // [num_nodes * num_classes_] complete transition table
  std::vector<int32_t> out_len_;  // [num_nodes] longest stop that is a suffix of the node, or 0
  std::vector<uint8_t> bytes_;    // all token bytes, concatenated
  std::vector<int64_t> token_offsets_;  // [num_tokens + 1] into bytes_
  int64_t num_stops_ = 0;
  int64_t max_stop_len_ = 0;
};

}  // namespace ponder::core
