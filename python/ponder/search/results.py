"""What a search returns: the answer, the ranked candidates, costs and the tree."""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field


@dataclass
class Candidate:
    node: int
    text: str
    steps: list[str]
    scores: list[float]
    answer: str


@dataclass
class SearchResult:
    answer: str
    best: Candidate | None
    candidates: list[Candidate]
    stats: dict
    tree: SearchTreeView
    error: str | None = None       # why the search failed (answer "" and no candidates then)


@dataclass
class SearchTreeView:
    """A snapshot of the search tree: one dict per node."""

    question: str
    strategy: str
    nodes: list[dict] = field(default_factory=list)
    chosen: list[int] = field(default_factory=list)  # path of the best candidate

    def to_json(self) -> str:
        return json.dumps({"question": self.question, "strategy": self.strategy,
                           "chosen": self.chosen, "nodes": self.nodes})

    def to_html(self, path: str) -> None:
        """Writes a self-contained page (no network) drawing the tree: each node's step text,
        scores and costs; the chosen path highlighted."""
        with open(path, "w", encoding="utf-8") as f:
            f.write(_render_html(self))


def _render_html(view: SearchTreeView) -> str:
    by_id = {n["id"]: n for n in view.nodes}
    chosen = set(view.chosen)

    def render(nid: int) -> str:
        n = by_id[nid]
        cls = "node" + (" chosen" if nid in chosen else "") + (" pruned" if n["pruned"] else "")
        cls += " finished" if n["finished"] else ""
        label = "question" if nid == 0 else html.escape(n["text"] or "(empty step)")
        meta = "" if nid == 0 else (
            f"<span class=meta>#{nid} score {n['score']:.3f} · {n['num_tokens']} tok · "
            f"logp {n['logprob_sum']:.2f}" + (f" · visits {n['visits']}" if n["visits"] else "")
            + (f" · {n['prm_tokens']} PRM tok" if n.get("prm_tokens") else "")
            + (f" · answer <b>{html.escape(n['answer'])}</b>" if n["answer"] else "") + "</span>")
        kids = "".join(render(c) for c in n["children"])
        body = f"<details open><summary class='{cls}'>{meta}<pre>{label}</pre></summary>"
        return body + (f"<div class=kids>{kids}</div>" if kids else "") + "</details>"

    style = """body{font-family:system-ui,sans-serif;margin:1.5em;background:#fafafa}
summary{cursor:pointer;list-style:none;border:1px solid #ccc;border-radius:6px;padding:4px 8px;
margin:3px 0;background:#fff;max-width:60em}
summary pre{white-space:pre-wrap;margin:2px 0;font-size:13px}
.kids{margin-left:1.6em;border-left:2px dotted #bbb;padding-left:.6em}
.chosen{border:2px solid #1a7f37;background:#eaf7ee}.pruned{opacity:.55}
.finished pre{font-weight:600}.meta{font-size:11px;color:#555}"""
    head = (f"<h2>{html.escape(view.strategy)}</h2><p><b>Question:</b> "
            f"{html.escape(view.question)}</p><p>{len(view.nodes) - 1} steps explored; the "
            f"chosen path is green.</p>")
    return (f"<!doctype html><html><head><meta charset=utf-8><title>ponder search tree</title>"
            f"<style>{style}</style></head><body>{head}{render(0)}</body></html>")
