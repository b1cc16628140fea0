"""`ponder eval` end to end on a tiny random policy: a run killed mid-way and rerun gives the
records of an uninterrupted run, subsampled best-of-N / DVTS budgets equal real reruns, a
directory keeps one configuration, bad configurations are errors naming the field, the report
is redrawn from the JSONL alone, and a search that fails is a record with its error."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

import ponder.eval
from ponder.cli import main as ponder_main
from ponder.eval import EvalConfig
from ponder.eval.data import DatasetError
from ponder.eval.records import ConfigMismatch
from ponder.eval.report import main_table, selection_table

# Short searches: the tiny policy's steps end at max_step_tokens.
FAST = {"all": {"max_steps": 3, "max_step_tokens": 8}}
SHORTER = {"all": {"max_steps": 2, "max_step_tokens": 4}}  # for the one-at-a-time runs
PROBLEMS = [
    {"problem": "Tom has 3 apples and buys 4 more. How many apples does he have?", "answer": 7},
    {"problem": "A box holds 6 pens. How many pens are in 5 boxes?", "answer": "30"},
    {"problem": "Sara had 20 dollars and spent 8. How much is left?", "answer": 12},
    {"problem": "What is 9 + 16 - 5?", "answer": 20},
]
# Verifiers imported by MODULE:FUNCTION, in the test process and in the `ponder eval`
# subprocesses alike (PYTHONPATH).
HELPERS = "ponder_eval_study_helpers"
HELPERS_SRC = '''
import os
import time


def varied(question, steps):
    """Scores that differ from step to step, a pure function of the text (so batching cannot
    change them). With STUDY_STALL_DIR set: once that run's records.jsonl has a record, touch
    DIR/stalled and hang, so the test kills the run with records written and a search in
    flight."""
    out = os.environ.get("STUDY_STALL_DIR")
    records = os.path.join(out or "", "records.jsonl")
    if out and os.path.isfile(records) and os.path.getsize(records) > 0:
        open(os.path.join(out, "stalled"), "w").close()
        time.sleep(600)
    return [(sum(map(ord, s)) % 101) / 100 for s in steps]


def explode(question, steps):
    if "EXPLODE" in question:
        raise RuntimeError("verifier failure on purpose")
    return varied(question, steps)
'''


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def read_lines(out_dir) -> list[str]:
    with open(os.path.join(out_dir, "records.jsonl"), encoding="utf-8") as f:
        return f.read().splitlines()


def records_by_key(out_dir) -> dict[str, dict]:
    recs = [json.loads(line) for line in read_lines(out_dir)]
    by_key = {r["key"]: r for r in recs}
    assert len(by_key) == len(recs), "a key was written twice"
    return by_key


# What a record measures of the engine it ran on, not of its search: time, and the prompt
# tokens the prefix cache, shared by all searches of a run, did not already hold.
ENGINE_STATE = ("seconds", "tokens_prefilled")


def searched(recs: dict[str, dict]) -> dict[str, dict]:
    return {k: {f: v for f, v in r.items() if f not in ENGINE_STATE} for k, r in recs.items()}


def expected_keys(problem_ids, strategies, budgets, seeds) -> set[str]:
    return {f"{p}|{s}|{b}|{seed}" for p in problem_ids for s in strategies for b in budgets
            for seed in seeds}


@pytest.fixture(scope="module")
def helpers(tmp_path_factory):
    """The helper module's directory, on sys.path for this module's tests."""
    d = tmp_path_factory.mktemp("helpers")
    (d / f"{HELPERS}.py").write_text(HELPERS_SRC)
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(d))
        yield str(d)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("data") / "problems.jsonl", PROBLEMS)


@pytest.fixture(scope="module")
def study(tiny_policy, data, tmp_path_factory):
    """One small study (3 problems x 2 seeds, bon and beam at budgets 1, 2): its keywords,
    directory and returned rows. Tests that write into a directory copy it first."""
    kw = dict(model=tiny_policy, data=data, strategies="bon,beam", budgets=[1, 2],
              seeds=[0, 1], limit=3, verifier="equations", params=FAST, quiet=True)
    out = str(tmp_path_factory.mktemp("study") / "out")
    rows = ponder.eval.run(out=out, **kw)
    return kw, out, rows


# ------------------------------------------------------------------ resume


def test_killed_run_resumes_to_the_uninterrupted_records(tiny_policy, data, helpers, tmp_path):
    """`ponder eval --concurrency 1` killed (SIGKILL, then a torn line appended) with some
    records written and a search in flight, rerun to the end: the uninterrupted run's records
    (at --concurrency 8), each once, the ones written before the kill untouched."""
    out, ref = str(tmp_path / "killed"), str(tmp_path / "ref")
    strategies, budgets = ["bon", "beam"], [1, 2]
    cmd = [sys.executable, "-m", "ponder.cli", "eval", tiny_policy, "--data", data,
           "--out", out, "--strategies", ",".join(strategies),
           "--budgets", ",".join(map(str, budgets)), "--verifier", f"{HELPERS}:varied",
           *(a for k, v in SHORTER["all"].items() for a in ("--param", f"all.{k}={v}")),
           "--concurrency", "1", "--quiet"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (helpers, os.environ.get("PYTHONPATH")) if p)}
    stalled = os.path.join(out, "stalled")
    proc = subprocess.Popen(cmd, env={**env, "STUDY_STALL_DIR": out},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not os.path.exists(stalled):
            if proc.poll() is not None:
                pytest.fail(f"the run ended before it was killed:\n{proc.stderr.read().decode()}")
            assert time.monotonic() < deadline, "the run never wrote a record"
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    want = expected_keys(range(len(PROBLEMS)), strategies, budgets, [0])
    before = read_lines(out)
    assert 0 < len(before) < len(want)
    # A kill in the middle of a write leaves a torn last line.
    with open(os.path.join(out, "records.jsonl"), "a", encoding="utf-8") as f:
        f.write('{"key": "3|beam|2|0", "problem_id": "3", "question": "What is 9')

    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    after = read_lines(out)
    assert after[:len(before)] == before  # finished records kept as they were, torn line cut
    resumed = records_by_key(out)
    assert set(resumed) == want

    # Another batching (8 searches at once) gives the same records.
    ponder.eval.run(model=tiny_policy, data=data, out=ref, strategies=strategies,
                    budgets=budgets, verifier=f"{HELPERS}:varied", params=SHORTER,
                    concurrency=8, quiet=True)
    uninterrupted = records_by_key(ref)
    assert searched(resumed) == searched(uninterrupted)
    assert all(r["error"] is None and r["candidates"] for r in resumed.values())


# ------------------------------------------------------------------ subsampled budgets


def test_subsampled_budgets_equal_real_reruns(tiny_policy, data, tmp_path):
    """Best-of-N and DVTS run once at B=8; their smaller budgets take its first candidates.
    A run at that budget alone must give the same candidates and answer (DVTS: at multiples
    of its width 4, where a rerun has the same subtrees)."""
    kw = dict(model=tiny_policy, data=data, seeds=[1], verifier="confidence", params=FAST,
              quiet=True)
    ponder.eval.run(out=str(tmp_path / "all"), strategies="bon,dvts", budgets=[1, 2, 4, 8],
                    **kw)
    full = records_by_key(tmp_path / "all")

    def fields(cands):
        return [{k: c[k] for k in ("answer", "scores", "tokens", "sample", "text", "correct")}
                for c in cands]

    compared = set()
    for budget, strategies in ((1, ["bon"]), (2, ["bon"]), (4, ["bon", "dvts"])):
        out = tmp_path / f"b{budget}"
        ponder.eval.run(out=str(out), strategies=strategies, budgets=[budget], **kw)
        for key, rerun in records_by_key(out).items():
            sub = full[key]
            assert (sub["subsampled_from"], rerun["subsampled_from"]) == (8, None), key
            assert len(sub["candidates"]) == budget, key
            assert fields(sub["candidates"]) == fields(rerun["candidates"]), key
            for name in ("answer", "solution", "correct", "tokens_generated", "params"):
                assert sub[name] == rerun[name], (key, name)
            compared.add((rerun["strategy"], budget))
    assert compared == {("bon", 1), ("bon", 2), ("bon", 4), ("dvts", 4)}
    # The selection had something to choose between: scores differ within a record.
    assert any(len({tuple(c["scores"]) for c in r["candidates"]}) > 1
               for r in full.values() if r["budget"] == 4)


# ------------------------------------------------------------------ configuration


def test_other_configuration_is_refused_unless_forced(study, tmp_path):
    kw, src, _ = study
    out = str(tmp_path / "out")
    shutil.copytree(src, out)
    before = read_lines(out)
    with open(os.path.join(out, "config.json"), encoding="utf-8") as f:
        config_before = f.read()

    with pytest.raises(ConfigMismatch, match="system_prompt"):
        ponder.eval.run(**{**kw, "out": out, "system_prompt": "Be brief."})
    changed = {"all": FAST["all"], "beam": {"policy_temperature": 0.5}}
    with pytest.raises(ConfigMismatch, match="params of beam"):
        ponder.eval.run(**{**kw, "out": out, "params": changed})
    assert read_lines(out) == before
    with open(os.path.join(out, "config.json"), encoding="utf-8") as f:
        assert f.read() == config_before

    ponder.eval.run(**{**kw, "out": out, "params": changed, "strategies": "beam",
                       "budgets": [1], "force": True})
    after = read_lines(out)
    assert after[:len(before)] == before
    new = [json.loads(line) for line in after[len(before):]]
    assert sorted(r["key"] for r in new) == sorted(
        expected_keys(range(3), ["beam"], [1], [0, 1]))
    assert all(r["params"]["policy_temperature"] == 0.5 for r in new)
    old_hash = {json.loads(line)["config_hash"] for line in before
                if json.loads(line)["strategy"] == "beam"}
    assert len(old_hash) == 1 and all(r["config_hash"] not in old_hash for r in new)


def test_extending_budgets_seeds_and_limit_runs_only_the_new_records(study, tmp_path):
    kw, src, _ = study
    out = str(tmp_path / "out")
    shutil.copytree(src, out)
    before = read_lines(out)
    old = {json.loads(line)["key"] for line in before}
    assert old == expected_keys(range(3), ["bon", "beam"], [1, 2], [0, 1])

    rows = ponder.eval.run(**{**kw, "out": out, "budgets": [1, 2, 4], "seeds": [0, 1, 2],
                              "limit": 4})
    after = read_lines(out)
    assert after[:len(before)] == before
    new = [json.loads(line)["key"] for line in after[len(before):]]
    want = expected_keys(range(4), ["bon", "beam"], [1, 2, 4], [0, 1, 2])
    assert len(new) == len(set(new)) and set(new) == want - old
    assert {(r["strategy"], r["budget"]): r["records"] for r in rows} == {
        (s, b): 12 for s in ("bon", "beam") for b in (1, 2, 4)}


BAD_CONFIGS = [
    ({"strategies": "bon,greedy"}, r"strategies: unknown strategy 'greedy'"),
    ({"budgets": [0, 2]}, r"budgets must be >= 1, got 0"),
    ({"seeds": [-1]}, r"seeds must be >= 0"),
    ({"strategies": "beam", "budgets": [2, 6]},
     r"strategy beam at budget 6: n \(6\) must be a multiple of width \(4\)"),
    ({"strategies": "beam", "params": {"beam": {"widht": 2}}},
     r"params\['beam'\]: BeamSearch has no field 'widht'"),
    ({"strategies": "bon", "params": {"bon": {"n": 2}}}, r"'n' is set by the budget"),
    ({"params": {"bean": {"width": 2}}}, r"params: unknown strategy 'bean'"),
    ({"verifier": "prm"}, r"verifier 'prm' needs --prm"),
    ({"verifier": "oracle"}, r"verifier must be one of .*got 'oracle'"),
    ({"concurrency": 0}, r"concurrency"),
]


@pytest.mark.parametrize("bad, message", BAD_CONFIGS, ids=[str(b) for b, _ in BAD_CONFIGS])
def test_bad_configuration_names_the_field(bad, message, tmp_path):
    kw = dict(model="m", data="d.jsonl", out=str(tmp_path / "out"))
    with pytest.raises(ValueError, match=message):
        EvalConfig(**{**kw, **bad})
    assert not os.path.exists(tmp_path / "out")


def test_bad_configuration_on_the_command_line(capsys, tmp_path):
    rc = ponder_main(["eval", "m", "--data", "d.jsonl", "--out", str(tmp_path / "out"),
                      "--strategies", "beam", "--budgets", "4,6"])
    assert rc == 2
    assert "strategy beam at budget 6" in capsys.readouterr().err


def test_unimportable_verifier_fails_before_the_directory_holds_it(study, tmp_path):
    kw, _, _ = study
    out = str(tmp_path / "out")
    with pytest.raises(ValueError, match=r"nomodule:func.*cannot import module 'nomodule'"):
        ponder.eval.run(**{**kw, "out": out, "verifier": "nomodule:func"})
    # Nothing ran, so the corrected command may use the same directory.
    rows = ponder.eval.run(**{**kw, "out": out, "strategies": "beam", "budgets": [1],
                              "limit": 1})
    assert [r["records"] for r in rows] == [2]


def test_dataset_row_missing_the_answer_names_file_and_row(tmp_path):
    data = write_jsonl(tmp_path / "bad.jsonl", [PROBLEMS[0], {"problem": "What is 2 + 2?"}])
    out = tmp_path / "out"
    with pytest.raises(DatasetError, match=r"bad\.jsonl, line 2: missing field 'answer'"):
        ponder.eval.run(model="m", data=data, out=str(out), verifier="equations")
    assert not out.exists()


# ------------------------------------------------------------------ results and report


def test_run_returns_one_row_per_strategy_and_budget(study):
    kw, out, rows = study
    assert [(r["strategy"], r["budget"]) for r in rows] == [
        ("bon", 1), ("bon", 2), ("beam", 1), ("beam", 2)]
    recs = records_by_key(out)
    assert set(recs) == expected_keys(range(3), ["bon", "beam"], [1, 2], [0, 1])
    for row in rows:
        mine = [r for r in recs.values()
                if (r["strategy"], r["budget"]) == (row["strategy"], row["budget"])]
        assert (row["problems"], row["seeds"], row["records"], row["errors"]) == (3, 2, 6, 0)
        assert row["subsampled"] == (row["strategy"] == "bon" and row["budget"] == 1)
        assert row["accuracy"] == pytest.approx(sum(r["correct"] for r in mine) / len(mine))
        assert row["tokens_generated"] == pytest.approx(
            sum(r["tokens_generated"] for r in mine) / len(mine))
        assert all(r["verifier"] == "equations" and r["candidates"] for r in mine)


def md_table(text: str, heading: str) -> list[list[str]]:
    """The body rows of the markdown table under `## heading`, as cells."""
    lines = text.split(f"## {heading}\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
    return [[c.strip() for c in line.strip("|").split(" | ")] for line in lines[2:]]


def test_report_is_redrawn_from_the_records_alone(study, tmp_path):
    _, src, rows = study
    out = tmp_path / "copy"
    out.mkdir()
    shutil.copy(os.path.join(src, "records.jsonl"), out)  # no config.json, no report
    assert ponder_main(["eval", "--report", str(out)]) == 0
    files = ["report.md", "report.html", "accuracy_vs_budget.png", "accuracy_vs_budget.svg",
             "accuracy_vs_tokens.png", "accuracy_vs_tokens.svg"]
    assert all((out / f).stat().st_size > 0 for f in files)
    md = (out / "report.md").read_text(encoding="utf-8")
    assert md_table(md, "Accuracy and cost") == main_table(rows)[1]
    assert md_table(md, "Selections and pass@k (%)") == selection_table(rows)[1]
    assert "<svg" in (out / "report.html").read_text(encoding="utf-8")
    assert ponder.eval.redraw(str(out)) == rows


def test_failed_search_is_a_record_with_its_error(tiny_policy, helpers, tmp_path):
    rows_in = [PROBLEMS[0], {"problem": "EXPLODE: what is 2 + 2?", "answer": 4}, PROBLEMS[1]]
    data = write_jsonl(tmp_path / "p.jsonl", rows_in)
    out = str(tmp_path / "out")
    rows = ponder.eval.run(model=tiny_policy, data=data, out=out, strategies="bon,pf",
                           budgets=[1, 2], verifier=f"{HELPERS}:explode", params=FAST,
                           quiet=True)
    recs = records_by_key(out)
    assert set(recs) == expected_keys(range(3), ["bon", "pf"], [1, 2], [0])
    for r in recs.values():
        if r["problem_id"] == "1":
            assert "verifier failure on purpose" in r["error"], r["key"]
            assert (r["correct"], r["answer"], r["candidates"]) == (False, "", []), r["key"]
        else:
            assert r["error"] is None and r["candidates"], r["key"]
            if r["strategy"] == "bon":  # particles may merge; samples do not
                assert len(r["candidates"]) == r["budget"], r["key"]
    assert [(r["strategy"], r["budget"], r["errors"]) for r in rows] == [
        ("bon", 1, 1), ("bon", 2, 1), ("pf", 1, 1), ("pf", 2, 1)]
