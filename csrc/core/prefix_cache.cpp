#include "prefix_cache.h"

#include <algorithm>

namespace ponder::core {
namespace {

uint64_t mix(uint64_t x) {  // splitmix64 finalizer
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  x ^= x >> 31;
  return x;
}

}  // namespace

PrefixCache::PrefixCache(BlockPool& pool, int32_t block_size)
    : pool_(pool), block_size_(block_size), entries_(pool.num_blocks()) {
  pool_.set_evict_callback([this](int32_t block) { forget(block); });
}

uint64_t PrefixCache::hash_block(uint64_t parent_hash, const int32_t* tokens, int32_t n) {
  uint64_t h = mix(parent_hash + 0x9e3779b97f4a7c15ull);
  for (int32_t i = 0; i < n; ++i) h = mix(h ^ (static_cast<uint64_t>(static_cast<uint32_t>(tokens[i])) + 0x9e3779b97f4a7c15ull * (i + 1)));
  return h;
}

int32_t PrefixCache::find(uint64_t parent_hash, uint64_t hash, const int32_t* tokens) const {
  auto it = by_hash_.find(hash);
  if (it == by_hash_.end()) return -1;
  const Entry& e = entries_[it->second];
  if (e.parent_hash != parent_hash || !std::equal(e.tokens.begin(), e.tokens.end(), tokens))
    return -1;
  return it->second;
}

void PrefixCache::insert(int32_t block, uint64_t parent_hash, uint64_t hash,
                         const int32_t* tokens) {
  if (pool_.is_cached(block) || by_hash_.count(hash)) return;
  Entry& e = entries_[block];
  e.hash = hash;
  e.parent_hash = parent_hash;
  e.tokens.assign(tokens, tokens + block_size_);
  by_hash_.emplace(hash, block);
  pool_.set_cached(block, true);
}

void PrefixCache::erase(int32_t block) {
  if (!pool_.is_cached(block)) return;
  forget(block);
  pool_.set_cached(block, false);
}

void PrefixCache::forget(int32_t block) {
  Entry& e = entries_[block];
  auto it = by_hash_.find(e.hash);
  if (it != by_hash_.end() && it->second == block) by_hash_.erase(it);
  e.tokens.clear();
}

}  // namespace ponder::core
