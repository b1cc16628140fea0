// Binding of decode_layers (CPU only). The weights are imported and checked once, when a
// DecodeLayers is built, and the object keeps them alive; each call checks only what changes
// per step (activations, positions, slots, block tables, the caches).
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "checks.h"
#include "tensor.h"
#include "ponder/decode_layers.h"
#include "ponder/linear.h"
#include "ponder/paged_attention.h"

namespace ponder::bindings {
namespace {

// The tensors of one layer, in the order Python passes them.
constexpr const char* kLayerFields[] = {"input_norm", "qkv",    "qkv_bias",     "q_norm",
                                        "k_norm",     "o",      "o_bias",       "post_norm",
                                        "gate_up",    "gate_up_bias", "down",   "down_bias"};
constexpr size_t kNumLayerFields = sizeof(kLayerFields) / sizeof(kLayerFields[0]);

void check_cpu(const Array& a, const std::string& name) {
  if (a.device_type() != nb::device::cpu::value) fail_value(name + " must be a CPU tensor");
  check_contiguous(a, name.c_str());
}

class DecodeLayers {
 public:
  DecodeLayers(nb::handle layers_obj, nb::handle final_norm_obj, float eps, float scale,
               int64_t num_heads, int64_t num_kv_heads, int64_t head_dim)
      : eps_(eps), scale_(scale), num_heads_(num_heads), num_kv_heads_(num_kv_heads),
        head_dim_(head_dim) {
    if (!(eps >= 0.0f) || !std::isfinite(eps)) fail_value("eps must be finite and >= 0");
    if (!std::isfinite(scale)) fail_value("scale must be finite");
    if (num_heads < 1 || num_kv_heads < 1 || num_heads % num_kv_heads != 0)
      fail_value("num_heads (" + std::to_string(num_heads) + ") must be a positive multiple of "
                 "num_kv_heads (" + std::to_string(num_kv_heads) + ")");
    if (head_dim < 2 || head_dim % 2 != 0)
      fail_value("head_dim must be even and positive, got " + std::to_string(head_dim));
    const Array final_norm = import_tensor(final_norm_obj, "final_norm");
    check_ndim(final_norm, "final_norm", 1);
    dtype_ = float_dtype(final_norm, "final_norm");
    check_cpu(final_norm, "final_norm");
    hidden_ = static_cast<int64_t>(final_norm.shape(0));
    final_norm_ = final_norm.data();
    keep_.append(final_norm_obj);

    const nb::tuple layers = tensor_sequence(layers_obj, "layers");
    const int64_t q_size = num_heads * head_dim, kv_size = num_kv_heads * head_dim;
    for (size_t l = 0; l < layers.size(); ++l) {
      const std::string lname = "layers[" + std::to_string(l) + "]";
      if (!PySequence_Check(layers[l].ptr()) || PySequence_Size(layers[l].ptr()) !=
                                                    static_cast<Py_ssize_t>(kNumLayerFields))
        fail_type(lname + " must be a sequence of " + std::to_string(kNumLayerFields) +
                  " tensors or None (input_norm, qkv, qkv_bias, q_norm, k_norm, o, o_bias, "
                  "post_norm, gate_up, gate_up_bias, down, down_bias)");
      const nb::tuple fields = tensor_sequence(layers[l], lname.c_str());
      for (size_t f : {0, 1, 5, 7, 8, 10})
        if (fields[f].is_none()) fail_value(lname + "." + kLayerFields[f] + " must be a tensor");
      if (fields[3].is_none() != fields[4].is_none())
        fail_value(lname + ": q_norm and k_norm must be given together");
      const void* ptr[kNumLayerFields];
      for (size_t f = 0; f < kNumLayerFields; ++f) {
        const std::string name = lname + "." + kLayerFields[f];
        ptr[f] = nullptr;
        if (fields[f].is_none()) continue;
        const Array a = import_tensor(fields[f], name.c_str());
        check_same_dtype(a, name.c_str(), dtype_, "final_norm");
        check_cpu(a, name);
        ptr[f] = a.data();
        keep_.append(fields[f]);
        // Expected shape of each field: {rows, cols} (cols 0: one-dimensional).
        const std::pair<int64_t, int64_t> shapes[] = {
            {hidden_, 0}, {q_size + 2 * kv_size, hidden_}, {q_size + 2 * kv_size, 0},
            {head_dim, 0}, {head_dim, 0}, {hidden_, q_size}, {hidden_, 0}, {hidden_, 0},
            {-1, hidden_}, {-1, 0}, {hidden_, -1}, {hidden_, 0}};
        auto [rows, cols] = shapes[f];
        check_ndim(a, name.c_str(), cols == 0 ? 1 : 2);
        if (f == 8 && inter_ < 0) {  // the first gate_up fixes inter
          if (a.shape(0) % 2 != 0 || a.shape(0) == 0)
            fail_value(name + " must have an even, positive number of rows (gate, then up)");
          inter_ = static_cast<int64_t>(a.shape(0)) / 2;
        }
        if (f == 8 || f == 9) rows = 2 * inter_;  // gate_up (f 8) precedes its bias and down
        if (f == 10) cols = inter_;
        check_dim(a, name.c_str(), 0, rows, "the model's size");
        if (cols != 0) check_dim(a, name.c_str(), 1, cols, "the model's size");
      }
      layers_.push_back({ptr[0], ptr[1], ptr[2], ptr[3], ptr[4], ptr[5], ptr[6], ptr[7], ptr[8],
                         ptr[9], ptr[10], ptr[11], nullptr, nullptr});
    }
    if (inter_ < 0) inter_ = 0;
  }

