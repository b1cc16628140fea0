"""Reports of `ponder eval`, drawn from the records alone.

`write_report(DIR)` reads ``DIR/records.jsonl`` (one record per problem x strategy x budget x
seed) and writes ``DIR/report.md``, a self-contained ``DIR/report.html`` and two plots, each as
PNG and SVG: accuracy vs budget (log2 axis) and accuracy vs mean generated tokens per problem.
Every number comes from the records, whose candidates keep their answers, step scores and
grades, so `ponder eval --report DIR` redraws everything after (or during) a run.

matplotlib is imported only by the plotting functions.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
import statistics
import warnings
from collections import Counter, defaultdict

from ponder.eval import metrics

RECORDS_FILE = "records.jsonl"

STRATEGY_ORDER = ("bon", "beam", "dvts", "pf", "pg", "astar", "mcts")

# What a budget B buys each strategy: the sizes the reference implementations count.
BUDGET_MEANING = {
    "bon": "n = B samples",
    "beam": "n = B beams, width min(4, B)",
    "dvts": "n = B, width min(4, B)",
    "pf": "B particles",
    "pg": "B particles",
    "mcts": "B simulations, k = min(4, B)",
    "astar": "B expansions, k = min(4, B)",
}

SELECTION_KEYS = metrics.SELECTION_KEYS  # naive@last ... weighted@prod, maj

# Per-record costs, reported as means per problem.
COST_KEYS = ("tokens_generated", "tokens_prefilled", "prm_tokens", "score_calls",
             "forward_passes", "seconds", "peak_kv_blocks")

PLOT_STEMS = ("accuracy_vs_budget", "accuracy_vs_tokens")

_REQUIRED = ("problem_id", "strategy", "budget", "seed")


def read_records(path: str | os.PathLike) -> list[dict]:
    """Read the records of a run: ``path`` is the run's directory or its JSONL file.

    A last line without its newline that does not parse is what a run killed mid-write
    leaves behind: it is skipped with a warning. Any other bad line is a ``ValueError`` that
    names the file and the line.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, RECORDS_FILE)
    with open(path, "rb") as f:
        data = f.read()
    # The last element is b"" when the file ends with a newline, else an unterminated line.
    lines = data.split(b"\n")
    records = []
    for lineno, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
        except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
            if lineno == len(lines):
                warnings.warn(f"{path}, line {lineno}: skipping a truncated last line "
                              "(a run killed mid-write)", stacklevel=2)
                break
            raise ValueError(f"{path}, line {lineno}: not a valid JSON record ({e})") from None
        if not isinstance(rec, dict):
            raise ValueError(f"{path}, line {lineno}: expected a JSON object, "
                             f"got {type(rec).__name__}")
        missing = [k for k in _REQUIRED if k not in rec]
        if missing:
            raise ValueError(f"{path}, line {lineno}: record lacks {', '.join(missing)}")
        records.append(rec)
    return records


def _strategy_rank(strategy: str) -> tuple[int, str]:
    if strategy in STRATEGY_ORDER:
        return STRATEGY_ORDER.index(strategy), ""
    return len(STRATEGY_ORDER), strategy


def _outcomes(rec: dict) -> dict[str, float]:
    """0/1 outcomes of one record (its own answer and every selection) and its pass@k."""
    failed = rec.get("error") is not None
    cands = [] if failed else list(rec.get("candidates") or [])
    out = {"correct": float(bool(rec.get("correct")) and not failed)}
    sel = metrics.selections(cands)  # all False without candidates
    for k in SELECTION_KEYS:
        out[k] = float(sel[k])
    n = len(cands)
    c = sum(bool(x.get("correct")) for x in cands)
    out["pass@1"] = metrics.pass_at_k(n, c, 1) if n else 0.0
    out["pass@n"] = metrics.pass_at_k(n, c, n) if n else 0.0
    return out


def _joined(values) -> str:
    return ", ".join(sorted({str(v) for v in values if v is not None}))


