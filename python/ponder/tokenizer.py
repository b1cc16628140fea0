"""Tokenizer: `tokenizers` for encoding, chat templates with transformers' semantics,
incremental detokenization that never splits a UTF-8 character."""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache

_CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "
_SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token",
                 "mask_token")


def _token_str(value) -> str | None:
    if isinstance(value, dict):  # AddedToken serialized as {"content": ..., ...}
        return value.get("content")
    return value


def _compile_template(source: str):
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # jinja's own tojson escapes HTML characters; chat templates expect plain JSON.
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map of byte-level BPE: printable Latin-1 bytes map
    to themselves, the rest to code points from 256 up, in byte order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    table, extra = {}, 0
    for byte in range(256):
        if byte in keep:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + extra)
            extra += 1
    return table


def _components(node: dict | None) -> list[dict]:
    """A decoder or pre-tokenizer config and, for a Sequence, its parts."""
    if not node:
        return []
    parts = node.get("decoders") or node.get("pretokenizers")
    return [node] + [c for p in (parts or []) for c in _components(p)]


def _vocab_kind(config: dict) -> str:
    """Which spelling the vocabulary uses ("byte_level" or "sentencepiece"), from the decoder
    and pre-tokenizer configuration."""
    parts = _components(config.get("decoder")) + _components(config.get("pre_tokenizer"))
    types = {c.get("type") for c in parts}
    if "ByteLevel" in types:
        return "byte_level"
    metaspace_replace = any(c.get("type") == "Replace" and
                            (c.get("pattern") or {}).get("String") == "\u2581" for c in parts)
    if "Metaspace" in types or "ByteFallback" in types or metaspace_replace:
        return "sentencepiece"
    raise NotImplementedError(
        "token_bytes() supports byte-level BPE and SentencePiece-style vocabularies; this "
        f"tokenizer's decoder and pre-tokenizer are {sorted(t for t in types if t)}")


