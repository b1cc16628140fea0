"""One tree search inside the engine, as a client of its scheduler: it drives the C++
strategy, turns planned expansions into step sequences and finished step sequences into
nodes, and says when its nodes need scores.

It talks to the engine only through what it returns (sequences to schedule) and what it is
handed (finished sequences, scores). Every node keeps a KV sequence holding its path with the
last token still pending, so a child is a fork plus one decode of that token. Node KV is a
cache: nodes the strategy releases give it back at once, and under KV pressure the engine
takes it back (``reclaim``); a child of a node without KV is recomputed from the node's
tokens (prefix-cache hits where blocks survive).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from ponder.engine.requests import Request, free_parked
from ponder.engine.sequence import Sequence
from ponder.sampling import Sampling
from ponder.search.answers import extract_answer
from ponder.search.results import Candidate, SearchResult, SearchTreeView

_MASK63 = (1 << 63) - 1


def child_stream(parent_stream: int, ordinal: int) -> int:
    """The RNG stream of a node's `ordinal`-th expansion: a hash (splitmix64) of its parent's
    stream and the ordinal, so a step's draws depend only on its path from the root (the
    ordinals along it), never on node ids. Hence best-of-N's i-th sample, or DVTS's b-th
    subtree, draws the same tokens whatever n is: smaller budgets are prefixes of larger
    ones."""
    z = (parent_stream * 0x9E3779B97F4A7C15 + ordinal + 1) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) & _MASK63


class SearchDriver(Request):
    kind = "search"

    def __init__(self, rid: int, question: str, prompt_ids: list[int], spec, seed: int,
                 verifier: Callable | None, answer_fn: Callable | None, kv, prm,
                 new_detok: Callable):
        sampling = Sampling(max_tokens=spec.max_step_tokens, temperature=spec.policy_temperature,
                            top_p=spec.top_p, stop=list(spec.step_stop), seed=seed)
        super().__init__(rid, question, prompt_ids, sampling, seed)
        self.question, self.spec, self.kv, self.new_detok = question, spec, kv, new_detok
        self.strategy = spec.build()
        self.tree = self.strategy.tree
        self.verifier = verifier
        # No verifier callable: the engine's PRM when it has one (scored incrementally, KV
        # per node), else the policy's own confidence.
        self.prm = prm if verifier is None else None
        self.prm_nodes: dict = {}                  # node -> ponder.prm.PrmNode
        self.prm_tokens: dict[int, int] = {}       # node -> PRM tokens its scoring ran
        self.to_score: list[int] = []
        self.children: list[int] = []
        self.answer_fn = answer_fn or extract_answer
        self.node_kv: dict[int, int] = {}          # node -> KV sequence id (a cache)
        self.node_tokens: dict[int, list[int]] = {0: list(prompt_ids)}
        self.node_text: dict[int, str] = {0: question}
        self.ordinals: dict[int, int] = {}
        self.node_stream: dict[int, int] = {0: 0}   # node -> its RNG stream (child_stream)
        self.root = Sequence(self, list(prompt_ids), hold=1, wants_logits=False, keep_kv=True)
        self.pending: list[Sequence] = []          # step sequences of the current round
        self.seqs = [self.root]
        self.done = False
        self.rounds_done = 0                       # rounds generated, scored and observed
        self.result: SearchResult | None = None
        self.t0 = time.perf_counter()
        self.stats = {"tokens_generated": 0, "tokens_prefilled": 0, "prefix_hit_tokens": 0,
                      "forward_passes": 0, "score_calls": 0, "score_steps": 0, "prm_tokens": 0,
                      "peak_kv_blocks": 0, "peak_kv_blocks_unshared": 0, "rounds": 0}

    @property
    def finished(self) -> bool:
        return self.done

    # --- called by the engine -----------------------------------------------------------
    def start(self) -> list[Sequence]:
        return [self.root]

    def on_finished(self, seq: Sequence) -> list[Sequence]:
        self.stats["prefix_hit_tokens"] += seq.prefix_hit_tokens
        if seq is self.root:
            if seq.kv_id is not None:
                self.node_kv[0] = seq.kv_id
                seq.kv_id = None
            return self._next_round()
        if all(s.finished for s in self.pending):
            self._finish_round()
        return []

    def note_forward(self, prefilled: int) -> None:
        """One forward pass ran some of this search's sequences (`prefilled` tokens of them
        in prefill chunks: prompts, and nodes recomputed after their KV was reclaimed)."""
        self.stats["forward_passes"] += 1
        self.stats["tokens_prefilled"] += prefilled
        blocks, unshared = set(), 0
        for kv_id in list(self.node_kv.values()) + [s.kv_id for s in self.pending
                                                    if s.kv_id is not None]:
            table = self.kv.block_table(kv_id)
            blocks.update(table)
            unshared += len(table)
        self.stats["peak_kv_blocks"] = max(self.stats["peak_kv_blocks"], len(blocks))
        # What the same sequences would hold if every one had its own copy of its prefix.
        self.stats["peak_kv_blocks_unshared"] = max(self.stats["peak_kv_blocks_unshared"],
                                                    unshared)

    def reclaim(self, blocks: int) -> None:
        """Gives KV back until `blocks` are free: first that of this round's finished steps
        (waiting for their siblings), then node KV (deepest nodes last: they are the likeliest
        to be expanded next). A node without KV is recomputed when it is expanded."""
        if free_parked(self.kv, self.pending, blocks):
            return
        for nid in sorted(self.node_kv):
            if self.kv.num_free_blocks >= blocks:
                return
            self.kv.free(self.node_kv.pop(nid))

    def release(self, kv) -> None:
        """Frees the KV the search holds: its nodes', the PRM's for its nodes, and that of
        this round's steps that finished before it ended (the rest are the scheduler's)."""
        free_parked(kv, self.pending)
        for node in self.prm_nodes.values():
            self.prm.release(node)
        self.prm_nodes.clear()
        for kv_id in self.node_kv.values():
            kv.free(kv_id)
        self.node_kv.clear()

    def fail(self, exc: BaseException) -> None:
        super().fail(exc)
        if not self.done:
            self.done = True
            self.result = self._result([])
            self.result.error = self.error

    def abort(self) -> None:
        super().abort()
        self.done = True

    def output(self) -> SearchResult | None:
        return self.result

    def progress(self) -> dict:
        """How far the search got: rounds finished (scored and observed), tree nodes (the
        root included) and tokens generated so far."""
        return {"round": self.rounds_done, "nodes": len(self.tree),
                "tokens_generated": self.stats["tokens_generated"]}

    # --- rounds -------------------------------------------------------------------------
    def _next_round(self) -> list[Sequence]:
        plan = [] if self.done else self.strategy.plan()
        if not plan:
            self._finish_search()
            return []
        self.stats["rounds"] += 1
        self.pending = []
        for node, k in plan:
            tokens = self.node_tokens[node]
            for _ in range(k):
                j = self.ordinals.get(node, 0)
                self.ordinals[node] = j + 1
                seq = Sequence(self, list(tokens), parent_node=node, keep_kv=True,
                               stream=child_stream(self.node_stream[node], j),
                               detok=self.new_detok())
                kv_id = self.node_kv.get(node)
                if kv_id is not None:  # else the scheduler recomputes the node's tokens
                    seq.kv_id = self.kv.fork(kv_id, len(tokens) - 1)
                    seq.computed = len(tokens) - 1
                self.pending.append(seq)
        self.seqs = [self.root] + self.pending
        return list(self.pending)

    def _finish_round(self) -> None:
        tree, st = self.tree, self.strategy
        children = []
        for seq in self.pending:
            step_tokens = seq.tokens[seq.base:]
            cid = tree.add_child(seq.parent_node, len(step_tokens), seq.cum_logprob,
                                 seq.ended_solution)
            children.append(cid)
            self.node_tokens[cid] = seq.tokens
            self.node_text[cid] = seq.text
            self.node_stream[cid] = seq.stream
            if seq.kv_id is not None:
                self.node_kv[cid] = seq.kv_id
                seq.kv_id = None
            self.stats["tokens_generated"] += len(step_tokens)
        self.pending = []
        for cid in children:
            n = tree.node(cid)
            if n.finished or n.depth >= st.max_steps:
                tree.set_answer(cid, self._answer(cid))
        self.children = children
        self.to_score = [c for c in children if st.needs_score(c)]
        # Scored at the end of the engine's step, in one batch with every other search whose
        # round ended in it; then after_scores() goes on.
        self.awaiting_scores = True

    def _answer(self, node: int) -> str:
        answer = self.answer_fn(self.solution_text(node))
        if answer is None:
            return ""
        if not isinstance(answer, str):
            raise TypeError(f"answer_fn must return a str or None, got "
                            f"{type(answer).__name__}")
        return answer

    def prm_jobs(self) -> list[tuple]:
        """(parent PRM node, question, steps) for each node to score: the parent is the
        nearest scored ancestor, whose KV the PRM forks."""
        jobs = []
        for c in self.to_score:
            parent, nid = None, self.tree.node(c).parent
            while parent is None and nid > 0:
                parent = self.prm_nodes.get(nid)
                nid = self.tree.node(nid).parent
            jobs.append((parent, self.question, self.steps(c)))
        return jobs

    def set_prm_scores(self, prm_nodes: list) -> None:
        pairs = list(zip(self.to_score, prm_nodes, strict=True))
        for c, node in pairs:  # all held first: a bad score below still frees every node
            self.prm_nodes[c] = node
        for c, node in pairs:
            self._set_scores(c, node.scores, "the PRM")
            self.stats["prm_tokens"] += node.tokens_run
            self.prm_tokens[c] = node.tokens_run
        self.stats["score_steps"] += len(prm_nodes)

    def after_scores(self) -> list[Sequence]:
        """Observes the scored round and plans the next; returns its step sequences."""
        self.awaiting_scores = False
        st = self.strategy
        if self.prm is None:
            self._score(self.to_score)
        st.count_score_calls(len(self.to_score))
        self.stats["score_calls"] += len(self.to_score)
        st.observe(self.children)
        self.rounds_done += 1
        for nid in st.take_released():
            kv_id = self.node_kv.pop(nid, None)
            if kv_id is not None:
                self.kv.free(kv_id)
            node = self.prm_nodes.pop(nid, None)
            if node is not None:
                self.prm.release(node)
        self.to_score = self.children = []
        return self._next_round()

    def _set_scores(self, node: int, scores, who: str) -> None:
        n_steps = len(self.tree.path(node))
        try:
            values = [float(x) for x in scores]
        except (TypeError, ValueError):
            raise TypeError(f"{who} must return a list of numbers per solution, got "
                            f"{scores!r}") from None
        if len(values) != n_steps:
            raise ValueError(f"{who} returned {len(values)} scores for {n_steps} steps")
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"{who} returned a score that is not finite: {values}")
        self.tree.set_path_scores(node, values)

    def _score(self, nodes: list[int]) -> None:
        if not nodes:
            return
        if self.verifier is None:
            # No verifier: the policy's own confidence, exp(mean token logprob) per step.
            for c in nodes:
                scores = []
                for nid in self.tree.path(c):
                    n = self.tree.node(nid)
                    scores.append(math.exp(n.logprob_sum / max(1, n.num_tokens)))
                self.tree.set_path_scores(c, scores)
            return
        batch = getattr(self.verifier, "batch", None)
        steps = [self.steps(c) for c in nodes]
        self.stats["score_steps"] += sum(len(s) for s in steps)
        if batch is not None:
            results = list(batch(self.question, steps))
            if len(results) != len(nodes):
                raise ValueError(f"the verifier's batch returned {len(results)} results for "
                                 f"{len(nodes)} solutions")
        else:
            results = [self.verifier(self.question, s) for s in steps]
        for c, r in zip(nodes, results, strict=True):
            self._set_scores(c, r, "the verifier")

    def _finish_search(self) -> None:
        self.done = True
        self.release(self.kv)
        self.result = self._result(self.strategy.ranking())

    def _result(self, ranking: list[int]) -> SearchResult:
        cands = [Candidate(n, self.solution_text(n), self.steps(n),
                           list(self.tree.node(n).path_scores), self.tree.node(n).answer)
                 for n in ranking]
        best = cands[0] if cands else None
        self.stats["score_calls"] = self.strategy.score_calls
        self.stats["wall_ms"] = round((time.perf_counter() - self.t0) * 1000, 1)
        view = SearchTreeView(self.question, self.strategy.name, self._nodes(),
                              self.tree.path(best.node) if best else [])
        return SearchResult(best.answer if best else "", best, cands, dict(self.stats), view)

    # --- text -----------------------------------------------------------------------------
    def steps(self, node: int) -> list[str]:
        return [self.node_text[n].strip() for n in self.tree.path(node)]

    def solution_text(self, node: int) -> str:
        return self.spec.step_stop[0].join(self.node_text[n] for n in self.tree.path(node))

    def _nodes(self) -> list[dict]:
        out = []
        for i in range(len(self.tree)):
            n = self.tree.node(i)
            out.append({"id": n.id, "parent": n.parent, "children": list(n.children),
                        "depth": n.depth, "text": self.node_text.get(i, ""),
                        "num_tokens": n.num_tokens, "logprob_sum": n.logprob_sum,
                        "prm_tokens": self.prm_tokens.get(i, 0),
                        "finished": n.finished, "score": n.score,
                        "path_scores": list(n.path_scores), "answer": n.answer,
                        "visits": n.visits, "value": n.value_sum / n.visits if n.visits else 0.0,
                        "pruned": n.pruned})
        return out
