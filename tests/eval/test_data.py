import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from ponder.eval import make_arith
from ponder.eval.data import BUNDLED, DatasetError, Problem, load_problems, resolve_path

ROWS = [
    {"problem": "What is 1 + 1?", "answer": 2},
    {"problem": "What is half of one?", "answer": "\\frac{1}{2}"},
    {"problem": "What is 5 / 2?", "answer": 2.5},
    {"problem": "What is 6 / 2?", "answer": 3.0},
]
EXPECTED = [Problem("0", "What is 1 + 1?", "2"), Problem("1", "What is half of one?",
                                                          "\\frac{1}{2}"),
            Problem("2", "What is 5 / 2?", "2.5"), Problem("3", "What is 6 / 2?", "3")]


def write_jsonl(path: Path, rows, blank_lines: bool = False) -> Path:
    lines = [json.dumps(r) for r in rows]
    sep = "\n\n" if blank_lines else "\n"
    path.write_text(sep.join(lines) + "\n")
    return path


def write_csv(path: Path, rows) -> Path:
    import csv

    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


# --- formats ----------------------------------------------------------------------------

def test_jsonl_skips_blank_lines(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ROWS, blank_lines=True)
    assert load_problems(path) == EXPECTED
    assert load_problems(str(path)) == EXPECTED


@pytest.mark.parametrize("wrap", [None, "data", "rows", "test"])
def test_json_list_or_object_with_one_list(tmp_path, wrap):
    path = tmp_path / "d.json"
    path.write_text(json.dumps(ROWS if wrap is None else {"version": 1, wrap: ROWS}))
    assert load_problems(path) == EXPECTED


def test_json_holding_json_lines(tmp_path):
    path = write_jsonl(tmp_path / "d.json", ROWS)
    assert load_problems(path) == EXPECTED


def test_csv(tmp_path):
    path = write_csv(tmp_path / "d.csv", ROWS)
    # CSV holds text: 2.5 and 3.0 arrive as the strings written.
    assert [p.answer for p in load_problems(path)] == ["2", "\\frac{1}{2}", "2.5", "3.0"]
    assert [p.id for p in load_problems(path)] == ["0", "1", "2", "3"]


def test_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = [{"problem": r["problem"], "answer": str(r["answer"]), "level": i}
            for i, r in enumerate(ROWS)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    got = load_problems(tmp_path / "d.parquet")
    assert [p.question for p in got] == [r["problem"] for r in ROWS]
    ints = [{"problem": "q1", "answer": 7}, {"problem": "q2", "answer": 8}]
    pq.write_table(pa.Table.from_pylist(ints), tmp_path / "i.parquet")
    assert [p.answer for p in load_problems(tmp_path / "i.parquet")] == ["7", "8"]


def _math500_like(n: int, offset: int = 0):
    return {"problem": [f"problem {i}" for i in range(offset, offset + n)],
            "answer": [str(i * i) for i in range(offset, offset + n)],
            "unique_id": [f"test/algebra/{i}.json" for i in range(offset, offset + n)]}


def test_save_to_disk_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict(_math500_like(3)).save_to_disk(str(tmp_path / "ds"))
    got = load_problems(tmp_path / "ds")
    assert got == [Problem(f"test/algebra/{i}.json", f"problem {i}", str(i * i))
                   for i in range(3)]


def test_save_to_disk_dataset_dict_takes_test_else_only_split(tmp_path):
    datasets = pytest.importorskip("datasets")
    train, test = (datasets.Dataset.from_dict(_math500_like(2, off)) for off in (0, 10))
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(tmp_path / "both"))
    assert [p.question for p in load_problems(tmp_path / "both")] == ["problem 10",
                                                                      "problem 11"]
    datasets.DatasetDict({"train": train}).save_to_disk(str(tmp_path / "one"))
    assert [p.question for p in load_problems(tmp_path / "one")] == ["problem 0", "problem 1"]
    datasets.DatasetDict({"train": train, "validation": test}).save_to_disk(
        str(tmp_path / "two"))
    with pytest.raises(DatasetError, match=r"two: a DatasetDict without a 'test' split; "
                                           r"splits: train, validation"):
        load_problems(tmp_path / "two")


