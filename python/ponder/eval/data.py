"""Evaluation problems from local files: JSONL, JSON, CSV, Parquet and `datasets` directories
saved with ``save_to_disk``, with configurable field names (defaults fit MATH-500's
``problem`` / ``answer``).

A bad row is a :class:`DatasetError` that names the file, the row (the 1-based line for JSONL
and CSV, the 0-based row index otherwise) and the field.
"""

from __future__ import annotations

import csv
import json
import math
import numbers
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# The bundled problem sets, by name: a path that is one of these names and is not a file.
BUNDLED = {"arith": str(Path(__file__).resolve().parent / "datasets" / "arith.jsonl")}

_EXTENSIONS = (".jsonl", ".ndjson", ".json", ".csv", ".parquet")


class DatasetError(ValueError):
    """A dataset that cannot be read, or a row in it that is not a problem."""


@dataclass
class Problem:
    id: str        # stable across shuffles and limits: the row's id field, else its index
    question: str
    answer: str    # the gold answer as text ("42", "\\frac{1}{2}")


def resolve_path(path: str | os.PathLike) -> str:
    """``path`` itself, or the bundled set it names ("arith") when no such file exists."""
    path = os.fspath(path)
    if path in BUNDLED and not os.path.exists(path):
        return BUNDLED[path]
    return path


