"""Test-time scaling studies: datasets -> strategies x budgets x seeds -> graded records
(``records.jsonl``, resumable) -> report and plots. ``ponder eval`` on the command line;
``ponder.eval.run(...)`` in Python. Heavy dependencies (math-verify, matplotlib, tqdm, Ray)
are imported when used: ``pip install ponder[eval]`` (and ``ponder[ray]``)."""

from ponder.eval.config import EvalConfig
from ponder.eval.study import redraw, run

__all__ = ["EvalConfig", "redraw", "run"]
