"""Decode throughput of ponder against transformers on random-weight models with real shapes.

    python bench/bench_decode.py [--device cuda] [--dtype bfloat16] [--models smollm2,qwen1.5b]
                                 [--batches 1,16,64] [--max-tokens 128] [--json]
    python bench/bench_decode.py --write-model smollm2 DIR [--tokenizer TOKDIR]

A model is built from its config with random weights (speed does not depend on their
values) and saved as an HF checkpoint, so nothing is downloaded. Each case runs ``batch``
prompts of ``--prompt-tokens`` random ids and decodes ``--max-tokens`` tokens greedily
with EOS ignored, in ponder (``Engine.generate``) and in transformers (``generate`` on the
same checkpoint, same device and dtype); tok/s = batch x max_tokens / seconds (prefill
included), the median of ``--repeats`` runs after a warm-up. ``ratio`` = ponder tok/s over
transformers'.

``--write-model NAME DIR`` only writes the random checkpoint (with the tokenizer files of
``--tokenizer`` when given), e.g. a SmolLM2-shaped policy for ``bench_search --model DIR``
on a machine without the GGUF.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

import torch

# Real shapes: SmolLM2-135M-Instruct and Qwen2.5-1.5B-Instruct.
SHAPES = {
    "smollm2": ("LlamaConfig", dict(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
        rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True)),
    "qwen1.5b": ("Qwen2Config", dict(
        vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
        num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768,
        rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True)),
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "chat_template.jinja", "generation_config.json")


def write_model(name: str, out: str, dtype: torch.dtype = torch.bfloat16,
                tokenizer: str | None = None, seed: int = 0) -> str:
    """A random-weight checkpoint of the named shape, saved to out (HF layout)."""
    import transformers as tf

    cls, kw = SHAPES[name]
    torch.manual_seed(seed)
    cfg = getattr(tf, cls)(**kw)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = tf.AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    os.makedirs(out, exist_ok=True)
    model.save_pretrained(out)
    if tokenizer:
        for f in TOKENIZER_FILES:
            if os.path.isfile(os.path.join(tokenizer, f)):
                shutil.copy(os.path.join(tokenizer, f), out)
    return out


def _median_s(fn, repeats: int, device: str) -> float:
    fn()  # warm-up: allocations, kernel selection, thread pools
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run_case(name: str, path: str, batches: list[int], args) -> list[dict]:
    import ponder

    dtype = getattr(torch, args.dtype)
    vocab = SHAPES[name][1]["vocab_size"]
    g = torch.Generator().manual_seed(0)
    need = -(-(args.prompt_tokens + args.max_tokens) // 16) * max(batches) + 16
    eng = ponder.Engine(path, dtype=args.dtype, device=args.device, kv_blocks=need)
    sp = ponder.Sampling(max_tokens=args.max_tokens, temperature=0.0, ignore_eos=True)
    hf = None
    if not args.no_transformers:
        from transformers import AutoModelForCausalLM

        hf = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(args.device).eval()
    rows = []
    for b in batches:
        prompts = torch.randint(100, vocab - 100, (b, args.prompt_tokens), generator=g)
        lists = prompts.tolist()

        def ponder_run():
            outs = eng.generate(lists, sp, chat=False)
            assert all(len(o.outputs[0].token_ids) == args.max_tokens for o in outs)

        row = dict(model=name, batch=b, prompt_tokens=args.prompt_tokens,
                   max_tokens=args.max_tokens)
        s = _median_s(ponder_run, args.repeats, args.device)
        row["ponder_tok_s"] = round(b * args.max_tokens / s, 1)
        if hf is not None:
            ids = prompts.to(args.device)

            def hf_run():
                with torch.inference_mode():
                    out = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                      max_new_tokens=args.max_tokens,
                                      min_new_tokens=args.max_tokens, pad_token_id=0)
                assert out.shape[1] == args.prompt_tokens + args.max_tokens

            s = _median_s(hf_run, args.repeats, args.device)
            row["transformers_tok_s"] = round(b * args.max_tokens / s, 1)
            row["ratio"] = round(row["ponder_tok_s"] / row["transformers_tok_s"], 2)
        rows.append(row)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bench_decode", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--models", default="smollm2")
    p.add_argument("--batches", default="1,16")
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-transformers", action="store_true")
    p.add_argument("--write-model", nargs=2, metavar=("NAME", "DIR"))
    p.add_argument("--tokenizer", help="copy this directory's tokenizer files into the model")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.write_model:
        name, out = args.write_model
        write_model(name, out, getattr(torch, args.dtype), args.tokenizer)
        print(out)
        return 0
    batches = [int(b) for b in args.batches.split(",")]
    rows = []
    for name in args.models.split(","):
        if name not in SHAPES:
            p.error(f"unknown model {name!r} (known: {', '.join(SHAPES)})")
        d = tempfile.mkdtemp(prefix=f"ponder-bench-{name}-")
        try:
            write_model(name, d, getattr(torch, args.dtype))
            rows += run_case(name, d, batches, args)
            if args.device == "cuda":
                torch.cuda.empty_cache()
        finally:
            shutil.rmtree(d, ignore_errors=True)
    if args.json:
        json.dump({"device": args.device, "dtype": args.dtype, "rows": rows}, sys.stdout,
                  indent=1)
        print()
        return 0
    print(f"decode, random weights, {args.dtype} on {args.device}, {args.prompt_tokens}-token "
          f"prompts, {args.max_tokens} tokens greedy; ratio = ponder / transformers tok/s")
    head = f"{'model':<10}{'batch':>6}{'ponder tok/s':>14}{'hf tok/s':>10}{'ratio':>7}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['model']:<10}{r['batch']:>6}{r['ponder_tok_s']:>14.1f}"
              f"{r.get('transformers_tok_s', float('nan')):>10.1f}"
              f"{r.get('ratio', float('nan')):>7.2f}")
    return 0
