"""One live search inside the engine: drives its C++ strategy, turns planned expansions into
step sequences (KV forked from the expanded node), and scores finished steps.

Every node keeps a KV sequence holding its path with the last token still pending, so a
child is a fork plus one decode of that token. Nodes the strategy releases give their KV
back at once (their blocks live on in the children that share them).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from ponder.search.answers import extract_answer
from ponder.search.results import Candidate, SearchResult, SearchTreeView

STREAM_STRIDE = 1 << 20  # RNG stream of a step = parent node * STREAM_STRIDE + ordinal


class SearchRun:
    def __init__(self, engine, req, question: str, spec, verifier: Callable | None,
                 answer_fn: Callable[[str], str] | None):
        self.engine, self.req, self.question, self.spec = engine, req, question, spec
        self.strategy = spec.build()
        self.tree = self.strategy.tree
        self.verifier = verifier
        # No verifier callable: the engine's PRM when it has one (scored incrementally, KV
        # per node), else the policy's own confidence.
        self.prm = engine.prm if verifier is None else None
        self.prm_nodes: dict = {}                  # node -> ponder.prm.PrmNode
        self.prm_tokens: dict[int, int] = {}       # node -> PRM tokens its scoring ran
        self.to_score: list[int] = []
        self.children: list[int] = []
        self.answer_fn = answer_fn or extract_answer
        self.node_kv: dict[int, int] = {}          # node -> KV sequence id
        self.node_tokens: dict[int, list[int]] = {0: list(req.prompt_ids)}
        self.node_text: dict[int, str] = {0: question}
        self.ordinals: dict[int, int] = {}
        self.pending: list = []                    # step sequences of the current round
        self.round_plan: list[tuple[int, int]] = []
        self.done = False
        self.result: SearchResult | None = None
        self.t0 = time.perf_counter()
        self.stats = {"tokens_generated": 0, "tokens_prefilled": 0, "prefix_hit_tokens": 0,
                      "forward_passes": 0, "score_calls": 0, "score_steps": 0, "prm_tokens": 0,
                      "peak_kv_blocks": 0, "peak_kv_blocks_unshared": 0, "rounds": 0}

    # --- called by the engine -----------------------------------------------------------
    def root_ready(self, root_seq) -> None:
        self.node_kv[0] = root_seq.kv_id
        root_seq.kv_id = None
        self._next_round()

    def step_done(self, seq) -> None:
        if all(s.finished for s in self.pending):
            self._finish_round()

    def note_forward(self) -> None:
        self.stats["forward_passes"] += 1
        blocks, unshared = set(), 0
        for kv_id in list(self.node_kv.values()) + [s.kv_id for s in self.pending
                                                    if s.kv_id is not None]:
            table = self.engine.kv.block_table(kv_id)
            blocks.update(table)
            unshared += len(table)
        self.stats["peak_kv_blocks"] = max(self.stats["peak_kv_blocks"], len(blocks))
        # What the same sequences would hold if every one had its own copy of its prefix.
        self.stats["peak_kv_blocks_unshared"] = max(self.stats["peak_kv_blocks_unshared"],
                                                    unshared)

    def release_all(self) -> None:
        for node in self.prm_nodes.values():
            self.prm.release(node)
        self.prm_nodes.clear()
        for kv_id in self.node_kv.values():
            if self.engine.kv.contains(kv_id):
                self.engine.kv.free(kv_id)
        self.node_kv.clear()
        for s in self.pending:
            if s.kv_id is not None and self.engine.kv.contains(s.kv_id):
                self.engine.kv.free(s.kv_id)
                s.kv_id = None

    # --- rounds -------------------------------------------------------------------------
    def _next_round(self) -> None:
        plan = [] if self.done else self.strategy.plan()
        if not plan:
            self._finish_search()
            return
        self.stats["rounds"] += 1
        self.round_plan = plan
        self.pending = []
        for node, k in plan:
            for _ in range(k):
                j = self.ordinals.get(node, 0)
                self.ordinals[node] = j + 1
                self.pending.append(self.engine._new_step_seq(
                    self, node, self.node_tokens[node], self.node_kv[node],
                    node * STREAM_STRIDE + j))
        self.req.seqs = self.pending

    def _finish_round(self) -> None:
        tree, st = self.tree, self.strategy
        children = []
        for seq in self.pending:
            step_tokens = seq.tokens[seq.base:]
            finished = seq.ended_solution
            cid = tree.add_child(seq.parent_node, len(step_tokens), seq.cum_logprob, finished)
            children.append(cid)
            self.node_tokens[cid] = seq.tokens
            self.node_text[cid] = seq.text
            self.node_kv[cid] = seq.kv_id
            seq.kv_id = None
            self.stats["tokens_generated"] += len(step_tokens)
        for cid in children:
            n = tree.node(cid)
            if n.finished or n.depth >= st.max_steps:
                tree.set_answer(cid, self.answer_fn(self.solution_text(cid)))
        self.children = children
        self.to_score = [c for c in children if st.needs_score(c)]
        self.pending = []
        # Scored at the end of the engine's step, in one batch with every other search whose
        # round ended in it; then after_scores() goes on.
        self.engine._score_queue.append(self)

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
        for c, node in zip(self.to_score, prm_nodes):
            self.prm_nodes[c] = node
            self.tree.set_path_scores(c, node.scores)
            self.stats["prm_tokens"] += node.tokens_run
            self.prm_tokens[c] = node.tokens_run
        self.stats["score_steps"] += len(prm_nodes)

    def after_scores(self) -> None:
        st = self.strategy
        if self.prm is None:
            self._score(self.to_score)
        st.count_score_calls(len(self.to_score))
        self.stats["score_calls"] += len(self.to_score)
        st.observe(self.children)
        for nid in st.take_released():
            kv_id = self.node_kv.pop(nid, None)
            if kv_id is not None:
                self.engine.kv.free(kv_id)
            node = self.prm_nodes.pop(nid, None)
            if node is not None:
                self.prm.release(node)
        self.to_score = self.children = []
        self._next_round()

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
            results = batch(self.question, steps)
        else:
            results = [self.verifier(self.question, s) for s in steps]
        for c, s, r in zip(nodes, steps, results):
            r = [float(x) for x in r]
            if len(r) != len(s):
                raise ValueError(f"verifier returned {len(r)} scores for {len(s)} steps")
            self.tree.set_path_scores(c, r)

    def _finish_search(self) -> None:
        self.done = True
        self.release_all()
        ranking = self.strategy.ranking()
        cands = [Candidate(n, self.solution_text(n), self.steps(n),
                           list(self.tree.node(n).path_scores), self.tree.node(n).answer)
                 for n in ranking]
        best = cands[0] if cands else None
        self.stats["score_calls"] = self.strategy.score_calls
        self.stats["wall_ms"] = round((time.perf_counter() - self.t0) * 1000, 1)
        view = SearchTreeView(self.question, self.strategy.name, self._nodes(),
                              self.tree.path(best.node) if best else [])
        self.result = SearchResult(best.answer if best else "", best, cands, dict(self.stats),
                                   view)

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
