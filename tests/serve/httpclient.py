"""The httpx client: published as ``httpx``, or as ``httpx2`` where the openai client
depends on that name."""

try:
    import httpx
except ImportError:  # pragma: no cover - depends on the installed openai client
    import httpx2 as httpx

__all__ = ["httpx"]
