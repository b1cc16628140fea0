"""The results directory: ``records.jsonl`` (one JSON line per (problem, strategy, budget,
seed)) and ``config.json`` (the configuration's identity).

One writer (the driver process) appends; each call's lines go out in one ``write`` on an
``O_APPEND`` descriptor and are fsynced, so a run killed at any point leaves whole records
and at most a torn last line, which the next run cuts off before appending. Rerunning skips
the records already there.
"""

from __future__ import annotations

import json
import os

from ponder.eval.config import EvalConfig, compatible
from ponder.eval.report import read_records

RECORDS = "records.jsonl"
CONFIG = "config.json"


class ConfigMismatch(ValueError):
    """The directory holds records of another configuration."""


def record_key(problem_id: str, strategy: str, budget: int, seed: int) -> str:
    return f"{problem_id}|{strategy}|{budget}|{seed}"


def latest(records: list[dict]) -> list[dict]:
    """One record per key, the last written (a --force rerun's over the older one)."""
    by_key: dict[str, dict] = {}
    for r in records:
        by_key.pop(r["key"], None)
        by_key[r["key"]] = r
    return list(by_key.values())


def prepare(cfg: EvalConfig) -> dict[str, dict]:
    """Creates or checks the output directory; returns the finished records by key (those of
    this configuration). A directory of another configuration is refused unless cfg.force."""
    os.makedirs(cfg.out, exist_ok=True)
    ident = cfg.identity()
    path = os.path.join(cfg.out, CONFIG)
    rec_path = os.path.join(cfg.out, RECORDS)
    # Only records need protecting: a run that failed before its first one (a verifier that
    # does not import, a wrong model path) does not lock the directory to its typo.
    if os.path.exists(path) and os.path.exists(rec_path) and os.path.getsize(rec_path) > 0:
        with open(path, encoding="utf-8") as f:
            stored = json.load(f)
        diffs = compatible(stored, ident)
        if diffs and not cfg.force:
            raise ConfigMismatch(
                f"{cfg.out} holds results of another configuration ({'; '.join(diffs)}): "
                f"choose another --out, or pass --force to add these records to it (the newest "
                f"record of a key wins in the report)")
        if not diffs:  # keep the strategies an earlier run had that this one does not name
            ident["strategies"] = {**stored["strategies"], **ident["strategies"]}
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(ident, f, indent=1, sort_keys=True)
    os.replace(tmp, path)
    if not os.path.exists(rec_path):
        return {}
    hashes = {s: cfg.config_hash(s) for s in cfg.strategies}
    return {r["key"]: r for r in latest(read_records(rec_path))
            if r.get("config_hash") == hashes.get(r.get("strategy"))}


class RecordWriter:
    """Appends records to DIR/records.jsonl; the only writer of a run."""

    def __init__(self, out_dir: str):
        self.path = os.path.join(out_dir, RECORDS)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        _cut_torn_tail(self.path, self._fd)

    def write(self, records: list[dict]) -> None:
        if not records:
            return
        data = b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in records)
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _cut_torn_tail(path: str, fd: int) -> None:
    """Truncates a last line without its newline (a write the previous run was killed in)."""
    size = os.path.getsize(path)
    if size == 0:
        return
    with open(path, "rb") as f:
        f.seek(max(0, size - (1 << 20)))
        tail = f.read()
    if tail.endswith(b"\n"):
        return
    cut = tail.rfind(b"\n")
    keep = size - len(tail) + cut + 1 if cut >= 0 else (0 if size <= len(tail) else None)
    if keep is None:
        raise ValueError(f"{path}: the last line is over 1 MiB long without a newline")
    os.ftruncate(fd, keep)
