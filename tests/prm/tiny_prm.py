"""Tiny random PRMs saved by transformers, one per format, with their heads under the real
tensor names, and the reference scoring of each format written from its published code
(see the docstrings); the oracles run transformers over the whole text."""

from __future__ import annotations

import json
import os
import shutil

import torch

FORMATS = ["qwen", "math-shepherd", "rlhflow", "skywork", "self-verify"]

# A Llama-3.1-style chat template (the one RLHFlow's reference offsets assume).
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>"
    "\n\n{{ m['content'] }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}"
    "<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")


def _tokenizer(src: str, out: str, fmt: str) -> None:
    """The SmolLM2 tokenizer, with what each format's real tokenizer has."""
    from tokenizers import Tokenizer
    from tokenizers.processors import TemplateProcessing

    tok = Tokenizer.from_file(os.path.join(src, "tokenizer.json"))
    with open(os.path.join(src, "tokenizer_config.json")) as f:
        cfg = json.load(f)
    template = cfg.get("chat_template")
    if template is None and os.path.isfile(os.path.join(src, "chat_template.jinja")):
        with open(os.path.join(src, "chat_template.jinja")) as f:
            template = f.read()
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "chat_template": template,
           "bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|im_end|>"}
    if fmt == "qwen":
        tok.add_special_tokens(["<extra_0>"])
    elif fmt == "math-shepherd":  # Mistral-style: BOS prepended by encode()
        tok.post_processor = TemplateProcessing(
            single="<|endoftext|> $A", pair="<|endoftext|> $A $B",
            special_tokens=[("<|endoftext|>", 0)])
        cfg.update(bos_token="<|endoftext|>", chat_template=None)
    elif fmt == "rlhflow":
        tok.add_special_tokens(["<|begin_of_text|>", "<|start_header_id|>",
                                "<|end_header_id|>", "<|eot_id|>"])
        cfg.update(bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                   pad_token="<|eot_id|>", chat_template=LLAMA3_TEMPLATE)
    elif fmt == "skywork":
        cfg.update(bos_token="<|endoftext|>")
    tok.save(os.path.join(out, "tokenizer.json"))
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump(cfg, f)