def load_problems(path: str | os.PathLike, question_field: str = "problem",
                  answer_field: str = "answer", id_field: str | None = None,
                  limit: int | None = None, shuffle_seed: int | None = None) -> list[Problem]:
    """Read the problems of a local dataset.

    Parameters
    ----------
    path : str or PathLike
        A ``.jsonl`` / ``.ndjson``, ``.json`` (a list of objects, or an object with a single
        list-valued key such as ``"data"``), ``.csv`` or ``.parquet`` file; a directory written
        by ``datasets``' ``save_to_disk`` (a ``DatasetDict`` gives its ``"test"`` split, else
        its only split); or the name of a bundled set (``"arith"``).
    question_field, answer_field : str
        The fields holding the question (a non-empty string) and the gold answer (a string or
        a number; integral floats lose their ``.0``).
    id_field : str, optional
        The field holding each row's id. By default a row's ``"unique_id"`` or ``"id"`` if it
        has one, else its 0-based index in the file. Ids must be unique.
    limit : int, optional
        Keep the first ``limit`` problems (after shuffling), ``limit >= 1``.
    shuffle_seed : int, optional
        Shuffle the rows with ``random.Random(shuffle_seed)`` before the limit applies.

    Returns
    -------
    list[Problem]

    Examples
    --------
    >>> problems = load_problems("arith", limit=2)
    >>> problems[0].id, problems[0].answer
    ('arith-0000', '1')
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                              or limit < 1):
        raise ValueError(f"limit must be an int >= 1 or None, got {limit!r}")
    if shuffle_seed is not None and (isinstance(shuffle_seed, bool)
                                     or not isinstance(shuffle_seed, int)):
        raise ValueError(f"shuffle_seed must be an int or None, got {shuffle_seed!r}")
    fields = {"question_field": question_field, "answer_field": answer_field}
    if id_field is not None:
        fields["id_field"] = id_field
    for name, value in fields.items():
        if not isinstance(value, str) or not value:
            raise ValueError(f"{name} must be a non-empty str, got {value!r}")

    path = resolve_path(path)
    problems: list[Problem] = []
    seen: dict[str, str] = {}  # id -> where it was first seen
    for index, (where, row) in enumerate(_rows(path)):
        problem = _problem(path, where, index, row, question_field, answer_field, id_field)
        if problem.id in seen:
            raise DatasetError(f"{path}, {where}: duplicate id {problem.id!r} (first at "
                               f"{seen[problem.id]})")
        seen[problem.id] = where
        problems.append(problem)
    if not problems:
        raise DatasetError(f"{path}: the dataset has no rows")
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(problems)
    return problems if limit is None else problems[:limit]


def _rows(path: str) -> Iterator[tuple[str, dict]]:
    """(where, row) for each row of the dataset at ``path``."""
    if os.path.isdir(path):
        yield from _saved_rows(path)
        return
    if not os.path.exists(path):
        hint = f" (bundled sets: {', '.join(sorted(BUNDLED))})" if BUNDLED else ""
        raise DatasetError(f"{path}: no such file or directory{hint}")
    ext = os.path.splitext(path)[1].lower()
    if ext in (".jsonl", ".ndjson"):
        yield from _jsonl_rows(path)
    elif ext == ".json":
        yield from _json_rows(path)
    elif ext == ".csv":
        yield from _csv_rows(path)
    elif ext == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as e:  # pyarrow's own errors: not a parquet file, corrupt
            raise DatasetError(f"{path}: cannot read as Parquet: {e}") from e
        for i, row in enumerate(table.to_pylist()):
            yield f"row {i}", row
    else:
        raise DatasetError(f"{path}: unknown extension {ext or '(none)'!r}; expected one of "
                           f"{', '.join(_EXTENSIONS)} or a datasets save_to_disk directory")


def _jsonl_rows(path: str) -> Iterator[tuple[str, dict]]:
    with open(path, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DatasetError(f"{path}, line {lineno}: not valid JSON ({e.msg}, "
                                   f"column {e.colno})") from None
            yield f"line {lineno}", row


def _json_rows(path: str) -> Iterator[tuple[str, dict]]:
    with open(path, encoding="utf-8-sig") as f:
        text = f.read()
    if not text.strip():
        raise DatasetError(f"{path}: the file is empty")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # JSON Lines under a .json name, as `datasets` accepts
            yield from _jsonl_rows(path)
            return
        raise DatasetError(f"{path}, line {e.lineno}: not valid JSON ({e.msg}, column "
                           f"{e.colno})") from None
    if isinstance(data, dict):
        lists = [k for k, v in data.items() if isinstance(v, list)]
        if len(lists) != 1:
            raise DatasetError(f"{path}: expected a list of rows, or an object with one "
                               f"list-valued key; found list-valued keys {lists}")
        data = data[lists[0]]
    elif not isinstance(data, list):
        raise DatasetError(f"{path}: expected a list of rows, got a JSON "
                           f"{type(data).__name__}")
    for i, row in enumerate(data):
        yield f"row {i}", row


def _csv_rows(path: str) -> Iterator[tuple[str, dict]]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        for row in reader:
            # The line the row ends on (a quoted field may span lines); the header is line 1.
            yield f"line {reader.line_num}", {k: v for k, v in row.items() if k is not None}


def _saved_rows(path: str) -> Iterator[tuple[str, dict]]:
    """Rows of a directory written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``."""
    is_dict = os.path.isfile(os.path.join(path, "dataset_dict.json"))
    if not is_dict and not os.path.isfile(os.path.join(path, "state.json")):
        raise DatasetError(f"{path}: a directory, but not one written by datasets' "
                           "save_to_disk (no state.json or dataset_dict.json)")
    import datasets

    try:
        ds = datasets.load_from_disk(path)
    except Exception as e:  # a damaged save: missing arrow files, bad json
        raise DatasetError(f"{path}: cannot load with datasets.load_from_disk: {e}") from e
    if isinstance(ds, datasets.DatasetDict):
        splits = list(ds)
        if "test" in ds:
            ds = ds["test"]
        elif len(splits) == 1:
            ds = ds[splits[0]]
        else:
            raise DatasetError(f"{path}: a DatasetDict without a 'test' split; splits: "
                               f"{', '.join(splits)}; pass the directory of one split")
    for i, row in enumerate(ds):
        yield f"row {i}", row


def _problem(path: str, where: str, index: int, row: object, question_field: str,
             answer_field: str, id_field: str | None) -> Problem:
    def error(msg: str) -> DatasetError:
        return DatasetError(f"{path}, {where}: {msg}")

    if not isinstance(row, dict):
        raise error(f"expected an object (a row of fields), got {type(row).__name__}")

    def field(name: str, option: str) -> object:
        if name not in row:
            fields = ", ".join(repr(k) for k in row) or "none"
            raise error(f"missing field {name!r} (the row's fields: {fields}; set "
                        f"{option} to use another)")
        return row[name]

    question = field(question_field, "question_field")
    if not isinstance(question, str) or not question.strip():
        raise error(f"field {question_field!r} must be a non-empty str, got "
                    f"{_describe(question)}")
    answer = _answer_text(field(answer_field, "answer_field"))
    if answer is None:
        raise error(f"field {answer_field!r} must be a non-empty str or a number, got "
                    f"{_describe(row[answer_field])}")

    if id_field is not None:
        name = id_field
        raw_id = field(id_field, "id_field")
    else:
        name = next((k for k in ("unique_id", "id") if k in row), None)
        raw_id = row[name] if name is not None else index
    if isinstance(raw_id, bool) or not isinstance(raw_id, (str, numbers.Integral)) \
            or raw_id == "":
        raise error(f"id field {name!r} must be a non-empty str or an int, got "
                    f"{_describe(raw_id)}")
    return Problem(id=str(raw_id), question=question, answer=answer)


def _answer_text(value: object) -> str | None:
    """The gold answer as text, or None if ``value`` is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        return value if value.strip() else None
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        value = float(value)
        if not math.isfinite(value):
            return None
        return str(int(value)) if value.is_integer() else repr(value)
    return None


def _describe(value: object) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:40] + '...' if len(text) > 40 else text}"
