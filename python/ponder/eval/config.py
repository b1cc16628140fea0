"""What a study runs: `EvalConfig` (from the command line, a YAML file or Python), each
strategy's parameters, how a budget B becomes a strategy's size, and the configuration hash
that keeps one output directory to one configuration.

Budget mapping (as search-and-learn and its_hub count it): best-of-N n = B; beam search and
DVTS n = B with width min(width, B) (width 4 by default); particle filtering and particle
Gibbs B particles; MCTS B simulations with k = min(k, B); A* B expansions with k = min(k, B).
Best-of-N and DVTS run once at their largest budget; smaller budgets take that run's first
candidates (``metrics.subsample``), as search-and-learn's ``completions[:n]`` does.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field

from ponder._validate import check_int

STRATEGIES = ("bon", "beam", "dvts", "pf", "pg", "astar", "mcts")
SPEC_NAMES = {"bon": "BestOfN", "beam": "BeamSearch", "dvts": "DVTS", "pf": "ParticleFilter",
              "pg": "ParticleGibbs", "astar": "AStar", "mcts": "MCTS"}
SUBSAMPLED = ("bon", "dvts")       # run once at the largest budget, subsampled below it
VERIFIERS = ("prm", "confidence", "equations")  # or "module:function"
# The field a budget sets, and the fields capped at it (k, width: min(value, B)).
_SIZE = {"bon": "n", "beam": "n", "dvts": "n", "pf": "n", "pg": "n", "astar": "budget",
         "mcts": "simulations"}
_CAPPED = {"beam": "width", "dvts": "width", "astar": "k", "mcts": "k"}
# Defaults that differ from the spec classes' own: the references' widths and k; and a
# CPU-sized solution length (the demo's: 8 steps of at most 64 tokens; search-and-learn's GPU
# runs allow 40 steps of 2048: --param all.max_steps=40 --param all.max_step_tokens=2048),
# since a best-of-N record waits for its longest sample.
_DEFAULTS = {"all": {"max_steps": 8, "max_step_tokens": 64}, "beam": {"width": 4},
             "dvts": {"width": 4}, "astar": {"k": 4}, "mcts": {"k": 4}}

# The demo's prompt: small instruct models follow it, and "The answer is N." is extracted.
DEFAULT_SYSTEM_PROMPT = ("Solve the math problem step by step. Put each step on its own line, "
                         "separated by a blank line. End with 'The answer is N.'")


@dataclass
class EvalConfig:
    model: str
    data: str
    out: str
    strategies: list[str] = field(default_factory=lambda: ["bon", "beam", "pf"])
    budgets: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16])
    seeds: list[int] = field(default_factory=lambda: [0])
    prm: str | None = None
    prm_format: str | None = None
    verifier: str | None = None          # default: "prm" with a PRM, else "confidence"
    limit: int | None = None
    shuffle_seed: int | None = None
    question_field: str = "problem"
    answer_field: str = "answer"
    id_field: str | None = None
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT
    params: dict = field(default_factory=dict)   # strategy (or "all") -> {field: value}
    dtype: str = "float32"
    device: str = "cpu"
    kv_blocks: int | None = None
    concurrency: int = 64
    workers: int = 0                     # > 0: that many Ray engine actors on a local Ray
    ray: str | None = None               # address of a Ray cluster to join
    force: bool = False
    quiet: bool = False

    def __post_init__(self):
        for name in ("model", "data", "out"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"{name} must be a non-empty str")
        self.strategies = _names(self.strategies)
        self.budgets = _int_list("budgets", self.budgets, 1)
        self.seeds = _int_list("seeds", self.seeds, 0)
        if self.verifier is None:
            self.verifier = "prm" if self.prm else "confidence"
        if not isinstance(self.verifier, str) or (self.verifier not in VERIFIERS
                                                  and ":" not in self.verifier):
            raise ValueError(f"verifier must be one of {', '.join(VERIFIERS)} or "
                             f"MODULE:FUNCTION, got {self.verifier!r}")
        if self.verifier == "prm" and not self.prm:
            raise ValueError("verifier 'prm' needs --prm PATH (or 'self')")
        if self.limit is not None:
            self.limit = check_int("limit", self.limit, 1)
        if self.system_prompt is not None and not isinstance(self.system_prompt, str):
            raise ValueError("system_prompt must be a str or null")
        self.concurrency = check_int("concurrency", self.concurrency, 1)
        self.workers = check_int("workers", self.workers, 0)
        if not isinstance(self.params, dict):
            raise ValueError("params must be a mapping of strategy -> {field: value}")
        for key, value in self.params.items():
            if key != "all" and key not in STRATEGIES:
                raise ValueError(f"params: unknown strategy {key!r} (choose from all, "
                                 f"{', '.join(STRATEGIES)})")
            if not isinstance(value, dict):
                raise ValueError(f"params[{key!r}] must be a mapping of field -> value")
        for strategy in self.strategies:  # every (strategy, budget) must make a valid spec
            for budget in self.budgets:
                make_spec(strategy, budget, self.seeds[0], self.strategy_params(strategy))

    # --- strategies ---------------------------------------------------------------------
    def strategy_params(self, strategy: str) -> dict:
        """The strategy's parameters before a budget is applied: its spec class's defaults,
        the references' widths, then params["all"] and params[strategy]."""
        import ponder

        cls = getattr(ponder, SPEC_NAMES[strategy])
        out = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
               for f in dataclasses.fields(cls)}
        out.update(_DEFAULTS["all"])
        out.update(_DEFAULTS.get(strategy, {}))
        known = set(out)
        for source in ("all", strategy):
            for key, value in self.params.get(source, {}).items():
                if key not in known:
                    if source == "all":
                        continue  # "all" may name fields only some strategies have
                    raise ValueError(f"params[{strategy!r}]: {SPEC_NAMES[strategy]} has no "
                                     f"field {key!r} (fields: {', '.join(sorted(known))})")
                if key in ("seed", _SIZE[strategy]):
                    raise ValueError(f"params[{source!r}]: {key!r} is set by the budget and "
                                     f"the seeds, not by params")
                out[key] = value
        out.pop("seed")
        out.pop(_SIZE[strategy])
        return out

    def run_budgets(self, strategy: str) -> list[int]:
        """The budgets actually run: the largest only for subsampled strategies."""
        return [max(self.budgets)] if strategy in SUBSAMPLED else list(self.budgets)

    # --- identity -----------------------------------------------------------------------
    def common(self) -> dict:
        """What every record's content depends on besides its strategy's parameters (the
        budgets, seeds, limit and strategy list only choose which records exist)."""
        return {"model": self.model, "dtype": self.dtype, "prm": self.prm,
                "prm_format": self.prm_format, "verifier": self.verifier,
                "system_prompt": self.system_prompt, "data": _data_identity(self),
                "question_field": self.question_field, "answer_field": self.answer_field,
                "id_field": self.id_field, "shuffle_seed": self.shuffle_seed}

    def config_hash(self, strategy: str) -> str:
        blob = json.dumps({"common": self.common(), "strategy": strategy,
                           "params": self.strategy_params(strategy)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def identity(self) -> dict:
        return {"common": self.common(),
                "strategies": {s: self.strategy_params(s) for s in self.strategies}}


def make_spec(strategy: str, budget: int, seed: int, params: dict):
    """The search spec of one (strategy, budget, seed), with the budget mapped as the
    references count it; a parameter the spec rejects is a ValueError naming the strategy
    and budget."""
    import ponder

    kw = dict(params)
    kw[_SIZE[strategy]] = budget
    if strategy in _CAPPED:
        kw[_CAPPED[strategy]] = min(kw[_CAPPED[strategy]], budget)
    if strategy == "pg":   # reference particles: at least one particle must be new
        kw["num_ref_particles"] = min(kw["num_ref_particles"], budget - 1)
    try:
        return getattr(ponder, SPEC_NAMES[strategy])(seed=seed, **kw)
    except (TypeError, ValueError) as e:
        raise ValueError(f"strategy {strategy} at budget {budget}: {e}") from None


def spec_params(spec) -> dict:
    """A spec's fields as a JSON-able dict (what a record's ``params`` holds)."""
    return {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec) if f.name != "seed"}


def compatible(old: dict, new: dict) -> list[str]:
    """What differs between a directory's stored identity and this run's: the common part,
    and the parameters of every strategy both name. Empty: the run may resume there."""
    diffs = [f"{k}: {old['common'].get(k)!r} -> {v!r}" for k, v in new["common"].items()
             if old["common"].get(k) != v]
    for s, params in new["strategies"].items():
        if s in old["strategies"] and old["strategies"][s] != params:
            diffs.append(f"params of {s}: {old['strategies'][s]} -> {params}")
    return diffs


def from_yaml(path: str, overrides: dict) -> EvalConfig:
    """An EvalConfig from a YAML file (the same keys as the command line's long options,
    with underscores), the command line's explicitly given options overriding it (--param
    fields merged into the file's params)."""
    import yaml

    with open(path, encoding="utf-8") as f:
        raw = yaml.safe_load(f) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: the configuration must be a mapping of option -> value")
    names = {f.name for f in dataclasses.fields(EvalConfig)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ValueError(f"{path}: unknown option(s) {', '.join(unknown)} (known: "
                         f"{', '.join(sorted(names))})")
    overrides = dict(overrides)
    if isinstance(raw.get("params"), dict) and "params" in overrides:
        merged = {k: dict(v) if isinstance(v, dict) else v for k, v in raw["params"].items()}
        for strategy, fields in overrides.pop("params").items():
            merged.setdefault(strategy, {}).update(fields)
        raw["params"] = merged
    raw.update(overrides)
    for name in ("strategies", "budgets", "seeds"):
        if isinstance(raw.get(name), str):
            raw[name] = raw[name].split(",")
    missing = [n for n in ("model", "data", "out") if n not in raw]
    if missing:
        raise ValueError(f"{path}: missing {', '.join(missing)}")
    return EvalConfig(**raw)


def _names(strategies) -> list[str]:
    if isinstance(strategies, str):
        strategies = strategies.split(",")
    out = []
    for s in strategies:
        s = str(s).strip()
        if s not in STRATEGIES:
            raise ValueError(f"strategies: unknown strategy {s!r} (choose from "
                             f"{', '.join(STRATEGIES)})")
        if s not in out:
            out.append(s)
    if not out:
        raise ValueError("strategies is empty")
    return out


def _int_list(name: str, values, lo: int) -> list[int]:
    if isinstance(values, (str, int)):
        values = str(values).split(",")
    out = []
    for v in values:
        try:
            iv = int(str(v).strip())
        except ValueError:
            raise ValueError(f"{name} must be integers, got {v!r}") from None
        if iv < lo:
            raise ValueError(f"{name} must be >= {lo}, got {iv}")
        if iv not in out:
            out.append(iv)
    if not out:
        raise ValueError(f"{name} is empty")
    return sorted(out)


def _data_identity(cfg: EvalConfig) -> dict:
    from ponder.eval.data import resolve_path

    path = resolve_path(cfg.data)
    ident = {"path": os.path.basename(os.path.normpath(path))}
    if os.path.isfile(path):
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        ident["sha256"] = h.hexdigest()[:16]
    return ident