def _summarize_group(strategy: str, budget: int, recs: list[dict]) -> dict:
    outcomes = [_outcomes(r) for r in recs]
    by_seed = defaultdict(list)
    for rec, out in zip(recs, outcomes, strict=True):
        by_seed[int(rec["seed"])].append(out)

    def seed_mean(key: str) -> tuple[float, float]:
        per_seed = [statistics.fmean(o[key] for o in outs) for outs in by_seed.values()]
        se = statistics.stdev(per_seed) / math.sqrt(len(per_seed)) if len(per_seed) > 1 else 0.0
        return statistics.fmean(per_seed), se

    acc, acc_se = seed_mean("correct")
    row = {"strategy": strategy, "budget": budget, "accuracy": acc, "accuracy_se": acc_se}
    for k in SELECTION_KEYS:
        row[k] = seed_mean(k)[0]
    row["pass@1"] = statistics.fmean(o["pass@1"] for o in outcomes)
    row["pass@n"] = statistics.fmean(o["pass@n"] for o in outcomes)
    for k in COST_KEYS:
        row[k] = statistics.fmean(float(r.get(k) or 0) for r in recs)
    sub_from = [int(r["subsampled_from"]) for r in recs if r.get("subsampled_from") is not None]
    aggs = Counter(str((r.get("params") or {}).get("aggregation", "last")) for r in recs)
    row.update(
        problems=len({str(r["problem_id"]) for r in recs}),
        seeds=len(by_seed),
        records=len(recs),
        errors=sum(r.get("error") is not None for r in recs),
        subsampled=bool(sub_from),
        subsampled_from=max(sub_from) if sub_from else None,
        aggregation=aggs.most_common(1)[0][0],
        params=dict(recs[0].get("params") or {}),
        verifier=_joined(r.get("verifier") for r in recs),
        model=_joined(r.get("model") for r in recs),
    )
    return row


def summarize(records: list[dict]) -> list[dict]:
    """One row per (strategy, budget), in strategy order (bon, beam, dvts, pf, pg, astar, mcts,
    then others alphabetically), then budget.

    ``accuracy`` is the mean over seeds of the fraction of problems whose selected answer is
    correct, ``accuracy_se`` its standard error over seeds (0.0 with one seed); each of
    `SELECTION_KEYS` is the same mean for that selection. ``pass@1`` / ``pass@n`` are means over
    records, the `COST_KEYS` means per problem (per record). A record with an error counts as
    incorrect in every column.
    """
    groups: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for i, rec in enumerate(records):
        missing = [k for k in _REQUIRED if k not in rec]
        if missing:
            raise ValueError(f"records[{i}] ({rec.get('key', '?')}) lacks {', '.join(missing)}")
        groups[str(rec["strategy"]), int(rec["budget"])].append(rec)
    rows = [_summarize_group(s, b, recs) for (s, b), recs in groups.items()]
    rows.sort(key=lambda r: (_strategy_rank(r["strategy"]), r["budget"]))
    return rows


# ---------------------------------------------------------------- plots


def _plot_series(rows: list[dict], keys: tuple[str, ...]) -> dict[str, list[dict]]:
    """Rows grouped by strategy (in strategy order), each sorted by budget, after checking that
    every row has ``keys`` and a positive budget."""
    series: dict[str, list[dict]] = defaultdict(list)
    for i, row in enumerate(rows):
        missing = [k for k in keys if k not in row]
        if missing:
            raise ValueError(f"rows[{i}] lacks {', '.join(missing)} (a plot needs {keys})")
        if int(row["budget"]) <= 0:
            raise ValueError(f"rows[{i}]: budget must be positive, got {row['budget']}")
        series[str(row["strategy"])].append(row)
    return {s: sorted(series[s], key=lambda r: int(r["budget"]))
            for s in sorted(series, key=_strategy_rank)}


def _color(strategy: str) -> str:
    # A fixed color per strategy, so both plots (and several reports) read alike.
    palette = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown",
               "tab:pink", "tab:gray", "tab:olive", "tab:cyan")
    rank, name = _strategy_rank(strategy)
    return palette[(rank + sum(map(ord, name))) % len(palette)]


def _new_axes(title: str | None):
    # A bare Figure renders through Agg without pyplot, so no global backend state changes.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    ax = fig.subplots()
    ax.grid(True, which="major", alpha=0.3)
    ax.set_ylabel("accuracy (%)")
    if title:
        ax.set_title(title, fontsize=10)
    return fig, ax


def _errorbar(ax, xs, rows: list[dict], strategy: str):
    ys = [100 * float(r["accuracy"]) for r in rows]
    es = [100 * float(r.get("accuracy_se") or 0.0) for r in rows]
    ax.errorbar(xs, ys, yerr=es if any(es) else None, marker="o", capsize=3,
                color=_color(strategy), label=strategy)
    return ys


