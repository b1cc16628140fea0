"""Llama-family causal LM on ponder's paged KV cache.

The same module runs Mistral, Qwen2 (q/k/v biases) and Qwen3 (per-head q/k RMSNorm); their
files only set those switches. Numerics follow transformers: RMSNorm in fp32, rotary
cos/sin from fp32 products of position and inverse frequency, rotate-half layout.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass

import torch
from torch import nn

from ponder import kernels, ops
from ponder.models.config import ModelConfig


@dataclass
class AttentionMetadata:
    """Where this forward's tokens live in the paged cache (see ponder.ops): built and
    checked once per forward by its caller (``ponder.kernels.check_step``), so the layers
    call the kernels unchecked, without host syncs."""

    slot_mapping: torch.Tensor            # int64 [num_tokens]
    block_tables: torch.Tensor            # int32 [batch, max_blocks]
    seq_lens: torch.Tensor                # int32 [batch], new tokens included
    cu_query_lens: torch.Tensor | None    # int32 [batch + 1]; None when every q_len is 1
    max_seq_len: int
    num_splits: int = 1                   # CUDA decode: split-KV (ponder.kernels.attention_plan)
    workspace: torch.Tensor | None = None  # ... and its float32 workspace


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim), requires_grad=False)
        self.eps = eps

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """norm(x), or with residual: residual += x in place, then norm(residual)."""
        shape = x.shape
        out = ops.rms_norm(x.reshape(-1, shape[-1]), self.weight, self.eps,
                           None if residual is None else residual.view(-1, shape[-1]))
        return out.view(shape)


def _linear(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    # CPU inputs go to ponder's kernel (ponder.ops.linear): each row summed alike whatever the
    # batch, so a seeded sequence's tokens never depend on what it is batched with.
    return ops.linear(x, layer.weight, layer.bias)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.num_heads, self.num_kv_heads = cfg.num_heads, cfg.num_kv_heads
        self.head_dim = cfg.head_dim
        self.q_size = cfg.num_heads * cfg.head_dim
        self.kv_size = cfg.num_kv_heads * cfg.head_dim
        # q, k and v projections fused into one matmul.
        self.qkv_proj = nn.Linear(cfg.hidden_size, self.q_size + 2 * self.kv_size,
                                  bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(self.q_size, cfg.hidden_size, bias=cfg.o_bias)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps) if cfg.qk_norm else None
        self.scale = cfg.head_dim ** -0.5

    def forward(self, x, rope, meta: AttentionMetadata, k_cache, v_cache):
        qkv = _linear(self.qkv_proj, x)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.reshape(-1, self.num_heads, self.head_dim).contiguous()
        k = k.reshape(-1, self.num_kv_heads, self.head_dim).contiguous()
        v = v.reshape(-1, self.num_kv_heads, self.head_dim).contiguous()
        if self.q_norm is not None:
            q = self.q_norm(q)
            k = self.k_norm(k)
        cos, sin, positions = rope
        ops.rotary(q, k, cos, sin, positions)
        kernels.kv_append(k, v, k_cache, v_cache, meta.slot_mapping)
        out = kernels.attention(q, k_cache, v_cache, meta.block_tables, meta.seq_lens,
                                meta.cu_query_lens, self.scale, meta.max_seq_len,
                                meta.num_splits, meta.workspace)
        return _linear(self.o_proj, out.view(-1, self.q_size))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.inter = cfg.intermediate_size
        self.gate_up_proj = nn.Linear(cfg.hidden_size, 2 * self.inter, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(self.inter, cfg.hidden_size, bias=cfg.mlp_bias)

    def forward(self, x):
        return _linear(self.down_proj, ops.silu_and_mul(_linear(self.gate_up_proj, x)))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, residual, rope, meta, k_cache, v_cache):
        """x: the previous layer's MLP output (or the embeddings), residual: the stream
        before it (None at the first layer). Returns this layer's (MLP output, residual)."""
        if residual is None:
            residual = x
            h = self.input_layernorm(x)
        else:
            h = self.input_layernorm(x, residual)  # residual += x, then norm
        h = self.self_attn(h, rope, meta, k_cache, v_cache)
        h = self.post_attention_layernorm(h, residual)
        return self.mlp(h), residual


