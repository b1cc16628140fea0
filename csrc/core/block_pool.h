// BlockPool: a fixed set of KV block ids with reference counts.
//
// A block is free (on the free list), used (ref_count > 0), or cached and idle: nobody holds
// it but the prefix cache still maps a hash to it, so a later request can take it back. Idle
// cached blocks sit on an LRU list and are evicted (handed out again) only when the free list
// is empty. Running out of blocks is a normal result (-1 / false) for the caller to act on.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

namespace ponder::core {

class BlockPool {
 public:
  explicit BlockPool(int32_t num_blocks);

  int32_t num_blocks() const { return static_cast<int32_t>(ref_counts_.size()); }
  // Blocks a caller can obtain now: the free list plus idle cached blocks.
  int32_t num_free() const { return static_cast<int32_t>(free_list_.size()) + num_idle_; }
  int32_t num_used() const { return num_used_; }
  int32_t num_idle_cached() const { return num_idle_; }
  int32_t peak_used() const { return peak_used_; }
  int64_t num_evictions() const { return num_evictions_; }
  int32_t ref_count(int32_t block) const { return ref_counts_[block]; }
  bool is_cached(int32_t block) const { return cached_[block]; }

  // One block with ref_count 1, or -1 when none is left.
  int32_t allocate();
  // n blocks or none at all.
  bool allocate(int32_t n, std::vector<int32_t>& out);
  void incref(int32_t block);
  // At zero the block goes to the free list, or to the LRU list when it is cached.
  void decref(int32_t block);

  // The prefix cache marks blocks it maps; on_evict tells it when an idle one is reused.
  void set_cached(int32_t block, bool cached);
  void set_evict_callback(std::function<void(int32_t)> on_evict) { on_evict_ = std::move(on_evict); }
  void reset_peak() { peak_used_ = num_used_; }

 private:
  void lru_push_back(int32_t block);
  void lru_remove(int32_t block);

  std::vector<int32_t> ref_counts_;
  std::vector<uint8_t> cached_;
  std::vector<int32_t> free_list_;
  // Intrusive doubly linked LRU list of idle cached blocks (-1 terminated).
  std::vector<int32_t> lru_prev_, lru_next_;
  int32_t lru_head_ = -1, lru_tail_ = -1;
  int32_t num_idle_ = 0;
  int32_t num_used_ = 0;
  int32_t peak_used_ = 0;
  int64_t num_evictions_ = 0;
  std::function<void(int32_t)> on_evict_;
};

}  // namespace ponder::core
