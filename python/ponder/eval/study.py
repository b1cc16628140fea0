"""The driver of a study: load the problems, plan what is not done yet, run it (in this
process or on Ray actors), grade and append each record as it arrives, then write the
report. It is the only writer of the results directory."""

from __future__ import annotations

import logging
import sys

from ponder.eval import records as rec_io
from ponder.eval.config import EvalConfig
from ponder.eval.data import load_problems
from ponder.eval.records import record_key
from ponder.eval.report import summarize, write_report
from ponder.eval.runner import EngineWorker, build_verifier, finalize, plan

log = logging.getLogger("ponder.eval")


class Progress:
    """tqdm bars: one for the whole study and one per configuration (strategy x budget),
    each with its ETA and running accuracy. quiet: a log line per finished configuration."""

    def __init__(self, cfg: EvalConfig, per_config: dict[tuple, int], done: dict[tuple, list]):
        self.quiet, self.per_config = cfg.quiet, per_config
        self.seen = {k: list(done.get(k, [0, 0])) for k in per_config}
        total = sum(per_config.values())
        self.bars: dict = {}
        self.bar = None
        if self.quiet:
            return
        from tqdm.auto import tqdm

        kw = dict(unit="rec", file=sys.stderr, dynamic_ncols=True)
        initial = sum(s[0] for s in self.seen.values())
        self.bar = tqdm(total=total, initial=initial, desc="all", position=0, **kw)
        for i, (key, n) in enumerate(per_config.items()):
            s = self.seen[key]
            self.bars[key] = tqdm(total=n, initial=s[0], desc=f"{key[0]:>5} B={key[1]:<4}",
                                  position=i + 1, **kw)
            if s[0]:
                self.bars[key].set_postfix(acc=f"{s[1] / s[0]:.3f}")
        self._accuracy()

    def _accuracy(self) -> None:
        n = sum(s[0] for s in self.seen.values())
        right = sum(s[1] for s in self.seen.values())
        if self.bar is not None and n:
            self.bar.set_postfix(acc=f"{right / n:.3f}")

    def update(self, records: list[dict]) -> None:
        for r in records:
            key = (r["strategy"], r["budget"])
            if key not in self.seen:
                continue
            s = self.seen[key]
            s[0] += 1
            s[1] += bool(r["correct"])
            if key in self.bars:
                self.bars[key].update(1)
                self.bars[key].set_postfix(acc=f"{s[1] / s[0]:.3f}")
            elif s[0] == self.per_config[key]:
                log.info(f"{key[0]} B={key[1]}: accuracy {s[1]}/{s[0]} "
                         f"({100 * s[1] / s[0]:.1f}%)")
        if self.bar is not None:
            self.bar.update(len(records))
            self._accuracy()

    def close(self) -> None:
        for b in [*self.bars.values(), self.bar]:
            if b is not None:
                b.close()


def run(config: EvalConfig | None = None, **kwargs) -> list[dict]:
    """Runs (or resumes) a study and writes DIR/records.jsonl, DIR/report.md, report.html
    and the plots; returns the results table: one row per (strategy, budget) with accuracy
    (mean and standard error over seeds), the selections, pass@k and the costs.

    Pass an EvalConfig, or its fields as keywords:
    ``ponder.eval.run(model="smollm2", data="arith", out="runs/a", strategies="bon,pf",
    budgets=[1, 4, 16], verifier="equations", limit=60)``."""
    cfg = config if config is not None else EvalConfig(**kwargs)
    if config is not None and kwargs:
        raise TypeError("pass an EvalConfig or keyword fields, not both")
    problems = load_problems(cfg.data, cfg.question_field, cfg.answer_field, cfg.id_field,
                             cfg.limit, cfg.shuffle_seed)
    build_verifier(cfg)  # a MODULE:FUNCTION that does not import fails before --out is touched
    done = rec_io.prepare(cfg)
    items, derived = plan(cfg, problems, done)
    per_config = {(s, b): len(problems) * len(cfg.seeds)
                  for s in cfg.strategies for b in cfg.budgets}
    wanted = {record_key(p.id, s, b, seed)
              for p in problems for (s, b) in per_config for seed in cfg.seeds}
    already: dict[tuple, list] = {}
    for key, r in done.items():
        if key in wanted:
            s = already.setdefault((r["strategy"], r["budget"]), [0, 0])
            s[0] += 1
            s[1] += bool(r["correct"])
    progress = Progress(cfg, per_config, already)
    writer = rec_io.RecordWriter(cfg.out)

    def accept(new: list[dict]) -> None:
        writer.write(new)
        for r in new:
            done[r["key"]] = r
        progress.update(new)

    try:
        accept(derived)
        if items:
            if cfg.workers or cfg.ray:
                from ponder.eval.distributed import run_on_ray

                run_on_ray(cfg, items, lambda raw: accept(finalize(cfg, raw, done)))
            else:
                worker = EngineWorker(cfg)
                worker.add(items)
                while worker.busy:  # each record written as soon as its search ends
                    for raw in worker.advance(0.0):
                        accept(finalize(cfg, raw, done))
    finally:
        writer.close()
        progress.close()
    return redraw(cfg.out)


def redraw(out_dir: str) -> list[dict]:
    """Redraws DIR/report.md, report.html and the plots from DIR/records.jsonl alone and
    returns the results table."""
    records = rec_io.latest(rec_io.read_records(out_dir))
    write_report(out_dir, records)
    return summarize(records)
