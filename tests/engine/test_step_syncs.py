"""An engine step waits for the device only to read its outputs (sampled tokens and their
logprobs, beam log-probabilities, PRM scores), all through ``ponder.kernels.to_host``: its
metadata is checked on the host and uploaded without waiting (``ponder.kernels``).

On CUDA the steps run under ``torch.cuda.set_sync_debug_mode("error")``, which raises on any
synchronizing call. On the CPU nothing syncs, so a stand-in catches what would: every op
that syncs on CUDA (reading a value, nonzero, unique, boolean-mask indexing, ...) and every
read of a tensor into Python outside ``to_host``. Covered: prefill, decode, n > 1 (a fork
and its copy-on-write block copy), token-level beam search, a search round and its PRM
batch."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import ponder
from ponder import kernels

# aten ops that wait for the device on CUDA (their result's size or value is read back).
SYNCING_OPS = {"_local_scalar_dense", "item", "is_nonzero", "equal", "nonzero",
               "nonzero_static", "argwhere", "masked_select", "unique", "_unique", "_unique2",
               "unique_dim", "unique_consecutive", "bincount", "repeat_interleave",
               "_assert_async", "histc"}
READS = ("tolist", "item", "numpy", "cpu", "__bool__", "__int__", "__float__", "__index__")


class _NoSyncingOps(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name.split("::")[-1]
        bool_index = name.startswith("index") and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool
            for a in args if isinstance(a, (list, tuple)) for i in a)
        if name in SYNCING_OPS or bool_index:
            raise AssertionError(f"{func} would wait for the device inside an engine step")
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def cpu_stand_in(monkeypatch):
    """Raises on what would sync on CUDA; reads through kernels.to_host stay allowed."""
    saved = {n: getattr(torch.Tensor, n) for n in READS}

    def forbid(name):
        def read(self, *args, **kwargs):
            raise AssertionError(f"Tensor.{name} reads a tensor inside an engine step, "
                                 "outside ponder.kernels.to_host")
        return read

    real_to_host = kernels.to_host

    def to_host(*tensors):
        for n, f in saved.items():
            setattr(torch.Tensor, n, f)
        try:
            return real_to_host(*tensors)
        finally:
            for n in READS:
                setattr(torch.Tensor, n, forbid(n))

    monkeypatch.setattr(kernels, "to_host", to_host)
    for n in READS:
        monkeypatch.setattr(torch.Tensor, n, forbid(n))
    try:
        with _NoSyncingOps():
            yield
    finally:
        for n, f in saved.items():
            setattr(torch.Tensor, n, f)


@contextlib.contextmanager
def no_syncs(device, monkeypatch):
    if device == "cuda":
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode(0)
    else:
        with cpu_stand_in(monkeypatch):
            yield


@pytest.fixture(scope="module")
def step_policy(smollm2_tokenizer, tmp_path_factory):
    """A tiny random Llama with SmolLM2's tokenizer and head_dim 32 (a size the CUDA
    kernels take) plus a tiny Qwen-style PRM."""
    from tests.prm.tiny_prm import build

    root = tmp_path_factory.mktemp("syncs")
    policy, prm = str(root / "policy"), str(root / "prm")
    build("policy", policy, smollm2_tokenizer, seed=3)
    build("qwen", prm, smollm2_tokenizer, seed=4)
    return policy, prm


def test_an_engine_step_reads_only_its_outputs(step_policy, device, monkeypatch):
    policy, prm = step_policy
    eng = ponder.Engine(policy, prm=prm, device=device, kv_blocks=64, prm_kv_blocks=32)
    # Warm-up outside the check: first-use allocations (rope tables, CUDA context).
    eng.generate([[5, 6, 7]], ponder.Sampling(max_tokens=2))
    gen = eng.add_request("Tell me a story about a cat.",
                          ponder.Sampling(max_tokens=6, n=3, seed=1, temperature=0.8))
    greedy = eng.add_request([9] * 40, ponder.Sampling(max_tokens=4, temperature=0.0,
                                                       logprobs=2))
    search = eng.add_request("What is 2 + 3?", ponder.BeamSearch(
        n=2, width=2, max_steps=2, max_step_tokens=4, seed=2))
    steps = 0
    with no_syncs(device, monkeypatch):
        while eng.has_unfinished():
            eng.step()
            steps += 1
        beams = eng.beam_search([4, 8, 15, 16], width=2, max_tokens=3, num_return=2)
    assert steps > 3 and len(beams) == 2
    out, res = eng.output(gen), eng.output(search)
    assert out.error is None and res.error is None, (out.error, res.error)
    assert len(out.outputs) == 3
    assert all(len(c.token_ids) == 6 for c in out.outputs)
    assert eng.output(greedy).error is None
    assert res.stats["prm_tokens"] > 0 and res.stats["rounds"] == 2
    assert eng.kv.stats()["used"] == 0


def test_the_stand_in_catches_a_read(step_policy, monkeypatch):
    """The CPU stand-in is not blind: a step that reads a tensor outside to_host fails."""
    eng = ponder.Engine(step_policy[0], kv_blocks=16)
    rid = eng.add_request([5, 6, 7], ponder.Sampling(max_tokens=2))
    monkeypatch.setattr(kernels, "check_step", lambda slots, *a: int(torch.tensor(slots[0])))
    with cpu_stand_in(monkeypatch):
        eng.step()   # the step's failure is its requests'
    assert "outside ponder.kernels.to_host" in eng.output(rid).error
