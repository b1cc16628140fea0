#include "stop_matcher.h"

#include <algorithm>
#include <stdexcept>

namespace ponder::core {

StopMatcher::StopMatcher(const std::vector<std::string>& vocab,
                         const std::vector<std::string>& stops) {
  if (stops.empty()) throw std::invalid_argument("stops must not be empty");
  int64_t total = 0;
  for (const auto& t : vocab) total += static_cast<int64_t>(t.size());
  bytes_.reserve(total);
  token_offsets_.reserve(vocab.size() + 1);
  token_offsets_.push_back(0);
  for (const auto& t : vocab) {
    bytes_.insert(bytes_.end(), t.begin(), t.end());
    token_offsets_.push_back(static_cast<int64_t>(bytes_.size()));
  }

  for (const auto& s : stops) {
    if (s.empty()) throw std::invalid_argument("stops must not contain an empty string");
    for (unsigned char c : s)
      if (byte_class_[c] == 0) byte_class_[c] = static_cast<uint8_t>(num_classes_++);
    max_stop_len_ = std::max<int64_t>(max_stop_len_, static_cast<int64_t>(s.size()));
  }
  num_stops_ = static_cast<int64_t>(stops.size());
  const int32_t num_classes = num_classes_;

  // Trie of the stop strings; -1 marks a missing edge until the BFS below fills it in.
  std::vector<int32_t> depth{0};
  next_.assign(num_classes, -1);
  out_len_.assign(1, 0);
  for (const auto& s : stops) {
    int32_t node = 0;
    for (unsigned char c : s) {
      int32_t& edge = next_[static_cast<int64_t>(node) * num_classes + byte_class_[c]];
      if (edge < 0) {
        edge = static_cast<int32_t>(out_len_.size());
        next_.resize(next_.size() + num_classes, -1);
        out_len_.push_back(0);
        depth.push_back(depth[node] + 1);
      }
      node = next_[static_cast<int64_t>(node) * num_classes + byte_class_[c]];
    }
    out_len_[node] = depth[node];
  }

  // BFS in depth order: each node's suffix link is resolved before its children, so missing
  // edges copy the (already complete) row of the suffix link. A node's own stop, if any, is
  // longer than any stop that is a proper suffix of it.
  std::vector<int32_t> fail(out_len_.size(), 0);
  std::vector<int32_t> queue{0};
  for (size_t head = 0; head < queue.size(); ++head) {
    const int32_t u = queue[head];
    const int64_t row = static_cast<int64_t>(u) * num_classes;
    const int64_t fail_row = static_cast<int64_t>(fail[u]) * num_classes;
    for (int32_t c = 0; c < num_classes; ++c) {
      const int32_t v = next_[row + c];
      if (v < 0) {
        next_[row + c] = u == 0 ? 0 : next_[fail_row + c];
      } else {
        fail[v] = u == 0 ? 0 : next_[fail_row + c];
        if (out_len_[v] == 0) out_len_[v] = out_len_[fail[v]];
        queue.push_back(v);
      }
    }
  }
}

int64_t StopMatcher::feed_bytes(StopState& state, const uint8_t* data, int64_t n) const {
  int32_t node = state.node;
  int64_t best = -1;
  const int64_t end_base = state.num_bytes + 1;
  for (int64_t i = 0; i < n; ++i) {
    node = next_[static_cast<int64_t>(node) * num_classes_ + byte_class_[data[i]]];
    const int32_t len = out_len_[node];
    // The longest stop ending here starts earliest among those ending here; a later end can
    // still start earlier (stops "xabcd" and "bc"), so every position is checked.
    if (len != 0) {
      const int64_t start = end_base + i - len;
      if (best < 0 || start < best) best = start;
    }
  }
  state.node = node;
  state.num_bytes += n;
  return best;
}

}  // namespace ponder::core