class Tokenizer:
    """Wraps a `tokenizers.Tokenizer` built from ``tokenizer.json`` plus the checkpoint's
    tokenizer and generation configs."""

    def __init__(self, tokenizer_json: str, tokenizer_config: dict | None = None,
                 generation_config: dict | None = None, config_eos: list[int] | None = None):
        from tokenizers import Tokenizer as HFTokenizer

        self._tok = HFTokenizer.from_str(tokenizer_json)
        self._tok.no_padding()
        self._tok.no_truncation()
        cfg = tokenizer_config or {}
        self.special_tokens = {k: _token_str(cfg.get(k)) for k in _SPECIAL_KEYS
                               if _token_str(cfg.get(k)) is not None}
        template = cfg.get("chat_template")
        if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in template}
            template = named.get("default") or next(iter(named.values()), None)
        self.chat_template = template
        self._compiled = None
        gen = generation_config or {}
        eos = gen.get("eos_token_id")
        if eos is None and config_eos:
            eos = config_eos
        if eos is None and "eos_token" in self.special_tokens:
            eos = self._tok.token_to_id(self.special_tokens["eos_token"])
        self.eos_token_ids = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)

    # --- encoding -----------------------------------------------------------------------
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_offsets(self, text: str, add_special_tokens: bool = True):
        """Token ids and, for each token, its (start, end) character span in text."""
        enc = self._tok.encode(text, add_special_tokens=add_special_tokens)
        return enc.ids, enc.offsets

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._tok.id_to_token(token_id)

    def token_bytes(self) -> list[bytes]:
        """The exact bytes each token id adds to the decoded text, indexed by id.

        Byte-level BPE tokens are mapped back through GPT-2's byte alphabet; SentencePiece
        tokens turn ``▁`` into a space and ``<0xAB>`` byte-fallback tokens into that byte.
        Special tokens give ``b""``, as the engine decodes with ``skip_special_tokens=True``;
        other added tokens give their content as UTF-8. Joining the bytes of ``ids`` gives
        ``decode(ids).encode()`` except that SentencePiece decoders drop one leading space of
        the whole text (the ``▁`` the pre-tokenizer put first), which a mid-text token keeps.
        Ids the vocabulary skips (holes) give ``b""``. Used to hand the vocabulary to the
        core's ``StopMatcher`` once.
        """
        config = json.loads(self._tok.to_str())
        kind = _vocab_kind(config)
        out = [b""] * self.vocab_size
        if kind == "byte_level":
            unbyte = {c: b for b, c in bytes_to_unicode().items()}

            def spell(tok: str) -> bytes:
                # tokenizers decodes a token with a character outside the alphabet as its UTF-8.
                try:
                    return bytes(unbyte[c] for c in tok)
                except KeyError:
                    return tok.encode()
        else:
            # <0xAB> pieces become bytes only through the ByteFallback decoder; without it
            # they decode as their spelling.
            byte_fallback = any(c.get("type") == "ByteFallback"
                                for c in _components(config.get("decoder")))

            def spell(tok: str) -> bytes:
                if byte_fallback and len(tok) == 6 and tok.startswith("<0x") and tok[5] == ">":
                    try:
                        return bytes([int(tok[3:5], 16)])
                    except ValueError:
                        pass
                return tok.replace("\u2581", " ").encode()
        for tok, token_id in self._tok.get_vocab(with_added_tokens=False).items():
            if 0 <= token_id < len(out):
                out[token_id] = spell(tok)
        for added in config.get("added_tokens", []):
            token_id = added["id"]
            if 0 <= token_id < len(out):
                out[token_id] = b"" if added.get("special") else added["content"].encode()
        return out

    # --- chat templates -----------------------------------------------------------------
    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True,
                            continue_final_message: bool = False, **kwargs) -> str:
        """Renders messages as transformers' ``apply_chat_template(tokenize=False)`` does."""
        if not self.chat_template:
            raise ValueError("this tokenizer has no chat template (pass chat=False)")
        if add_generation_prompt and continue_final_message:
            raise ValueError("continue_final_message and add_generation_prompt are exclusive")
        if self._compiled is None:
            self._compiled = _compile_template(self.chat_template)
        chat = [dict(m) for m in messages]
        final = None
        if continue_final_message:
            if not chat or chat[-1].get("content") is None:
                raise ValueError("continue_final_message needs a final message with content")
            final = chat[-1]["content"]
            chat[-1]["content"] = final + _CONTINUE_TAG
        rendered = self._compiled.render(messages=chat, add_generation_prompt=add_generation_prompt,
                                         **{**self.special_tokens, **kwargs})
        if final is not None:
            tag = _CONTINUE_TAG.strip()
            if final.strip() not in rendered or tag not in rendered:
                raise ValueError("the chat template dropped part of the final message")
            loc = rendered.rindex(tag)
            if rendered[loc:loc + len(_CONTINUE_TAG)] == _CONTINUE_TAG:
                rendered = rendered[:loc]
            else:
                rendered = rendered[:loc].rstrip()
        return rendered

    def encode_chat(self, messages: list[dict], **kwargs) -> list[int]:
        # The template writes any BOS itself, so no special tokens are added on top.
        return self.encode(self.apply_chat_template(messages, **kwargs), add_special_tokens=False)


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas. A delta is held back while it ends
    in an incomplete UTF-8 sequence (decoded as U+FFFD), so no character is ever split."""

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True):
        self._tok = tokenizer
        self._skip = skip_special_tokens
        self.ids: list[int] = []
        self._prefix = 0  # start of the window decoded for context
        self._read = 0    # tokens already turned into text
        self.text = ""

    def push(self, token_ids) -> str:
        self.ids.extend(int(t) for t in token_ids)
        prefix_text = self._tok.decode(self.ids[self._prefix:self._read], self._skip)
        new_text = self._tok.decode(self.ids[self._prefix:], self._skip)
        if len(new_text) <= len(prefix_text) or new_text.endswith("\ufffd"):
            return ""
        delta = new_text[len(prefix_text):]
        self._prefix, self._read = self._read, len(self.ids)
        self.text += delta
        return delta

    def flush(self) -> str:
        """Whatever is left at the end, even an incomplete character."""
        prefix_text = self._tok.decode(self.ids[self._prefix:self._read], self._skip)
        new_text = self._tok.decode(self.ids[self._prefix:], self._skip)
        delta = new_text[len(prefix_text):] if len(new_text) > len(prefix_text) else ""
        self._prefix = self._read = len(self.ids)
        self.text += delta
        return delta
