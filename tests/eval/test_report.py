"""The eval report, regenerated from a JSONL of synthetic records alone."""

import json
import math
import os
import re

import pytest

from ponder.eval import report

SEEDS = (0, 1, 2)
PROBLEMS = 4

# Per (strategy, budget): for each seed, which of the 4 problems the strategy answered right.
OUTCOMES = {
    ("mcts", 2): [[1, 0, 0, 0], [0, 0, 1, 0], [1, 1, 0, 0]],
    ("custom", 1): [[0, 0, 0, 0], [1, 1, 1, 1], [0, 1, 0, 1]],
    ("bon", 4): [[1, 1, 0, 1], [1, 0, 0, 1], [1, 1, 1, 1]],
    ("bon", 1): [[1, 0, 0, 0], [0, 0, 0, 1], [1, 1, 0, 0]],
    ("beam", 4): [[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1]],
    ("beam", 1): [[0, 1, 0, 1], [0, 1, 0, 1], [0, 1, 0, 1]],
}
# The one failed record: the search raised, so it counts as wrong whatever `correct` says.
FAILED = ("beam", 4, 1, 2)  # strategy, budget, seed, problem: answered right, then failed

# Candidates of problem 0 in every record: one right answer "12" whose steps are all fairly
# good, two wrong "13"s with a bad first step and a great last one. Under search-and-learn's
# rules only naive@min (0.9 > 0.5) and naive@prod (0.81 > 0.475) pick the right one:
# naive@last picks 0.95, weighted sums are 0.9 < 1.9 (last), 0.9 < 1.0 (min), 0.81 < 0.95
# (prod), and "13" is the majority.
MIXED = [
    {"answer": "12", "scores": [0.9, 0.9], "correct": True, "tokens": 30, "sample": 0},
    {"answer": "13", "scores": [0.5, 0.95], "correct": False, "tokens": 31, "sample": 1},
    {"answer": "13", "scores": [0.5, 0.95], "correct": False, "tokens": 32, "sample": 2},
]
MIXED_SELECTED = {"naive@last": 0, "naive@min": 1, "naive@prod": 1, "weighted@last": 0,
                  "weighted@min": 0, "weighted@prod": 0, "maj": 0}
MIXED_PASS = {"pass@1": 1 / 3, "pass@n": 1.0}
RIGHT = [
    {"answer": "12", "scores": [0.9, 0.8], "correct": True, "tokens": 20, "sample": 0},
    {"answer": "12.0", "scores": [0.7, 0.9], "correct": True, "tokens": 21, "sample": 1},
]
WRONG = [{"answer": "13", "scores": [0.2], "correct": False, "tokens": 9, "sample": 0}]


def costs(budget, seed, problem):
    return {"tokens_generated": 100 * budget + 7 * problem + seed,
            "tokens_prefilled": 50 + problem, "prm_tokens": 10 * budget, "score_calls": budget,
            "forward_passes": 3 * budget + seed, "seconds": 0.25 * budget + 0.01 * problem,
            "peak_kv_blocks": 2 + budget}


def make_records():
    records = []
    for (strategy, budget), per_seed in OUTCOMES.items():
        for seed, row in zip(SEEDS, per_seed, strict=True):
            for p, ok in enumerate(row):
                failed = (strategy, budget, seed, p) == FAILED
                cands = MIXED if p == 0 else (RIGHT if ok else WRONG)
                records.append({
                    "key": f"{p}|{strategy}|{budget}|{seed}", "problem_id": str(p),
                    "question": f"q{p}", "truth": "12", "strategy": strategy, "budget": budget,
                    "seed": seed,
                    "params": {"n": budget, "aggregation": "last" if strategy != "beam" else "min"},
                    "verifier": "equations", "model": "toy-model", "config_hash": "abc123",
                    "answer": "" if failed else ("12" if ok else "13"), "correct": bool(ok),
                    "solution": "...", "candidates": [] if failed else cands,
                    **costs(budget, seed, p), "rounds": 1,
                    "subsampled_from": 4 if (strategy, budget) == ("bon", 1) else None,
                    "error": "RuntimeError: boom" if failed else None,
                })
    return records


def write_jsonl(path, records):
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


@pytest.fixture
def run_dir(tmp_path):
    write_jsonl(tmp_path / "records.jsonl", make_records())
    return tmp_path


