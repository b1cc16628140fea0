#include "block_pool.h"

#include <algorithm>
#include <stdexcept>

namespace ponder::core {

BlockPool::BlockPool(int32_t num_blocks) {
  if (num_blocks <= 0) throw std::invalid_argument("num_blocks must be positive");
  ref_counts_.assign(num_blocks, 0);
  cached_.assign(num_blocks, 0);
  lru_prev_.assign(num_blocks, -1);
  lru_next_.assign(num_blocks, -1);
  free_list_.reserve(num_blocks);
  // Hand out low ids first: the list is a stack.
  for (int32_t b = num_blocks - 1; b >= 0; --b) free_list_.push_back(b);
}

int32_t BlockPool::allocate() {
  int32_t block;
  if (!free_list_.empty()) {
    block = free_list_.back();
    free_list_.pop_back();
  } else if (lru_head_ >= 0) {
    block = lru_head_;
    lru_remove(block);
    cached_[block] = 0;
    ++num_evictions_;
    if (on_evict_) on_evict_(block);
  } else {
    return -1;
  }
  ref_counts_[block] = 1;
  ++num_used_;
  peak_used_ = std::max(peak_used_, num_used_);
  return block;
}

bool BlockPool::allocate(int32_t n, std::vector<int32_t>& out) {
  if (n > num_free()) return false;
  for (int32_t i = 0; i < n; ++i) out.push_back(allocate());
  return true;
}

void BlockPool::incref(int32_t block) {
  if (ref_counts_[block] == 0) {
    if (!cached_[block]) throw std::logic_error("incref of a free block");
    lru_remove(block);
    ++num_used_;
    peak_used_ = std::max(peak_used_, num_used_);
  }
  ++ref_counts_[block];
}

void BlockPool::decref(int32_t block) {
  if (ref_counts_[block] <= 0) throw std::logic_error("decref of a free block");
  if (--ref_counts_[block] > 0) return;
  --num_used_;
  if (cached_[block]) {
    lru_push_back(block);
  } else {
    free_list_.push_back(block);
  }
}

void BlockPool::set_cached(int32_t block, bool cached) {
  if (static_cast<bool>(cached_[block]) == cached) return;
  cached_[block] = cached;
  if (ref_counts_[block] == 0) {
    // Only an idle cached block can be uncached while unreferenced: it becomes free.
    if (cached) throw std::logic_error("caching a free block");
    lru_remove(block);
    free_list_.push_back(block);
  }
}

void BlockPool::lru_push_back(int32_t block) {
  lru_prev_[block] = lru_tail_;
  lru_next_[block] = -1;
  if (lru_tail_ >= 0) lru_next_[lru_tail_] = block; else lru_head_ = block;
  lru_tail_ = block;
  ++num_idle_;
}

void BlockPool::lru_remove(int32_t block) {
  const int32_t prev = lru_prev_[block], next = lru_next_[block];
  if (prev >= 0) lru_next_[prev] = next; else lru_head_ = next;
  if (next >= 0) lru_prev_[next] = prev; else lru_tail_ = prev;
  lru_prev_[block] = lru_next_[block] = -1;
  --num_idle_;
}

}  // namespace ponder::core
