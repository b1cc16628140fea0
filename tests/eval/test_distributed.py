"""ponder eval on a local Ray cluster (2 CPUs, no dashboard): 2 engine actors give the
single-process records, and an actor killed mid-run loses nothing."""

import json
import os

import pytest

import ponder.eval

ray = pytest.importorskip("ray")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROBLEMS = [("What is 7 times 8?", 56), ("What is 6 times 9?", 54), ("What is 4 times 7?", 28),
            ("Sam has 5 apples and gets 8 more. How many apples does Sam have now?", 13)]
# Fields that depend on how searches were batched, not on what they computed.
SCHEDULING = ("seconds", "forward_passes", "tokens_prefilled")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "mini.jsonl"
    path.write_text("".join(json.dumps({"problem": q, "answer": a}) + "\n" for q, a in PROBLEMS))
    return str(path)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    marker = str(tmp_path_factory.mktemp("kill") / "killed")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": ROOT, "PONDER_TEST_KILL_MARKER": marker}})
    yield marker
    ray.shutdown()


def _study(tiny_policy, data, out, **kw):
    return dict(model=tiny_policy, data=data, out=str(out), strategies=["bon", "pf", "beam"],
                budgets=[1, 4], seeds=[0, 1], verifier="tests.eval.killer:verify", quiet=True,
                params={"all": {"max_steps": 3, "max_step_tokens": 6}}, **kw)


def _records(out):
    recs = {}
    with open(os.path.join(out, "records.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            assert r["key"] not in recs, f"{r['key']} written twice"
            for k in SCHEDULING:
                r.pop(k)
            recs[r["key"]] = r
    return recs


def test_two_actors_match_one_process_and_survive_a_kill(tiny_policy, data, cluster,
                                                         tmp_path, monkeypatch):
    # The single-process run first, the killer disarmed (its marker already there).
    open(cluster, "w").close()
    monkeypatch.setenv("PONDER_TEST_KILL_MARKER", cluster)
    local = tmp_path / "local"
    rows = ponder.eval.run(**_study(tiny_policy, data, local))
    assert len(rows) == 6 and all(r["problems"] == 4 and r["seeds"] == 2 for r in rows)
    os.remove(cluster)  # armed: the first actor to verify a step of KILL_QUESTION dies
    dist = tmp_path / "ray"
    ponder.eval.run(**_study(tiny_policy, data, dist, workers=2))
    assert os.path.exists(cluster), "no actor was killed: the test did not test recovery"
    a, b = _records(str(local)), _records(str(dist))
    assert len(a) == len(b) == 4 * 2 * 3 * 2  # problems x seeds x strategies x budgets
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == b[key], key
    assert all(r["error"] is None for r in b.values())
