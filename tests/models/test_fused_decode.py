"""CPU decode steps through ops.DecodeLayers (the whole layer stack in one call) give the
per-op path's logits bit for bit, for every family; the stack follows the parameters."""

import numpy as np
import pytest
import torch

from ponder import KvCacheManager
from ponder.engine.runner import ModelRunner, ScheduledSeq
from ponder.models.loader import load_checkpoint
from tests.models.tiny import FAMILIES, make_model, save


def _decode_logits(runner, fused, steps=4):
    """Prefills three prompts, then decodes greedily; the logits of every decode step."""
    runner.model.fused_decode = fused
    kv = KvCacheManager(runner.num_blocks, 16)
    g = torch.Generator().manual_seed(3)
    new = [torch.randint(3, 160, (n,), generator=g).tolist() for n in (5, 17, 33)]
    ids = [kv.create(np.zeros(0, np.int32)) for _ in new]
    out = []
    for step in range(steps + 1):
        sched = []
        for sid, toks in zip(ids, new, strict=True):
            start = kv.length(sid)
            slots, _ = kv.append(sid, np.asarray(toks, dtype=np.int32))
            sched.append(ScheduledSeq(list(toks), start, slots, kv.block_table(sid), True))
        logits = runner.execute(sched)
        if step:
            out.append(logits)
        new = [[int(t)] for t in logits.argmax(-1)]
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("family", FAMILIES)
def test_fused_decode_is_the_per_op_path(family, dtype, tmp_path):
    path = save(make_model(family), tmp_path / family)
    runner = ModelRunner(load_checkpoint(path), dtype, torch.device("cpu"), 32)
    fused = _decode_logits(runner, True)
    assert runner.model._decode_layers is not None  # the fused path ran
    per_op = _decode_logits(runner, False)
    assert len(fused) == len(per_op) == 4  # one logits tensor per decode step
    for a, b in zip(fused, per_op, strict=True):
        assert torch.equal(a, b)


def test_stack_follows_new_weights(tmp_path):
    path = save(make_model("llama"), tmp_path / "m")
    ck = load_checkpoint(path)
    runner = ModelRunner(ck, torch.float32, torch.device("cpu"), 32)
    model = runner.model
    first = model.decode_layers()
    assert model.decode_layers() is first  # built once
    model.load_weights(load_checkpoint(path).tensors, torch.float32, torch.device("cpu"))
    assert model.decode_layers() is not first  # new parameters, new stack
    rebuilt = model.decode_layers()
    model.to(torch.float32)
    assert model.decode_layers() is not rebuilt
