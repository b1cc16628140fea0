"""`ponder demo`'s parts that need no model: its problems, its oracle, its table and plot."""

import json
import os

import pytest

from ponder import demo
from ponder.eval import data


def test_problems_are_a_fixed_draw_of_one_step_problems():
    problems = demo.demo_problems()
    assert len(problems) == demo.NUM_PROBLEMS == len({p.id for p in problems})
    with open(data.resolve_path(demo.DATASET), encoding="utf-8") as f:
        steps = {row["id"]: row["steps"] for row in map(json.loads, f)}
    assert all(steps[p.id] == 1 for p in problems)
    assert demo.demo_problems(4) == problems[:4]  # a prefix: --problems K runs the first K
    assert [p.id for p in demo.demo_problems(seed=1)] != [p.id for p in problems]


def test_oracle_knows_the_answer_and_the_equation_checker_does_not():
    from ponder.eval.verifiers import equation_checker

    q = "What is 3 times 8?"
    verify = demo.oracle_checker({q: "24"})
    right = ["3 x 8 = 24", "The answer is 24."]
    wrong = ["3 x 8 = 24", "The answer is 25."]
    assert verify(q, right) == [1.0, 0.5]
    assert verify(q, wrong) == [1.0, 0.0]
    assert equation_checker(q, wrong) == [1.0, 0.5]  # it cannot tell the wrong answer
    assert verify(q, ["3 x 8 = 25"]) == [0.0]
    assert verify(q, []) == []


ROWS = [dict(strategy="greedy", key="greedy", kind=demo.COMPARED, budget=1, correct=3,
             total=12, tokens=1200, seconds=10.0),
        dict(strategy="best-of-n", key="bon", kind=demo.COMPARED, budget=8, correct=5,
             total=12, tokens=9600, seconds=60.0),
        dict(strategy="PF + PRM (self-verify)", key="pf", kind=demo.PRM, budget=8, correct=0,
             total=12, tokens=9000, seconds=90.0),
        dict(strategy=demo.ORACLE, key="pf", kind=demo.UPPER_BOUND, budget=8, correct=8,
             total=12, tokens=8000, seconds=50.0)]


def test_plot_rows_are_the_compared_rows_per_problem():
    assert demo.plot_rows(ROWS) == [
        dict(strategy="greedy", budget=1, accuracy=0.25, tokens_generated=100.0),
        dict(strategy="bon", budget=8, accuracy=5 / 12, tokens_generated=800.0)]


@pytest.fixture
def fake_run(monkeypatch):
    calls = []

    def run(problems, n, html, *args, **kwargs):
        calls.append(dict(problems=problems, n=n, html=html, **kwargs))
        return [dict(r, total=len(problems)) for r in ROWS]

    monkeypatch.setattr(demo, "run", run)
    return calls


def test_main_prints_the_table_and_writes_the_plot(fake_run, tmp_path, capsys):
    page = tmp_path / "tree.html"
    assert demo.main(["--problems", "12", "--html", str(page), "--no-oracle", "--quiet"]) == 0
    assert fake_run[0]["oracle"] is False and fake_run[0]["quiet"] is True
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "does not know the answers" in out
    # The PRM row and the oracle sit below the compared rows, each under its note.
    order = [next(i for i, line in enumerate(lines) if line.startswith(s))
             for s in ("greedy", "best-of-n", "(not compared", "PF + PRM", "(not a result",
                       demo.ORACLE)]
    assert order == sorted(order)
    assert any(line.split()[:2] == ["best-of-n", "5/12"] for line in lines)
    stem = tmp_path / "ponder-demo-tokens"
    assert f"{stem}.png and {stem}.svg" in out
    assert os.path.getsize(f"{stem}.png") > 0 and os.path.getsize(f"{stem}.svg") > 0


def test_main_plot_option(fake_run, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert demo.main(["--html", "", "--plot", "none", "--problems", "2"]) == 0
    assert fake_run[0]["html"] is None and len(fake_run[0]["problems"]) == 2
    out = capsys.readouterr().out
    assert "written" not in out and os.listdir(tmp_path) == []
    assert demo.main(["--plot", "p"]) == 0
    assert sorted(os.listdir(tmp_path)) == ["p.png", "p.svg"]


@pytest.mark.parametrize("argv", [["--n", "0"], ["--problems", "0"]])
def test_main_rejects_bad_sizes(argv, capsys):
    with pytest.raises(SystemExit):
        demo.main(argv)
    assert "must be >= 1" in capsys.readouterr().err