class CausalLM(nn.Module):
    """Embeddings, decoder layers, final norm and LM head; attention through ponder.ops."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        # _weight skips the random init (on meta it imports torch._dynamo: ~3 s per process)
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size,
                                         _weight=torch.empty(cfg.vocab_size, cfg.hidden_size))
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.register_buffer("inv_freq", cfg.inv_freq(), persistent=False)
        self._rope_cache: tuple[torch.Tensor, torch.Tensor] | None = None
        # CPU decode steps run the whole layer stack in one call (ops.DecodeLayers), built
        # from the parameters on first use; False forces the per-op path (tests compare them).
        self.fused_decode = True
        self._decode_layers: tuple[torch.Tensor, ops.DecodeLayers] | None = None
        self.requires_grad_(False)

    def rope_tables(self, max_positions: int):
        """cos/sin for positions [0, max_positions), fp32 products as transformers forms them."""
        cache = self._rope_cache
        if cache is None or cache[0].shape[0] < max_positions:
            old = 0 if cache is None else cache[0].shape[0]
            max_positions = max(max_positions, 2 * old, 4096)  # grow rarely
            pos = torch.arange(max_positions, dtype=torch.float32, device=self.inv_freq.device)
            freqs = pos[:, None] * self.inv_freq.float()[None, :]
            emb = torch.cat((freqs, freqs), dim=-1)
            dtype = self.embed_tokens.weight.dtype
            self._rope_cache = cache = (emb.cos().to(dtype), emb.sin().to(dtype))
        return cache

    def _apply(self, *args, **kwargs):
        self._decode_layers = None  # .to() and friends may move or convert the weights
        return super()._apply(*args, **kwargs)

    def decode_layers(self) -> ops.DecodeLayers:
        """The layer stack as one ops.DecodeLayers over the current parameters."""
        cached = self._decode_layers
        # Loading weights replaces every parameter, the final norm's among them.
        if cached is None or cached[0] is not self.norm.weight:
            cfg = self.config

            def t(p):  # detached: the stack keeps the storage alive even if .data is swapped
                return None if p is None else p.detach()

            # ops.DecodeLayers takes each layer's 12 tensors in its read order.
            layers = [[t(_layer_tensor(layer, n)) for n in _LAYER_READ_ORDER]
                      for layer in self.layers]
            stack = ops.DecodeLayers(layers, t(self.norm.weight), cfg.rms_norm_eps,
                                     self.layers[0].self_attn.scale, cfg.num_heads,
                                     cfg.num_kv_heads, cfg.head_dim)
            self._decode_layers = cached = (self.norm.weight, stack)
        return cached[1]

    def _fused_decode_applies(self, x: torch.Tensor, meta: AttentionMetadata) -> bool:
        return (self.fused_decode and x.device.type == "cpu" and meta.cu_query_lens is None
                and 0 < x.shape[0] <= ops.DecodeLayers.MAX_TOKENS)

    def forward(self, input_ids, positions, meta: AttentionMetadata, kv_caches):
        """The final-norm hidden states [num_tokens, hidden]."""
        x = self.embed_tokens(input_ids)
        cos, sin = self.rope_tables(max(meta.max_seq_len, 1))
        if self._fused_decode_applies(x, meta):
            return self.decode_layers()(x, cos, sin, positions, meta.slot_mapping,
                                        meta.block_tables, meta.seq_lens,
                                        [k for k, _ in kv_caches], [v for _, v in kv_caches])
        rope = (cos, sin, positions)
        residual = None
        for layer, (k_cache, v_cache) in zip(self.layers, kv_caches, strict=True):
            x, residual = layer(x, residual, rope, meta, k_cache, v_cache)
        return self.norm(x, residual)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return _linear(self.lm_head, hidden).float()

    # --- weights ------------------------------------------------------------------------
    def load_weights(self, source, dtype: torch.dtype, device: torch.device,
                     lm_head: bool = True) -> None:
        """Copies HF-named tensors from source (ponder.models.loader.TensorSource). Without
        lm_head (a reward model with its own head) the LM head is dropped."""
        cfg = self.config

        def get(name, shape):
            if name not in source:
                raise ValueError(f"checkpoint is missing tensor {name!r}")
            t = source.get(name)
            if tuple(t.shape) != tuple(shape):
                raise ValueError(f"tensor {name!r} has shape {tuple(t.shape)}, expected "
                                 f"{tuple(shape)}")
            return t

        h, kv = cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim
        q = cfg.num_heads * cfg.head_dim
        params: dict[str, torch.Tensor] = {
            "embed_tokens.weight": get("model.embed_tokens.weight", (cfg.vocab_size, h)),
            "norm.weight": get("model.norm.weight", (h,)),
        }
        if not lm_head:
            self.lm_head = None
        elif "lm_head.weight" in source and not cfg.tie_word_embeddings:
            params["lm_head.weight"] = get("lm_head.weight", (cfg.vocab_size, h))
        elif cfg.tie_word_embeddings:
            params["lm_head.weight"] = params["embed_tokens.weight"]
        else:
            raise ValueError("checkpoint is missing tensor 'lm_head.weight' and does not tie "
                             "word embeddings")
        for i in range(cfg.num_layers):
            p = f"model.layers.{i}."
            a = p + "self_attn."
            params[f"layers.{i}.self_attn.qkv_proj.weight"] = torch.cat([
                get(a + "q_proj.weight", (q, h)), get(a + "k_proj.weight", (kv, h)),
                get(a + "v_proj.weight", (kv, h))])
            if cfg.qkv_bias:
                params[f"layers.{i}.self_attn.qkv_proj.bias"] = torch.cat([
                    get(a + "q_proj.bias", (q,)), get(a + "k_proj.bias", (kv,)),
                    get(a + "v_proj.bias", (kv,))])
            params[f"layers.{i}.self_attn.o_proj.weight"] = get(a + "o_proj.weight", (h, q))
            if cfg.o_bias:
                params[f"layers.{i}.self_attn.o_proj.bias"] = get(a + "o_proj.bias", (h,))
            if cfg.qk_norm:
                params[f"layers.{i}.self_attn.q_norm.weight"] = get(a + "q_norm.weight",
                                                                    (cfg.head_dim,))
                params[f"layers.{i}.self_attn.k_norm.weight"] = get(a + "k_norm.weight",
                                                                    (cfg.head_dim,))
            m = p + "mlp."
            inter = cfg.intermediate_size
            params[f"layers.{i}.mlp.gate_up_proj.weight"] = torch.cat([
                get(m + "gate_proj.weight", (inter, h)), get(m + "up_proj.weight", (inter, h))])
            params[f"layers.{i}.mlp.down_proj.weight"] = get(m + "down_proj.weight", (h, inter))
            if cfg.mlp_bias:
                params[f"layers.{i}.mlp.gate_up_proj.bias"] = torch.cat([
                    get(m + "gate_proj.bias", (inter,)), get(m + "up_proj.bias", (inter,))])
                params[f"layers.{i}.mlp.down_proj.bias"] = get(m + "down_proj.bias", (h,))
            params[f"layers.{i}.input_layernorm.weight"] = get(p + "input_layernorm.weight", (h,))
            params[f"layers.{i}.post_attention_layernorm.weight"] = get(
                p + "post_attention_layernorm.weight", (h,))
        # Decode order: each layer's tensors as the step reads them, the final norm, then the
        # LM head (often the embedding table, whose one looked-up row does not count).
        order = [f"layers.{i}.{n}" for i in range(cfg.num_layers) for n in _LAYER_READ_ORDER
                 if f"layers.{i}.{n}" in params]
        order += [n for n in ("norm.weight", "embed_tokens.weight", "lm_head.weight")
                  if n in params]
        assert sorted(order) == sorted(params), "a parameter has no place in the read order"
        if device.type == "cpu":
            placed = _place_in_arena([params[n] for n in order], dtype)
        else:
            placed = [params[n].to(device=device, dtype=dtype).contiguous() for n in order]
        for name, t in zip(order, placed, strict=True):
            module_name, _, attr = name.rpartition(".")
            module = self.get_submodule(module_name)
            setattr(module, attr, nn.Parameter(t, requires_grad=False))
        if cfg.tie_word_embeddings and lm_head:
            self.lm_head.weight = self.embed_tokens.weight
        leftover = [n for n, p in self.named_parameters() if p.device.type == "meta"]
        if leftover:
            raise ValueError(f"no checkpoint tensor for {leftover[:3]}")
        self.inv_freq = cfg.inv_freq().to(device)
        self._rope_cache = None


_ARENA_ALIGN = 2 << 20  # a transparent huge page
# A decoder layer's tensors in the order a decode step reads them: the weight arena's layout
# and the order ops.DecodeLayers takes them in.
_LAYER_READ_ORDER = (
    "input_layernorm.weight", "self_attn.qkv_proj.weight", "self_attn.qkv_proj.bias",
    "self_attn.q_norm.weight", "self_attn.k_norm.weight", "self_attn.o_proj.weight",
    "self_attn.o_proj.bias", "post_attention_layernorm.weight", "mlp.gate_up_proj.weight",
    "mlp.gate_up_proj.bias", "mlp.down_proj.weight", "mlp.down_proj.bias")


def _layer_tensor(layer: nn.Module, name: str) -> torch.Tensor | None:
    """layer's tensor at a dotted name; None where a module or bias on the way is None (no
    q/k norm, a Linear without bias)."""
    obj = layer
    for attr in name.split("."):
        obj = getattr(obj, attr)
        if obj is None:
            return None
    return obj


def huge_page_buffer(nbytes: int) -> torch.Tensor:
    """A uint8 CPU tensor of nbytes in an anonymous mapping, 2 MB aligned and advised to use
    transparent huge pages (4 KB pages where the kernel has none; a plain tensor where the
    platform has no anonymous mmap)."""
    if not hasattr(mmap, "MAP_ANONYMOUS"):
        return torch.empty(nbytes, dtype=torch.uint8)
    buf = mmap.mmap(-1, nbytes + _ARENA_ALIGN, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(buf, "madvise") and hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            buf.madvise(mmap.MADV_HUGEPAGE)
        except OSError:
            pass
    raw = torch.frombuffer(buf, dtype=torch.uint8)
    start = -raw.data_ptr() % _ARENA_ALIGN
    return raw[start:start + nbytes]


def _place_in_arena(tensors: list[torch.Tensor], dtype: torch.dtype) -> list[torch.Tensor]:
    """Copies CPU weights, converted to dtype, back to back into one anonymous mapping, in
    the order a decode step reads them, advised to use transparent huge pages. A tensor
    shared by two names (tied embeddings) is placed once.

    A batch-1 decode step streams every weight once, and each of ~120 matrices read from its
    own allocation restarts the hardware prefetcher's stream and walks 4 KB pages: one
    contiguous huge-page arena read ~20% faster in fp32 (~7% in bf16) on these machines."""
    elem = torch.tensor([], dtype=dtype).element_size()
    unique: dict[int, int] = {}
    offsets, total = [], 0
    for t in tensors:
        if id(t) in unique:
            offsets.append(offsets[unique[id(t)]])
            continue
        unique[id(t)] = len(offsets)
        offsets.append(total)
        total += -(-t.numel() * elem // 64) * 64  # each tensor 64-byte aligned
    raw = huge_page_buffer(total)
    out = []
    for t, off in zip(tensors, offsets, strict=True):
        n = t.numel() * elem
        dst = raw[off:off + n].view(dtype).view(t.shape)
        if unique[id(t)] == len(out):
            dst.copy_(t)
        out.append(dst)
    return out


class LlamaForCausalLM(CausalLM):
    pass
