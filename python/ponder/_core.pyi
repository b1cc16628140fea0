"""
ponder's compiled core: paged KV kernels (CPU, CUDA) and the KV block manager.
"""

from collections.abc import Sequence
from typing import Annotated

import numpy
from numpy.typing import NDArray


def cuda_built() -> bool:
    """Whether this build has CUDA kernels."""

def cuda_device_count() -> int:
    """
    CUDA devices visible to the CUDA runtime (0 without a build, driver or device).
    """

def cuda_num_sms(device: int) -> int: ...

def get_num_threads() -> int:
    """Threads the CPU kernels use (the OpenMP runtime shared with torch)."""

def set_num_threads(n: int) -> None: ...

def paged_attention_num_splits(num_tokens: int, num_heads: int, num_kv_heads: int, max_seq_len: int, num_sms: int) -> int: ...

def paged_attention_workspace_floats(num_tokens: int, num_heads: int, head_dim: int, num_splits: int) -> int: ...

def paged_kv_append(key: object | None, value: object | None, k_cache: object | None, v_cache: object | None, slot_mapping: object | None, stream: int = 0) -> None: ...

def paged_attention(query: object | None, k_cache: object | None, v_cache: object | None, block_tables: object | None, seq_lens: object | None, cu_query_lens: object | None, out: object | None, scale: float, max_seq_len: int = 0, workspace: object | None = None, num_splits: int = 1, stream: int = 0) -> None: ...

def copy_blocks(k_caches: object | None, v_caches: object | None, src: object | None, dst: object | None, stream: int = 0) -> None: ...

class BlockPool:
    """
    Fixed pool of KV block ids with reference counts. allocate() returns -1 when the pool is exhausted.
    """

    def __init__(self, num_blocks: int) -> None: ...

    @property
    def num_blocks(self) -> int: ...

    @property
    def num_free(self) -> int: ...

    @property
    def num_used(self) -> int: ...

    @property
    def peak_used(self) -> int: ...

    def allocate(self) -> int: ...

    def allocate_many(self, n: int) -> object:
        """n blocks, or None (and nothing taken) when fewer are free."""

    def incref(self, block: int) -> None: ...

    def decref(self, block: int) -> None: ...

    def ref_count(self, block: int) -> int: ...

class KvCacheManager:
    """
    Sequences as block tables with fork, copy-on-write and a prefix cache. Hands out block ids and slots; the caller owns the tensors.
    """

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_cache: bool = True) -> None: ...

    @property
    def block_size(self) -> int: ...

    @property
    def num_blocks(self) -> int: ...

    @property
    def num_free_blocks(self) -> int: ...

    def match_prefix(self, token_ids: Annotated[NDArray[numpy.int32], dict(shape=(None,), order='C', device='cpu', writable=False)]) -> int: ...

    def create(self, token_ids: Annotated[NDArray[numpy.int32], dict(shape=(None,), order='C', device='cpu', writable=False)]) -> int:
        """
        New sequence holding the cached whole-block prefix of token_ids; its length() is the number of tokens taken from the cache.
        """

    def blocks_needed(self, seq_id: int, num_tokens: int) -> int: ...

    def append(self, seq_id: int, token_ids: Annotated[NDArray[numpy.int32], dict(shape=(None,), order='C', device='cpu', writable=False)]) -> object:
        """
        (slots int64 [n], copies int64 [k, 2]) or None when the pool is out of blocks (the sequence is then unchanged). Apply copies with copy_blocks before writing slots.
        """

    def fork(self, seq_id: int, pos: int) -> int: ...

    def truncate(self, seq_id: int, pos: int) -> None: ...

    def free(self, seq_id: int) -> None: ...

    def uncache(self, seq_id: int) -> None:
        """
        Drops the sequence's blocks from the prefix cache (their KV may be wrong: a forward pass that failed after append registered them).
        """

    def free_many(self, seq_ids: Sequence[int]) -> None:
        """Frees a set of sequences (a pruned subtree) at once."""

    def length(self, seq_id: int) -> int: ...

    def block_table(self, seq_id: int) -> list[int]: ...

    def token_ids(self, seq_id: int) -> list[int]: ...

    def block_tables(self, seq_ids: Sequence[int], min_width: int = 0) -> NDArray[numpy.int32]:
        """
        int32 [len(seq_ids), width] block tables padded with 0, width >= min_width.
        """

    def ref_count(self, block: int) -> int: ...

    def contains(self, seq_id: int) -> bool: ...

    def sequence_ids(self) -> list[int]: ...

    def reset_peak(self) -> None: ...

    def stats(self) -> dict:
        """Block and prefix-cache counters as a dict."""

