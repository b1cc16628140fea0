#include "kv_cache_manager.h"

#include <stdexcept>
#include <string>

namespace ponder::core {

KvCacheManager::KvCacheManager(int32_t num_blocks, int32_t block_size, bool enable_prefix_cache)
    : block_size_(block_size), pool_(num_blocks) {
  if (block_size <= 0) throw std::invalid_argument("block_size must be positive");
  if (enable_prefix_cache) prefix_cache_ = std::make_unique<PrefixCache>(pool_, block_size);
}

const Sequence& KvCacheManager::get(int64_t seq) const {
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) throw std::invalid_argument("unknown seq_id " + std::to_string(seq));
  return it->second;
}

Sequence& KvCacheManager::get_mut(int64_t seq) {
  return const_cast<Sequence&>(static_cast<const KvCacheManager*>(this)->get(seq));
}

std::vector<int64_t> KvCacheManager::sequence_ids() const {
  std::vector<int64_t> ids;
  ids.reserve(seqs_.size());
  for (const auto& kv : seqs_) ids.push_back(kv.first);
  return ids;
}

int64_t KvCacheManager::match_prefix(const int32_t* tokens, int64_t n) const {
  if (!prefix_cache_) return 0;
  uint64_t parent = PrefixCache::kRootHash;
  int64_t matched = 0;
  for (; matched + block_size_ <= n; matched += block_size_) {
    const int32_t* t = tokens + matched;
    const uint64_t h = PrefixCache::hash_block(parent, t, block_size_);
    if (prefix_cache_->find(parent, h, t) < 0) break;
    parent = h;
  }
  return matched;
}

int64_t KvCacheManager::create(const int32_t* tokens, int64_t n) {
  if (n < 0) throw std::invalid_argument("token count must be non-negative");
  const int64_t id = new_id();
  Sequence& s = seqs_[id];
  if (!prefix_cache_) return id;
  uint64_t parent = PrefixCache::kRootHash;
  int64_t matched = 0;
  for (; matched + block_size_ <= n; matched += block_size_) {
    const int32_t* t = tokens + matched;
    const uint64_t h = PrefixCache::hash_block(parent, t, block_size_);
    const int32_t block = prefix_cache_->find(parent, h, t);
    if (block < 0) break;
    pool_.incref(block);
    s.blocks.push_back(block);
    s.full_hashes.push_back(h);
    parent = h;
  }
  s.tokens.assign(tokens, tokens + matched);
  prefix_cache_->query_tokens += n;
  prefix_cache_->hit_tokens += matched;
  return id;
}

int64_t KvCacheManager::blocks_needed(int64_t seq, int64_t n) const {
  const Sequence& s = get(seq);
  if (n <= 0) return 0;
  const int64_t len = s.length();
  const int64_t total = (len + n + block_size_ - 1) / block_size_;
  int64_t need = total - static_cast<int64_t>(s.blocks.size());
  // The first write lands in an existing (partial) block: a shared one is copied first.
  const bool writes_partial = len < static_cast<int64_t>(s.blocks.size()) * block_size_;
  if (writes_partial && pool_.ref_count(s.blocks[len / block_size_]) > 1) ++need;
  return need;
}

bool KvCacheManager::append(int64_t seq, const int32_t* tokens, int64_t n,
                            std::vector<int64_t>& slots, std::vector<std::array<int32_t, 2>>& copies) {
  Sequence& s = get_mut(seq);
  if (n < 0) throw std::invalid_argument("token count must be non-negative");
  if (n == 0) return true;
  const int64_t need = blocks_needed(seq, n);
  std::vector<int32_t> fresh;
  if (!pool_.allocate(static_cast<int32_t>(need), fresh)) return false;
  size_t next_fresh = 0;

  const int64_t len = s.length();
  if (len < static_cast<int64_t>(s.blocks.size()) * block_size_) {
    // The next write lands inside an existing block: never write a block someone else holds,
    // and never change a block the prefix cache maps to other tokens.
    int32_t& block = s.blocks[len / block_size_];
    if (pool_.ref_count(block) > 1) {
      const int32_t copy = fresh[next_fresh++];
      copies.push_back({block, copy});
      pool_.decref(block);
      block = copy;
    } else if (prefix_cache_) {
      prefix_cache_->erase(block);
    }
  }
  slots.reserve(slots.size() + n);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t pos = s.length();
    const int64_t j = pos / block_size_;
    if (j >= static_cast<int64_t>(s.blocks.size())) s.blocks.push_back(fresh[next_fresh++]);
    slots.push_back(static_cast<int64_t>(s.blocks[j]) * block_size_ + pos % block_size_);
    s.tokens.push_back(tokens[i]);
    if ((pos + 1) % block_size_ == 0) {
      const uint64_t parent = j == 0 ? PrefixCache::kRootHash : s.full_hashes[j - 1];
      const int32_t* t = s.tokens.data() + j * block_size_;
      const uint64_t h = PrefixCache::hash_block(parent, t, block_size_);
      s.full_hashes.resize(j);
      s.full_hashes.push_back(h);
      if (prefix_cache_) prefix_cache_->insert(s.blocks[j], parent, h, t);
    }
  }
  return true;
}

int64_t KvCacheManager::fork(int64_t seq, int64_t pos) {
  const Sequence& parent = get(seq);
  if (pos < 0 || pos > parent.length())
    throw std::invalid_argument("fork position " + std::to_string(pos) + " is outside [0, " +
                                std::to_string(parent.length()) + "]");
  const int64_t id = new_id();
  const Sequence& p = get(seq);  // the map may have rehashed
  Sequence& child = seqs_[id];
  const int64_t num_blocks = (pos + block_size_ - 1) / block_size_;
  child.blocks.assign(p.blocks.begin(), p.blocks.begin() + num_blocks);
  for (int32_t b : child.blocks) pool_.incref(b);
  child.tokens.assign(p.tokens.begin(), p.tokens.begin() + pos);
  const int64_t num_hashes = std::min<int64_t>(pos / block_size_, p.full_hashes.size());
  child.full_hashes.assign(p.full_hashes.begin(), p.full_hashes.begin() + num_hashes);
  return id;
}

void KvCacheManager::truncate(int64_t seq, int64_t pos) {
  Sequence& s = get_mut(seq);
  if (pos < 0 || pos > s.length())
    throw std::invalid_argument("truncate position " + std::to_string(pos) + " is outside [0, " +
                                std::to_string(s.length()) + "]");
  const size_t keep = static_cast<size_t>((pos + block_size_ - 1) / block_size_);
  while (s.blocks.size() > keep) {
    pool_.decref(s.blocks.back());
    s.blocks.pop_back();
  }
  s.tokens.resize(pos);
  if (s.full_hashes.size() > static_cast<size_t>(pos / block_size_))
    s.full_hashes.resize(pos / block_size_);
}

void KvCacheManager::free(int64_t seq) {
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) throw std::invalid_argument("unknown seq_id " + std::to_string(seq));
  // Last block first, so the LRU list evicts the tails of cached prefixes before their heads.
  for (auto b = it->second.blocks.rbegin(); b != it->second.blocks.rend(); ++b) pool_.decref(*b);
  seqs_.erase(it);
}

void KvCacheManager::uncache(int64_t seq) {
  Sequence& s = get_mut(seq);
  if (prefix_cache_)
    for (int32_t b : s.blocks) prefix_cache_->erase(b);
  s.full_hashes.clear();
}

}  // namespace ponder::core
