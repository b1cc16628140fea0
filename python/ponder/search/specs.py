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
from ponder._validate import (
    INT32_MAX,
    INT64_MAX,
    check_bool,
    check_choice,
    check_float,
    check_int,
    check_seed,
    check_strings,
)

# What the C++ parses (csrc/core/search/tree.cpp, selection.cpp), checked here at construction.
CHOICES = {"aggregation": ("last", "min", "prod", "mean"),
           "select": ("naive", "weighted", "majority")}


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

    def __post_init__(self):
        self._check_common()

    def _check_common(self):
        """Checks the shared fields; every strategy's __post_init__ calls it first. Counts
        the C++ strategies hold as int32 are capped at 2**31 - 1, so that a huge one is a
        ValueError here rather than an overflow in the binding at build()."""
        if type(self) is SearchSpec:
            raise TypeError("SearchSpec is the base of the search strategies and is not one "
                            "itself: use ponder.BestOfN, BeamSearch, DVTS, ParticleFilter, "
                            "ParticleGibbs, AStar or MCTS")
        self.max_steps = check_int("max_steps", self.max_steps, 1, INT32_MAX)
        self.max_tokens = check_int("max_tokens", self.max_tokens, 0, INT64_MAX)
        self.max_score_calls = check_int("max_score_calls", self.max_score_calls, 0, INT64_MAX)
        self.step_stop = check_strings("step_stop", self.step_stop, allow_empty_list=False)
        self.max_step_tokens = check_int("max_step_tokens", self.max_step_tokens, 1)
        self.policy_temperature = check_float("policy_temperature", self.policy_temperature,
                                              0.0, lo_open=True)
        self.top_p = check_float("top_p", self.top_p, 0.0, 1.0, lo_open=True)
        self.seed = check_seed("seed", self.seed)

    def _positive_ints(self, *names: str) -> None:
        for name in names:
            setattr(self, name, check_int(name, getattr(self, name), 1, INT32_MAX))

    def _check_width(self) -> None:
        self._positive_ints("n", "width")
        if self.n % self.width:
            raise ValueError(f"n ({self.n}) must be a multiple of width ({self.width})")

    def _choices(self, *names: str) -> None:
        for name in names:
            setattr(self, name, check_choice(name, getattr(self, name), CHOICES[name]))

    def _check_resampling(self) -> None:
        self.temperature = check_float("temperature", self.temperature, 0.0, lo_open=True)

    def _budget(self) -> dict:
        return dict(max_tokens=self.max_tokens, max_score_calls=self.max_score_calls,
                    max_steps=self.max_steps)

    def build(self):
        raise NotImplementedError(f"{type(self).__name__} does not define build(): a search "
                                  f"strategy subclass must return its _core strategy")


@dataclass
class BestOfN(SearchSpec):
    """n independent solutions, scored and aggregated, one selected (search-and-learn)."""

    n: int = 16
    aggregation: str = "last"
    select: str = "naive"

    def __post_init__(self):
        self._check_common()
        self._positive_ints("n")
        self._choices("aggregation", "select")

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
        self._check_resampling()
        self._choices("aggregation")

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
        self._check_resampling()
        self._choices("aggregation")
        # The reference particles are kept from the last iteration: at least one must be new.
        self.num_ref_particles = check_int("num_ref_particles", self.num_ref_particles, 0,
                                           self.n - 1)

    def build(self):
        return _core.ParticleGibbsStrategy(self.n, self.iterations, self.temperature,
                                           _seed64(self.seed), self.aggregation,
                                           self.num_ref_particles, **self._budget())


def _seed64(seed: int | None) -> int:
    return 0 if seed is None else seed  # checked to be in [0, 2**63) at construction


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
        self._choices("aggregation", "select")
        self.filter_duplicates = check_bool("filter_duplicates", self.filter_duplicates)
        if check_int("lookahead", self.lookahead) != 0:
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
        self._choices("aggregation", "select")

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
        self._positive_ints("k")
        self.budget = check_int("budget", self.budget, 1, INT64_MAX)
        self.depth_cost = check_float("depth_cost", self.depth_cost, 0.0)

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
        self.c_puct = check_float("c_puct", self.c_puct, 0.0)
        self.dirichlet = check_float("dirichlet", self.dirichlet, 0.0)

    def build(self):
        return _core.MCTSStrategy(self.simulations, self.k, self.c_puct, self.dirichlet,
                                  _seed64(self.seed), **self._budget())