def expected_row(strategy, budget):
    """The row computed by hand from OUTCOMES, independently of the report's code."""

    def value(key, seed, p, ok):
        if (strategy, budget, seed, p) == FAILED:
            return 0.0
        if p == 0:
            return {"correct": ok, **MIXED_SELECTED, **MIXED_PASS}[key]
        return float(ok)

    per_seed = OUTCOMES[strategy, budget]

    def seed_means(key):
        return [sum(value(key, s, p, ok) for p, ok in enumerate(row)) / PROBLEMS
                for s, row in zip(SEEDS, per_seed, strict=True)]

    accs = seed_means("correct")
    mean = sum(accs) / len(accs)
    sd = math.sqrt(sum((a - mean) ** 2 for a in accs) / (len(accs) - 1))
    exp = {"accuracy": mean, "accuracy_se": sd / math.sqrt(len(accs))}
    # Every seed has all problems, so the mean over seeds is the mean over records.
    for key in (*MIXED_SELECTED, *MIXED_PASS):
        exp[key] = sum(seed_means(key)) / len(SEEDS)
    n_records = len(SEEDS) * PROBLEMS
    for key in report.COST_KEYS:
        exp[key] = sum(costs(budget, s, p)[key] for s in SEEDS
                       for p in range(PROBLEMS)) / n_records
    return exp


def test_summary_equals_hand_computed(run_dir):
    rows = report.summarize(report.read_records(run_dir))
    assert [(r["strategy"], r["budget"]) for r in rows] == [
        ("bon", 1), ("bon", 4), ("beam", 1), ("beam", 4), ("mcts", 2), ("custom", 1)]
    for row in rows:
        exp = expected_row(row["strategy"], row["budget"])
        for key, value in exp.items():
            assert row[key] == pytest.approx(value, abs=1e-12), (row["strategy"], key)
        assert row["problems"] == PROBLEMS and row["seeds"] == 3 and row["records"] == 12
        assert row["errors"] == (1 if (row["strategy"], row["budget"]) == ("beam", 4) else 0)
        assert row["subsampled"] == ((row["strategy"], row["budget"]) == ("bon", 1))
        assert row["verifier"] == "equations" and row["model"] == "toy-model"
        assert row["aggregation"] == ("min" if row["strategy"] == "beam" else "last")
    # Two spelled out: bon B=4 is right on 3, 2 and 4 of 4 problems over the seeds.
    bon4 = rows[1]
    assert bon4["accuracy"] == pytest.approx(0.75)
    assert bon4["accuracy_se"] == pytest.approx(0.25 / math.sqrt(3))
    # beam B=4 is right on 4, 2 (one right record failed) and 4 of 4.
    assert rows[3]["accuracy"] == pytest.approx(10 / 12)
    assert rows[3]["naive@min"] == pytest.approx(10 / 12)
    assert rows[3]["maj"] == pytest.approx((3 + 1 + 3) / 12)


def test_one_seed_has_zero_standard_error():
    records = [r for r in make_records() if r["seed"] == 0]
    rows = report.summarize(records)
    assert all(r["accuracy_se"] == 0.0 and r["seeds"] == 1 for r in rows)
    assert rows[1]["accuracy"] == pytest.approx(0.75)