def _save(fig, path_stem: str) -> list[str]:
    import matplotlib

    paths = []
    # A salt per file keeps the SVG ids stable across redraws and distinct between the plots
    # inlined into one HTML page; no dates or URLs in the metadata.
    with matplotlib.rc_context({"svg.hashsalt": os.path.basename(path_stem)}):
        for ext, meta in (("png", {"Software": None}),
                          ("svg", {"Date": None, "Creator": None, "Type": None})):
            path = f"{path_stem}.{ext}"
            fig.savefig(path, format=ext, dpi=150, metadata=meta)
            paths.append(path)
    return paths


def _plain_log_labels(ax, xs: list[float]) -> None:
    """Token counts as plain numbers (250, 1,000) rather than 2.5x10^2; within a decade or so
    the minor ticks are labelled too, as there may be no major tick in range."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    def plain(x, _pos=None):
        return f"{x:,.0f}" if x >= 1 else f"{x:g}"

    xs = [x for x in xs if x > 0]
    narrow = bool(xs) and max(xs) / min(xs) < 30
    ax.xaxis.set_major_formatter(FuncFormatter(plain))
    ax.xaxis.set_minor_formatter(FuncFormatter(plain) if narrow else NullFormatter())


def plot_accuracy_vs_budget(rows: list[dict], path_stem: str | os.PathLike,
                            title: str | None = None) -> list[str]:
    """Accuracy against budget B (log2 axis, the budgets as ticks), one line per strategy with
    the standard error over seeds as error bars. Writes ``path_stem.png`` and ``.svg``.

    ``rows`` need only ``strategy``, ``budget`` and ``accuracy`` (a fraction), optionally
    ``accuracy_se``. Returns the paths written.
    """
    from matplotlib.ticker import NullLocator

    series = _plot_series(rows, ("strategy", "budget", "accuracy"))
    fig, ax = _new_axes(title)
    for strategy, pts in series.items():
        _errorbar(ax, [int(r["budget"]) for r in pts], pts, strategy)
    budgets = sorted({int(r["budget"]) for r in rows})
    ax.set_xscale("log", base=2)
    ax.set_xticks(budgets, [str(b) for b in budgets])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("budget B")
    if series:
        ax.legend(title="strategy", fontsize=8)
    return _save(fig, os.fspath(path_stem))


def plot_accuracy_vs_tokens(rows: list[dict], path_stem: str | os.PathLike,
                            title: str | None = None) -> list[str]:
    """Accuracy against mean generated tokens per problem (log axis), one line per strategy,
    each point labelled with its budget. Writes ``path_stem.png`` and ``.svg``.

    ``rows`` need only ``strategy``, ``budget``, ``accuracy`` (a fraction) and
    ``tokens_generated``, optionally ``accuracy_se``; rows with no tokens cannot sit on the log
    axis and are left out with a warning. Returns the paths written.
    """
    series = _plot_series(rows, ("strategy", "budget", "accuracy", "tokens_generated"))
    fig, ax = _new_axes(title)
    for strategy, pts in series.items():
        kept = [r for r in pts if float(r["tokens_generated"]) > 0]
        if len(kept) < len(pts):
            warnings.warn(f"{strategy}: {len(pts) - len(kept)} row(s) with no generated tokens "
                          "left out of the accuracy-vs-tokens plot", stacklevel=2)
        if not kept:
            continue
        xs = [float(r["tokens_generated"]) for r in kept]
        ys = _errorbar(ax, xs, kept, strategy)
        for x, y, r in zip(xs, ys, kept, strict=True):
            ax.annotate(str(r["budget"]), (x, y), textcoords="offset points", xytext=(4, 4),
                        fontsize=7, color=_color(strategy))
    ax.set_xscale("log")
    _plain_log_labels(ax, [float(r["tokens_generated"]) for r in rows])
    ax.set_xlabel("generated tokens per problem (mean)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(title="strategy", fontsize=8)
    return _save(fig, os.fspath(path_stem))


# ---------------------------------------------------------------- tables


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _num(x: float) -> str:
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.1f}" if abs(x) >= 10 else f"{x:.2f}"


def _budget_cell(row: dict) -> str:
    return f"{row['budget']}†" if row["subsampled"] else str(row["budget"])


def _count_cell(row: dict) -> str:
    cell = f"{row['problems']} × {row['seeds']}"
    return cell + (f" ({row['errors']} failed)" if row["errors"] else "")


def _selection(row: dict, sel: str) -> str:
    key = f"{sel}@{row['aggregation']}"
    return _pct(row[key]) if key in row else "–"


def main_table(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Accuracy and cost per strategy x budget: (header, body) as strings."""
    header = ["strategy", "B", "accuracy %", "agg", "naive %", "weighted %", "maj %",
              "pass@n %", "gen tok/problem", "prefill tok/problem", "PRM tok/problem",
              "score calls/problem", "s/problem", "peak KV blocks", "problems × seeds"]
    body = [[r["strategy"], _budget_cell(r), f"{_pct(r['accuracy'])} ± {_pct(r['accuracy_se'])}",
             r["aggregation"], _selection(r, "naive"), _selection(r, "weighted"), _pct(r["maj"]),
             _pct(r["pass@n"]), _num(r["tokens_generated"]), _num(r["tokens_prefilled"]),
             _num(r["prm_tokens"]), _num(r["score_calls"]), f"{r['seconds']:.3g}",
             _num(r["peak_kv_blocks"]), _count_cell(r)] for r in rows]
    return header, body


