"""The KV block manager against a plain Python model, driven by hypothesis.

A fake cache (one int per slot) stands in for the KV tensors: every append writes its token
ids into the returned slots after applying the copy-on-write pairs, so reading a sequence
back through its block table must give exactly its tokens. That checks sharing, forks, COW
and prefix-cache reuse end to end; the model also checks ref counts and that nothing leaks.
"""

from collections import Counter

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from ponder import KvCacheManager
from ponder._core import BlockPool

NUM_BLOCKS, BLOCK_SIZE = 24, 4
tokens_st = st.lists(st.integers(0, 2), min_size=0, max_size=14)  # tiny vocab: prefix hits


def toks(xs):
    return np.asarray(xs, dtype=np.int32)


class KvMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.m = KvCacheManager(NUM_BLOCKS, BLOCK_SIZE, enable_prefix_cache=True)
        self.cache = np.full(NUM_BLOCKS * BLOCK_SIZE, -1, dtype=np.int64)
        self.seqs: dict[int, list[int]] = {}

    def _pick(self, data):
        return data.draw(st.sampled_from(sorted(self.seqs)))

    @rule(tokens=tokens_st)
    def create(self, tokens):
        expected = self.m.match_prefix(toks(tokens))
        sid = self.m.create(toks(tokens))
        cached = self.m.length(sid)
        assert cached == expected and cached % BLOCK_SIZE == 0 and cached <= len(tokens)
        self.seqs[sid] = list(tokens[:cached])

    @precondition(lambda self: self.seqs)
    @rule(data=st.data(), tokens=tokens_st)
    def append(self, data, tokens):
        sid = self._pick(data)
        before = self.m.block_table(sid)
        need = self.m.blocks_needed(sid, len(tokens))
        free = self.m.num_free_blocks
        res = self.m.append(sid, toks(tokens))
        if res is None:
            assert need > free
            assert self.m.block_table(sid) == before and self.m.length(sid) == len(self.seqs[sid])
            return
        assert need <= free
        slots, copies = res
        assert slots.dtype == np.int64 and copies.shape == (len(copies), 2)
        for src, dst in copies:
            self.cache[dst * BLOCK_SIZE:(dst + 1) * BLOCK_SIZE] = \
                self.cache[src * BLOCK_SIZE:(src + 1) * BLOCK_SIZE]
        for slot, t in zip(slots.tolist(), tokens, strict=True):
            assert self.m.ref_count(slot // BLOCK_SIZE) == 1, "wrote a shared block"
            self.cache[slot] = t
        self.seqs[sid].extend(tokens)

    @precondition(lambda self: self.seqs)
    @rule(data=st.data())
    def fork(self, data):
        sid = self._pick(data)
        pos = data.draw(st.integers(0, len(self.seqs[sid])))
        child = self.m.fork(sid, pos)
        self.seqs[child] = self.seqs[sid][:pos]

    @precondition(lambda self: self.seqs)
    @rule(data=st.data())
    def truncate(self, data):
        sid = self._pick(data)
        pos = data.draw(st.integers(0, len(self.seqs[sid])))
        self.m.truncate(sid, pos)
        del self.seqs[sid][pos:]

    @precondition(lambda self: self.seqs)
    @rule(data=st.data())
    def free(self, data):
        ids = data.draw(st.sets(st.sampled_from(sorted(self.seqs)), min_size=1))
        self.m.free_many(sorted(ids))
        for sid in ids:
            del self.seqs[sid]

    @invariant()
    def contents_and_counts(self):
        refs = Counter()
        for sid, tokens in self.seqs.items():
            table = self.m.block_table(sid)
            assert self.m.length(sid) == len(tokens)
            assert len(table) == (len(tokens) + BLOCK_SIZE - 1) // BLOCK_SIZE
            slots = [table[i // BLOCK_SIZE] * BLOCK_SIZE + i % BLOCK_SIZE
                     for i in range(len(tokens))]
            assert self.cache[slots].tolist() == tokens
            assert self.m.token_ids(sid) == tokens
            refs.update(table)
        for b in range(NUM_BLOCKS):
            assert self.m.ref_count(b) == refs[b]
        s = self.m.stats()
        assert s["used"] == len(refs)
        assert s["free"] + s["used"] == NUM_BLOCKS  # no leak
        assert s["peak_used"] >= s["used"]
        assert sorted(self.m.sequence_ids()) == sorted(self.seqs)

    def teardown(self):
        self.m.free_many(sorted(self.seqs))
        s = self.m.stats()
        assert s["used"] == 0 and s["free"] == NUM_BLOCKS


TestKvMachine = KvMachine.TestCase
TestKvMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


def test_prefix_cache_hits_and_lru_eviction():
    m = KvCacheManager(num_blocks=6, block_size=4)
    prompt = toks(range(10))  # two full blocks and a partial one
    a = m.create(prompt)
    assert m.length(a) == 0
    m.append(a, prompt)
    m.free(a)
    assert m.stats()["cached_idle"] == 2 and m.stats()["free"] == 6
    b = m.create(prompt)
    assert m.length(b) == 8  # the two full blocks come back from the cache
    s = m.stats()
    assert s["prefix_hit_tokens"] == 8 and s["prefix_query_tokens"] == 20
    m.free(b)
    # Fill the pool with other tokens: the idle cached blocks are evicted, tail first.
    c = m.create(toks([]))
    assert m.append(c, toks(range(100, 124))) is not None
    assert m.stats()["evictions"] == 2 and m.match_prefix(prompt) == 0
    assert m.append(c, toks([1])) is None  # out of blocks is a result, not an error
    m.free(c)
    assert m.stats()["free"] == 6


def test_fork_shares_full_blocks_and_copies_partial_on_write():
    m = KvCacheManager(num_blocks=8, block_size=4, enable_prefix_cache=False)
    a = m.create(toks([]))
    m.append(a, toks(range(6)))
    b = m.fork(a, 6)
    assert m.block_table(b) == m.block_table(a)
    assert m.blocks_needed(b, 1) == 1
    slots, copies = m.append(b, toks([9]))
    old = m.block_table(a)[1]
    new = m.block_table(b)[1]
    assert copies.tolist() == [[old, new]] and slots.tolist() == [new * 4 + 2]
    assert m.ref_count(m.block_table(a)[0]) == 2 and m.ref_count(old) == 1
    slots, copies = m.append(a, toks([7]))  # a owns its block again: no copy
    assert copies.shape == (0, 2) and slots.tolist() == [old * 4 + 2]


def test_errors_name_the_argument():
    m = KvCacheManager(num_blocks=4, block_size=4)
    a = m.create(toks([1, 2]))
    with pytest.raises(ValueError, match="seq_id"):
        m.append(99, toks([1]))
    with pytest.raises(ValueError, match="fork position"):
        m.fork(a, 5)
    with pytest.raises(ValueError, match="seq_id"):
        m.free_many([a, 12345])
    assert m.length(a) == 0  # free_many checked every id before freeing any
    with pytest.raises(ValueError, match="block"):
        m.ref_count(4)
    with pytest.raises(ValueError, match="num_blocks"):
        KvCacheManager(num_blocks=0, block_size=4)
    with pytest.raises(ValueError, match="block_size"):
        KvCacheManager(num_blocks=4, block_size=0)
    with pytest.raises(TypeError):
        m.append(a, np.zeros((2, 2), dtype=np.int32))


def test_block_pool():
    pool = BlockPool(3)
    assert [pool.allocate() for _ in range(3)] == [0, 1, 2]
    assert pool.allocate() == -1 and pool.allocate_many(1) is None
    pool.incref(1)
    pool.decref(1)
    pool.decref(1)
    assert pool.num_free == 1 and pool.num_used == 2 and pool.peak_used == 3
    with pytest.raises(ValueError, match="already free"):
        pool.decref(1)
    with pytest.raises(ValueError, match="free"):
        pool.incref(1)
    assert pool.allocate_many(1) == [1]


def test_writing_inside_a_cached_block_uncaches_it():
    # A fork inside a full cached block, whose parent is then freed, owns that block alone;
    # writing there must not leave the cache mapping the old tokens to new contents.
    m = KvCacheManager(num_blocks=4, block_size=4)
    a = m.create(toks([]))
    m.append(a, toks([1, 2, 3, 4]))
    b = m.fork(a, 2)
    m.free(a)
    assert m.match_prefix(toks([1, 2, 3, 4])) == 4
    slots, copies = m.append(b, toks([7]))
    assert copies.shape == (0, 2)  # sole owner: written in place ...
    assert m.match_prefix(toks([1, 2, 3, 4])) == 0  # ... so it left the cache
    assert m.stats()["cached_blocks"] == 0
