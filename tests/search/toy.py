"""A scripted toy policy and a deterministic verifier for strategy tests.

A step is a label from a small alphabet. The next step's distribution depends only on the
path so far, and a child's sample is keyed by (path, child ordinal), so a strategy and its
reference implementation see the same samples whatever order they expand nodes in.
Labels "A".."D" are ordinary steps, "=x" ends the solution with answer x. The verifier
scores a step from the path's labels alone (a fixed hash), so scores are reproducible.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

LABELS = ["A", "B", "C", "D", "=1", "=2", "=3"]


def _h(*parts) -> float:
    d = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(d[:8], "little") / 2**64


@dataclass(frozen=True)
class Step:
    label: str
    num_tokens: int
    logprob: float

    @property
    def finished(self) -> bool:
        return self.label.startswith("=")

    @property
    def answer(self) -> str:
        return self.label[1:] if self.finished else ""


class ToyLM:
    def __init__(self, seed: int = 0, end_bias: float = 0.15):
        self.seed, self.end_bias = seed, end_bias

    def probs(self, path: tuple[str, ...]) -> list[float]:
        w = [0.2 + _h(self.seed, "w", path, lab) for lab in LABELS]
        for i, lab in enumerate(LABELS):
            if lab.startswith("="):
                w[i] *= self.end_bias * (1 + len(path))
        s = sum(w)
        return [x / s for x in w]

    def sample(self, path: tuple[str, ...], ordinal: int) -> Step:
        p = self.probs(path)
        u = _h(self.seed, "u", path, ordinal)
        acc = 0.0
        for lab, q in zip(LABELS, p, strict=True):  # noqa: B007 (lab is the sampled label)
            acc += q
            if u < acc:
                break
        n = 1 + int(_h(self.seed, "n", path, ordinal) * 6)
        return Step(lab, n, n * math.log(q))


def verifier(path: tuple[str, ...]) -> float:
    """Score of the last step of path, in (0, 1). Answer "2" is the 'correct' one."""
    last = path[-1]
    base = 0.9 if last == "=2" else (0.2 if last.startswith("=") else 0.5)
    return min(0.99, max(0.01, base + 0.3 * (_h("v", path) - 0.5)))


class Driver:
    """Runs a C++ strategy (ponder._core.*Strategy) against the toy policy and verifier,
    the way the engine does: plan, generate children in plan order, score, observe."""

    def __init__(self, strategy, lm: ToyLM, max_steps: int = 40):
        self.st, self.lm = strategy, lm
        self.labels: dict[int, tuple[str, ...]] = {0: ()}
        self.ordinals: dict[int, int] = {}
        self.expansions: list[tuple[int, int]] = []

    def run(self, max_rounds: int = 10_000):
        """Plans, generates, scores and observes until the strategy plans nothing; a strategy
        that still plans after max_rounds rounds fails the test (it would never end)."""
        tree = self.st.tree
        for _ in range(max_rounds):
            plan = self.st.plan()
            if not plan:
                break
            self.expansions.extend(plan)
            children = []
            for node, k in plan:
                path = self.labels[node]
                for _ in range(k):
                    j = self.ordinals.get(node, 0)
                    self.ordinals[node] = j + 1
                    step = self.lm.sample(path, j)
                    cid = tree.add_child(node, step.num_tokens, step.logprob, step.finished)
                    self.labels[cid] = path + (step.label,)
                    if step.finished:
                        tree.set_answer(cid, step.answer)
                    children.append(cid)
            scored = [c for c in children if self.st.needs_score(c)]
            for c in scored:
                p = self.labels[c]
                tree.set_path_scores(c, [verifier(p[:i + 1]) for i in range(len(p))])
            self.st.count_score_calls(len(scored))
            self.st.observe(children)
        else:
            plan = self.st.plan()
            if plan:
                raise AssertionError(f"the strategy still plans {plan} after {max_rounds} rounds")
        return self