def test_report_regenerated_from_jsonl_alone(run_dir):
    written = report.write_report(run_dir)
    names = {"report.md", "report.html", "accuracy_vs_budget.png", "accuracy_vs_budget.svg",
             "accuracy_vs_tokens.png", "accuracy_vs_tokens.svg"}
    assert set(written) == names
    for name in names:
        assert written[name] == os.path.join(run_dir, name)
        assert os.path.getsize(written[name]) > 0
    for stem in report.PLOT_STEMS:
        with open(run_dir / f"{stem}.png", "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
        assert "<svg" in (run_dir / f"{stem}.svg").read_text()

    md = (run_dir / "report.md").read_text()
    # bon B=4: 75.0 ± 14.4; beam B=4: 83.3 ± 16.7; bon B=1 is subsampled from B=4.
    assert "| bon | 4 | 75.0 ± 14.4 | last |" in md
    assert "| beam | 4 | 83.3 ± 16.7 | min | 83.3 |" in md
    assert "| bon | 1† | 33.3 ± 8.3 |" in md
    assert "| mcts | 2 | 33.3 ± 8.3 |" in md
    assert "| custom | 1 | 50.0 ± 28.9 |" in md
    for strategy in ("bon", "beam", "mcts"):
        assert report.BUDGET_MEANING[strategy] in md
    assert "toy-model" in md and "equations" in md and "4 problems" in md
    assert "![accuracy vs budget](accuracy_vs_budget.png)" in md
    assert "†" in md.split("## Notes")[1]
    # The selection table: bon B=4 picks right with naive@min on problem 0 in every seed.
    sel = next(line for line in md.splitlines() if line.startswith("| bon | 4 | 50.0 |"))
    assert sel.split(" | ")[3] == "75.0"  # naive@min

    page = (run_dir / "report.html").read_text()
    assert page.count("<svg") == 2
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", page)
    assert "<script" not in page and "<link" not in page and "<img" not in page
    assert "75.0 ± 14.4" in page and "83.3 ± 16.7" in page
    assert report.BUDGET_MEANING["bon"] in page


def test_redraw_is_byte_identical(run_dir):
    report.write_report(run_dir)
    first = {n: (run_dir / n).read_bytes() for n in ("report.md", "report.html")}
    report.write_report(run_dir)
    assert first == {n: (run_dir / n).read_bytes() for n in first}


def test_truncated_last_line_is_skipped(run_dir):
    path = run_dir / "records.jsonl"
    full = make_records()
    with open(path, "a") as f:
        f.write(json.dumps(full[0])[:37])  # killed mid-write: no newline
    with pytest.warns(UserWarning, match="truncated last line"):
        records = report.read_records(path)
    assert records == full
    with pytest.warns(UserWarning):
        assert "report.md" in report.write_report(run_dir)


@pytest.mark.parametrize("where", ["middle", "last with its newline"])
def test_corrupt_line_names_file_and_line(run_dir, where):
    path = run_dir / "records.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    if where == "middle":
        lines[2] = lines[2][:40] + "\n"
        lineno = 3
    else:
        lines.append('{"key": "x", "strategy": \n')
        lineno = len(lines)
    path.write_text("".join(lines))
    with pytest.raises(ValueError, match=re.escape(f"{path}, line {lineno}:")):
        report.read_records(run_dir)


def test_bad_records_are_clear_errors(tmp_path):
    path = tmp_path / "records.jsonl"
    path.write_text('{"problem_id": "0", "strategy": "bon", "budget": 1, "seed": 0}\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"line 2: expected a JSON object"):
        report.read_records(path)
    path.write_text('{"problem_id": "0", "strategy": "bon", "seed": 0}\n')
    with pytest.raises(ValueError, match=r"line 1: record lacks budget"):
        report.read_records(path)
    path.write_text("\n")
    with pytest.raises(ValueError, match="no records"):
        report.write_report(tmp_path)


def test_errors_count_as_incorrect():
    rec = dict(make_records()[0], correct=True, error="ValueError: x", candidates=[])
    (row,) = report.summarize([rec])
    assert row["accuracy"] == 0.0 and row["errors"] == 1
    assert all(row[k] == 0.0 for k in (*report.SELECTION_KEYS, "pass@1", "pass@n"))


def test_plots_take_rows_with_only_the_plotted_keys(tmp_path):
    # The demo's rows: strategy, budget, accuracy, tokens; no standard errors.
    rows = [{"strategy": "greedy", "budget": 1, "accuracy": 0.25, "tokens_generated": 40.0},
            {"strategy": "pf", "budget": 4, "accuracy": 0.33, "tokens_generated": 300.0},
            {"strategy": "pf", "budget": 8, "accuracy": 0.5, "tokens_generated": 610.0},
            {"strategy": "bon", "budget": 16, "accuracy": 0.42, "tokens_generated": 900.0}]
    paths = report.plot_accuracy_vs_tokens(rows, tmp_path / "demo", title="demo")
    assert paths == [str(tmp_path / "demo.png"), str(tmp_path / "demo.svg")]
    assert all(os.path.getsize(p) > 0 for p in paths)
    paths = report.plot_accuracy_vs_budget(rows, tmp_path / "budget")
    assert all(os.path.getsize(p) > 0 for p in paths)
    with pytest.raises(ValueError, match=r"rows\[1\] lacks tokens_generated"):
        report.plot_accuracy_vs_tokens([rows[0], {"strategy": "x", "budget": 2,
                                                  "accuracy": 0.1}], tmp_path / "bad")
    with pytest.raises(ValueError, match="budget must be positive"):
        report.plot_accuracy_vs_budget([dict(rows[0], budget=0)], tmp_path / "bad")