def test_save_to_disk_dataset_bad_row_names_row(tmp_path):
    datasets = pytest.importorskip("datasets")
    data = {"problem": ["a", "b", ""], "answer": ["1", "2", "3"]}
    datasets.Dataset.from_dict(data).save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(DatasetError, match=r"ds, row 2: field 'problem' must be a non-empty"):
        load_problems(tmp_path / "ds")


def test_directory_not_saved_by_datasets(tmp_path):
    (tmp_path / "plain").mkdir()
    with pytest.raises(DatasetError, match=r"plain: a directory, but not one written by "):
        load_problems(tmp_path / "plain")


# --- fields and ids ---------------------------------------------------------------------

def test_field_names(tmp_path):
    rows = [{"question": "q0", "solution": "4", "key": "k0"},
            {"question": "q1", "solution": "5", "key": 17}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    got = load_problems(path, question_field="question", answer_field="solution",
                        id_field="key")
    assert got == [Problem("k0", "q0", "4"), Problem("17", "q1", "5")]
    with pytest.raises(DatasetError, match=r"line 1: missing field 'problem' \(the row's "
                                           r"fields: 'question', 'solution', 'key'; set "
                                           r"question_field"):
        load_problems(path)


@pytest.mark.parametrize("extra, ids", [
    ({}, ["0", "1"]),
    ({"id": ["a", "b"]}, ["a", "b"]),
    ({"id": [10, 11]}, ["10", "11"]),
    ({"unique_id": ["u0", "u1"], "id": ["a", "b"]}, ["u0", "u1"]),
])
def test_default_ids(tmp_path, extra, ids):
    rows = [{"problem": f"q{i}", "answer": i} | {k: v[i] for k, v in extra.items()}
            for i in range(2)]
    assert [p.id for p in load_problems(write_jsonl(tmp_path / "d.jsonl", rows))] == ids


def test_row_index_ids_skip_blank_lines_and_survive_shuffle(tmp_path):
    rows = [{"problem": f"q{i}", "answer": i} for i in range(20)]
    path = write_jsonl(tmp_path / "d.jsonl", rows, blank_lines=True)
    for p in load_problems(path, shuffle_seed=3):
        assert p.question == f"q{p.id}" and p.answer == p.id


def test_duplicate_ids(tmp_path):
    rows = [{"problem": "a", "answer": 1, "id": 7}, {"problem": "b", "answer": 2, "id": "x"},
            {"problem": "c", "answer": 3, "id": "7"}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(DatasetError, match=r"d.jsonl, line 3: duplicate id '7' \(first at "
                                           r"line 1\)"):
        load_problems(path)


def test_bad_id_type(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"problem": "a", "answer": 1, "id": 1.5}])
    with pytest.raises(DatasetError, match=r"d.jsonl, line 1: id field 'id' must be"):
        load_problems(path)
    with pytest.raises(DatasetError, match=r"line 1: missing field 'num'.*id_field"):
        load_problems(path, id_field="num")


# --- answers ----------------------------------------------------------------------------

@pytest.mark.parametrize("answer, text", [
    ("42", "42"), (" 7 ", " 7 "), (42, "42"), (-3, "-3"), (3.0, "3"), (-2.0, "-2"),
    (0.5, "0.5"), (1e20, "100000000000000000000"), ("\\frac{1}{2}", "\\frac{1}{2}"),
])
def test_answer_text(tmp_path, answer, text):
    path = write_jsonl(tmp_path / "d.jsonl", [{"problem": "q", "answer": answer}])
    assert load_problems(path)[0].answer == text


