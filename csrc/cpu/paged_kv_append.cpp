// CPU paged_kv_append: each token's K and V rows are one contiguous memcpy into its slot.
#include "ponder/paged_kv_append.h"

#include <cstring>

namespace ponder::cpu {

Status paged_kv_append(const PagedKvAppendParams& p) {
  const int64_t row_bytes = p.row_elems * dtype_size(p.dtype);
  const auto* key = static_cast<const char*>(p.key);
  const auto* value = static_cast<const char*>(p.value);
  auto* k_cache = static_cast<char*>(p.k_cache);
  auto* v_cache = static_cast<char*>(p.v_cache);
  // Small appends (decode) are a few KB: threads would cost more than the copy.
#pragma omp parallel for schedule(static) if (p.num_tokens * row_bytes > (1 << 20))
  for (int64_t i = 0; i < p.num_tokens; ++i) {
    const int64_t slot = p.slot_mapping[i];
    if (slot < 0) continue;
    std::memcpy(k_cache + slot * row_bytes, key + i * row_bytes, row_bytes);
    std::memcpy(v_cache + slot * row_bytes, value + i * row_bytes, row_bytes);
  }
  return Status::success();
}

}  // namespace ponder::cpu