  void forward(nb::handle x_obj, nb::handle out_obj, nb::handle cos_obj, nb::handle sin_obj,
               nb::handle positions_obj, nb::handle slot_mapping_obj, nb::handle block_tables_obj,
               nb::handle seq_lens_obj, nb::handle k_caches_obj, nb::handle v_caches_obj) {
    const Array x = import_tensor(x_obj, "x");
    const Array out = import_tensor(out_obj, "out");
    const Array cos = import_tensor(cos_obj, "cos");
    const Array sin = import_tensor(sin_obj, "sin");
    const Array positions = import_tensor(positions_obj, "positions");
    const Array slot_mapping = import_tensor(slot_mapping_obj, "slot_mapping");
    const Array block_tables = import_tensor(block_tables_obj, "block_tables");
    const Array seq_lens = import_tensor(seq_lens_obj, "seq_lens");
    const nb::tuple k_items = tensor_sequence(k_caches_obj, "k_caches");
    const nb::tuple v_items = tensor_sequence(v_caches_obj, "v_caches");
    const std::vector<Array> k_caches = import_tensors(k_items, "k_caches");
    const std::vector<Array> v_caches = import_tensors(v_items, "v_caches");

    check_ndim(x, "x", 2);
    check_ndim(out, "out", 2);
    check_ndim(cos, "cos", 2);
    check_ndim(sin, "sin", 2);
    check_ndim(positions, "positions", 1);
    check_ndim(slot_mapping, "slot_mapping", 1);
    check_ndim(block_tables, "block_tables", 2);
    check_ndim(seq_lens, "seq_lens", 1);
    for (auto [a, name] : {std::pair{&x, "x"}, {&out, "out"}, {&cos, "cos"}, {&sin, "sin"}})
      check_same_dtype(*a, name, dtype_, "the weights");
    check_int_dtype<int64_t>(positions, "positions", "int64");
    check_int_dtype<int64_t>(slot_mapping, "slot_mapping", "int64");
    check_int_dtype<int32_t>(block_tables, "block_tables", "int32");
    check_int_dtype<int32_t>(seq_lens, "seq_lens", "int32");
    const int64_t m = x.shape(0);
    if (m > cpu::kLinearMaxRows)
      fail_value("x has " + std::to_string(m) + " tokens; decode_layers takes at most " +
                 std::to_string(cpu::kLinearMaxRows));
    check_dim(x, "x", 1, hidden_, "hidden (final_norm.shape[0])");
    check_dim(out, "out", 0, m, "num_tokens (x.shape[0])");
    check_dim(out, "out", 1, hidden_, "hidden (final_norm.shape[0])");
    check_dim(cos, "cos", 1, head_dim_, "head_dim");
    check_dim(sin, "sin", 0, cos.shape(0), "cos.shape[0]");
    check_dim(sin, "sin", 1, head_dim_, "head_dim");
    check_dim(positions, "positions", 0, m, "num_tokens (x.shape[0])");
    check_dim(slot_mapping, "slot_mapping", 0, m, "num_tokens (x.shape[0])");
    check_dim(block_tables, "block_tables", 0, m, "num_tokens (x.shape[0])");
    check_dim(seq_lens, "seq_lens", 0, m, "num_tokens (x.shape[0])");
    for (auto [a, name] : {std::pair{&x, "x"}, {&out, "out"}, {&cos, "cos"}, {&sin, "sin"},
                           {&positions, "positions"}, {&slot_mapping, "slot_mapping"},
                           {&block_tables, "block_tables"}, {&seq_lens, "seq_lens"}})
      check_cpu(*a, name);
    if (x.data() == out.data()) fail_value("out must not be x");

    const size_t num_layers = layers_.size();
    if (k_caches.size() != num_layers || v_caches.size() != num_layers)
      fail_value("k_caches and v_caches must hold one cache per layer (" +
                 std::to_string(num_layers) + "), got " + std::to_string(k_caches.size()) +
                 " and " + std::to_string(v_caches.size()));
    std::vector<DecoderLayerWeights> layers = layers_;  // this call's cache pointers
    int64_t num_blocks = 0, block_size = 1;
    for (size_t l = 0; l < num_layers; ++l) {
      for (int which = 0; which < 2; ++which) {
        const Array& c = which == 0 ? k_caches[l] : v_caches[l];
        const std::string name =
            std::string(which == 0 ? "k_caches[" : "v_caches[") + std::to_string(l) + "]";
        check_ndim(c, name.c_str(), 4);
        if (l == 0 && which == 0) {
          num_blocks = c.shape(0);
          block_size = c.shape(1);
          if (block_size < 1 || block_size > kPagedAttentionMaxBlockSize)
            fail_value(name + " block_size (shape[1]) must be in [1, " +
                       std::to_string(kPagedAttentionMaxBlockSize) + "]");
        }
        check_dim(c, name.c_str(), 0, num_blocks, "num_blocks (k_caches[0].shape[0])");
        check_dim(c, name.c_str(), 1, block_size, "block_size (k_caches[0].shape[1])");
        check_dim(c, name.c_str(), 2, num_kv_heads_, "num_kv_heads");
        check_dim(c, name.c_str(), 3, head_dim_, "head_dim");
        check_same_dtype(c, name.c_str(), dtype_, "the weights");
        check_cpu(c, name);
      }
      if (k_caches[l].data() == v_caches[l].data())
        fail_value("k_caches[" + std::to_string(l) + "] and v_caches[" + std::to_string(l) +
                   "] must be different tensors");
      layers[l].k_cache = k_caches[l].data();
      layers[l].v_cache = v_caches[l].data();
    }

    // Every index the kernels follow is checked here.
    const int64_t max_positions = cos.shape(0), max_blocks = block_tables.shape(1);
    const auto* pos = static_cast<const int64_t*>(positions.data());
    const auto* slots = static_cast<const int64_t*>(slot_mapping.data());
    const auto* tables = static_cast<const int32_t*>(block_tables.data());
    const auto* lens = static_cast<const int32_t*>(seq_lens.data());
    const int64_t num_slots = num_blocks * block_size;
    for (int64_t i = 0; i < m; ++i) {
      const std::string at = "[" + std::to_string(i) + "] = ";
      if (pos[i] < 0 || pos[i] >= max_positions)
        fail_value("positions" + at + std::to_string(pos[i]) + " is outside the cos/sin tables [0, " +
                   std::to_string(max_positions) + ")");
      if (slots[i] < -1 || slots[i] >= num_slots)
        fail_value("slot_mapping" + at + std::to_string(slots[i]) +
                   " is outside [-1, num_blocks * block_size = " + std::to_string(num_slots) + ")");
      if (lens[i] < 1 || lens[i] > max_blocks * block_size)
        fail_value("seq_lens" + at + std::to_string(lens[i]) + " is outside [1, " +
                   std::to_string(max_blocks * block_size) + "] (the block table's capacity)");
      const int64_t used = (lens[i] + block_size - 1) / block_size;
      for (int64_t j = 0; j < used; ++j) {
        const int32_t id = tables[i * max_blocks + j];
        if (id < 0 || id >= num_blocks)
          fail_value("block_tables[" + std::to_string(i) + ", " + std::to_string(j) + "] = " +
                     std::to_string(id) + " is outside [0, num_blocks = " +
                     std::to_string(num_blocks) + ")");
      }
    }

    DecodeLayersParams p{};
    p.layers = layers.data();
    p.num_layers = static_cast<int64_t>(num_layers);
    p.final_norm = final_norm_;
    p.x = x.data();
    p.out = out.data();
    p.num_tokens = m;
    p.hidden = hidden_;
    p.num_heads = num_heads_;
    p.num_kv_heads = num_kv_heads_;
    p.head_dim = head_dim_;
    p.inter = inter_;
    p.eps = eps_;
    p.scale = scale_;
    p.cos = cos.data();
    p.sin = sin.data();
    p.max_positions = max_positions;
    p.positions = pos;
    p.slot_mapping = slots;
    p.block_tables = tables;
    p.seq_lens = lens;
    p.num_blocks = num_blocks;
    p.block_size = block_size;
    p.max_blocks_per_seq = max_blocks;
    p.dtype = dtype_;
    nb::gil_scoped_release release;
    check_status(cpu::decode_layers(p), "decode_layers");
  }

