"""Read a llama.cpp GGUF file as a Hugging Face checkpoint.

A GGUF carries no ``config.json`` or ``tokenizer.json``: the config and the tokenizer are
metadata under llama.cpp's key names, and the weights are quantized blocks whose q/k rows
are permuted for llama.cpp's rotary layout. :func:`read_gguf` undoes all of that, so the
result is what ``transformers`` builds from the same file with
``from_pretrained(dir, gguf_file=name)``, and :func:`convert` writes it as an ordinary
checkpoint directory.

Example
-------
>>> from ponder.models.gguf import convert, read_gguf
>>> ckpt = read_gguf("SmolLM2-135M-Instruct.Q4_1.gguf")  # doctest: +SKIP
>>> ckpt.config["rope_theta"], ckpt.tensors["model.embed_tokens.weight"].shape  # doctest: +SKIP
(100000.0, torch.Size([49152, 576]))
>>> convert("SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np
import torch

from ponder.tokenizer import bytes_to_unicode

__all__ = ["GgufCheckpoint", "convert", "read_gguf"]

# llama.cpp's token types (llama_token_type), as stored in `tokenizer.ggml.token_type`.
_TOKEN_UNKNOWN, _TOKEN_CONTROL, _TOKEN_USER_DEFINED = 2, 3, 4

# GGUF tensor name (after `blk.N.`) -> HF name (after `model.layers.N.`), for the Llama family.
_LAYER_TENSORS = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GLOBAL_TENSORS = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}

# `tokenizer.ggml.pre` -> the split regex its byte-level merges were learned with. Types not
# listed here (gpt2, smollm, starcoder, ...) use GPT-2's regex, built into `ByteLevel`.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_TEKKEN_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_PRE_TOKENIZER_SPLITS = {
    **dict.fromkeys(
        ["llama3", "llama-v3", "llama-bpe", "falcon3", "pixtral", "dbrx", "smaug-bpe"],
        _LLAMA3_SPLIT,
    ),
    **dict.fromkeys(["qwen2", "deepseek-r1-qwen"], _QWEN2_SPLIT),
    "tekken": _TEKKEN_SPLIT,
}


@dataclass
class GgufCheckpoint:
    """A GGUF file as the files of a Hugging Face checkpoint directory.

    Attributes
    ----------
    config : dict
        ``config.json`` of a ``LlamaForCausalLM``.
    tensors : dict[str, torch.Tensor]
        HF parameter names to float32 tensors, q/k rows un-permuted. ``lm_head.weight`` is
        absent when the embeddings are tied (``config["tie_word_embeddings"]``).
    tokenizer_json : str
        A ``tokenizers`` JSON that encodes like transformers' tokenizer of the same file.
    tokenizer_config : dict
        ``tokenizer_config.json``: chat template, special tokens, add_bos/add_eos.
    generation_config : dict
        ``generation_config.json``: bos, eos (an int, or a list when the file names an
        end-of-turn token as well), pad.
    """

    config: dict
    tensors: dict[str, torch.Tensor]
    tokenizer_json: str
    tokenizer_config: dict
    generation_config: dict


def read_gguf(path: str | os.PathLike) -> GgufCheckpoint:
    """Read a Llama-architecture GGUF file, dequantizing every tensor to float32.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        The file is not a Llama-architecture GGUF, or holds a tensor a Llama has no place for.
    NotImplementedError
        The file uses something this reader cannot reproduce faithfully (a tokenizer model
        other than ``gpt2``/``llama``, Llama-3.1-style ``rope_freqs``).
    """
    import gguf

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"GGUF file not found: {path!r}")
    reader = gguf.GGUFReader(path)
    meta = {name: field.contents() for name, field in reader.fields.items()}
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise ValueError(
            f"unsupported GGUF architecture {arch!r} in {path!r}: ponder reads only 'llama' "
            "(Llama, Mistral, SmolLM and other Llama-shaped models)"
        )
    tensor_names = {t.name for t in reader.tensors}
    config = _llama_config(meta, tensor_names)
    tensors = {}
    for tensor in reader.tensors:
        name = _hf_tensor_name(tensor.name)
        weights = np.array(gguf.quants.dequantize(tensor.data, tensor.tensor_type), np.float32)
        if tensor.name.startswith("blk.") and tensor.name.split(".")[2] in ("attn_q", "attn_k"):
            is_q = tensor.name.split(".")[2] == "attn_q"
            num_heads = config["num_attention_heads" if is_q else "num_key_value_heads"]
            weights = _unpermute_rotary_rows(weights, num_heads)
        tensors[name] = torch.from_numpy(weights)
    if any(name.endswith("self_attn.q_proj.bias") for name in tensors):
        config["attention_bias"] = True
    tokenizer_json, tokenizer_config = _tokenizer(meta)
    tokenizer_config["model_max_length"] = config["max_position_embeddings"]
    return GgufCheckpoint(
        config=config,
        tensors=tensors,
        tokenizer_json=tokenizer_json,
        tokenizer_config=tokenizer_config,
        generation_config=_generation_config(meta),
    )


def convert(gguf_path: str | os.PathLike, out_dir: str | os.PathLike) -> None:
    """Write a GGUF file as a Hugging Face checkpoint directory.

    Writes ``config.json``, ``model.safetensors`` (float32), ``tokenizer.json``,
    ``tokenizer_config.json`` and ``generation_config.json`` into ``out_dir`` (created if
    missing), loadable by ``AutoModelForCausalLM.from_pretrained(out_dir)`` and
    ``AutoTokenizer.from_pretrained(out_dir)``.
    """
    from safetensors.torch import save_file

    ckpt = read_gguf(gguf_path)
    os.makedirs(out_dir, exist_ok=True)
    save_file(ckpt.tensors, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(out_dir, "tokenizer.json"), "w", encoding="utf-8") as f:
        f.write(ckpt.tokenizer_json)
    for name, obj in [
        ("config.json", ckpt.config),
        ("tokenizer_config.json", ckpt.tokenizer_config),
        ("generation_config.json", ckpt.generation_config),
    ]:
        with open(os.path.join(out_dir, name), "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, ensure_ascii=False)
            f.write("\n")


def _llama_config(meta: dict, tensor_names: set[str]) -> dict:
    def key(name, default=None):
        return meta.get(f"llama.{name}", default)

    if "rope_freqs.weight" in tensor_names:
        # Llama 3.1+ bakes its rope scaling into per-frequency factors; the HF `llama3` rope
        # parameters that produced them are not stored, and ignoring them gives wrong logits.
        raise NotImplementedError(
            "GGUF has a 'rope_freqs.weight' tensor (Llama-3.1-style rope scaling), which "
            "ponder cannot turn back into HF rope parameters"
        )
    hidden_size = int(key("embedding_length"))
    num_heads = int(key("attention.head_count"))
    head_dim = key("attention.key_length", key("rope.dimension_count", hidden_size // num_heads))
    vocab_size = key("vocab_size")
    if vocab_size is None:
        vocab_size = len(meta["tokenizer.ggml.tokens"])
    rope_theta = float(key("rope.freq_base", 10000.0))
    rope_parameters = {"rope_type": "default", "rope_theta": rope_theta}
    scaling = key("rope.scaling.type")
    if scaling not in (None, "none"):
        if scaling not in ("linear", "yarn"):
            raise NotImplementedError(f"GGUF rope scaling type {scaling!r} is not supported")
        rope_parameters["rope_type"] = scaling
        rope_parameters["factor"] = float(key("rope.scaling.factor"))
        if scaling == "yarn":
            original = key("rope.scaling.original_context_length")
            rope_parameters["original_max_position_embeddings"] = int(original)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_act": "silu",
        "hidden_size": hidden_size,
        "intermediate_size": int(key("feed_forward_length")),
        "num_hidden_layers": int(key("block_count")),
        "num_attention_heads": num_heads,
        "num_key_value_heads": int(key("attention.head_count_kv", num_heads)),
        "head_dim": int(head_dim),
        "rms_norm_eps": float(key("attention.layer_norm_rms_epsilon")),
        "max_position_embeddings": int(key("context_length")),
        "vocab_size": int(vocab_size),
        # llama.cpp writes `output.weight` only when it is not the embedding matrix
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "attention_bias": False,
        "mlp_bias": False,
        # transformers >= 5 reads `rope_parameters`; older versions read the top-level keys
        "rope_theta": rope_theta,
        "rope_parameters": rope_parameters,
        "dtype": "float32",
    }
    if rope_parameters["rope_type"] != "default":
        config["rope_scaling"] = dict(rope_parameters)
    for name, gguf_key in [
        ("bos_token_id", "bos_token_id"),
        ("eos_token_id", "eos_token_id"),
        ("pad_token_id", "padding_token_id"),
    ]:
        if f"tokenizer.ggml.{gguf_key}" in meta:
            config[name] = int(meta[f"tokenizer.ggml.{gguf_key}"])
    return config


def _hf_tensor_name(gguf_name: str) -> str:
    base, _, suffix = gguf_name.rpartition(".")
    parts = base.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in _LAYER_TENSORS:
        return f"model.layers.{parts[1]}.{_LAYER_TENSORS[parts[2]]}.{suffix}"
    if base in _GLOBAL_TENSORS:
        return f"{_GLOBAL_TENSORS[base]}.{suffix}"
    raise ValueError(f"GGUF tensor {gguf_name!r} has no place in a Llama model")


def _unpermute_rotary_rows(weights: np.ndarray, num_heads: int) -> np.ndarray:
    # llama.cpp's converter reorders each head's rows from HF's rotate-half layout
    # [x0..x_{d/2-1}, y0..] to interleaved pairs [x0, y0, x1, y1, ...]; this is its inverse.
    rows = weights.shape[0]
    half = rows // num_heads // 2
    w = weights.reshape(num_heads, half, 2, *weights.shape[1:])
    return np.ascontiguousarray(w.swapaxes(1, 2).reshape(weights.shape))


def _generation_config(meta: dict) -> dict:
    out = {}
    if "tokenizer.ggml.bos_token_id" in meta:
        out["bos_token_id"] = int(meta["tokenizer.ggml.bos_token_id"])
    stops = [
        int(meta[f"tokenizer.ggml.{k}"])
        for k in ("eos_token_id", "eot_token_id", "eom_token_id")
        if f"tokenizer.ggml.{k}" in meta
    ]
    stops = list(dict.fromkeys(stops))
    if stops:
        out["eos_token_id"] = stops[0] if len(stops) == 1 else stops
    if "tokenizer.ggml.padding_token_id" in meta:
        out["pad_token_id"] = int(meta["tokenizer.ggml.padding_token_id"])
    return out


def _tokenizer(meta: dict) -> tuple[str, dict]:
    """The `tokenizers` JSON and tokenizer_config of the file's tokenizer."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import BPE

    model = meta.get("tokenizer.ggml.model")
    tokens = list(meta["tokenizer.ggml.tokens"])
    token_types = list(meta.get("tokenizer.ggml.token_type", []))
    if model == "gpt2":
        # Byte-level vocabularies are written in GPT-2's byte alphabet; a token that is not
        # (llama.cpp sometimes stores one raw) is respelled into it.
        spelling = bytes_to_unicode()
        alphabet = set(spelling.values())
        vocab = {
            tok if set(tok) <= alphabet else "".join(spelling[b] for b in tok.encode()): i
            for i, tok in enumerate(tokens)
        }
        merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
        tok = Tokenizer(
            BPE(
                vocab=vocab,
                merges=merges,
                continuing_subword_prefix="",
                end_of_word_suffix="",
                fuse_unk=False,
            )
        )
        split = _PRE_TOKENIZER_SPLITS.get(meta.get("tokenizer.ggml.pre"))
        if split is None:
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        else:
            tok.pre_tokenizer = pre_tokenizers.Sequence(
                [
                    pre_tokenizers.Split(Regex(split), behavior="isolated"),
                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
                ]
            )
        tok.decoder = decoders.ByteLevel()
        # A control token spelled outside the byte alphabet is a llama.cpp mislabel; making it
        # special would add a token the embedding matrix has no row for.
        control_ok = lambda t: set(t) <= alphabet  # noqa: E731
        add_bos_default = False
    elif model == "llama":
        # SentencePiece BPE with byte fallback. Files converted from `tokenizer.model` carry
        # scores but no merges; the merges are then recovered from the vocabulary by score.
        vocab = {t: i for i, t in enumerate(tokens)}
        if "tokenizer.ggml.merges" in meta:
            merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
        else:
            merges = _merges_from_scores(vocab, tokens, list(meta["tokenizer.ggml.scores"]))
        tok = Tokenizer(BPE(vocab=vocab, merges=merges, fuse_unk=True, byte_fallback=True))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(
            replacement="\u2581", prepend_scheme="first", split=False
        )
        tok.decoder = decoders.Sequence(
            [
                decoders.Replace("\u2581", " "),
                decoders.ByteFallback(),
                decoders.Fuse(),
                decoders.Strip(content=" ", left=1, right=0),
            ]
        )
        control_ok = lambda t: True  # noqa: E731
        add_bos_default = True  # llama.cpp adds BOS to a SentencePiece vocabulary by default
    else:
        raise NotImplementedError(
            f"GGUF tokenizer model {model!r} is not supported (supported: 'gpt2', 'llama')"
        )

    def token_of(key):
        token_id = meta.get(f"tokenizer.ggml.{key}")
        return None if token_id is None else tokens[int(token_id)]

    named = {
        "bos_token": token_of("bos_token_id"),
        "eos_token": token_of("eos_token_id"),
        "unk_token": token_of("unknown_token_id"),
        "pad_token": token_of("padding_token_id"),
    }
    # A file without token types has no control or user-defined tokens; one with them has a
    # type per token.
    typed = list(zip(tokens, token_types, strict=True)) if token_types else []
    specials = [t for t, kind in typed if kind == _TOKEN_CONTROL and control_ok(t)]
    specials += [t for t in named.values() if t is not None and t not in specials]
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in specials])
    user_defined = [
        AddedToken(t, normalized=False, special=False)
        for t, kind in typed
        if kind == _TOKEN_USER_DEFINED and t in vocab
    ]
    if user_defined:
        tok.add_tokens(user_defined)

    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", add_bos_default))
    add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False))
    add_bos = add_bos and named["bos_token"] is not None
    add_eos = add_eos and named["eos_token"] is not None
    bos, eos = named["bos_token"], named["eos_token"]
    single = " ".join([f"{bos}:0"] * add_bos + ["$A:0"] + [f"{eos}:0"] * add_eos)
    pair = " ".join(
        [single] + [f"{bos}:1"] * add_bos + ["$B:1"] + [f"{eos}:1"] * add_eos
    )
    special_ids = [(bos, vocab[bos])] * add_bos + [(eos, vocab[eos])] * add_eos
    tok.post_processor = processors.TemplateProcessing(
        single=single, pair=pair, special_tokens=special_ids
    )

    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **{k: v for k, v in named.items() if v is not None},
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
        "clean_up_tokenization_spaces": False,
    }
    if "tokenizer.chat_template" in meta:
        tokenizer_config["chat_template"] = meta["tokenizer.chat_template"]
    return tok.to_str(), tokenizer_config


def _merges_from_scores(
    vocab: dict[str, int], tokens: list[str], scores: list[float]
) -> list[tuple[str, str]]:
    # Every split of a token into two vocabulary pieces is a merge, ranked by the score of the
    # token it makes (SentencePiece merges the best-scoring piece first); ties go to the longer
    # left piece, then the longer right piece, as transformers orders them.
    candidates = []
    for token, score in dict(zip(tokens, scores, strict=True)).items():
        pieces = [
            (token[:i], token[i:]) for i in range(1, len(token))
            if token[:i] in vocab and token[i:] in vocab
        ]
        pieces.sort(key=lambda p: (vocab[p[0]], vocab[p[1]]))
        candidates += [(left, right, score) for left, right in pieces]
    candidates.sort(key=lambda c: (c[2], len(c[0]), len(c[1])), reverse=True)
    return [(left, right) for left, right, _ in candidates]
