"""ops.prm_head against the pure-torch reference (tests/reference.py), on every device.

The reference widens the same inputs to fp32, exactly, so whatever the dtype the kernel differs
from it only in the order of fp32 sums: one tolerance serves fp32, bf16 and fp16 alike. It is
tight enough to tell a kernel that rounds the layer-1 output to the model dtype (as a bf16
transformers module does), see test_tolerance_catches_rounding_between_layers.
"""

import pytest
import torch

from ponder import _core, ops
from tests.reference import ref_prm_head

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
ATOL = 1e-5  # on probabilities; observed differences are ~2e-7
NUM_TOKENS = 40


def make_head(hidden_size, num_classes, dtype, device, first_layer=True, bias=True, seed=0,
              inner_size=None):
    """Weights scaled so that the logits are O(1): scores spread over (0, 1), not saturated.
    inner_size differs from hidden_size by default, so that a swapped dimension fails."""
    g = torch.Generator().manual_seed(seed)
    inner = (inner_size or hidden_size + 24) if first_layer else hidden_size

    def rand(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=g)).to(dtype).to(device)

    head = dict(w2=rand(num_classes, inner, scale=2 / inner ** 0.5),
                b2=rand(num_classes) if bias else None, w1=None, b1=None)
    if first_layer:
        head.update(w1=rand(inner, hidden_size, scale=1 / hidden_size ** 0.5),
                    b1=rand(inner, scale=0.5) if bias else None)
    return head


def make_inputs(hidden_size, num_rows, dtype, device, seed=1):
    """num_rows indices into NUM_TOKENS rows: at 64 rows some must repeat."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(NUM_TOKENS, hidden_size, generator=g).to(dtype).to(device)
    rows = torch.randint(0, NUM_TOKENS, (num_rows,), generator=g).to(device)
    return hidden, rows


@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("first_layer", [False, True], ids=["w2", "w1w2"])
@pytest.mark.parametrize("num_classes", [1, 2])
@pytest.mark.parametrize("num_rows", [0, 1, 7, 64])
@pytest.mark.parametrize("hidden_size", [64, 100, 576])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_reference(device, dtype, hidden_size, num_rows, num_classes, first_layer, bias):
    head = make_head(hidden_size, num_classes, dtype, device, first_layer, bias)
    hidden, rows = make_inputs(hidden_size, num_rows, dtype, device)
    got = ops.prm_head(hidden, rows, **head)
    assert got.dtype == torch.float32 and got.device == hidden.device
    assert got.shape == (num_rows,)
    torch.testing.assert_close(got, ref_prm_head(hidden, rows, **head), atol=ATOL, rtol=0)


@pytest.mark.parametrize("bias", ["b1", "b2"])
def test_one_bias_only(device, bias):
    head = make_head(100, 2, torch.float32, device)
    head["b2" if bias == "b1" else "b1"] = None
    hidden, rows = make_inputs(100, 9, torch.float32, device)
    torch.testing.assert_close(ops.prm_head(hidden, rows, **head),
                               ref_prm_head(hidden, rows, **head), atol=ATOL, rtol=0)


# (simd, bf16_dot): the CPU's fastest path, AVX-512 FMA with bf16 widened, the portable loops.
CPU_PATHS = {"best": (True, True), "fma": (True, False), "portable": (False, True)}


@pytest.mark.parametrize("first_layer", [False, True], ids=["w2", "w1w2"])
@pytest.mark.parametrize("num_classes", [1, 2])
@pytest.mark.parametrize("hidden_size", [63, 100, 576])  # 63: an odd tail for bf16 pairs
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("path", list(CPU_PATHS))
def test_cpu_paths(path, dtype, hidden_size, num_classes, first_layer):
    simd, bf16_dot = CPU_PATHS[path]
    head = make_head(hidden_size, num_classes, dtype, "cpu", first_layer)
    hidden, rows = make_inputs(hidden_size, 23, dtype, "cpu")
    out = torch.empty(23)
    _core.prm_head(hidden, rows, head["w2"], head["b2"], head["w1"], head["b1"], out,
                   simd=simd, bf16_dot=bf16_dot)
    torch.testing.assert_close(out, ref_prm_head(hidden, rows, **head), atol=ATOL, rtol=0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_tolerance_catches_rounding_between_layers(device, dtype):
    """The same head with the layer-1 output rounded to bf16 misses ATOL: the tests would see a
    kernel that does not keep it in fp32."""
    head = make_head(576, 2, dtype, device)
    hidden, rows = make_inputs(576, 64, dtype, device)
    x = torch.relu(torch.nn.functional.linear(hidden[rows].float(), head["w1"].float(),
                                              head["b1"].float()))
    x = x.to(torch.bfloat16).float()
    logits = torch.nn.functional.linear(x, head["w2"].float(), head["b2"].float())
    rounded = torch.softmax(logits, dim=-1)[:, 1]
    got = ops.prm_head(hidden, rows, **head)
    assert (got - rounded).abs().max().item() > 5 * ATOL


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_scores_do_not_depend_on_the_batch(device, dtype):
    """A repeated row scores the same, bit for bit, and a row scores the same alone as in a
    batch: each row's sums run in the same order wherever it sits in the tiles."""
    head = make_head(576, 2, dtype, device)
    hidden, _ = make_inputs(576, 0, dtype, device)
    rows = torch.tensor([5, 5, 0, NUM_TOKENS - 1, 5, 17, 17, 3, 9], device=device)
    got = ops.prm_head(hidden, rows, **head)
    assert got[0] == got[1] == got[4] and got[5] == got[6]
    for i in range(rows.numel()):
        assert torch.equal(ops.prm_head(hidden, rows[i:i + 1], **head), got[i:i + 1])