class StopState:
    """
    Where one sequence stands in a StopMatcher: its matcher node and the bytes it has output. Fork a sequence with copy().
    """

    def __init__(self) -> None: ...

    @property
    def num_bytes(self) -> int:
        """Bytes fed so far (the offset the next token's bytes start at)."""

    def copy(self) -> StopState: ...

    def __copy__(self) -> StopState: ...

    def __deepcopy__(self, memo: object) -> StopState: ...

    def reset(self) -> None: ...

    def __repr__(self) -> "std::__cxx11::basic_string<char, std::char_traits<char>, std::allocator<char> >": ...

class StopMatcher:
    """
    Finds stop strings in the bytes a token sequence decodes to, across token boundaries. vocab[i] is the bytes token i adds to the text (Tokenizer.token_bytes()); stops are non-empty byte strings. Holds no per-sequence state: each sequence carries a StopState.
    """

    def __init__(self, vocab: object, stops: object) -> None: ...

    @property
    def vocab_size(self) -> int: ...

    @property
    def num_stops(self) -> int: ...

    @property
    def max_stop_len(self) -> int: ...

    def feed(self, state: StopState, token_id: int) -> int:
        """
        Appends token_id's bytes to state's sequence. Returns the byte offset (in the whole output of the sequence) where the earliest stop string ending in these bytes starts, or -1.
        """

    def feed_many(self, states: list, token_ids: Sequence[int]) -> list[int]:
        """
        feed() for many sequences at once: states[i] takes token_ids[i]. A state listed twice takes its tokens in order.
        """

def sample(logits: object | None, temperature: object | None, top_k: object | None, top_p: object | None, min_p: object | None, seeds: object | None, seq_ids: object | None, positions: object | None, tokens: object | None, logprobs: object | None, top_ids: object | None, top_logprobs: object | None, num_logprobs: int = 0, stream: int = 0) -> None:
    """Sample one token per row of logits (see ponder.ops.sample)."""

class BeamSearch:
    """
    Token-level beam search for one prompt, equal to transformers' generate(num_beams=width, do_sample=False) token for token and score for score. The caller runs the model: each step() takes the next-token log-probs of the running beams (float32 [num_running, vocab], log_softmax of the logits; one row, the prompt, at the first step) and returns (parents, tokens): the next running beams, beam j = running beam parents[j] + tokens[j] (both empty once done). finalize() returns [(generated token ids, score)], best first.
    """

    def __init__(self, width: int, max_new_tokens: int, length_penalty: float = 1.0, early_stopping: object | None = False, eos_token_ids: object | None = None, num_return: int = 1) -> None: ...

    @property
    def width(self) -> int: ...

    @property
    def max_new_tokens(self) -> int: ...

    @property
    def length_penalty(self) -> float: ...

    @property
    def early_stopping(self) -> str:
        """"true", "false" or "never"."""

    @property
    def eos_token_ids(self) -> list[int]: ...

    @property
    def num_return(self) -> int: ...

    @property
    def num_candidates(self) -> int:
        """Candidates ranked per step: max(2, 1 + len(eos_token_ids)) * width."""

    @property
    def num_running(self) -> int:
        """
        Rows the next step() takes: 1 before the first step, width while running, 0 once done.
        """

    @property
    def num_steps(self) -> int:
        """Steps taken = tokens generated per beam."""

    @property
    def num_finished(self) -> int: ...

    @property
    def done(self) -> bool: ...

    def step(self, logprobs: Annotated[NDArray, dict(device='none')]) -> tuple:
        """
        logprobs: float32 [num_running, vocab_size], C-contiguous, on the CPU. Returns (parents int64 [k], tokens int64 [k]), k = width while running and 0 once done: the next running beams, best first; beam j continues running beam parents[j] (a row of logprobs) with tokens[j].
        """

    def finalize(self) -> list[tuple[list[int], float]]:
        """
        [(token_ids, score)] * num_return, best first, once done. token_ids are the generated tokens (the eos token included when one ended the beam); score is the float32 sum of their log-probs / len(token_ids) ** length_penalty, HF's sequences_scores.
        """

    def __repr__(self) -> str: ...

