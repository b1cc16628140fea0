// paged_kv_append: scatter new key/value rows into the paged caches.
#pragma once

#include "ponder/common.h"

namespace ponder {

struct PagedKvAppendParams {
  const void* key;             // [num_tokens, num_kv_heads, head_dim]
  const void* value;           // [num_tokens, num_kv_heads, head_dim]
  void* k_cache;               // [num_blocks, block_size, num_kv_heads, head_dim]
  void* v_cache;               // [num_blocks, block_size, num_kv_heads, head_dim]
  const int64_t* slot_mapping; // [num_tokens]; -1 skips the token
  int64_t num_tokens;
  int64_t row_elems;           // num_kv_heads * head_dim
  int64_t num_slots;           // num_blocks * block_size; CUDA skips slots outside
  DType dtype;
};

namespace cpu {
Status paged_kv_append(const PagedKvAppendParams& params);
}
namespace cuda {
Status paged_kv_append(const PagedKvAppendParams& params, int device, void* stream);
}

}  // namespace ponder
