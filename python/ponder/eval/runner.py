"""Running a study's searches: `EngineWorker` keeps many searches in flight on one engine
through its step API (so they share every forward pass), and `finalize` turns a finished
search into graded records. The same worker runs in-process and inside each Ray actor
(``ponder.eval.distributed``); grading and writing stay in the driver.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import asdict, dataclass

from ponder.eval import grading, metrics
from ponder.eval.config import SUBSAMPLED, EvalConfig, make_spec, spec_params
from ponder.eval.records import record_key


@dataclass(frozen=True)
class WorkItem:
    """One search to run: a problem under one (strategy, budget, seed)."""

    problem_id: str
    question: str
    truth: str
    strategy: str
    budget: int
    seed: int

    @property
    def key(self) -> str:
        return record_key(self.problem_id, self.strategy, self.budget, self.seed)


def build_engine(cfg: EvalConfig):
    import ponder

    prm = cfg.prm if cfg.verifier == "prm" else None
    return ponder.Engine(cfg.model, prm=prm, prm_format=cfg.prm_format if prm else None,
                         dtype=cfg.dtype, device=cfg.device, kv_blocks=cfg.kv_blocks, seed=0)


def build_verifier(cfg: EvalConfig):
    """The verifier callable searches get: None for the engine's PRM and for the policy's
    confidence (an engine without a PRM scores by confidence)."""
    from ponder.eval import verifiers

    if cfg.verifier in ("prm", "confidence"):
        return None
    return verifiers.builtin(cfg.verifier) or verifiers.import_verifier(cfg.verifier)


class EngineWorker:
    """Runs work items on one engine, at most `concurrency` searches at once. ``add`` queues
    items; ``advance`` steps the engine for a while and returns the raw results (records
    without grading) of the searches that finished."""

    def __init__(self, cfg: EvalConfig, engine=None):
        self.cfg = cfg
        self.engine = engine if engine is not None else build_engine(cfg)
        self.verifier = build_verifier(cfg)
        self.params = {s: cfg.strategy_params(s) for s in cfg.strategies}
        self.queue: deque[WorkItem] = deque()
        self.inflight: dict[int, WorkItem] = {}
        self.done: list[dict] = []

    @property
    def busy(self) -> int:
        return len(self.queue) + len(self.inflight)

    def add(self, items) -> None:
        self.queue.extend(WorkItem(**i) if isinstance(i, dict) else i for i in items)

    def _admit(self) -> None:
        while self.queue and len(self.inflight) < self.cfg.concurrency:
            item = self.queue.popleft()
            spec = make_spec(item.strategy, item.budget, item.seed, self.params[item.strategy])
            try:
                rid = self.engine.add_request(item.question, spec, prm=self.verifier,
                                              system_prompt=self.cfg.system_prompt,
                                              answer_fn=grading.extract_answer)
            except (TypeError, ValueError) as e:  # refused at the door: its record says why
                self.done.append(raw_record(item, spec, None, f"{type(e).__name__}: {e}"))
                continue
            self.inflight[rid] = item

    def advance(self, seconds: float = 0.5) -> list[dict]:
        """Steps until `seconds` passed or nothing runs; returns the finished raw records."""
        t_end = time.perf_counter() + seconds
        while True:
            self._admit()
            if not self.inflight:
                break
            self.engine.step()
            for rid in list(self.inflight):
                res = self.engine.output(rid)
                if res is not None:
                    item = self.inflight.pop(rid)
                    spec = make_spec(item.strategy, item.budget, item.seed,
                                     self.params[item.strategy])
                    self.done.append(raw_record(item, spec, res, res.error))
            if self.done and time.perf_counter() >= t_end:
                break
        out, self.done = self.done, []
        return out

    def run(self, items) -> list[dict]:
        """All items to the end (the in-process path and the tests)."""
        self.add(items)
        out = []
        while self.busy:
            out += self.advance(5.0)
        return out


def raw_record(item: WorkItem, spec, res, error: str | None) -> dict:
    """A finished search as a record, before grading: every candidate in generation order
    (``sample``: which of the root's children its path starts with)."""
    rec = asdict(item)
    rec.update(key=item.key, params=spec_params(spec), answer="", solution="", candidates=[],
               tokens_generated=0, tokens_prefilled=0, prm_tokens=0, score_calls=0,
               forward_passes=0, peak_kv_blocks=0, rounds=0, seconds=0.0,
               subsampled_from=None, error=error)
    if res is None:
        return rec
    nodes = res.tree.nodes
    cands = []
    for c in res.candidates:
        path = [c.node]
        while nodes[path[-1]]["parent"] > 0:
            path.append(nodes[path[-1]]["parent"])
        first = path[-1]
        sample = nodes[0]["children"].index(first) if first in nodes[0]["children"] else -1
        cands.append({"answer": c.answer, "scores": [float(s) for s in c.scores],
                      "tokens": sum(nodes[n]["num_tokens"] for n in path), "sample": sample,
                      "node": c.node, "text": c.text})
    cands.sort(key=lambda c: (c["sample"], c["node"]))
    st = res.stats
    rec.update(answer=res.answer, solution=res.best.text if res.best else "", candidates=cands,
               tokens_generated=st["tokens_generated"], tokens_prefilled=st["tokens_prefilled"],
               prm_tokens=st["prm_tokens"], score_calls=st["score_calls"],
               forward_passes=st["forward_passes"], peak_kv_blocks=st["peak_kv_blocks"],
               rounds=st["rounds"], seconds=round(st.get("wall_ms", 0.0) / 1000, 4))
    return rec


def finalize(cfg: EvalConfig, raw: dict, done: dict) -> list[dict]:
    """Grades a raw record (its answer and every candidate's, with math-verify) and, for a
    subsampled strategy, derives the records of its smaller budgets that are not yet `done`.
    Runs in the driver's main thread, where math-verify's timeouts work."""
    rec = dict(raw)
    truth = rec["truth"]
    for c in rec["candidates"]:
        c["correct"] = grading.is_correct(c["answer"], truth)
    rec["correct"] = rec["error"] is None and grading.is_correct(rec["answer"], truth)
    rec.update(verifier=cfg.verifier, model=cfg.model,
               config_hash=cfg.config_hash(rec["strategy"]))
    out = [] if rec["key"] in done else [rec]
    if rec["strategy"] in SUBSAMPLED:
        for b in cfg.budgets:
            key = record_key(rec["problem_id"], rec["strategy"], b, rec["seed"])
            if b < rec["budget"] and key not in done:
                out.append(metrics.subsample(rec, b))
    return out


def plan(cfg: EvalConfig, problems, done: dict) -> tuple[list[WorkItem], list[dict]]:
    """The searches still to run, in configuration order (strategy, budget, seed, problem),
    and the records derivable without running (smaller budgets of a finished subsampled
    run)."""
    items, derived = [], []
    for strategy in cfg.strategies:
        for budget in cfg.run_budgets(strategy):
            for seed in cfg.seeds:
                for p in problems:
                    item = WorkItem(p.id, p.question, p.answer, strategy, budget, seed)
                    wanted = [record_key(p.id, strategy, b, seed)
                              for b in (cfg.budgets if strategy in SUBSAMPLED else [budget])]
                    if all(k in done for k in wanted):
                        continue
                    if item.key in done:  # the full run is there: derive the rest from it
                        derived += finalize(cfg, done[item.key], done)
                    else:
                        items.append(item)
    return items, derived