LINEAR_MAX_ROWS: int = 16

LINEAR_HAS_BF16_DOT: bool = True

def linear(x: object | None, weight: object | None, bias: object | None, out: object | None, bf16_dot: bool = True) -> None:
    """
    out = x @ weight.T + bias for at most 16 rows of x (CPU). bf16_dot: bf16 through avx512_bf16 dot products where available (else widened to fp32).
    """

def rms_norm(x: object | None, weight: object | None, eps: float, residual: object | None, out: object | None) -> None:
    """
    out = RMSNorm(x) * weight; with residual: residual += x first, then its norm.
    """

def rotary(q: object | None, k: object | None, cos: object | None, sin: object | None, positions: object | None) -> None:
    """Rotary embedding applied in place to q and k."""

def silu_and_mul(gate_up: object | None, out: object | None) -> None:
    """out = silu(gate) * up for gate_up = [gate | up]."""

def prm_head(hidden: object | None, rows: object | None, w2: object | None, b2: object | None, w1: object | None, b1: object | None, out: object | None, workspace: object | None = None, stream: int = 0, simd: bool = True, bf16_dot: bool = True) -> None:
    """
    out[r] = score of hidden[rows[r]]: sigmoid (one class) or softmax(.)[1] (two) of w2 @ relu(w1 @ x + b1) + b2, or of w2 @ x + b2 without w1. workspace: CUDA with w1, float32 [len(rows) * w1.shape[0]]. simd / bf16_dot = False select the CPU's slower paths (for tests).
    """

class DecodeLayers:
    """
    A Llama-family decoder stack for decode steps on the CPU: weights checked once, one call per step (see ponder.ops.DecodeLayers).
    """

    def __init__(self, layers: object, final_norm: object | None, eps: float, scale: float, num_heads: int, num_kv_heads: int, head_dim: int) -> None: ...

    def forward(self, x: object | None, out: object | None, cos: object | None, sin: object | None, positions: object | None, slot_mapping: object | None, block_tables: object | None, seq_lens: object | None, k_caches: object, v_caches: object) -> None:
        """
        out = final_norm(layers(x)) for one decode token per sequence; writes each token's K/V into the caches.
        """

    @property
    def num_layers(self) -> int: ...

class SearchNode:
    """One step of a search (read-only view)."""

    @property
    def id(self) -> int: ...

    @property
    def parent(self) -> int: ...

    @property
    def children(self) -> list[int]: ...

    @property
    def depth(self) -> int: ...

    @property
    def num_tokens(self) -> int: ...

    @property
    def logprob_sum(self) -> float: ...

    @property
    def finished(self) -> bool: ...

    @property
    def scored(self) -> bool: ...

    @property
    def score(self) -> float: ...

    @property
    def path_scores(self) -> list[float]: ...

    @property
    def answer(self) -> str: ...

    @property
    def visits(self) -> int: ...

    @property
    def value_sum(self) -> float: ...

    @property
    def prior(self) -> float: ...

    @property
    def pruned(self) -> bool: ...

class SearchTree:
    def __len__(self) -> int: ...

    def node(self, id: int) -> SearchNode: ...

    def add_child(self, parent: int, num_tokens: int, logprob_sum: float, finished: bool) -> int: ...

    def set_score(self, id: int, score: float) -> None:
        """
        The verifier's score of this node's step (appended to its path scores).
        """

    def set_path_scores(self, id: int, scores: Sequence[float]) -> None: ...

    def set_answer(self, id: int, answer: str) -> None: ...

    def set_prior(self, id: int, prior: float) -> None: ...

    def path(self, id: int) -> list[int]: ...

    @property
    def total_tokens(self) -> int: ...

class Strategy:
    """A search algorithm as a state machine (see strategy.h)."""

    @property
    def name(self) -> str: ...

    @property
    def tree(self) -> SearchTree: ...

    def plan(self) -> list[tuple[int, int]]:
        """[(node, num_children)] to expand next; [] once done."""

    def needs_score(self, id: int) -> bool: ...

    def observe(self, children: Sequence[int]) -> None: ...

    @property
    def done(self) -> bool: ...

    def ranking(self) -> list[int]:
        """Finished solutions, best first."""

    def take_released(self) -> list[int]:
        """Nodes that will not be expanded again since the last call."""

    def count_score_calls(self, n: int) -> None: ...

    @property
    def score_calls(self) -> int: ...

    @property
    def over_budget(self) -> bool: ...

    @property
    def max_steps(self) -> int: ...

