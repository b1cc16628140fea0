"""PRM-guided beam search (n=16, width=4) on SmolLM2-135M-Instruct (CPU), with a PRM of the
same size: SmolLM2's weights plus a random ``qwen`` head (Linear(H,H), ReLU, Linear(H,2)),
and ``<extra_0>`` added to its vocabulary. The head is random, so the scores mean nothing;
the costs are what a real PRM of this size would have.

Three runs of the same searches:
  ponder incremental   policy and PRM in ponder; a node's PRM KV forks its parent's, so each
                       new step runs only its own tokens
  ponder full          the same, every scoring text run whole (as PRMs are called elsewhere)
  reference            search-and-learn style: transformers `generate` for the policy (each
                       expansion re-prefills its path) and transformers re-scoring every
                       beam's full text each round (one padded batch per round)
Ponder runs the questions' searches at once (``--sequential``: one by one); the reference
goes one by one. Reported: PRM tokens run, PRM seconds, search seconds, and the ratios.
Targets (issue 5): PRM tokens incremental <= 1/4 of full; end to end >= 5x faster than the
reference.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import torch

from ponder.bench.search import QUESTIONS, add_model_args, load_transformers, run_transformers

SEP = "<extra_0>"


def make_prm(hf_dir: str, out: str, seed: int = 0) -> None:
    """SmolLM2 + a random qwen head, saved as a PRM directory (prm_format='qwen')."""
    from safetensors.torch import load_file, save_file
    from tokenizers import Tokenizer

    os.makedirs(out, exist_ok=True)
    tok = Tokenizer.from_file(os.path.join(hf_dir, "tokenizer.json"))
    tok.add_special_tokens([SEP])
    tok.save(os.path.join(out, "tokenizer.json"))
    for name in ("tokenizer_config.json", "generation_config.json", "chat_template.jinja"):
        if os.path.isfile(os.path.join(hf_dir, name)):
            with open(os.path.join(hf_dir, name), "rb") as f, \
                 open(os.path.join(out, name), "wb") as g:
                g.write(f.read())
    with open(os.path.join(hf_dir, "config.json")) as f:
        cfg = json.load(f)
    tensors = load_file(os.path.join(hf_dir, "model.safetensors"))
    emb = tensors["model.embed_tokens.weight"]
    vocab = tok.get_vocab_size(with_added_tokens=True)
    g = torch.Generator().manual_seed(seed)
    if vocab > emb.shape[0]:
        extra = torch.randn(vocab - emb.shape[0], emb.shape[1], generator=g) * emb.std()
        tensors["model.embed_tokens.weight"] = torch.cat([emb, extra])
    tensors.pop("lm_head.weight", None)
    h = cfg["hidden_size"]
    tensors["score.0.weight"] = torch.randn(h, h, generator=g) / h ** 0.5
    tensors["score.0.bias"] = torch.zeros(h)
    tensors["score.2.weight"] = torch.randn(2, h, generator=g) / h ** 0.5
    tensors["score.2.bias"] = torch.zeros(2)
    save_file(tensors, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    cfg.update(vocab_size=vocab, tie_word_embeddings=False)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f)


class TransformersPrm:
    """search-and-learn's Qwen2.5-Math-PRM scoring: the chat with the steps joined by
    <extra_0>, every text re-scored whole, one right-padded batch per call."""

    def __init__(self, prm_dir: str, system: str, device: str = "cpu",
                 dtype: torch.dtype = torch.float32):
        from safetensors.torch import load_file
        from transformers import AutoModel, AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(prm_dir)
        self.model = AutoModel.from_pretrained(prm_dir, dtype=dtype).to(device).eval()
        t = load_file(os.path.join(prm_dir, "model.safetensors"))
        self.head = [t[k].to(device=device, dtype=dtype)
                     for k in ("score.0.weight", "score.0.bias", "score.2.weight",
                               "score.2.bias")]
        self.sep = self.tok.convert_tokens_to_ids(SEP)
        self.system = system
        self.tokens = 0
        self.seconds = 0.0

    def __call__(self, question, steps):
        return self.batch(question, [steps])[0]

    def batch(self, question, all_steps):
        t0 = time.perf_counter()
        ids = []
        for steps in all_steps:
            msgs = [{"role": "system", "content": self.system},
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": SEP.join(steps) + SEP}]
            text = self.tok.apply_chat_template(msgs, tokenize=False,
                                                add_generation_prompt=False)
            ids.append(self.tok.encode(text))
        width = max(len(x) for x in ids)
        pad = self.tok.pad_token_id or 0
        dev = self.model.device
        inp = torch.tensor([x + [pad] * (width - len(x)) for x in ids], device=dev)
        mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids], device=dev)
        with torch.inference_mode():
            x = self.model(input_ids=inp, attention_mask=mask).last_hidden_state
            w1, b1, w2, b2 = self.head
            probs = torch.softmax(torch.relu(x @ w1.T + b1) @ w2.T + b2, dim=-1)[..., 1]
        out = [probs[i][inp[i] == self.sep][:len(s)].tolist() for i, s in enumerate(all_steps)]
        self.tokens += sum(len(x) for x in ids)
        self.seconds += time.perf_counter() - t0
        return out


def main(argv=None):
    p = argparse.ArgumentParser(prog="bench_prm", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--width", type=int, default=4)
    p.add_argument("--max-steps", type=int, default=4)
    p.add_argument("--step-tokens", type=int, default=48)
    p.add_argument("--questions", type=int, default=len(QUESTIONS))
    p.add_argument("--no-reference", action="store_true", help="skip the transformers run")
    p.add_argument("--sequential", action="store_true",
                   help="ponder runs one search at a time (default: all questions at once, as a "
                        "serving engine would; the reference always goes one by one)")
    add_model_args(p)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    import ponder
    from ponder.demo import SYSTEM
    from ponder.prm.formats import QWEN_SYSTEM

    questions = QUESTIONS[:args.questions]
    hf, tok, hf_dir = load_transformers(args.model, args.device, args.dtype)
    prm_dir = tempfile.mkdtemp()
    make_prm(hf_dir, prm_dir)
    eng = ponder.Engine(hf_dir, dtype=args.dtype, device=args.device, kv_blocks=2048,
                        prm=prm_dir, prm_format="qwen", prm_kv_blocks=2048)
    spec = ponder.BeamSearch(n=args.n, width=args.width, max_steps=args.max_steps,
                             max_step_tokens=args.step_tokens, seed=0)
    # Warm-up (first-touch of the KV pools, rotary tables, thread pools), not measured.
    eng.search(questions[0], ponder.BeamSearch(n=2, width=2, max_steps=1, max_step_tokens=4,
                                               seed=1), system_prompt=SYSTEM)
    rows = []
    for mode in ("incremental", "full"):
        eng.prm.incremental = mode == "incremental"
        before = dict(eng.prm.stats)
        row = {"run": f"ponder {mode}", "tokens": 0, "seconds": 0.0, "scored": 0}
        t0 = time.perf_counter()
        if args.sequential:
            results = [eng.search(q, spec, system_prompt=SYSTEM) for q in questions]
        else:  # every question's search live at once, sharing forward passes and PRM batches
            ids = [eng.add_request(q, spec, system_prompt=SYSTEM) for q in questions]
            while eng.has_unfinished():
                eng.step()
            results = [eng.output(i) for i in ids]
        row["seconds"] = time.perf_counter() - t0
        row["tokens"] = sum(r.stats["tokens_generated"] for r in results)
        row["prm_tokens"] = eng.prm.stats["tokens_run"] - before["tokens_run"]
        row["prm_seconds"] = eng.prm.stats["seconds"] - before["seconds"]
        row["scored"] = eng.prm.stats["scored"] - before["scored"]
        rows.append(row)
    if not args.no_reference:
        ref_prm = TransformersPrm(prm_dir, QWEN_SYSTEM, args.device, getattr(torch, args.dtype))
        row = {"run": "reference (transformers)", "tokens": 0, "seconds": 0.0}
        for q in questions:
            n_tok, _, s = run_transformers(hf, tok, q, spec, ref_prm, SYSTEM)
            row["tokens"] += n_tok
            row["seconds"] += s
        row.update(prm_tokens=ref_prm.tokens, prm_seconds=ref_prm.seconds)
        rows.append(row)
    inc, full = rows[0], rows[1]
    summary = {"prm_tokens_incremental_over_full": inc["prm_tokens"] / full["prm_tokens"]}
    if len(rows) > 2:
        ref = rows[2]
        summary["end_to_end_speedup_vs_reference"] = ref["seconds"] / inc["seconds"]
        summary["speedup_per_generated_token"] = ((ref["seconds"] / ref["tokens"])
                                                  / (inc["seconds"] / inc["tokens"]))
        summary["prm_tokens_reference_over_incremental"] = ref["prm_tokens"] / inc["prm_tokens"]
    if args.json:
        json.dump({"rows": rows, "summary": summary}, sys.stdout, indent=1)
        print()
        return 0
    print(f"Beam search n={args.n} width={args.width}, {len(questions)} questions "
          f"({'one at a time' if args.sequential else 'at once'} in ponder), {args.max_steps} "
          f"steps x {args.step_tokens} tokens; policy {args.model or 'SmolLM2-135M'} "
          f"{args.dtype} on {args.device}; PRM: the policy + a random qwen head; "
          f"{torch.get_num_threads()} threads")
    head = (f"{'run':<26}{'gen tokens':>11}{'PRM tokens':>11}{'PRM s':>8}{'search s':>10}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['run']:<26}{r['tokens']:>11}{r['prm_tokens']:>11}{r['prm_seconds']:>8.1f}"
              f"{r['seconds']:>10.1f}")
    for k, v in summary.items():
        print(f"{k}: {v:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
