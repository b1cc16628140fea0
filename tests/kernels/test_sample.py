"""ops.sample against pure-torch oracles: greedy and log-probs against torch, draws against the
exact HF-semantics distribution by chi-square, the uniform against a Python Philox."""

import math

import pytest
import torch

import ponder
from ponder import ops
from tests.reference import ref_philox4x32_10, ref_philox_uniform, ref_sample_probs

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
NUM_DRAWS = 20_000


def sampling_args(n, device, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=0, seq_ids=7,
                  positions=None):
    def full(v, dtype):
        if isinstance(v, torch.Tensor):
            return v.to(dtype=dtype, device=device)
        return torch.full((n,), v, dtype=dtype, device=device)

    return dict(
        temperature=full(temperature, torch.float32), top_k=full(top_k, torch.int32),
        top_p=full(top_p, torch.float32), min_p=full(min_p, torch.float32),
        seeds=full(seed, torch.int64), seq_ids=full(seq_ids, torch.int64),
        positions=full(torch.arange(n) if positions is None else positions, torch.int64))


def sample(logits, num_logprobs=0, **kw):
    return ops.sample(logits, **sampling_args(logits.shape[0], logits.device, **kw),
                      num_logprobs=num_logprobs)


def chi_square_p(tokens, probs):
    """p-value of the draws under probs; bins with expected count < 5 are pooled."""
    counts = torch.bincount(tokens.cpu(), minlength=probs.numel()).double()
    expected = probs * tokens.numel()
    small = expected < 5
    obs = torch.cat([counts[~small], counts[small].sum().reshape(1)])
    exp = torch.cat([expected[~small], expected[small].sum().reshape(1)])
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    stat = ((obs - exp) ** 2 / exp).sum()
    df = torch.tensor(float(exp.numel() - 1), dtype=torch.float64)
    return float(torch.special.gammaincc(df / 2, stat / 2))


def fixed_logits(vocab=40):
    g = torch.Generator().manual_seed(1234)
    return torch.randn(vocab, generator=g, dtype=torch.float32) * 2.0


CONFIGS = {
    "temperature": dict(temperature=0.7),
    "top_k": dict(temperature=1.0, top_k=7),
    "top_p": dict(temperature=1.0, top_p=0.8),
    "min_p": dict(temperature=1.5, min_p=0.1),
    "combined": dict(temperature=0.8, top_k=20, top_p=0.9, min_p=0.05),
}