class BestOfNStrategy(Strategy):
    def __init__(self, n: int, aggregation: str = 'last', select: str = 'naive', max_tokens: int = 0, max_score_calls: int = 0, max_steps: int = 40) -> None: ...

class BeamSearchStrategy(Strategy):
    """
    Step-level beam search with a verifier (huggingface/search-and-learn semantics).
    """

    def __init__(self, n: int, width: int, lookahead: int = 0, filter_duplicates: bool = True, aggregation: str = 'last', select: str = 'naive', max_tokens: int = 0, max_score_calls: int = 0, max_steps: int = 40) -> None: ...

class DVTSStrategy(Strategy):
    """Diverse verifier tree search (huggingface/search-and-learn semantics)."""

    def __init__(self, n: int, width: int, aggregation: str = 'last', select: str = 'naive', max_tokens: int = 0, max_score_calls: int = 0, max_steps: int = 40) -> None: ...

class ParticleResampling:
    """
    One resampling of a particle population (round >= 1), or the draw of the reference particles at the end of an iteration (round 0).
    """

    @property
    def iteration(self) -> int: ...

    @property
    def round(self) -> int: ...

    @property
    def nodes(self) -> list[int]: ...

    @property
    def log_weights(self) -> list[float]: ...

    @property
    def weights(self) -> list[float]: ...

    @property
    def indices(self) -> list[int]: ...

class ParticleGibbsStrategy(Strategy):
    def __init__(self, n: int, iterations: int, temperature: float = 1.0, seed: int = 0, aggregation: str = 'last', num_ref_particles: int = 1, max_tokens: int = 0, max_score_calls: int = 0, max_steps: int = 40) -> None:
        """
        its_hub's ParticleGibbs: `iterations` rounds of particle filtering with n particles each, num_ref_particles of which are references kept from the last.
        """

    @property
    def particles(self) -> list[int]:
        """The population's last nodes, in particle order."""

    @property
    def history(self) -> list[ParticleResampling]:
        """Every resampling so far, in order."""

    def log_weight(self, node: int) -> float:
        """logit of the node's clipped aggregated score."""

class ParticleFilterStrategy(ParticleGibbsStrategy):
    def __init__(self, n: int, temperature: float = 1.0, seed: int = 0, aggregation: str = 'last', max_tokens: int = 0, max_score_calls: int = 0, max_steps: int = 40) -> None:
        """its_hub's ParticleFiltering: n particles, resampled after every step."""

class AStarStrategy(Strategy):
    """
    A*-decoding: pop the open node with the lowest f = depth_cost * depth + (1 - score), expand it with k children, stop at the first terminal node popped or after `budget` expansions.
    """

    def __init__(self, k: int, budget: int, depth_cost: float = 0.0, max_tokens: int = 0, max_score_calls: int = 0, max_steps: int = 40) -> None: ...

    def f(self, id: int) -> float:
        """The node's priority g + h (lower pops first)."""

    @property
    def expansions(self) -> int: ...

    @property
    def solution(self) -> int:
        """The terminal node popped (the answer), -1 if the budget ran out first."""

class MCTSStrategy(Strategy):
    """
    MCTS with openr's semantics: PUCT selection, priors from the steps' mean token log-probabilities, optional root Dirichlet noise, k children per expansion, verifier scores as values, mean backup; the answer follows the most visited path.
    """

    def __init__(self, simulations: int, k: int, c_puct: float = 1.25, dirichlet: float = 0.0, seed: int = 0, max_tokens: int = 0, max_score_calls: int = 0, max_steps: int = 40) -> None: ...

    @property
    def simulations_done(self) -> int: ...

    def q(self, id: int) -> float:
        """Mean backed-up value (the score if unvisited)."""

def philox_gamma(alpha: float, seed: int, seq_id: int) -> float:
    """
    One Gamma(alpha, 1) draw (Marsaglia-Tsang from Philox uniforms; see mcts.h).
    """
