// Bindings of the kernels: a wall of checks, then dispatch by device. Value checks that need
// to read index tensors run here for CPU tensors; for CUDA tensors ponder.ops does them with
// torch so that nothing here reads device memory.
#include <algorithm>
#include <cmath>
#include <optional>
#include <string>
#include <unordered_set>
#include <vector>

#include "checks.h"
#include "tensor.h"
#include "ponder/copy_blocks.h"
#include "ponder/paged_attention.h"
#include "ponder/paged_kv_append.h"

namespace ponder::bindings {
namespace {

void* as_stream(uintptr_t stream) { return reinterpret_cast<void*>(stream); }

void paged_kv_append(nb::handle key_obj, nb::handle value_obj, nb::handle k_cache_obj,
                     nb::handle v_cache_obj, nb::handle slot_mapping_obj, uintptr_t stream) {
  const Array key = import_tensor(key_obj, "key");
  const Array value = import_tensor(value_obj, "value");
  const Array k_cache = import_tensor(k_cache_obj, "k_cache");
  const Array v_cache = import_tensor(v_cache_obj, "v_cache");
  const Array slot_mapping = import_tensor(slot_mapping_obj, "slot_mapping");
  check_device_supported(k_cache, "k_cache");
  check_ndim(key, "key", 3);
  check_ndim(value, "value", 3);
  check_ndim(k_cache, "k_cache", 4);
  check_ndim(v_cache, "v_cache", 4);
  check_ndim(slot_mapping, "slot_mapping", 1);
  const DType dtype = float_dtype(k_cache, "k_cache");
  check_same_dtype(v_cache, "v_cache", dtype, "k_cache");
  check_same_dtype(key, "key", dtype, "k_cache");
  check_same_dtype(value, "value", dtype, "k_cache");
  check_int_dtype<int64_t>(slot_mapping, "slot_mapping", "int64");
  const int64_t num_blocks = k_cache.shape(0), block_size = k_cache.shape(1);
  const int64_t num_kv_heads = k_cache.shape(2), head_dim = k_cache.shape(3);
  const int64_t num_tokens = key.shape(0);
  for (size_t d = 0; d < 4; ++d)
    check_dim(v_cache, "v_cache", d, k_cache.shape(d), "k_cache.shape[d]");
  check_dim(key, "key", 1, num_kv_heads, "num_kv_heads (k_cache.shape[2])");
  check_dim(key, "key", 2, head_dim, "head_dim (k_cache.shape[3])");
  for (size_t d = 0; d < 3; ++d) check_dim(value, "value", d, key.shape(d), "key.shape[d]");
  check_dim(slot_mapping, "slot_mapping", 0, num_tokens, "num_tokens (key.shape[0])");
  for (auto [a, name] : {std::pair{&key, "key"}, {&value, "value"}, {&v_cache, "v_cache"},
                         {&slot_mapping, "slot_mapping"}})
    check_same_device(*a, name, k_cache, "k_cache");
  for (auto [a, name] : {std::pair{&key, "key"}, {&value, "value"}, {&k_cache, "k_cache"},
                         {&v_cache, "v_cache"}, {&slot_mapping, "slot_mapping"}})
    check_contiguous(*a, name);
  if (k_cache.data() == v_cache.data()) fail_value("k_cache and v_cache must be different tensors");

  PagedKvAppendParams p{key.data(), value.data(), k_cache.data(), v_cache.data(),
                        static_cast<const int64_t*>(slot_mapping.data()), num_tokens,
                        num_kv_heads * head_dim, num_blocks * block_size, dtype};
  if (is_cuda(k_cache)) {
#ifdef PONDER_WITH_CUDA
    check_status(cuda::paged_kv_append(p, k_cache.device_id(), as_stream(stream)), "paged_kv_append");
    return;
#else
    fail_no_cuda("paged_kv_append");
#endif
  }
  const int64_t num_slots = num_blocks * block_size;
  for (int64_t i = 0; i < num_tokens; ++i) {
    const int64_t s = p.slot_mapping[i];
    if (s < -1 || s >= num_slots)
      fail_value("slot_mapping[" + std::to_string(i) + "] = " + std::to_string(s) +
                 " is outside [-1, num_blocks * block_size = " + std::to_string(num_slots) + ")");
  }
  nb::gil_scoped_release release;
  check_status(cpu::paged_kv_append(p), "paged_kv_append");
}

void paged_attention(nb::handle query_obj, nb::handle k_cache_obj, nb::handle v_cache_obj,
                     nb::handle block_tables_obj, nb::handle seq_lens_obj,
                     nb::handle cu_query_lens_obj, nb::handle out_obj, float scale,
                     int64_t max_seq_len, nb::handle workspace_obj, int64_t num_splits,
                     uintptr_t stream) {
  const Array query = import_tensor(query_obj, "query");
  const Array k_cache = import_tensor(k_cache_obj, "k_cache");
  const Array v_cache = import_tensor(v_cache_obj, "v_cache");
  const Array block_tables = import_tensor(block_tables_obj, "block_tables");
  const Array seq_lens = import_tensor(seq_lens_obj, "seq_lens");
  const std::optional<Array> cu_query_lens =
      import_optional_tensor(cu_query_lens_obj, "cu_query_lens");
  const Array out = import_tensor(out_obj, "out");
  const std::optional<Array> workspace = import_optional_tensor(workspace_obj, "workspace");
  check_device_supported(query, "query");
  check_ndim(query, "query", 3);
  check_ndim(k_cache, "k_cache", 4);
  check_ndim(v_cache, "v_cache", 4);
  check_ndim(block_tables, "block_tables", 2);
  check_ndim(seq_lens, "seq_lens", 1);
  check_ndim(out, "out", 3);
  const DType dtype = float_dtype(query, "query");
  check_same_dtype(k_cache, "k_cache", dtype, "query");
  check_same_dtype(v_cache, "v_cache", dtype, "query");
  check_same_dtype(out, "out", dtype, "query");
  check_int_dtype<int32_t>(block_tables, "block_tables", "int32");
  check_int_dtype<int32_t>(seq_lens, "seq_lens", "int32");
  const int64_t num_tokens = query.shape(0), num_heads = query.shape(1), head_dim = query.shape(2);
  const int64_t num_blocks = k_cache.shape(0), block_size = k_cache.shape(1);
  const int64_t num_kv_heads = k_cache.shape(2);
  const int64_t batch = block_tables.shape(0), max_blocks = block_tables.shape(1);
  for (size_t d = 0; d < 4; ++d)
    check_dim(v_cache, "v_cache", d, k_cache.shape(d), "k_cache.shape[d]");
  check_dim(k_cache, "k_cache", 3, head_dim, "head_dim (query.shape[2])");
  if (num_kv_heads == 0 || num_heads % num_kv_heads != 0)
    fail_value("query has " + std::to_string(num_heads) + " heads, which is not a multiple of "
               "num_kv_heads = " + std::to_string(num_kv_heads) + " (k_cache.shape[2])");
  if (head_dim == 0) fail_value("query must have head_dim > 0");
  if (block_size > kPagedAttentionMaxBlockSize)
    fail_value("k_cache block_size (shape[1]) must be at most " +
               std::to_string(kPagedAttentionMaxBlockSize));
  for (size_t d = 0; d < 3; ++d) check_dim(out, "out", d, query.shape(d), "query.shape[d]");
  check_dim(seq_lens, "seq_lens", 0, batch, "batch (block_tables.shape[0])");
  if (cu_query_lens) {
    check_ndim(*cu_query_lens, "cu_query_lens", 1);
    check_int_dtype<int32_t>(*cu_query_lens, "cu_query_lens", "int32");
    check_dim(*cu_query_lens, "cu_query_lens", 0, batch + 1, "batch + 1");
    check_same_device(*cu_query_lens, "cu_query_lens", query, "query");
    check_contiguous(*cu_query_lens, "cu_query_lens");
  } else if (num_tokens != batch) {
    fail_value("without cu_query_lens (decode) query must have one token per sequence: "
               "query.shape[0] = " + std::to_string(num_tokens) + " but batch = " +
               std::to_string(batch));
  }
  for (auto [a, name] : {std::pair{&k_cache, "k_cache"}, {&v_cache, "v_cache"},
                         {&block_tables, "block_tables"}, {&seq_lens, "seq_lens"}, {&out, "out"}})
    check_same_device(*a, name, query, "query");
  for (auto [a, name] : {std::pair{&query, "query"}, {&k_cache, "k_cache"}, {&v_cache, "v_cache"},
                         {&block_tables, "block_tables"}, {&seq_lens, "seq_lens"}, {&out, "out"}})
    check_contiguous(*a, name);
  if (!std::isfinite(scale)) fail_value("scale must be finite");

  PagedAttentionParams p{};
  p.query = query.data();
  p.out = out.data();
  p.k_cache = k_cache.data();
  p.v_cache = v_cache.data();
  p.block_tables = static_cast<const int32_t*>(block_tables.data());
  p.seq_lens = static_cast<const int32_t*>(seq_lens.data());
  p.cu_query_lens = cu_query_lens ? static_cast<const int32_t*>(cu_query_lens->data()) : nullptr;
  p.num_tokens = num_tokens;
  p.batch = batch;
  p.num_heads = num_heads;
  p.num_kv_heads = num_kv_heads;
  p.head_dim = head_dim;
  p.block_size = block_size;
  p.max_blocks_per_seq = max_blocks;
  p.scale = scale;
  p.dtype = dtype;
  p.num_splits = 1;
  if (num_tokens == 0) return;

  if (is_cuda(query)) {
#ifdef PONDER_WITH_CUDA
    if (head_dim != 32 && head_dim != 64 && head_dim != 96 && head_dim != 128 && head_dim != 256)
      fail_value("on CUDA, head_dim must be 32, 64, 96, 128 or 256, got " +
                 std::to_string(head_dim));
    if (max_seq_len > max_blocks * block_size)
      fail_value("max_seq_len exceeds the capacity of block_tables");
    if (num_splits < 1 || num_splits > 32) fail_value("num_splits must be in [1, 32]");
    p.num_splits = num_splits;
    if (p.num_splits > 1) {
      if (!workspace) fail_value("workspace is required when num_splits > 1");
      check_same_device(*workspace, "workspace", query, "query");
      check_contiguous(*workspace, "workspace");
      const int64_t need = cuda::paged_attention_workspace_floats(num_tokens, num_heads, head_dim,
                                                                  p.num_splits);
      if (workspace->dtype() != nb::dtype<float>() || !is_cuda(*workspace) ||
          static_cast<int64_t>(workspace->size()) < need)
        fail_value("workspace must be a float32 CUDA tensor of at least " + std::to_string(need) +
                   " elements");
      p.workspace = static_cast<float*>(workspace->data());
    }
    check_status(cuda::paged_attention(p, query.device_id(), as_stream(stream)), "paged_attention");
    return;
#else
    (void)max_seq_len;
    (void)workspace;
    (void)num_splits;
    fail_no_cuda("paged_attention");
#endif
  }

  // CPU: every index the kernel will follow is checked here.
  const int32_t* lens = p.seq_lens;
  const int32_t* cu = p.cu_query_lens;
  if (cu && cu[0] != 0) fail_value("cu_query_lens[0] must be 0");
  int64_t max_query_len = 1;
  for (int64_t b = 0; b < batch; ++b) {
    int64_t q_len = 1;
    if (cu) {
      q_len = static_cast<int64_t>(cu[b + 1]) - cu[b];
      if (q_len < 0)
        fail_value("cu_query_lens must be non-decreasing (at index " + std::to_string(b + 1) + ")");
      max_query_len = std::max(max_query_len, q_len);
    }
    const int64_t len = lens[b];
    if (len < q_len)
      fail_value("seq_lens[" + std::to_string(b) + "] = " + std::to_string(len) +
                 " is shorter than the sequence's " + std::to_string(q_len) + " query tokens");
    if (len > max_blocks * block_size)
      fail_value("seq_lens[" + std::to_string(b) + "] = " + std::to_string(len) +
                 " exceeds the block table's capacity of " + std::to_string(max_blocks) + " x " +
                 std::to_string(block_size) + " tokens");
    const int64_t used = (len + block_size - 1) / block_size;
    for (int64_t j = 0; j < used; ++j) {
      const int32_t id = p.block_tables[b * max_blocks + j];
      if (id < 0 || id >= num_blocks)
        fail_value("block_tables[" + std::to_string(b) + ", " + std::to_string(j) + "] = " +
                   std::to_string(id) + " is outside [0, num_blocks = " +
                   std::to_string(num_blocks) + ")");
    }
  }
  if (cu && cu[batch] != num_tokens)
    fail_value("cu_query_lens[-1] = " + std::to_string(cu[batch]) +
               " must equal the number of query tokens " + std::to_string(num_tokens));
  p.max_query_len = max_query_len;
  nb::gil_scoped_release release;
  check_status(cpu::paged_attention(p), "paged_attention");
}

void copy_blocks(nb::handle k_caches_obj, nb::handle v_caches_obj, nb::handle src_obj,
                 nb::handle dst_obj, uintptr_t stream) {
  const nb::tuple k_items = tensor_sequence(k_caches_obj, "k_caches");
  const nb::tuple v_items = tensor_sequence(v_caches_obj, "v_caches");
  const std::vector<Array> k_caches = import_tensors(k_items, "k_caches");
  const std::vector<Array> v_caches = import_tensors(v_items, "v_caches");
  const Array src = import_tensor(src_obj, "src");
  const Array dst = import_tensor(dst_obj, "dst");
  if (k_caches.empty()) fail_value("k_caches must hold at least one layer's cache");
  if (k_caches.size() != v_caches.size())
    fail_value("k_caches and v_caches must have the same number of layers");
  const Array& ref = k_caches[0];
  check_device_supported(ref, "k_caches[0]");
  check_ndim(ref, "k_caches[0]", 4);
  const DType dtype = float_dtype(ref, "k_caches[0]");
  std::vector<void*> k_ptrs, v_ptrs;
  for (size_t layer = 0; layer < k_caches.size(); ++layer) {
    for (int which = 0; which < 2; ++which) {
      const Array& c = which == 0 ? k_caches[layer] : v_caches[layer];
      const std::string name = std::string(which == 0 ? "k_caches[" : "v_caches[") +
                               std::to_string(layer) + "]";
      check_ndim(c, name.c_str(), 4);
      for (size_t d = 0; d < 4; ++d)
        check_dim(c, name.c_str(), d, ref.shape(d), "k_caches[0].shape[d]");
      check_same_dtype(c, name.c_str(), dtype, "k_caches[0]");
      check_same_device(c, name.c_str(), ref, "k_caches[0]");
      check_contiguous(c, name.c_str());
      (which == 0 ? k_ptrs : v_ptrs).push_back(c.data());
    }
  }
  check_ndim(src, "src", 1);
  check_ndim(dst, "dst", 1);
  check_int_dtype<int64_t>(src, "src", "int64");
  check_int_dtype<int64_t>(dst, "dst", "int64");
  check_dim(dst, "dst", 0, src.shape(0), "len(src)");
  check_same_device(src, "src", ref, "k_caches[0]");
  check_same_device(dst, "dst", ref, "k_caches[0]");
  check_contiguous(src, "src");
  check_contiguous(dst, "dst");
  const int64_t num_blocks = ref.shape(0);
  CopyBlocksParams p{k_ptrs.data(), v_ptrs.data(), static_cast<int64_t>(k_ptrs.size()),
                     static_cast<const int64_t*>(src.data()), static_cast<const int64_t*>(dst.data()),
                     static_cast<int64_t>(src.shape(0)),
                     static_cast<int64_t>(ref.shape(1) * ref.shape(2) * ref.shape(3)) * dtype_size(dtype),
                     static_cast<int64_t>(ref.shape(0))};
  if (p.num_pairs == 0) return;
  if (is_cuda(ref)) {
#ifdef PONDER_WITH_CUDA
    check_status(cuda::copy_blocks(p, ref.device_id(), as_stream(stream)), "copy_blocks");
    return;
#else
    fail_no_cuda("copy_blocks");
#endif
  }
  std::unordered_set<int64_t> dsts;
  for (int64_t i = 0; i < p.num_pairs; ++i) {
    for (auto [arr, name] : {std::pair{p.src, "src"}, {p.dst, "dst"}})
      if (arr[i] < 0 || arr[i] >= num_blocks)
        fail_value(std::string(name) + "[" + std::to_string(i) + "] = " + std::to_string(arr[i]) +
                   " is outside [0, num_blocks = " + std::to_string(num_blocks) + ")");
    if (!dsts.insert(p.dst[i]).second)
      fail_value("dst[" + std::to_string(i) + "] repeats block " + std::to_string(p.dst[i]));
  }
  for (int64_t i = 0; i < p.num_pairs; ++i)
    if (dsts.count(p.src[i]))
      fail_value("src[" + std::to_string(i) + "] = " + std::to_string(p.src[i]) +
                 " is also a destination");
  nb::gil_scoped_release release;
  check_status(cpu::copy_blocks(p), "copy_blocks");
}

}  // namespace

void bind_kernels(nb::module_& m) {
  m.def("paged_kv_append", &paged_kv_append, tensor_arg("key"), tensor_arg("value"),
        tensor_arg("k_cache"), tensor_arg("v_cache"), tensor_arg("slot_mapping"),
        nb::arg("stream") = 0);
  m.def("paged_attention", &paged_attention, tensor_arg("query"), tensor_arg("k_cache"),
        tensor_arg("v_cache"), tensor_arg("block_tables"), tensor_arg("seq_lens"),
        tensor_arg("cu_query_lens"), tensor_arg("out"), nb::arg("scale"),
        nb::arg("max_seq_len") = 0, tensor_arg("workspace") = nb::none(),
        nb::arg("num_splits") = 1, nb::arg("stream") = 0);
  m.def("copy_blocks", &copy_blocks, tensor_arg("k_caches"), tensor_arg("v_caches"),
        tensor_arg("src"), tensor_arg("dst"), nb::arg("stream") = 0);
  m.def("_tensor_import_path", &tensor_import_path, nb::arg("obj"),
        "How tensor arguments import obj: 'exchange' (DLPack C exchange API), 'dlpack' "
        "(nanobind: __dlpack__ or the buffer protocol) or 'none'. For tests.");
}

}  // namespace ponder::bindings