def test_qwen_prm_module(device):
    """The score head of Qwen2.5-Math-PRM (Linear(H, H), ReLU, Linear(H, 2)) as a module, and a
    generative PRM's two LM-head rows [negative, positive]."""
    torch.manual_seed(0)
    hidden_size = 64
    score = torch.nn.Sequential(torch.nn.Linear(hidden_size, hidden_size), torch.nn.ReLU(),
                                torch.nn.Linear(hidden_size, 2)).to(device)
    hidden, rows = make_inputs(hidden_size, 7, torch.float32, device)
    got = ops.prm_head(hidden, rows, score[2].weight, score[2].bias, score[0].weight,
                       score[0].bias)
    with torch.no_grad():
        want = torch.softmax(score(hidden[rows]), dim=-1)[:, 1]
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)

    lm_head = torch.randn(100, hidden_size, device=device) / hidden_size ** 0.5
    neg, pos = 17, 42
    got = ops.prm_head(hidden, rows, lm_head[[neg, pos]])
    want = torch.softmax(hidden[rows] @ lm_head.T, dim=-1)
    torch.testing.assert_close(got, want[:, pos] / (want[:, pos] + want[:, neg]), atol=ATOL,
                               rtol=0)


@pytest.mark.parametrize("num_classes", [1, 2])
def test_saturated_scores(device, num_classes):
    """Logits of +-200 give exactly 0 and 1, not NaN (exp overflows to inf)."""
    hidden = torch.tensor([[1.0], [-1.0]], device=device)
    w2 = torch.tensor([[200.0]] if num_classes == 1 else [[-100.0], [100.0]], device=device)
    got = ops.prm_head(hidden, torch.tensor([0, 1], device=device), w2)
    assert got.tolist() == [1.0, 0.0]


def test_strided_hidden(device):
    """Row-strided views are read in place; a view whose rows are not contiguous is copied by
    ops.prm_head and rejected by the binding."""
    head = make_head(100, 2, torch.float32, device)
    rows = torch.tensor([0, 3, 7, 7, 2], device=device)
    buf = torch.randn(NUM_TOKENS, 130, device=device)
    for hidden in (buf[:, 5:105], buf[::4, 30:]):
        assert not hidden.is_contiguous() and hidden.stride(1) == 1
        torch.testing.assert_close(ops.prm_head(hidden, rows, **head),
                                   ref_prm_head(hidden, rows, **head), atol=ATOL, rtol=0)
    transposed = torch.randn(100, NUM_TOKENS, device=device).T
    torch.testing.assert_close(ops.prm_head(transposed, rows, **head),
                               ref_prm_head(transposed, rows, **head), atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="hidden"):
        _core.prm_head(transposed, rows, head["w2"], head["b2"], head["w1"], head["b1"],
                       torch.empty(5, device=device))