  int64_t num_layers() const { return static_cast<int64_t>(layers_.size()); }

 private:
  std::vector<DecoderLayerWeights> layers_;
  nb::list keep_;  // the weight tensors: the imported views above have no owner
  const void* final_norm_ = nullptr;
  float eps_, scale_;
  int64_t num_heads_, num_kv_heads_, head_dim_, hidden_ = 0, inter_ = -1;
  DType dtype_ = DType::kFloat32;
};

}  // namespace

void bind_decode_layers(nb::module_& m) {
  nb::class_<DecodeLayers>(m, "DecodeLayers",
                           "A Llama-family decoder stack for decode steps on the CPU: weights "
                           "checked once, one call per step (see ponder.ops.DecodeLayers).")
      .def(nb::init<nb::handle, nb::handle, float, float, int64_t, int64_t, int64_t>(),
           nb::arg("layers"), tensor_arg("final_norm"), nb::arg("eps"), nb::arg("scale"),
           nb::arg("num_heads"), nb::arg("num_kv_heads"), nb::arg("head_dim"))
      .def("forward", &DecodeLayers::forward, tensor_arg("x"), tensor_arg("out"),
           tensor_arg("cos"), tensor_arg("sin"), tensor_arg("positions"),
           tensor_arg("slot_mapping"), tensor_arg("block_tables"), tensor_arg("seq_lens"),
           nb::arg("k_caches"), nb::arg("v_caches"),
           "out = final_norm(layers(x)) for one decode token per sequence; writes each "
           "token's K/V into the caches.")
      .def_prop_ro("num_layers", &DecodeLayers::num_layers);
}

}  // namespace ponder::bindings
