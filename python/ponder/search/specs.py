"""Search strategy specifications. Each builds its C++ state machine (ponder._core); the
engine drives it. Fields shared by all strategies:

max_steps: steps in a solution; max_tokens: generated-token budget of the whole search
(0: none); max_score_calls: verifier/PRM calls (0: none); step_stop: strings that end a step
(found across token boundaries); max_step_tokens: tokens in one step; policy_temperature,
top_p: the policy's sampling; seed: the search's random stream.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ponder import _core


@dataclass
class SearchSpec:
    max_steps: int = 40
    max_tokens: int = 0
    max_score_calls: int = 0
    step_stop: list[str] = field(default_factory=lambda: ["\n\n"])
    max_step_tokens: int = 256
    policy_temperature: float = 0.8
    top_p: float = 1.0
    seed: int | None = None

    def _check_common(self):
        if not isinstance(self.max_steps, int) or self.max_steps < 1:
            raise ValueError(f"max_steps must be an int >= 1, got {self.max_steps!r}")
        if self.max_tokens < 0 or self.max_score_calls < 0:
            raise ValueError("max_tokens and max_score_calls must be >= 0 (0: unlimited)")
        if not isinstance(self.max_step_tokens, int) or self.max_step_tokens < 1:
            raise ValueError(f"max_step_tokens must be an int >= 1, got {self.max_step_tokens!r}")
        if isinstance(self.step_stop, str):
            self.step_stop = [self.step_stop]
        if not self.step_stop or any(not isinstance(s, str) or not s for s in self.step_stop):
            raise ValueError("step_stop must hold non-empty strings")
        if not self.policy_temperature > 0:
            raise ValueError(f"policy_temperature must be > 0 for search, got "
                             f"{self.policy_temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")

    def _positive_ints(self, *names: str) -> None:
        for name in names:
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")

    def _check_width(self) -> None:
        self._positive_ints("n", "width")
        if self.n % self.width:
            raise ValueError(f"n ({self.n}) must be a multiple of width ({self.width})")

    def _budget(self) -> dict:
        return dict(max_tokens=self.max_tokens, max_score_calls=self.max_score_calls,
                    max_steps=self.max_steps)

    def build(self):
        raise NotImplementedError


@dataclass
class BestOfN(SearchSpec):
    """n independent solutions, scored and aggregated, one selected (search-and-learn)."""

    n: int = 16
    aggregation: str = "last"
    select: str = "naive"

    def __post_init__(self):
        self._check_common()
        self._positive_ints("n")
        if self.aggregation not in ("last", "min", "prod", "mean"):
            raise ValueError(f"aggregation must be last, min, prod or mean, got "
                             f"{self.aggregation!r}")
        if self.select not in ("naive", "weighted", "majority"):
            raise ValueError(f"select must be naive, weighted or majority, got {self.select!r}")

    def build(self):
        return _core.BestOfNStrategy(self.n, self.aggregation, self.select, **self._budget())


@dataclass
class ParticleFilter(SearchSpec):
    """Particle filtering (its_hub): n particles extended a step at a time, weighted by the
    logit of their aggregated score, softmax(/temperature), resampled every step."""

    n: int = 16
    temperature: float = 1.0  # of the resampling softmax (the policy's: policy_temperature)
    aggregation: str = "last"

    def __post_init__(self):
        self._check_common()
        self._positive_ints("n")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}")

    def build(self):
        return _core.ParticleFilterStrategy(self.n, self.temperature,
                                            _seed64(self.seed), self.aggregation,
                                            **self._budget())


@dataclass
class ParticleGibbs(SearchSpec):
    """Particle Gibbs (its_hub): `iterations` rounds of particle filtering, each keeping
    reference particles drawn from the previous round."""

    n: int = 16
    iterations: int = 4
    temperature: float = 1.0  # of the resampling softmax
    aggregation: str = "last"
    num_ref_particles: int = 1

    def __post_init__(self):
        self._check_common()
        self._positive_ints("n", "iterations")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}")

    def build(self):
        return _core.ParticleGibbsStrategy(self.n, self.iterations, self.temperature,
                                           _seed64(self.seed), self.aggregation,
                                           self.num_ref_particles, **self._budget())


def _seed64(seed: int | None) -> int:
    return 0 if seed is None else seed % 2**64


@dataclass
class BeamSearch(SearchSpec):
    """Step-level beam search (search-and-learn): n active beams; each round keeps the top
    n/width by score and expands each kept beam into width next steps; finished beams leave
    the pool."""

    n: int = 16
    width: int = 4
    lookahead: int = 0
    filter_duplicates: bool = True
    aggregation: str = "last"
    select: str = "naive"

    def __post_init__(self):
        self._check_common()
        self._check_width()
        if self.lookahead != 0:
            raise ValueError("lookahead > 0 is not supported: search-and-learn never scores the "
                             "lookahead text, and a step expansion cannot ask for greedy rollouts")

    def build(self):
        return _core.BeamSearchStrategy(self.n, self.width, self.lookahead,
                                        self.filter_duplicates, self.aggregation, self.select,
                                        **self._budget())


@dataclass
class DVTS(SearchSpec):
    """Diverse verifier tree search (search-and-learn): n/width independent subtrees, each
    greedy by score, expanding its best step into width children per round."""

    n: int = 16
    width: int = 4
    aggregation: str = "last"
    select: str = "naive"

    def __post_init__(self):
        self._check_common()
        self._check_width()

    def build(self):
        return _core.DVTSStrategy(self.n, self.width, self.aggregation, self.select,
                                  **self._budget())


@dataclass
class AStar(SearchSpec):
    """A*-style best-first search: pop the open node with the lowest f = g + h, h = 1 - score
    of its latest step, g = depth_cost * depth (0: greedy best-first on the verifier; see
    csrc/core/search/astar.h for why), expand it with k sampled steps; stop at the first
    finished solution popped or after `budget` expansions."""

    k: int = 4
    budget: int = 32
    depth_cost: float = 0.0

    def __post_init__(self):
        self._check_common()
        self._positive_ints("k", "budget")

    def build(self):
        return _core.AStarStrategy(self.k, self.budget, self.depth_cost, **self._budget())


@dataclass
class MCTS(SearchSpec):
    """Monte Carlo tree search (openr): PUCT selection with priors from the children's mean
    token log-probabilities, Dirichlet noise at the root, k-way expansion, the new node's
    verifier score as its value, mean backup; the answer follows the most visited path."""

    simulations: int = 16
    k: int = 4
    c_puct: float = 1.25
    dirichlet: float = 0.0

    def __post_init__(self):
        self._check_common()
        self._positive_ints("simulations", "k")
        if self.c_puct < 0 or self.dirichlet < 0:
            raise ValueError("c_puct and dirichlet must be >= 0")

    def build(self):
        return _core.MCTSStrategy(self.simulations, self.k, self.c_puct, self.dirichlet,
                                  _seed64(self.seed), **self._budget())