def build(fmt: str, out: str, smollm2_hf: str, seed: int = 0, heads: tuple[int, int] = (2, 1)):
    """Writes a tiny PRM of this format to out; returns (hf body model, head params).
    fmt "policy": a tiny random Llama policy with SmolLM2's tokenizer and chat template.
    smollm2_hf: a directory with SmolLM2's tokenizer files. heads: (attention, key-value)
    heads of the 64-wide model (the default gives head_dim 32, a size the CUDA kernels take)."""
    import transformers as tf
    from safetensors.torch import load_file, save_file

    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    _tokenizer(smollm2_hf, out, fmt)
    vocab = tf.PreTrainedTokenizerFast.from_pretrained(out).__len__()
    vocab = -(-vocab // 64) * 64
    torch.manual_seed(seed)
    common = dict(vocab_size=vocab, hidden_size=64, intermediate_size=112, num_hidden_layers=2,
                  num_attention_heads=heads[0], num_key_value_heads=heads[1],
                  max_position_embeddings=1024,
                  rms_norm_eps=1e-5, rope_theta=10000.0)
    if fmt in ("qwen", "skywork"):
        model = tf.Qwen2ForCausalLM(tf.Qwen2Config(**common, tie_word_embeddings=False))
    elif fmt == "math-shepherd":
        model = tf.MistralForCausalLM(tf.MistralConfig(**common, sliding_window=None))
    else:
        model = tf.LlamaForCausalLM(tf.LlamaConfig(**common, tie_word_embeddings=False))
    model.eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(out)
    head = {}
    h = common["hidden_size"]
    if fmt == "qwen":
        head = {"score.0.weight": torch.randn(h, h) / h ** 0.5, "score.0.bias": torch.randn(h),
                "score.2.weight": torch.randn(2, h) / h ** 0.5, "score.2.bias": torch.randn(2)}
        arch = "Qwen2ForProcessRewardModel"
    elif fmt == "skywork":
        head = {"v_head.summary.weight": torch.randn(1, h) / h ** 0.5,
                "v_head.summary.bias": torch.randn(1)}
        arch = "Qwen2ForPrmModel"
    else:
        arch = None
    if head:
        path = os.path.join(out, "model.safetensors")
        tensors = {k: v for k, v in load_file(path).items() if not k.startswith("lm_head")}
        save_file({**tensors, **head}, path, metadata={"format": "pt"})
        with open(os.path.join(out, "config.json")) as f:
            cfg = json.load(f)
        cfg["architectures"] = [arch]
        with open(os.path.join(out, "config.json"), "w") as f:
            json.dump(cfg, f)
    return model, head


# --- reference scoring (transformers over the whole text) -------------------------------------
def _hidden(model, ids):
    with torch.no_grad():
        return model.model(torch.tensor([ids])).last_hidden_state[0]


def _logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


def reference_scores(fmt: str, model, head: dict, tok, question: str, steps: list[str]):
    """Per-step scores as each format's published code computes them."""
    if fmt == "qwen":
        # Qwen2.5-Math-PRM model card: chat with the system prompt, steps joined and ended by
        # <extra_0>, softmax of the 2-way head at each <extra_0>, index 1.
        msgs = [{"role": "system", "content": "Please reason step by step, and put your final "
                                              "answer within \\boxed{}."},
                {"role": "user", "content": question},
                {"role": "assistant", "content": "<extra_0>".join(steps) + "<extra_0>"}]
        conv = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=False)
        ids = tok.encode(conv)
        x = _hidden(model, ids)
        x = torch.relu(x @ head["score.0.weight"].T + head["score.0.bias"])
        probs = torch.softmax(x @ head["score.2.weight"].T + head["score.2.bias"], dim=-1)[:, 1]
        sep = tok.convert_tokens_to_ids("<extra_0>")
        return probs[torch.tensor(ids) == sep].tolist()
    if fmt == "math-shepherd":
        # Model card: f"{question} {output}", each step followed by " ки", joined by "\n";
        # P(+) over the logits of encode("+ -")[1:] at each ки token.
        cand = tok.encode("+ -")[1:]
        tag = tok.encode("ки")[-1]
        output = "\n".join(f"{s} ки" for s in steps)
        ids = tok.encode(f"{question} {output}")
        scores = _logits(model, ids)[:, cand].softmax(dim=-1)[:, 0]
        return scores[torch.tensor(ids) == tag].tolist()
    if fmt == "rlhflow":
        # RLHFlow prm_evaluate.py (single version): one conversation per prefix, user turn k
        # = step k (the first prefixed by the question), assistant "+"; logits[-3].
        plus, minus = tok.encode("+")[-1], tok.encode("-")[-1]
        conv, out = [], []
        for k, s in enumerate(steps):
            conv.append({"role": "user", "content": f"{question} {s}" if k == 0 else s})
            conv.append({"role": "assistant", "content": "+"})
            ids = tok.apply_chat_template(conv, tokenize=True, add_generation_prompt=False)
            if not isinstance(ids, list):
                ids = ids["input_ids"]
            out.append(_logits(model, ids)[-3, [plus, minus]].softmax(dim=-1)[0].item())
        return out
    if fmt == "skywork":
        # skywork-o1-prm-inference prepare_input: encode(bos + problem + "\n"), then each step
        # encoded on its own followed by the "\n" token, flagged; sigmoid(v_head) at flags.
        step_id = tok.encode("\n")[-1]
        ids = tok.encode(tok.bos_token + question + "\n")
        flags = [0] * len(ids)
        for s in steps:
            piece = tok.encode(s) + [step_id]
            ids += piece
            flags += [0] * (len(piece) - 1) + [1]
        v = _hidden(model, ids) @ head["v_head.summary.weight"].T + head["v_head.summary.bias"]
        return torch.sigmoid(v[:, 0])[torch.tensor(flags) == 1].tolist()
    if fmt == "self-verify":
        # Ought ICE's verify recipe on each prefix: P(" Yes") / (P(" Yes") + P(" No")).
        yes, no = tok.encode(" Yes")[-1], tok.encode(" No")[-1]
        out = []
        for k in range(1, len(steps) + 1):
            body = "\n".join(f"{i + 1}. {s.strip()}" for i, s in enumerate(steps[:k]))
            prompt = (f'Consider this question: "{question}"\n\nHere are the first few steps '
                      f'of an answer:\n\n{body}\n\nQ: Is step {k} correct, assuming that the '
                      f'previous steps are correct? Say "A: Yes" or "A: No".')
            ids = tok.apply_chat_template(
                [{"role": "user", "content": prompt}, {"role": "assistant", "content": "A:"}],
                tokenize=True, add_generation_prompt=False, continue_final_message=True)
            if not isinstance(ids, list):
                ids = ids["input_ids"]
            p = _logits(model, ids)[-1].softmax(dim=-1)
            out.append((p[yes] / (p[yes] + p[no])).item())
        return out
    raise ValueError(fmt)