@pytest.mark.parametrize("answer", [None, True, [1, 2], {"a": 1}, "", "  "])
def test_bad_answer(tmp_path, answer):
    rows = [{"problem": "ok", "answer": 1}, {"problem": "q", "answer": answer}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(DatasetError, match=r"d.jsonl, line 2: field 'answer' must be a "
                                           r"non-empty str or a number, got "):
        load_problems(path)


def test_bad_non_finite_answer(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"problem": "q", "answer": NaN}\n')
    with pytest.raises(DatasetError, match=r"d.jsonl, line 1: field 'answer'"):
        load_problems(path)


@pytest.mark.parametrize("question", [None, 3, "", "   ", ["a"]])
def test_bad_question(tmp_path, question):
    path = write_jsonl(tmp_path / "d.jsonl", [{"problem": question, "answer": 1}])
    with pytest.raises(DatasetError, match=r"d.jsonl, line 1: field 'problem' must be a "
                                           r"non-empty str, got "):
        load_problems(path)


# --- errors name the file and the row ---------------------------------------------------

def test_missing_field_per_format(tmp_path):
    rows = [{"problem": "a", "answer": 1}, {"problem": "b", "answer": 2},
            {"problem": "c", "solution": 3}]
    jsonl = write_jsonl(tmp_path / "d.jsonl", rows, blank_lines=True)
    with pytest.raises(DatasetError, match=r"d.jsonl, line 5: missing field 'answer' \(the "
                                           r"row's fields: 'problem', 'solution'"):
        load_problems(jsonl)
    (tmp_path / "d.json").write_text(json.dumps(rows))
    with pytest.raises(DatasetError, match=r"d.json, row 2: missing field 'answer'"):
        load_problems(tmp_path / "d.json")


def test_csv_errors_name_the_line(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('problem,answer\n"a\nmultiline question",1\nb,2\nc\n')
    with pytest.raises(DatasetError, match=r"d.csv, line 5: field 'answer' must be"):
        load_problems(path)
    path.write_text("question,answer\nq,1\n")
    with pytest.raises(DatasetError, match=r"d.csv, line 2: missing field 'problem'"):
        load_problems(path)


def test_parquet_errors_name_the_row(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = [{"problem": "a", "answer": "1"}, {"problem": "b", "answer": None}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    with pytest.raises(DatasetError, match=r"d.parquet, row 1: field 'answer' must be"):
        load_problems(tmp_path / "d.parquet")
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(DatasetError, match=r"bad.parquet: cannot read as Parquet"):
        load_problems(tmp_path / "bad.parquet")


def test_bad_json_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"problem": "a", "answer": 1}\n\n{"problem": "b", "answer": \n')
    with pytest.raises(DatasetError, match=r"d.jsonl, line 3: not valid JSON"):
        load_problems(path)
    path.write_text('{"problem": "a", "answer": 1}\n[1, 2]\n')
    with pytest.raises(DatasetError, match=r"d.jsonl, line 2: expected an object"):
        load_problems(path)


def test_bad_json_file(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('[{"problem": "a",\n "answer": }]')
    with pytest.raises(DatasetError, match=r"d.json, line 2: not valid JSON"):
        load_problems(path)
    path.write_text('{"train": [], "test": []}')
    with pytest.raises(DatasetError, match=r"d.json: expected a list of rows.*'train', "
                                           r"'test'"):
        load_problems(path)
    path.write_text('"just a string"')
    with pytest.raises(DatasetError, match=r"d.json: expected a list of rows, got a JSON str"):
        load_problems(path)


@pytest.mark.parametrize("name, content", [
    ("e.jsonl", ""), ("e.jsonl", "\n\n"), ("e.json", ""), ("e.json", "[]"),
    ("e.json", '{"data": []}'), ("e.csv", ""), ("e.csv", "problem,answer\n"),
])
def test_empty(tmp_path, name, content):
    (tmp_path / name).write_text(content)
    with pytest.raises(DatasetError, match=rf"{re.escape(name)}: the (dataset has no rows|"
                                           r"file is empty)"):
        load_problems(tmp_path / name)


def test_missing_file_and_unknown_extension(tmp_path):
    with pytest.raises(DatasetError, match=r"nope.jsonl: no such file or directory"):
        load_problems(tmp_path / "nope.jsonl")
    (tmp_path / "d.txt").write_text("problem,answer\n")
    with pytest.raises(DatasetError, match=r"d.txt: unknown extension '.txt'"):
        load_problems(tmp_path / "d.txt")
    assert issubclass(DatasetError, ValueError)


# --- limit and shuffle ------------------------------------------------------------------

def test_limit_and_shuffle(tmp_path):
    rows = [{"problem": f"q{i}", "answer": i} for i in range(50)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    assert [p.id for p in load_problems(path, limit=5)] == ["0", "1", "2", "3", "4"]
    assert len(load_problems(path, limit=500)) == 50
    a = load_problems(path, shuffle_seed=1)
    assert a == load_problems(path, shuffle_seed=1)
    assert a != load_problems(path, shuffle_seed=2)
    assert sorted(a, key=lambda p: int(p.id)) == load_problems(path)
    # Shuffling comes first, so a limit takes a prefix of the shuffled order.
    assert load_problems(path, shuffle_seed=1, limit=7) == a[:7]
    assert a[:7] != load_problems(path)[:7]


@pytest.mark.parametrize("limit", [0, -1, True, 1.5, "3"])
def test_bad_limit(tmp_path, limit):
    path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    with pytest.raises(ValueError, match="limit"):
        load_problems(path, limit=limit)


@pytest.mark.parametrize("kwargs, name", [({"shuffle_seed": "1"}, "shuffle_seed"),
                                          ({"question_field": ""}, "question_field"),
                                          ({"answer_field": None}, "answer_field"),
                                          ({"id_field": ""}, "id_field")])
def test_bad_options(tmp_path, kwargs, name):
    path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    with pytest.raises(ValueError, match=name):
        load_problems(path, **kwargs)


# --- the bundled set --------------------------------------------------------------------

def test_bundled_set_loads():
    assert resolve_path("arith") == BUNDLED["arith"]
    problems = load_problems("arith")
    assert 300 <= len(problems) <= 1000
    assert all(re.fullmatch(r"\d+", p.answer) for p in problems)
    assert len({p.question for p in problems}) == len(problems)
    assert problems[0].id == "arith-0000"


def test_bundled_set_steps():
    rows = [json.loads(line) for line in Path(BUNDLED["arith"]).read_text().splitlines()]
    assert all(set(r) == {"id", "problem", "answer", "steps"} for r in rows)
    counts = Counter(r["steps"] for r in rows)
    assert set(counts) == {1, 2, 3}
    n = len(rows)
    assert counts[1] == n // 2 and counts[2] == n // 3 and counts[3] == n - n // 2 - n // 3
    assert all(isinstance(r["answer"], int) and r["answer"] >= 1 for r in rows)


def test_bundled_set_is_its_generator_output(tmp_path):
    bundled = Path(BUNDLED["arith"]).read_bytes()
    assert make_arith.to_jsonl(make_arith.generate()) == bundled
    out = tmp_path / "a.jsonl"
    assert make_arith.main(["--seed", "0", "--n", "500", "--out", str(out)]) == 0
    assert out.read_bytes() == bundled
    other = make_arith.to_jsonl(make_arith.generate(seed=1))
    assert other != bundled and other == make_arith.to_jsonl(make_arith.generate(seed=1))
    assert len(make_arith.generate(seed=5, n=7)) == 7


def test_generator_rejects_bad_n():
    with pytest.raises(ValueError, match="n must be"):
        make_arith.generate(n=0)


def test_local_file_shadows_bundled_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "arith").write_text("")
    assert resolve_path("arith") == "arith"
    with pytest.raises(DatasetError, match=r"arith: unknown extension"):
        load_problems("arith")


def test_heavy_dependencies_are_lazy():
    code = ("import sys, ponder.eval.data, ponder.eval.verifiers, ponder.eval.make_arith; "
            "print(sorted(m for m in ('datasets', 'pyarrow', 'pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"
