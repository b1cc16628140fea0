// KvCacheManager: sequences as block tables over a BlockPool, with fork, copy-on-write and an
// optional prefix cache. The runner owns the tensors; this class only hands out block ids and
// slots, and says which blocks to copy before a write.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <unordered_map>
#include <vector>

#include "block_pool.h"
#include "prefix_cache.h"

namespace ponder::core {

struct Sequence {
  std::vector<int32_t> blocks;        // block table
  std::vector<int32_t> tokens;        // token ids at positions [0, length)
  std::vector<uint64_t> full_hashes;  // hash chain of the full blocks, as far as computed
  int64_t length() const { return static_cast<int64_t>(tokens.size()); }
};

class KvCacheManager {
 public:
  KvCacheManager(int32_t num_blocks, int32_t block_size, bool enable_prefix_cache);

  int32_t block_size() const { return block_size_; }
  BlockPool& pool() { return pool_; }
  const BlockPool& pool() const { return pool_; }
  bool prefix_cache_enabled() const { return prefix_cache_ != nullptr; }
  const PrefixCache* prefix_cache() const { return prefix_cache_.get(); }

  // How many leading tokens (whole blocks) the prefix cache holds; counts nothing.
  int64_t match_prefix(const int32_t* tokens, int64_t n) const;
  // A new sequence that takes the cached prefix of tokens (whole blocks only); its length is
  // the number of tokens taken. Append the rest with append().
  int64_t create(const int32_t* tokens, int64_t n);
  // Blocks append(seq, n) would take from the pool, copy-on-write included.
  int64_t blocks_needed(int64_t seq, int64_t n) const;
  // Appends n tokens: false (and no change) when the pool cannot supply the blocks. Otherwise
  // slots[i] is the cache slot of token i and copies holds (src, dst) block pairs the runner
  // must copy (copy_blocks) before writing the slots.
  bool append(int64_t seq, const int32_t* tokens, int64_t n, std::vector<int64_t>& slots,
              std::vector<std::array<int32_t, 2>>& copies);
  // A new sequence equal to the first pos tokens of seq. Blocks are shared; a partial last
  // block is copied when either sequence next writes into it.
  int64_t fork(int64_t seq, int64_t pos);
  void free(int64_t seq);
  // Drops the sequence's blocks from the prefix cache: their KV may be wrong (a forward pass
  // that failed after append registered them), so no later request may take them.
  void uncache(int64_t seq);
  // Drops tokens past pos (a rejected step); blocks no longer needed are released.
  void truncate(int64_t seq, int64_t pos);

  const Sequence& get(int64_t seq) const;
  bool contains(int64_t seq) const { return seqs_.count(seq) != 0; }
  int64_t num_sequences() const { return static_cast<int64_t>(seqs_.size()); }
  std::vector<int64_t> sequence_ids() const;

 private:
  Sequence& get_mut(int64_t seq);
  int64_t new_id() { return next_id_++; }

  int32_t block_size_;
  BlockPool pool_;
  std::unique_ptr<PrefixCache> prefix_cache_;
  std::unordered_map<int64_t, Sequence> seqs_;
  int64_t next_id_ = 0;
};

}  // namespace ponder::core