@pytest.mark.parametrize("first_layer", [False, True], ids=["w2", "w1w2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_model_sizes(device, dtype, first_layer):
    """Hidden sizes of real PRMs' bases: several chunks of 512, a chunk tail (1000)."""
    for hidden_size, num_rows in ((896, 33), (1000, 5), (1536, 64)):
        head = make_head(hidden_size, 2, dtype, device, first_layer, inner_size=hidden_size)
        hidden, rows = make_inputs(hidden_size, num_rows, dtype, device)
        torch.testing.assert_close(ops.prm_head(hidden, rows, **head),
                                   ref_prm_head(hidden, rows, **head), atol=ATOL, rtol=0)


# --- bad input: a Python exception that names the argument, never a crash ---------------------

H, H1 = 16, 24


def bad_args(device="cpu", **over):
    args = dict(hidden=torch.randn(5, H, device=device),
                rows=torch.tensor([0, 4, 4], device=device),
                w2=torch.randn(2, H1, device=device), b2=torch.randn(2, device=device),
                w1=torch.randn(H1, H, device=device), b1=torch.randn(H1, device=device))
    args.update(over)
    return args


def on(device, **tensors):
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in tensors.items()}


BAD_CASES = [
    ("hidden", TypeError, dict(hidden=[[1.0] * H] * 5)),
    ("hidden", TypeError, dict(hidden=torch.randn(5, H).double())),
    ("hidden", ValueError, dict(hidden=torch.randn(5 * H))),
    ("hidden", ValueError, dict(hidden=torch.randn(1, 5, H))),
    ("rows", TypeError, dict(rows=[0, 1])),
    ("rows", TypeError, dict(rows=torch.tensor([0, 1], dtype=torch.int32))),
    ("rows", TypeError, dict(rows=torch.tensor([0.0, 1.0]))),
    ("rows", ValueError, dict(rows=torch.tensor([[0, 1]]))),
    ("rows", IndexError, dict(rows=torch.tensor([0, 5]))),
    ("rows", IndexError, dict(rows=torch.tensor([-1, 2]))),
    ("w2", TypeError, dict(w2=torch.randn(2, H1).half())),
    ("w2", ValueError, dict(w2=torch.randn(H1))),
    ("w2", ValueError, dict(w2=torch.randn(3, H1), b2=torch.randn(3))),
    ("w2", ValueError, dict(w2=torch.randn(0, H1), b2=torch.randn(0))),
    ("w2", ValueError, dict(w2=torch.randn(2, H))),
    ("w2", ValueError, dict(w1=None, b1=None)),  # w2 is [2, H1] but there is no first layer
    ("w2", ValueError, dict(w2=torch.randn(H1, 2).T)),
    ("b2", ValueError, dict(b2=torch.randn(1))),
    ("b2", ValueError, dict(b2=torch.randn(2, 1))),
    ("b2", TypeError, dict(b2=torch.randn(2).bfloat16())),
    ("w1", ValueError, dict(w1=torch.randn(H1, H + 1))),
    ("w1", ValueError, dict(w1=torch.randn(H1))),
    ("w1", TypeError, dict(w1=torch.randn(H1, H).bfloat16())),
    ("w1", ValueError, dict(w1=torch.randn(H, H1).T)),
    ("b1", ValueError, dict(w1=None, w2=torch.randn(2, H))),  # b1 without w1
    ("b1", ValueError, dict(b1=torch.randn(H1 + 1))),
    ("b1", TypeError, dict(b1=torch.randn(H1).half())),
    ("b1", TypeError, dict(b1=list(range(H1)))),
]


@pytest.mark.parametrize("name,exc,over", BAD_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(BAD_CASES)])
def test_rejects(device, name, exc, over):
    with pytest.raises(exc, match=name):
        ops.prm_head(**bad_args(device, **on(device, **over)))


@pytest.mark.parametrize("name", ["rows", "w2", "b2", "w1", "b1"])
def test_rejects_mixed_devices(name):
    args = bad_args()
    args[name] = args[name].to("meta")
    with pytest.raises(ValueError, match=name):
        ops.prm_head(**args)
    with pytest.raises(ValueError, match="hidden"):
        ops.prm_head(**bad_args(hidden=torch.randn(5, H, device="meta")))


def test_binding_rejects_bad_out_and_workspace(device):
    args = bad_args(device)
    call = [args[k] for k in ("hidden", "rows", "w2", "b2", "w1", "b1")]
    with pytest.raises(ValueError, match="out"):
        _core.prm_head(*call, torch.empty(4, device=device))
    with pytest.raises(TypeError, match="out"):
        _core.prm_head(*call, torch.empty(3, dtype=torch.float64, device=device))
    if device == "cuda":
        with pytest.raises(ValueError, match="workspace"):
            _core.prm_head(*call, torch.empty(3, device=device))
        with pytest.raises(ValueError, match="workspace"):
            _core.prm_head(*call, torch.empty(3, device=device),
                           workspace=torch.empty(3 * H1 - 1, device=device))
