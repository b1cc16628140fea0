"""Selections, pass@k and budget subsampling, computed from records alone.

A candidate is one finished solution of a record: ``{"answer": str, "scores": [float, ...]
(one verifier score per step), "correct": bool, "tokens": int, "sample": int}``.

Two rules live here. ``select`` is the C++ strategies' own pick (``rank_solutions`` in
``csrc/core/search/selection.cpp``: answers compared as exact strings), used to recompute a
subsampled record's answer. ``selections`` is what search-and-learn reports (answers grouped
by ``grading.canonical``), used by the report for every record.
"""

from __future__ import annotations

import copy

AGGREGATIONS = ("last", "min", "prod", "mean")
SELECTS = ("naive", "weighted", "majority")
SELECTION_KEYS = ("naive@last", "naive@min", "naive@prod",
                  "weighted@last", "weighted@min", "weighted@prod", "maj")
SUBSAMPLED = ("bon", "dvts")
# Costs a subsampled record scales by budget / original budget (tokens_generated is summed).
_SCALED_INT = ("tokens_prefilled", "prm_tokens", "score_calls", "forward_passes",
               "peak_kv_blocks", "rounds")


def aggregate(scores: list[float], how: str) -> float:
    """One number for a solution's step scores: the last, the smallest, the product or the
    mean; 0.0 for no scores. Same arithmetic, in the same order, as the C++ ``aggregate``."""
    if how not in AGGREGATIONS:
        raise ValueError(f"how must be one of {', '.join(AGGREGATIONS)}, got {how!r}")
    if not scores:
        return 0.0
    if how == "last":
        return float(scores[-1])
    if how == "min":
        m = scores[0]
        for v in scores:
            m = v if v < m else m
        return float(m)
    if how == "prod":
        p = 1.0
        for v in scores:
            p *= v
        return p
    t = 0.0
    for v in scores:
        t += v
    return t / len(scores)


def select(candidates: list[dict], aggregation: str, select: str) -> int | None:
    """Index of the candidate a best-of-N / beam / DVTS search picks, or None if there are none.

    The rule of the C++ ``rank_solutions`` over a pool in the given order (see
    ``pool_order`` for the order a strategy's pool has): each candidate's scores are
    aggregated; naive takes the largest aggregate; weighted the answer (exact string) whose
    aggregates sum highest, majority the most frequent answer, then that answer's candidate
    with the largest aggregate. Ties go to the answer seen first, then to the first candidate.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {', '.join(AGGREGATIONS)}, "
                         f"got {aggregation!r}")
    if select not in SELECTS:
        raise ValueError(f"select must be one of {', '.join(SELECTS)}, got {select!r}")
    if not candidates:
        return None
    aggs = [aggregate(c["scores"], aggregation) for c in candidates]
    weight: dict[str, float] = {}
    count: dict[str, int] = {}
    first_seen: dict[str, int] = {}
    for i, c in enumerate(candidates):
        a = c["answer"]
        weight[a] = weight.get(a, 0.0) + aggs[i]
        count[a] = count.get(a, 0) + 1
        first_seen.setdefault(a, i)

    def rank(i: int) -> tuple:
        a = candidates[i]["answer"]
        if select == "naive":
            return (-aggs[i],)
        key = weight[a] if select == "weighted" else float(count[a])
        return (-key, first_seen[a], -aggs[i])

    return min(range(len(candidates)), key=rank)  # min keeps the first of equal ranks


def pool_order(candidates: list[dict], strategy: str) -> list[int]:
    """Indices of a record's candidates in the order its strategy's ranking pool holds them,
    which decides ties in ``select``.

    Candidates are stored by sample, then node id. Best-of-N ranks its finished nodes by node
    id, and its nodes are numbered round by round, so its pool runs by depth (the number of
    step scores), then sample. DVTS pools each subtree's last expansion, subtree by subtree:
    the stored order. Other strategies keep the stored order.
    """
    idx = list(range(len(candidates)))
    if strategy == "bon":
        idx.sort(key=lambda i: (len(candidates[i]["scores"]), candidates[i]["sample"]))
    return idx


def selections(candidates: list[dict]) -> dict[str, bool]:
    """Whether each of search-and-learn's selections picks a correct answer.

    For agg in last, min, prod: ``naive@agg`` takes the candidate with the largest aggregated
    score (the first on ties); ``weighted@agg`` groups candidates by
    ``grading.canonical(answer)`` and takes the group whose aggregated scores sum highest
    (the group seen first on ties). ``maj`` takes the largest group (the group seen first on
    ties). A selection is correct when the chosen candidate, or the chosen group's first
    member, is ``correct``; nothing is re-graded. No candidates: all False.
    """
    from ponder.eval import grading

    out = dict.fromkeys(SELECTION_KEYS, False)
    if not candidates:
        return out
    groups: dict[str, list[int]] = {}
    for i, c in enumerate(candidates):
        groups.setdefault(grading.canonical(c["answer"]), []).append(i)
    members = list(groups.values())  # in order of first member
    for how in ("last", "min", "prod"):
        aggs = [aggregate(c["scores"], how) for c in candidates]
        best = max(range(len(candidates)), key=lambda i: aggs[i])  # max keeps the first
        out[f"naive@{how}"] = bool(candidates[best]["correct"])
        sums = [sum(aggs[i] for i in m) for m in members]
        top = max(range(len(members)), key=lambda g: sums[g])
        out[f"weighted@{how}"] = bool(candidates[members[top][0]]["correct"])
    top = max(range(len(members)), key=lambda g: len(members[g]))
    out["maj"] = bool(candidates[members[top][0]]["correct"])
    return out


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021): the chance that k of n samples, drawn without
    replacement, include at least one of the c correct ones, 1 - C(n-c, k) / C(n, k).
    k = 0 gives 0.0."""
    if not 0 <= c <= n:
        raise ValueError(f"c must be in [0, n={n}], got {c}")
    if not 0 <= k <= n:
        raise ValueError(f"k must be in [0, n={n}], got {k}")
    if k == 0:
        return 0.0
    if n - c < k:
        return 1.0
    miss = 1.0  # C(n-c, k) / C(n, k) as a product, stable for large n
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


