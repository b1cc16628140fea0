"""``ponder serve``: an OpenAI-compatible server over ``ponder.AsyncEngine`` in which a
request's ``search`` object runs a test-time search (``ponder.serve.app`` documents the
endpoints and fields). Needs the ``serve`` extra: ``pip install ponder[serve]``."""

from __future__ import annotations

__all__ = ["build_app"]


def __getattr__(name: str):
    # FastAPI is imported when the server is built, never by ``import ponder``.
    if name == "build_app":
        from ponder.serve.app import build_app

        return build_app
    raise AttributeError(f"module 'ponder.serve' has no attribute {name!r}")
