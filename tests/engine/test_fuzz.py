"""The engine under random load: a hypothesis state machine adds generations, searches
(every strategy), token beam searches and bad requests, aborts, and steps, on small pools;
after every step the engine made progress or has nothing left, and once everything is
collected no KV block is held and every seeded output equals the same request run alone on a
pool that never runs short.

PONDER_FUZZ_EXAMPLES sets the number of examples (300 by default; CI's sanitizer pass runs
a short profile, a longer one is run by hand before a release)."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import ponder

EXAMPLES = int(os.environ.get("PONDER_FUZZ_EXAMPLES", "300"))
QUESTIONS = ["What is 2 + 3?", "Tom has 3 apples and buys 4 more. How many?", "Name a color."]
# (kv_blocks, block_size, max_num_seqs): each pool holds the longest sequence below (a
# 44-token chat question and two 4-token steps) and not much more; a small max_num_seqs runs
# a search's steps in waves.
POOLS = [(14, 4, 256), (18, 4, 2), (7, 8, 3), (10, 8, 256), (4, 16, 1), (14, 4, 1)]
STEPS, STEP_TOKENS = 2, 4
STRATEGIES = {
    "bon": lambda s: ponder.BestOfN(n=2, seed=s, **_common()),
    "beam": lambda s: ponder.BeamSearch(n=4, width=2, seed=s, **_common()),
    "dvts": lambda s: ponder.DVTS(n=2, width=2, seed=s, **_common()),
    "pf": lambda s: ponder.ParticleFilter(n=2, seed=s, **_common()),
    "pg": lambda s: ponder.ParticleGibbs(n=2, iterations=2, seed=s, **_common()),
    "astar": lambda s: ponder.AStar(k=2, budget=2, seed=s, **_common()),
    "mcts": lambda s: ponder.MCTS(simulations=2, k=2, seed=s, **_common()),
}


def _common():
    return dict(max_steps=STEPS, max_step_tokens=STEP_TOKENS)


def verifier(question, steps):
    return [int.from_bytes(hashlib.sha256(s.encode()).digest()[:4], "little") / 2**32
            for s in steps]


def broken_verifier(question, steps):
    raise RuntimeError("broken verifier")


def tree_of(res):
    return [(n["parent"], n["text"], n["num_tokens"], round(n["score"], 9))
            for n in json.loads(res.tree.to_json())["nodes"]]


class Harness:
    """The engines and the reference outputs, each computed once on a pool that never runs
    short."""

    def __init__(self, path: str):
        self.path = path
        self.engines = {}
        self.roomy = ponder.Engine(path, kv_blocks=2048, block_size=4)
        self.refs: dict = {}

    def engine(self, pool):
        """One engine per pool, shared by the examples (each must leave it clean; what its
        prefix cache holds carries over, as in a server)."""
        if pool not in self.engines:
            blocks, size, seqs = pool
            self.engines[pool] = ponder.Engine(self.path, kv_blocks=blocks, block_size=size,
                                               max_num_batched_tokens=24, max_num_seqs=seqs)
        return self.engines[pool]

    def reference(self, key):
        if key not in self.refs:
            if key[0] == "gen":
                _, prompt, n, max_tokens, temperature, seed = key
                sp = ponder.Sampling(max_tokens=max_tokens, temperature=temperature, n=n,
                                     seed=seed, ignore_eos=True)
                out = self.roomy.generate([list(prompt)], sp)[0]
                self.refs[key] = [c.token_ids for c in out.outputs]
            elif key[0] == "beam":
                _, prompt, width, max_tokens = key
                self.refs[key] = [(b.token_ids, b.score) for b in
                                  self.roomy.beam_search(list(prompt), width=width,
                                                         max_tokens=max_tokens)]
            else:
                _, name, q, seed = key
                self.refs[key] = tree_of(self.roomy.search(q, STRATEGIES[name](seed),
                                                           prm=verifier))
        return self.refs[key]


GEN = st.tuples(st.just("gen"), st.lists(st.integers(3, 4000), min_size=1, max_size=24),
                st.integers(1, 3), st.integers(1, 8), st.sampled_from([0.0, 0.7, 1.3]),
                st.integers(0, 2**63 - 1))
SEARCH = st.tuples(st.just("search"), st.sampled_from(sorted(STRATEGIES)),
                   st.sampled_from(QUESTIONS), st.integers(0, 2**20))
BAD = st.tuples(st.just("bad"), st.sampled_from(["sampling", "verifier", "answer_fn"]))
REQUEST = st.one_of(GEN, SEARCH, BAD)


class EngineMachine(RuleBasedStateMachine):
    harness: Harness = None

    @initialize(pool=st.sampled_from(POOLS), first=st.lists(REQUEST, min_size=1, max_size=6))
    def setup(self, pool, first):
        self.eng = self.harness.engine(pool)
        assert not self.eng.has_unfinished() and self.eng.kv.stats()["used"] == 0
        self.live: dict[int, tuple] = {}   # request id -> reference key, or ("bad",)
        self.done: dict[int, object] = {}
        self.steps = 0
        for req in first:  # something to batch from the start
            self.add(req)

    @rule(req=REQUEST)
    def add(self, req):
        if req[0] == "gen":
            _, prompt, n, max_tokens, temperature, seed = req
            sp = ponder.Sampling(max_tokens=max_tokens, temperature=temperature, n=n,
                                 seed=seed, ignore_eos=True)
            rid = self.eng.add_request(prompt, sp)
            self.live[rid] = ("gen", tuple(prompt), n, max_tokens, temperature, seed)
        elif req[0] == "search":
            _, name, q, seed = req
            rid = self.eng.add_request(q, STRATEGIES[name](seed), prm=verifier)
            self.live[rid] = req
        else:
            rid = self._add_bad(req[1])
            if rid is not None:
                self.live[rid] = ("bad",)

    @rule(prompt=st.lists(st.integers(3, 4000), min_size=1, max_size=16),
          width=st.integers(1, 3), max_tokens=st.integers(1, 6))
    def beam_search(self, prompt, width, max_tokens):
        """Runs to its end, serving everything queued meanwhile."""
        got = self.eng.beam_search(prompt, width=width, max_tokens=max_tokens)
        want = self.harness.reference(("beam", tuple(prompt), width, max_tokens))
        # Tokens exactly; scores (sums of float32 log-probabilities from other block sizes
        # and batches) to float rounding.
        assert [b.token_ids for b in got] == [t for t, _ in want]
        assert all(abs(b.score - w) < 1e-4 for b, (_, w) in zip(got, want, strict=True))
        self._collect()

    def _add_bad(self, kind) -> int | None:
        if kind == "sampling":
            sp = ponder.Sampling(max_tokens=3, seed=1)
            sp.temperature = float("nan")  # changed after Sampling's checks: the door's catch it
            try:
                self.eng.add_request([5, 6, 7], sp)
            except ValueError as e:  # (no ExceptionInfo kept: its frames would hold the engine)
                assert "temperature" in str(e)
            else:
                raise AssertionError("a NaN temperature passed the door")
            return None
        if kind == "verifier":
            return self.eng.add_request(QUESTIONS[0], STRATEGIES["bon"](1),
                                        prm=broken_verifier)
        return self.eng.add_request(QUESTIONS[0], STRATEGIES["bon"](1), prm=verifier,
                                    answer_fn=lambda text: 42)

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def abort(self, data):
        # An index, not an id: ids depend on the engine's history, the index only on this
        # example's rules.
        rid = list(self.live)[data.draw(st.integers(0, len(self.live) - 1))]
        # Out of `live` either way: whether it finished first depends on timing (what the
        # shared engine's prefix cache held), and what is drawn must not.
        del self.live[rid]
        if self.done.pop(rid, None) is None:
            self.eng.abort(rid)

    @rule(times=st.integers(1, 6))
    def step(self, times):
        for _ in range(times):
            before = self._progress()
            had_work = self.eng.has_unfinished()
            self.eng.step()
            self.steps += 1
            if had_work:
                assert self._progress() != before or not self.eng.has_unfinished()
            self._collect()

    def _progress(self):
        s = self.eng.stats
        return (s["forward_passes"], s["tokens_generated"], s["preemptions"],
                len(self.done), self.eng.has_unfinished())

    def _collect(self):
        for rid in list(self.live):
            if rid not in self.done:
                out = self.eng.output(rid)
                finished = out.finished if isinstance(out, ponder.RequestOutput) else \
                    out is not None
                if finished:
                    self.done[rid] = out

    @invariant()
    def pool_is_consistent(self):
        st_ = self.eng.kv.stats()
        assert st_["used"] + st_["free"] == st_["num_blocks"]

    def teardown(self):
        for _ in range(5000):
            if not self.eng.has_unfinished():
                break
            self.eng.step()
        assert not self.eng.has_unfinished(), "the engine wedged"
        self._collect()
        assert set(self.done) == set(self.live)
        assert self.eng.kv.stats()["used"] == 0 and not self.eng.kv.sequence_ids()
        for rid, key in self.live.items():
            out = self.done[rid]
            if key[0] == "bad":
                assert out.error, key
            elif key[0] == "gen":
                assert out.error is None
                assert [c.token_ids for c in out.outputs] == self.harness.reference(key)
            else:
                assert out.error is None
                assert tree_of(out) == self.harness.reference(key)


@pytest.mark.slow
def test_engine_state_machine(tiny_policy):
    EngineMachine.harness = Harness(tiny_policy)
    try:
        run_state_machine_as_test(
            EngineMachine,
            settings=settings(max_examples=EXAMPLES, stateful_step_count=20, deadline=None,
                              suppress_health_check=list(HealthCheck), derandomize=True,
                              print_blob=True))
    finally:
        EngineMachine.harness = None  # its engines must not outlive the session
