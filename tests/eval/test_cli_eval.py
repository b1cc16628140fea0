"""`ponder eval` on the command line: a YAML configuration with command-line overrides,
--param, --report, and errors as exit code 2 with a message naming the option."""

import json
import os

import pytest

from ponder.cli import main


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "d.jsonl"
    rows = [{"problem": "What is 7 times 8?", "answer": 56},
            {"problem": "What is 2 plus 2?", "answer": "4"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_yaml_config_with_overrides_and_report(tiny_policy, data, tmp_path, capsys):
    out = tmp_path / "out"
    cfg = tmp_path / "study.yaml"
    cfg.write_text(f"model: {tiny_policy}\ndata: {data}\nout: {out}\nstrategies: bon,pf\n"
                   f"budgets: [1, 2]\nverifier: equations\nquiet: true\n"
                   f"params:\n  all: {{max_steps: 2, max_step_tokens: 4}}\n"
                   f"  pf: {{temperature: 0.5}}\n")
    # The command line wins over the file: one seed list, and a param added.
    argv = ["eval", "--config", str(cfg), "--seeds", "3", "--param", "bon.aggregation=min"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "report:" in printed and "pf" in printed
    recs = [json.loads(line) for line in open(out / "records.jsonl")]
    assert len(recs) == 2 * 2 * 2  # problems x strategies x budgets, one seed
    assert {r["seed"] for r in recs} == {3}
    assert {r["params"]["aggregation"] for r in recs if r["strategy"] == "bon"} == {"min"}
    assert {r["params"]["temperature"] for r in recs if r["strategy"] == "pf"} == {0.5}
    assert all(r["params"]["max_step_tokens"] == 4 for r in recs)
    stored = json.load(open(out / "config.json"))
    assert stored["strategies"]["pf"]["temperature"] == 0.5
    # --report redraws from the JSONL alone.
    for name in ("report.md", "report.html", "accuracy_vs_budget.png"):
        os.remove(out / name)
    assert main(["eval", "--report", str(out)]) == 0
    assert (out / "report.md").exists() and (out / "accuracy_vs_budget.png").exists()


@pytest.mark.parametrize("args,message", [
    (["--strategies", "bon,greedy"], "unknown strategy 'greedy'"),
    (["--budgets", "0,4"], "budgets must be >= 1"),
    (["--strategies", "beam", "--budgets", "6"], "multiple of width"),
    (["--param", "beam.nope=1", "--strategies", "beam"], "no field 'nope'"),
    (["--param", "width=2"], "STRATEGY.FIELD=VALUE"),
    (["--verifier", "prm"], "needs --prm"),
    (["--param", "bon.n=3"], "set by the budget"),
])
def test_bad_options_exit_2_naming_them(tiny_policy, data, tmp_path, capsys, args, message):
    rc = main(["eval", tiny_policy, "--data", data, "--out", str(tmp_path / "o"), *args])
    assert rc == 2
    assert message in capsys.readouterr().err


def test_missing_required_options(capsys):
    assert main(["eval", "--data", "arith"]) == 2
    assert "MODEL" in capsys.readouterr().err
