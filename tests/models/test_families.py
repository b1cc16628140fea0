"""Forward parity with transformers for every supported family, through the paged cache."""

import json
import os

import numpy as np
import pytest
import torch

from ponder import KvCacheManager
from ponder.engine.runner import ModelRunner, ScheduledSeq
from ponder.models.loader import load_checkpoint
from tests.models.tiny import FAMILIES, make_model, save


@pytest.fixture(scope="module", params=FAMILIES)
def family_dir(request, tmp_path_factory):
    model = make_model(request.param)
    path = save(model, tmp_path_factory.mktemp(request.param))
    return request.param, model, path


def _runner(path, blocks=64, device="cpu", dtype=torch.float32):
    ck = load_checkpoint(path)
    return (ModelRunner(ck, dtype, torch.device(device), blocks),
            KvCacheManager(blocks, 16))


def _run(runner, kv, seqs_tokens, kv_ids=None):
    """Appends each sequence's new tokens and runs one packed forward."""
    sched = []
    for i, toks in enumerate(seqs_tokens):
        sid = kv_ids[i]
        start = kv.length(sid)
        slots, copies = kv.append(sid, np.asarray(toks, dtype=np.int32))
        assert copies.size == 0
        sched.append(ScheduledSeq(list(toks), start, slots, kv.block_table(sid), True))
    return runner.execute(sched).cpu()


def test_prefill_and_decode_match_transformers(family_dir, device):
    family, model, path = family_dir
    runner, kv = _runner(path, device=device)
    # fp32 on CUDA: other summation orders than transformers' on the CPU.
    tol = dict(atol=2e-5, rtol=1e-4) if device == "cpu" else dict(atol=2e-4, rtol=1e-3)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 160, (n,), generator=g).tolist() for n in (5, 23, 40)]
    ids = [kv.create(np.zeros(0, np.int32)) for _ in prompts]
    logits = _run(runner, kv, prompts, ids)  # one packed prefill of three prompts
    seqs = [list(p) for p in prompts]
    for step in range(20):
        with torch.no_grad():
            for b, s in enumerate(seqs):
                ref = model(torch.tensor([s])).logits[0, -1]
                torch.testing.assert_close(logits[b], ref, **tol,
                                           msg=f"{family} step {step} seq {b}")
        nxt = [int(torch.argmax(logits[b])) for b in range(len(seqs))]
        for s, t in zip(seqs, nxt, strict=True):
            s.append(t)
        logits = _run(runner, kv, [[t] for t in nxt], ids)  # decode, one token each


def test_bfloat16_runs_close(family_dir, device):
    family, model, path = family_dir
    runner, kv = _runner(path, 16, device, torch.bfloat16)
    sid = kv.create(np.zeros(0, np.int32))
    toks = list(range(3, 30))
    out = _run(runner, kv, [toks], [sid])
    with torch.no_grad():
        ref = model(torch.tensor([toks])).logits[0, -1]
    assert torch.nn.functional.cosine_similarity(out[0], ref, dim=0) > 0.99


def _write_config(path, **changes):
    with open(os.path.join(path, "config.json")) as f:
        cfg = json.load(f)
    cfg.update(changes)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f)


@pytest.fixture
def llama_dir(tmp_path):
    return save(make_model("llama"), tmp_path / "m")


def test_rejects_unknown_architecture(llama_dir):
    _write_config(llama_dir, architectures=["GPT2LMHeadModel"], model_type="gpt2")
    with pytest.raises(ValueError, match="unsupported architecture"):
        load_checkpoint(llama_dir)


def test_rejects_sliding_window(tmp_path):
    path = save(make_model("mistral"), tmp_path / "m")
    _write_config(path, sliding_window=64)
    with pytest.raises(ValueError, match="sliding window"):
        load_checkpoint(path)


def test_missing_files(tmp_path, llama_dir):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")
    os.remove(os.path.join(llama_dir, "model.safetensors"))
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_checkpoint(llama_dir)
    os.remove(os.path.join(llama_dir, "config.json"))
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_checkpoint(llama_dir)


