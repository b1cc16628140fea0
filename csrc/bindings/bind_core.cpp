// Bindings of the core memory manager: BlockPool and KvCacheManager.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "../core/kv_cache_manager.h"

namespace ponder::bindings {
namespace nb = nanobind;
using core::BlockPool;
using core::KvCacheManager;

namespace {

using TokenArray = nb::ndarray<const int32_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;

template <typename T>
nb::ndarray<nb::numpy, T> to_numpy(std::vector<T>&& v, std::vector<size_t> shape) {
  auto* heap = new std::vector<T>(std::move(v));
  nb::capsule owner(heap, [](void* p) noexcept { delete static_cast<std::vector<T>*>(p); });
  return nb::ndarray<nb::numpy, T>(heap->data(), shape.size(), shape.data(), owner);
}

void check_block(const BlockPool& pool, int32_t block) {
  if (block < 0 || block >= pool.num_blocks())
    throw nb::value_error(("block " + std::to_string(block) + " is outside [0, num_blocks = " +
                           std::to_string(pool.num_blocks()) + ")").c_str());
}

nb::dict pool_stats(const KvCacheManager& m) {
  const BlockPool& pool = m.pool();
  nb::dict d;
  d["num_blocks"] = pool.num_blocks();
  d["block_size"] = m.block_size();
  d["free"] = pool.num_free();
  d["used"] = pool.num_used();
  d["peak_used"] = pool.peak_used();
  d["cached_idle"] = pool.num_idle_cached();
  d["evictions"] = pool.num_evictions();
  d["num_sequences"] = m.num_sequences();
  const auto* pc = m.prefix_cache();
  d["cached_blocks"] = pc ? pc->size() : 0;
  d["prefix_query_tokens"] = pc ? pc->query_tokens : 0;
  d["prefix_hit_tokens"] = pc ? pc->hit_tokens : 0;
  return d;
}

}  // namespace

void bind_core(nb::module_& m) {
  nb::class_<BlockPool>(m, "BlockPool",
                        "Fixed pool of KV block ids with reference counts. allocate() returns -1 "
                        "when the pool is exhausted.")
      .def(nb::init<int32_t>(), nb::arg("num_blocks"))
      .def_prop_ro("num_blocks", &BlockPool::num_blocks)
      .def_prop_ro("num_free", &BlockPool::num_free)
      .def_prop_ro("num_used", &BlockPool::num_used)
      .def_prop_ro("peak_used", &BlockPool::peak_used)
      .def("allocate", nb::overload_cast<>(&BlockPool::allocate))
      .def("allocate_many",
           [](BlockPool& p, int32_t n) -> nb::object {
             if (n < 0) throw nb::value_error("n must be non-negative");
             std::vector<int32_t> out;
             if (!p.allocate(n, out)) return nb::none();
             return nb::cast(out);
           },
           nb::arg("n"), "n blocks, or None (and nothing taken) when fewer are free.")
      .def("incref", [](BlockPool& p, int32_t b) {
             check_block(p, b);
             if (p.ref_count(b) == 0 && !p.is_cached(b))
               throw nb::value_error("block is free: share only a held block");
             p.incref(b);
           }, nb::arg("block"))
      .def("decref", [](BlockPool& p, int32_t b) {
             check_block(p, b);
             if (p.ref_count(b) == 0) throw nb::value_error("block is already free");
             p.decref(b);
           }, nb::arg("block"))
      .def("ref_count", [](const BlockPool& p, int32_t b) { check_block(p, b); return p.ref_count(b); },
           nb::arg("block"));

  nb::class_<KvCacheManager>(m, "KvCacheManager",
                             "Sequences as block tables with fork, copy-on-write and a prefix "
                             "cache. Hands out block ids and slots; the caller owns the tensors.")
      .def(nb::init<int32_t, int32_t, bool>(), nb::arg("num_blocks"), nb::arg("block_size"),
           nb::arg("enable_prefix_cache") = true)
      .def_prop_ro("block_size", &KvCacheManager::block_size)
      .def_prop_ro("num_blocks", [](const KvCacheManager& m) { return m.pool().num_blocks(); })
      .def_prop_ro("num_free_blocks", [](const KvCacheManager& m) { return m.pool().num_free(); })
      .def("match_prefix",
           [](const KvCacheManager& m, TokenArray t) { return m.match_prefix(t.data(), t.shape(0)); },
           nb::arg("token_ids"))
      .def("create",
           [](KvCacheManager& m, TokenArray t) { return m.create(t.data(), t.shape(0)); },
           nb::arg("token_ids"),
           "New sequence holding the cached whole-block prefix of token_ids; its length() is "
           "the number of tokens taken from the cache.")
      .def("blocks_needed", &KvCacheManager::blocks_needed, nb::arg("seq_id"), nb::arg("num_tokens"))
      .def("append",
           [](KvCacheManager& m, int64_t seq, TokenArray t) -> nb::object {
             std::vector<int64_t> slots;
             std::vector<std::array<int32_t, 2>> copies;
             if (!m.append(seq, t.data(), t.shape(0), slots, copies)) return nb::none();
             std::vector<int64_t> flat;
             for (auto& c : copies) { flat.push_back(c[0]); flat.push_back(c[1]); }
             const size_t n = slots.size(), k = copies.size();
             return nb::make_tuple(to_numpy(std::move(slots), {n}), to_numpy(std::move(flat), {k, 2}));
           },
           nb::arg("seq_id"), nb::arg("token_ids"),
           "(slots int64 [n], copies int64 [k, 2]) or None when the pool is out of blocks (the "
           "sequence is then unchanged). Apply copies with copy_blocks before writing slots.")
      .def("fork", &KvCacheManager::fork, nb::arg("seq_id"), nb::arg("pos"))
      .def("truncate", &KvCacheManager::truncate, nb::arg("seq_id"), nb::arg("pos"))
      .def("free", &KvCacheManager::free, nb::arg("seq_id"))
      .def("uncache", &KvCacheManager::uncache, nb::arg("seq_id"),
           "Drops the sequence's blocks from the prefix cache (their KV may be wrong: a forward "
           "pass that failed after append registered them).")
      .def("free_many",
           [](KvCacheManager& m, const std::vector<int64_t>& ids) {
             for (int64_t id : ids)
               if (!m.contains(id)) throw nb::value_error(("unknown seq_id " + std::to_string(id)).c_str());
             for (int64_t id : ids) if (m.contains(id)) m.free(id);
           },
           nb::arg("seq_ids"), "Frees a set of sequences (a pruned subtree) at once.")
      .def("length", [](const KvCacheManager& m, int64_t s) { return m.get(s).length(); }, nb::arg("seq_id"))
      .def("block_table", [](const KvCacheManager& m, int64_t s) { return m.get(s).blocks; }, nb::arg("seq_id"))
      .def("token_ids", [](const KvCacheManager& m, int64_t s) { return m.get(s).tokens; }, nb::arg("seq_id"))
      .def("block_tables",
           [](const KvCacheManager& m, const std::vector<int64_t>& ids, int64_t max_blocks) {
             size_t width = static_cast<size_t>(std::max<int64_t>(max_blocks, 0));
             for (int64_t id : ids) width = std::max(width, m.get(id).blocks.size());
             std::vector<int32_t> table(ids.size() * width, 0);
             for (size_t i = 0; i < ids.size(); ++i) {
               const auto& b = m.get(ids[i]).blocks;
               std::copy(b.begin(), b.end(), table.begin() + i * width);
             }
             return to_numpy(std::move(table), {ids.size(), width});
           },
           nb::arg("seq_ids"), nb::arg("min_width") = 0,
           "int32 [len(seq_ids), width] block tables padded with 0, width >= min_width.")
      .def("ref_count", [](const KvCacheManager& m, int32_t b) { check_block(m.pool(), b); return m.pool().ref_count(b); },
           nb::arg("block"))
      .def("contains", &KvCacheManager::contains, nb::arg("seq_id"))
      .def("sequence_ids", &KvCacheManager::sequence_ids)
      .def("reset_peak", [](KvCacheManager& m) { m.pool().reset_peak(); })
      .def("stats", &pool_stats, "Block and prefix-cache counters as a dict.");
}

}  // namespace ponder::bindings
