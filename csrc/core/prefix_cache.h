// PrefixCache: full KV blocks indexed by a hash chain over their tokens.
//
// hash(block j) = H(hash(block j-1), tokens of block j), so a hash names the whole prefix up to
// and including the block. Entries keep their tokens and parent hash and a lookup compares
// them, so a 64-bit collision is a miss, never a wrong block.
#pragma once

#include <cstdint>
#include <unordered_map>
#include <vector>

#include "block_pool.h"

namespace ponder::core {

class PrefixCache {
 public:
  static constexpr uint64_t kRootHash = 0x6a09e667f3bcc908ull;

  PrefixCache(BlockPool& pool, int32_t block_size);

  static uint64_t hash_block(uint64_t parent_hash, const int32_t* tokens, int32_t n);

  // The cached block holding these tokens after this parent, or -1.
  int32_t find(uint64_t parent_hash, uint64_t hash, const int32_t* tokens) const;
  // Maps hash to block unless the hash is already mapped (another sequence got there first).
  void insert(int32_t block, uint64_t parent_hash, uint64_t hash, const int32_t* tokens);
  // Drops the block's entry (it is about to be written in place).
  void erase(int32_t block);
  int64_t size() const { return static_cast<int64_t>(by_hash_.size()); }

  int64_t hit_tokens = 0;
  int64_t query_tokens = 0;

 private:
  struct Entry {
    uint64_t hash = 0;
    uint64_t parent_hash = 0;
    std::vector<int32_t> tokens;
  };
  void forget(int32_t block);

  BlockPool& pool_;
  int32_t block_size_;
  std::unordered_map<uint64_t, int32_t> by_hash_;
  std::vector<Entry> entries_;  // by block id; valid while pool_.is_cached(block)
};

}  // namespace ponder::core