def selection_table(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Every selection and pass@k per strategy x budget (percent): (header, body)."""
    keys = (*SELECTION_KEYS, "pass@1", "pass@n")
    header = ["strategy", "B", *keys]
    body = [[r["strategy"], _budget_cell(r), *(_pct(r[k]) for k in keys)] for r in rows]
    return header, body


def _budget_table(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    header = ["strategy", "budget B means", "budgets", "parameters at the largest B"]
    body = []
    for strategy in dict.fromkeys(r["strategy"] for r in rows):
        mine = [r for r in rows if r["strategy"] == strategy]
        params = ", ".join(f"{k}={v}" for k, v in mine[-1]["params"].items())
        body.append([strategy, BUDGET_MEANING.get(strategy, "–"),
                     ", ".join(_budget_cell(r) for r in mine), params or "–"])
    return header, body


def _numeric(body: list[list[str]]) -> list[bool]:
    """Which columns hold numbers (right-aligned): those whose cells all start with one."""
    columns = zip(*body, strict=True) if body else ()
    return [i > 0 and all(re.match(r"[\d–-]", c) for c in col) for i, col in enumerate(columns)]


def _md_table(header: list[str], body: list[list[str]]) -> str:
    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    rule = "|" + "|".join("---:" if num else "---" for num in _numeric(body)) + "|"
    return "\n".join([line(header), rule, *(line(r) for r in body)])


def _html_table(header: list[str], body: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    cls = [' class="num"' if num else "" for num in _numeric(body)]
    trs = "\n".join("<tr>" + "".join(f"<td{a}>{html.escape(c)}</td>"
                                     for a, c in zip(cls, r, strict=True)) + "</tr>"
                    for r in body)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{trs}\n</tbody>\n</table>"


# ---------------------------------------------------------------- report


def _notes(rows: list[dict]) -> list[str]:
    notes = [
        "accuracy: the strategy's own selected answer, mean ± standard error over seeds. "
        "naive / weighted / maj: search-and-learn's selections over all candidates of a "
        "record, step scores aggregated by `agg` (naive: the best candidate; weighted: the "
        "answer with the largest summed score; maj: the most frequent answer). pass@k: "
        "unbiased estimator (Chen et al. 2021), n = the record's candidates. Costs are means "
        "per problem."]
    if any(r["subsampled"] for r in rows):
        notes.append(
            "† subsampled: best-of-N and DVTS run once at their largest budget, and each "
            "smaller budget B takes the first B candidates of that run (search-and-learn's "
            "`completions[:n]`) instead of running again; its accuracy is that of a run at "
            "budget B on the same samples. Its generated tokens are those of the kept candidates; "
            "its other costs are the whole run's scaled by B / that budget: estimates, not "
            "measurements.")
    if any(r["errors"] for r in rows):
        notes.append("failed: records whose search raised (see their `error`); they count as "
                     "wrong in every accuracy column.")
    return notes


def _header_facts(records: list[dict]) -> list[tuple[str, str]]:
    seeds = sorted({int(r["seed"]) for r in records})
    errors = sum(r.get("error") is not None for r in records)
    return [
        ("model", _joined(r.get("model") for r in records) or "?"),
        ("verifier", _joined(r.get("verifier") for r in records) or "?"),
        ("dataset", f"{len({str(r['problem_id']) for r in records})} problems"),
        ("seeds", f"{', '.join(map(str, seeds))} ({len(seeds)})"),
        ("records", f"{len(records)} ({errors} failed)" if errors else str(len(records))),
        ("configuration", _joined(r.get("config_hash") for r in records) or "?"),
    ]


def _title(records: list[dict]) -> str:
    problems = len({str(r["problem_id"]) for r in records})
    seeds = len({int(r["seed"]) for r in records})
    model = _joined(r.get("model") for r in records) or "?"
    verifier = _joined(r.get("verifier") for r in records) or "?"
    return f"{model}, verifier {verifier}, {problems} problems × {seeds} seeds"


def _render_md(facts, tables, plots: list[str], notes: list[str]) -> str:
    out = ["# ponder eval report", ""]
    out += [f"- **{k}**: {v}" for k, v in facts]
    for heading, (header, body) in tables:
        out += ["", f"## {heading}", "", _md_table(header, body)]
    out += ["", "## Plots", ""]
    out += [f"![{stem.replace('_', ' ')}]({stem}.png)" for stem in plots]
    out += ["", "## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(out)


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.plots { display: flex; flex-wrap: wrap; gap: 1em; }
.plots svg { max-width: 100%; height: auto; }
code { background: #f3f3f3; padding: 0 0.2em; }
"""


def _inline_svg(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        svg = f.read()
    svg = svg[svg.index("<svg"):]  # drop the XML declaration and doctype
    return re.sub(r"<metadata>.*?</metadata>\s*", "", svg, flags=re.DOTALL)


def _md_inline(text: str) -> str:
    return re.sub(r"`([^`]*)`", r"<code>\1</code>", html.escape(text))


def _render_html(facts, tables, svg_paths: list[str], notes: list[str]) -> str:
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           "<title>ponder eval report</title>", f"<style>{_CSS}</style>", "</head>", "<body>",
           "<h1>ponder eval report</h1>", "<ul>"]
    out += [f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in facts]
    out.append("</ul>")
    for heading, (header, body) in tables:
        out += [f"<h2>{html.escape(heading)}</h2>", _html_table(header, body)]
    out += ["<h2>Plots</h2>", '<div class="plots">']
    out += [f"<figure>{_inline_svg(p)}</figure>" for p in svg_paths]
    out += ["</div>", "<h2>Notes</h2>", "<ul>"]
    out += [f"<li>{_md_inline(n)}</li>" for n in notes]
    out += ["</ul>", "</body>", "</html>", ""]
    return "\n".join(out)


def _write_text(path: str, text: str) -> None:
    # Write then rename, so a reader never sees half a report while a run redraws it.
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def write_report(out_dir: str | os.PathLike, records: list[dict] | None = None) -> dict[str, str]:
    """Write ``report.md``, ``report.html`` and the plots (PNG and SVG) into ``out_dir``.

    ``records`` default to those of ``out_dir/records.jsonl``. Returns the paths written, keyed
    by file name.
    """
    out_dir = os.fspath(out_dir)
    if records is None:
        records = read_records(out_dir)
    if not records:
        raise ValueError(f"{out_dir}: no records to report")
    os.makedirs(out_dir, exist_ok=True)
    rows = summarize(records)
    facts = _header_facts(records)
    title = _title(records)
    written: dict[str, str] = {}
    plotters = (plot_accuracy_vs_budget, plot_accuracy_vs_tokens)
    for stem, plot in zip(PLOT_STEMS, plotters, strict=True):
        for path in plot(rows, os.path.join(out_dir, stem), title=title):
            written[os.path.basename(path)] = path
    tables = [("Budgets", _budget_table(rows)),
              ("Accuracy and cost", main_table(rows)),
              ("Selections and pass@k (%)", selection_table(rows))]
    md_path = os.path.join(out_dir, "report.md")
    _write_text(md_path, _render_md(facts, tables, list(PLOT_STEMS), _notes(rows)))
    html_path = os.path.join(out_dir, "report.html")
    svgs = [written[f"{stem}.svg"] for stem in PLOT_STEMS]
    _write_text(html_path, _render_html(facts, tables, svgs, _notes(rows)))
    written["report.md"] = md_path
    written["report.html"] = html_path
    return written