def subsample(record: dict, budget: int) -> dict:
    """The record a smaller budget gets from a best-of-N or DVTS record, as search-and-learn
    subsamples (``completions[:n]``) instead of rerunning.

    Kept candidates: best-of-N keeps the first ``budget`` samples (``sample < budget``: a
    rerun with n=budget draws the same samples; when every sample finished these are the
    first ``budget`` candidates); DVTS keeps the first ``budget`` candidates in stored order.
    ``answer`` and ``correct`` are those of the candidate ``select`` picks among the kept ones
    with the record's aggregation and select rule, over the strategy's ``pool_order``;
    ``solution`` is that candidate's "text" if the candidates carry one, else "".
    ``tokens_generated`` is the kept candidates' ``tokens`` summed. The other costs
    (tokens_prefilled, prm_tokens, score_calls, forward_passes, peak_kv_blocks, rounds,
    seconds) were measured for the whole run and are scaled by budget / the record's budget,
    rounded (integers stay integers, seconds to 4 places): an estimate, not a measurement.
    ``subsampled_from`` is the budget of the run the candidates come from; ``budget``,
    ``key``, ``params["n"]`` (and for DVTS ``params["width"]``, capped at budget) follow the
    new budget. The input record is not changed.
    """
    strategy = record["strategy"]
    if strategy not in SUBSAMPLED:
        raise ValueError(f"only {' and '.join(SUBSAMPLED)} records can be subsampled, "
                         f"got strategy {strategy!r}")
    full = int(record["budget"])
    if not 1 <= budget <= full:
        raise ValueError(f"budget must be in [1, {full}] (the record's budget), got {budget}")
    out = copy.deepcopy(record)
    cands = out.get("candidates") or []
    if strategy == "bon":
        kept = [c for c in cands if c["sample"] < budget]
    else:
        kept = cands[:budget]
    params = out.setdefault("params", {})
    order = pool_order(kept, strategy)
    pick = select([kept[i] for i in order], params.get("aggregation", "last"),
                  params.get("select", "naive"))
    chosen = kept[order[pick]] if pick is not None else None
    out["candidates"] = kept
    out["answer"] = chosen["answer"] if chosen else ""
    out["correct"] = bool(chosen["correct"]) if chosen else False
    out["solution"] = chosen.get("text", "") if chosen else ""
    out["tokens_generated"] = sum(int(c["tokens"]) for c in kept)
    frac = budget / full
    for name in _SCALED_INT:
        if name in out and out[name] is not None:
            out[name] = int(round(out[name] * frac))
    if out.get("seconds") is not None:
        out["seconds"] = round(float(out["seconds"]) * frac, 4)
    out["subsampled_from"] = record.get("subsampled_from") or full
    out["budget"] = budget
    out["key"] = f"{out['problem_id']}|{strategy}|{budget}|{out['seed']}"
    params["n"] = budget
    if strategy == "dvts" and "width" in params:
        params["width"] = min(int(params["width"]), budget)
    return out