def test_corrupt_safetensors_header(llama_dir):
    path = os.path.join(llama_dir, "model.safetensors")
    with open(path, "r+b") as f:
        f.seek(8)
        f.write(b"\x00garbage")
    with pytest.raises(ValueError, match="corrupt safetensors header"):
        load_checkpoint(llama_dir)


def test_truncated_safetensors(llama_dir):
    path = os.path.join(llama_dir, "model.safetensors")
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(ValueError, match="truncated"):
        load_checkpoint(llama_dir)


def test_wrong_tensor_shape(tmp_path):
    from safetensors.torch import load_file, save_file

    path = save(make_model("qwen2"), tmp_path / "m")
    f = os.path.join(path, "model.safetensors")
    tensors = load_file(f)
    tensors["model.layers.1.self_attn.k_proj.weight"] = torch.zeros(3, 64)
    save_file(tensors, f, metadata={"format": "pt"})
    ck = load_checkpoint(path)
    with pytest.raises(ValueError, match="k_proj.weight.*shape"):
        ModelRunner(ck, torch.float32, torch.device("cpu"), 8)


def test_sharded_checkpoint(tmp_path):
    model = make_model("llama3-rope")
    model.save_pretrained(tmp_path / "m", max_shard_size="100KB")
    assert os.path.exists(tmp_path / "m" / "model.safetensors.index.json")
    runner, kv = _runner(str(tmp_path / "m"))
    sid = kv.create(np.zeros(0, np.int32))
    toks = list(range(3, 20))
    out = _run(runner, kv, [toks], [sid])
    with torch.no_grad():
        ref = model(torch.tensor([toks])).logits[0, -1]
    torch.testing.assert_close(out[0], ref, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_weights_in_one_arena_in_decode_order(tmp_path, family, dtype):
    """CPU weights sit back to back in one 64-byte-aligned arena in the order a decode step
    reads them (the LM head last), each equal to the checkpoint tensor converted to dtype."""
    model = make_model(family)
    path = save(model, tmp_path / family)
    runner = ModelRunner(load_checkpoint(path), dtype, torch.device("cpu"), 8)
    ours = runner.model
    params = list(ours.named_parameters(remove_duplicate=False))
    assert len({p.untyped_storage().data_ptr() for _, p in params}) == 1
    assert all(p.data_ptr() % 64 == 0 for _, p in params)
    a, hf_a = ours.layers[1].self_attn, model.model.layers[1].self_attn
    order = [ours.layers[0].input_layernorm.weight, ours.layers[0].self_attn.qkv_proj.weight,
             ours.layers[0].self_attn.o_proj.weight, ours.layers[0].mlp.gate_up_proj.weight,
             ours.layers[0].mlp.down_proj.weight, a.qkv_proj.weight, ours.norm.weight,
             ours.lm_head.weight]
    ptrs = [p.data_ptr() for p in order]
    assert ptrs == sorted(ptrs) and len(set(ptrs)) == len(ptrs)
    if model.config.tie_word_embeddings:
        assert ours.lm_head.weight is ours.embed_tokens.weight
    want = torch.cat([hf_a.q_proj.weight, hf_a.k_proj.weight, hf_a.v_proj.weight]).to(dtype)
    assert torch.equal(a.qkv_proj.weight, want)
    assert torch.equal(ours.embed_tokens.weight, model.model.embed_tokens.weight.to(dtype))
    assert torch.equal(ours.lm_head.weight, model.lm_head.weight.to(dtype))


def test_arena_without_anonymous_mmap(monkeypatch):
    import mmap

    from ponder.models.llama import huge_page_buffer

    buf = huge_page_buffer(3 << 20)
    assert buf.numel() == 3 << 20 and buf.data_ptr() % (2 << 20) == 0
    monkeypatch.delattr(mmap, "MAP_ANONYMOUS")
    assert huge_page_buffer(1000).numel() == 1000