def test_philox_reference_known_answers():
    # Random123's kat_vectors for philox4x32_10: they pin the Python oracle itself.
    assert ref_philox4x32_10((0, 0, 0, 0), (0, 0)) == (0x6627E8D5, 0xE169C58D, 0xBC57AC4C,
                                                       0x9B00DBD8)
    assert ref_philox4x32_10((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2) == (
        0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)
    assert ref_philox4x32_10((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
                             (0xA4093822, 0x299F31D0)) == (0xD16CFE09, 0x94FDCCEB, 0x5001E420,
                                                           0x24126EA1)


def test_uniform_matches_reference(device):
    # Equal logits make every kept weight exactly 1, so the token is floor(u * vocab) exactly.
    vocab, n = 1000, 64
    g = torch.Generator().manual_seed(0)
    seeds = torch.randint(-2**63, 2**63 - 1, (n,), generator=g)
    seq_ids = torch.randint(0, 2**40, (n,), generator=g)
    positions = torch.randint(0, 2**33, (n,), generator=g)
    logits = torch.zeros(n, vocab, device=device)
    out = sample(logits, seed=seeds, seq_ids=seq_ids, positions=positions)
    want = [math.floor(ref_philox_uniform(s, q, p) * vocab)
            for s, q, p in zip(seeds.tolist(), seq_ids.tolist(), positions.tolist(), strict=True)]
    assert out.tokens.tolist() == want


@pytest.mark.parametrize("dtype", DTYPES)
def test_greedy_and_logprobs(device, dtype):
    n, vocab, num_logprobs = 6, 1003, 5
    logits = (torch.randn(n, vocab) * 3).to(dtype)
    logits[0, 17] = logits[0, 900] = 40.0  # a tied maximum: the lower index wins
    logits = logits.to(device)
    out = sample(logits, num_logprobs=num_logprobs, temperature=0.0, top_k=3, top_p=0.5)
    ref_logp = torch.log_softmax(logits.float().cpu(), dim=-1)
    assert out.tokens.tolist() == torch.argmax(logits.float().cpu(), dim=-1).tolist()
    assert out.tokens[0] == 17
    rows = torch.arange(n)
    torch.testing.assert_close(out.logprobs.cpu(), ref_logp[rows, out.tokens.cpu()],
                               atol=1e-5, rtol=1e-5)
    top_ids, top_logprobs = out.top_ids.cpu(), out.top_logprobs.cpu()
    ref_top = torch.topk(ref_logp, num_logprobs, dim=-1).values
    torch.testing.assert_close(top_logprobs, ref_top, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(top_logprobs, ref_logp.gather(1, top_ids), atol=1e-5, rtol=1e-5)
    tied = ref_logp.gather(1, top_ids[:, 1:]) == ref_logp.gather(1, top_ids[:, :-1])
    assert bool((top_ids[:, 1:] > top_ids[:, :-1])[tied].all())  # ties: lower id first
    assert top_ids[0, :2].tolist() == [17, 900]


@pytest.mark.parametrize("dtype", DTYPES)
def test_sampled_logprobs_are_raw(device, dtype):
    n, vocab = 32, 517
    logits = (torch.randn(n, vocab) * 2).to(dtype).to(device)
    out = sample(logits, num_logprobs=3, temperature=0.6, top_k=10, min_p=0.02)
    ref_logp = torch.log_softmax(logits.float().cpu(), dim=-1)
    torch.testing.assert_close(out.logprobs.cpu(), ref_logp[torch.arange(n), out.tokens.cpu()],
                               atol=1e-5, rtol=1e-5)
    allowed = ref_sample_probs(logits.float(), 0.6, top_k=10, min_p=0.02) > 0
    assert bool(allowed[torch.arange(n), out.tokens.cpu()].all())


@pytest.mark.parametrize("name", list(CONFIGS))
def test_chi_square(device, name):
    cfg = CONFIGS[name]
    base = fixed_logits()
    probs = ref_sample_probs(base, **cfg)
    support = probs > 0
    if name != "temperature":
        assert 1 < int(support.sum()) < base.numel()  # the filter really filters here
    logits = base.to(device).expand(NUM_DRAWS, -1).contiguous()
    tokens = sample(logits, seed=42, **cfg).tokens.cpu()
    assert not bool(torch.isin(tokens, torch.nonzero(~support).flatten()).any())
    assert chi_square_p(tokens, probs) > 1e-4


def test_chi_square_ties_at_top_k(device):
    # top_k=2 with a three-way tie at the 2nd largest keeps all four tokens, like HF.
    base = torch.tensor([3.0, 2.0, 2.0, 2.0, 1.0, 0.5, 0.0, -1.0])
    probs = ref_sample_probs(base, 1.0, top_k=2)
    assert int((probs > 0).sum()) == 4
    logits = base.to(device).expand(NUM_DRAWS, -1).contiguous()
    tokens = sample(logits, seed=3, top_k=2).tokens
    assert int(tokens.max()) <= 3
    assert chi_square_p(tokens, probs) > 1e-4


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_chi_square_half_precision(device, dtype):
    cfg = CONFIGS["combined"]
    base = fixed_logits().to(dtype)
    probs = ref_sample_probs(base.float(), **cfg)
    logits = base.to(device).expand(NUM_DRAWS, -1).contiguous()
    tokens = sample(logits, seed=5, **cfg).tokens
    assert chi_square_p(tokens, probs) > 1e-4


@pytest.mark.parametrize("wrong", [dict(temperature=1.2), dict(temperature=1.0, top_k=8),
                                   dict(temperature=1.0, top_p=0.9)])
def test_chi_square_detects_a_wrong_distribution(device, wrong):
    # The test above can fail: the same draws judged against a nearby distribution are rejected.
    base = fixed_logits()
    logits = base.to(device).expand(NUM_DRAWS, -1).contiguous()
    cfg = dict(temperature=1.0, top_k=7) if "top_k" in wrong else dict(temperature=1.0)
    tokens = sample(logits, seed=42, **cfg).tokens
    wrong_probs = ref_sample_probs(base, **wrong)
    wrong_probs = (wrong_probs + 1e-12) / (wrong_probs + 1e-12).sum()  # keep the test finite
    assert chi_square_p(tokens, wrong_probs) < 1e-6


def test_reference_matches_transformers():
    lp = pytest.importorskip("transformers.generation.logits_process")
    base = fixed_logits()[None]
    for cfg in CONFIGS.values():
        procs = [lp.TemperatureLogitsWarper(cfg["temperature"])]
        if cfg.get("top_k"):
            procs.append(lp.TopKLogitsWarper(cfg["top_k"]))
        if cfg.get("top_p", 1.0) < 1.0:
            procs.append(lp.TopPLogitsWarper(cfg["top_p"]))
        if cfg.get("min_p", 0.0) > 0:
            procs.append(lp.MinPLogitsWarper(cfg["min_p"]))
        scores = base.double()
        for proc in procs:
            scores = proc(None, scores)
        torch.testing.assert_close(ref_sample_probs(base, **cfg), scores.softmax(-1))


def test_reproducible_whatever_the_batch(device):
    vocab = 1000
    g = torch.Generator().manual_seed(7)
    target = torch.randn(vocab, generator=g)
    cfg = dict(temperature=0.9, top_k=200, top_p=0.95, min_p=0.01)
    alone = sample(target[None].to(device), seed=11, seq_ids=3, positions=torch.tensor([5]),
                   **cfg).tokens.item()
    others = torch.randn(8, vocab, generator=g)
    for perm_seed in range(4):
        order = torch.randperm(9, generator=torch.Generator().manual_seed(perm_seed))
        rows = torch.cat([target[None], others])[order]
        where = int((order == 0).nonzero())
        temperature = torch.rand(9, generator=g) + 0.1
        top_k = torch.randint(0, 50, (9,), generator=g)
        top_p = torch.rand(9, generator=g) * 0.9 + 0.1
        min_p = torch.rand(9, generator=g) * 0.1
        seeds, seq_ids = torch.randint(0, 100, (9,), generator=g), torch.arange(9) + 100
        positions = torch.randint(0, 100, (9,), generator=g)
        for t, v in ((temperature, cfg["temperature"]), (top_k, cfg["top_k"]),
                     (top_p, cfg["top_p"]), (min_p, cfg["min_p"]), (seeds, 11), (seq_ids, 3),
                     (positions, 5)):
            t[where] = v
        out = sample(rows.to(device), temperature=temperature, top_k=top_k, top_p=top_p,
                     min_p=min_p, seed=seeds, seq_ids=seq_ids, positions=positions)
        assert out.tokens[where].item() == alone


def test_seed_changes_draws(device):
    logits = torch.randn(1000).to(device).expand(256, -1).contiguous()
    a = sample(logits, seed=1).tokens
    b = sample(logits, seed=1).tokens
    c = sample(logits, seed=2).tokens
    assert torch.equal(a, b)
    assert (a != c).float().mean() > 0.5
    assert len(set(a.tolist())) > 50  # positions vary the draw too


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_large_vocab(device, dtype):
    n, vocab = 4, 100_003  # not a multiple of the block size
    logits = (torch.randn(n, vocab) * 4).to(dtype)
    cfgs = [dict(temperature=1.0, top_k=50), dict(temperature=0.7, top_p=0.9),
            dict(temperature=1.0, min_p=0.05), dict(temperature=1.3, top_k=1000, top_p=0.5)]
    for cfg in cfgs:
        out = sample(logits.to(device), num_logprobs=4, seed=9, **cfg)
        allowed = ref_sample_probs(logits.float(), **cfg) > 0
        assert bool(allowed[torch.arange(n), out.tokens.cpu()].all()), cfg
        ref_logp = torch.log_softmax(logits.float(), dim=-1)
        torch.testing.assert_close(out.top_logprobs.cpu(), torch.topk(ref_logp, 4).values,
                                   atol=1e-4, rtol=1e-5)


def test_empty_batch(device):
    out = sample(torch.empty(0, 32, device=device), num_logprobs=2)
    assert out.tokens.shape == (0,) and out.top_ids.shape == (0, 2)


@pytest.mark.skipif(not ponder.cuda_available() or not torch.cuda.is_available(),
                    reason="needs a CUDA device")
def test_cuda_matches_cpu():
    n, vocab = 512, 4099
    logits = torch.randn(n, vocab) * 3
    g = torch.Generator().manual_seed(1)
    args = sampling_args(n, "cpu", temperature=torch.rand(n, generator=g) + 0.2,
                         top_k=torch.randint(-1, 300, (n,), generator=g),
                         top_p=torch.rand(n, generator=g) * 0.7 + 0.3,
                         min_p=torch.rand(n, generator=g) * 0.05, seed=123)
    cpu = ops.sample(logits, **args, num_logprobs=3)
    gpu = ops.sample(logits.cuda(), **{k: v.cuda() for k, v in args.items()}, num_logprobs=3)
    # Same thresholds and uniforms; only float rounding of sums may move a boundary draw.
    assert (cpu.tokens == gpu.tokens.cpu()).float().mean() > 0.995
    assert torch.equal(cpu.top_ids, gpu.top_ids.cpu())


def bad_cases(device="cpu"):
    """Built on the device under test: moving a strided view would make it contiguous."""
    n, vocab = 3, 10
    i32, i64 = torch.int32, torch.int64
    cases = [
        ("logits", TypeError, dict(logits=[[0.0] * vocab] * n)),
        ("logits", TypeError, dict(logits=torch.zeros(n, vocab, dtype=torch.float64))),
        ("logits", ValueError, dict(logits=torch.zeros(n * vocab))),
        ("logits", ValueError, dict(logits=torch.zeros(vocab, n).t())),
        ("logits", ValueError, dict(logits=torch.zeros(n, 0))),
        ("temperature", TypeError, dict(temperature=torch.ones(n, dtype=torch.float64))),
        ("temperature", ValueError, dict(temperature=torch.ones(n + 1))),
        ("temperature", ValueError, dict(temperature=torch.tensor([1.0, -0.5, 1.0]))),
        ("temperature", ValueError, dict(temperature=torch.tensor([1.0, float("nan"), 1.0]))),
        ("top_k", TypeError, dict(top_k=torch.zeros(n, dtype=i64))),
        ("top_k", ValueError, dict(top_k=torch.zeros(n, 1, dtype=i32))),
        ("top_p", TypeError, dict(top_p=torch.ones(n, dtype=torch.float16))),
        ("top_p", ValueError, dict(top_p=torch.tensor([1.0, 0.0, 0.5]))),
        ("top_p", ValueError, dict(top_p=torch.tensor([1.0, 1.5, 0.5]))),
        ("min_p", ValueError, dict(min_p=torch.tensor([0.0, -0.1, 0.5]))),
        ("min_p", ValueError, dict(min_p=torch.tensor([0.0, 1.1, 0.5]))),
        ("seeds", TypeError, dict(seeds=torch.zeros(n, dtype=i32))),
        ("seq_ids", ValueError, dict(seq_ids=torch.zeros(n - 1, dtype=i64))),
        ("positions", TypeError, dict(positions=torch.zeros(n))),
        ("positions", ValueError, dict(positions=torch.zeros(2 * n, dtype=i64)[::2])),
        ("num_logprobs", ValueError, dict(num_logprobs=-1)),
        ("num_logprobs", ValueError, dict(num_logprobs=vocab + 1)),
        ("num_logprobs", TypeError, dict(num_logprobs=2.0)),
    ]
    return [(name, exc, {k: v.to(device) if isinstance(v, torch.Tensor) else v
                         for k, v in over.items()}) for name, exc, over in cases]


@pytest.mark.parametrize("case", range(len(bad_cases())),
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(bad_cases())])
def test_rejects_bad_input(device, case):
    name, exc, over = bad_cases(device)[case]
    n, vocab = 3, 10
    args = dict(logits=torch.zeros(n, vocab, device=device), num_logprobs=0,
                **sampling_args(n, device))
    args.update(over)
    with pytest.raises(exc, match=name):
        ops.sample(**args)


def test_rejects_mixed_devices():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    args = sampling_args(2, "cuda")
    with pytest.raises(ValueError, match="top_k"):
        ops.sample(torch.zeros(2, 8, device="cuda"), **{**args, "top_k": args["top_k"].cpu()})
