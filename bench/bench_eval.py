"""python bench/bench_eval.py [--json] [--problems 16] [--strategy bon] [--budget 4]

Problems per second of a `ponder eval` study on SmolLM2-135M over the bundled arithmetic set:
in one process with 1 search in flight against 16 (the searches share every forward pass),
and on 1 against 2 Ray engine actors (each actor loads its own engine; --skip-ray to leave
out). Every case runs the same seeded searches into a fresh directory; the records of all
cases are checked to be equal (batch invariance), then the times compared.

Napkin math: a decode step at batch 1 reads every weight once (fp32 SmolLM2: 538 MB, ~23 ms
at ~23 GB/s), and at batch 16 the same bytes feed 16 tokens, so concurrency 16 can approach
~10x more tokens per second until the step becomes compute-bound. Two Ray actors on this
2-core machine split the same two cores: expect about 1x there; the figure that matters is
on a machine with a core (or GPU) per actor.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time

SCHEDULING = ("seconds", "forward_passes", "tokens_prefilled")


def _run(out: str, args, **kw) -> float:
    import ponder.eval

    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    ponder.eval.run(model=args.model, data="arith", out=out, strategies=[args.strategy],
                    budgets=[args.budget], limit=args.problems, verifier="equations",
                    quiet=True, dtype=args.dtype,
                    params={"all": {"max_steps": args.max_steps,
                                    "max_step_tokens": args.max_step_tokens}}, **kw)
    return time.perf_counter() - t0


def _content(out: str) -> dict:
    recs = {}
    with open(os.path.join(out, "records.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            for k in SCHEDULING:
                r.pop(k)
            recs[r["key"]] = r
    return recs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--problems", type=int, default=16)
    p.add_argument("--strategy", default="bon")
    p.add_argument("--budget", type=int, default=4)
    p.add_argument("--max-steps", type=int, default=6)
    p.add_argument("--max-step-tokens", type=int, default=64)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--skip-ray", action="store_true")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    cases = [("process, concurrency 1", dict(concurrency=1)),
             ("process, concurrency 16", dict(concurrency=16))]
    if not args.skip_ray:
        cases += [("ray, 1 worker", dict(workers=1, concurrency=16)),
                  ("ray, 2 workers", dict(workers=2, concurrency=16))]
    root = tempfile.mkdtemp(prefix="ponder-bench-eval-")
    results, contents = [], []
    for name, kw in cases:
        out = os.path.join(root, name.replace(" ", "_").replace(",", ""))
        secs = _run(out, args, **kw)
        contents.append(_content(out))
        results.append({"case": name, "seconds": round(secs, 2),
                        "problems_per_s": round(args.problems / secs, 4)})
    same = all(c == contents[0] for c in contents)
    base = {"process": results[0]["problems_per_s"],
            "ray": results[2]["problems_per_s"] if len(results) > 2 else None}
    for r in results:
        b = base["ray" if r["case"].startswith("ray") else "process"]
        r["ratio"] = round(r["problems_per_s"] / b, 3)
    shutil.rmtree(root, ignore_errors=True)
    meta = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "model": args.model, "strategy": args.strategy, "budget": args.budget,
            "problems": args.problems, "records_equal": same}
    if args.json:
        print(json.dumps({"meta": meta, "results": results}, indent=1))
    else:
        print(f"{args.problems} problems, {args.strategy} B={args.budget}, {args.model} "
              f"{args.dtype}; records equal in every case: {same}")
        print(f"{'case':<26}{'seconds':>10}{'problems/s':>12}{'ratio':>8}")
        for r in results:
            print(f"{r['case']:<26}{r['seconds']:>10.1f}{r['problems_per_s']:>12.3f}"
                  f"{r['ratio']:>8.2f}")
        print("ratio: to concurrency 1 (process rows) or to 1 Ray worker (ray rows)")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
