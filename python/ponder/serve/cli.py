"""``ponder serve MODEL``: the OpenAI-compatible server (``ponder.serve.app``) on uvicorn.

SIGINT/SIGTERM: uvicorn stops accepting connections and lets open responses finish (up to
--graceful-timeout seconds, then cancels them, which aborts their requests), then the app's
lifespan shuts the engine down.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ponder serve",
        description="OpenAI-compatible server (/v1/completions, /v1/chat/completions, "
                    "/v1/models, /v1/score, /metrics, /health) in which a request's "
                    "\"search\" object runs a test-time search.")
    p.add_argument("model", help="HF model directory, .gguf file or 'smollm2'")
    p.add_argument("--prm", default=None,
                   help="process reward model (HF directory, .gguf, or 'self')")
    p.add_argument("--prm-format", dest="prm_format", default=None,
                   choices=["qwen", "math-shepherd", "rlhflow", "skywork", "self-verify"])
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--kv-blocks", dest="kv_blocks", type=int, default=None,
                   help="policy KV pool in blocks (default: a fraction of memory)")
    p.add_argument("--prm-kv-blocks", dest="prm_kv_blocks", type=int, default=None,
                   help="the PRM's KV pool in blocks (default: a fraction of memory)")
    p.add_argument("--seed", type=int, default=0,
                   help="seeds requests that do not set one")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", dest="api_key", default=None,
                   help="require 'Authorization: Bearer KEY' on /v1 endpoints")
    p.add_argument("--max-queued", dest="max_queued", type=int, default=None,
                   help="answer 429 when more requests than this wait to run")
    p.add_argument("--served-model-name", dest="served_model_name", default=None,
                   help="the model name requests must use (default: MODEL as given)")
    p.add_argument("--graceful-timeout", dest="graceful_timeout", type=float, default=30.0,
                   help="seconds open responses get to finish at shutdown")
    p.add_argument("--log-level", dest="log_level", default="info",
                   choices=["critical", "error", "warning", "info", "debug"])
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # SIGTERM before uvicorn runs (while loading) or the one uvicorn raises again after its
    # graceful shutdown: a clean exit.
    previous = signal.signal(signal.SIGTERM, _stopped)
    try:
        return _serve(args)
    except (KeyboardInterrupt, _Stopped):
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)


def _serve(args: argparse.Namespace) -> int:
    if args.max_queued is not None and args.max_queued < 1:
        parser().error("--max-queued must be >= 1")
    logging.basicConfig(level=args.log_level.upper(), format="%(message)s")
    try:
        import uvicorn

        from ponder.serve.app import build_app
    except ImportError as e:
        print(f"ponder serve needs the serve extra (pip install ponder[serve]): {e}",
              file=sys.stderr)
        return 2
    from ponder.engine.async_engine import AsyncEngine

    try:
        async_engine = AsyncEngine.from_model(
            args.model, max_queued=args.max_queued, prm=args.prm, prm_format=args.prm_format,
            dtype=args.dtype, device=args.device, kv_blocks=args.kv_blocks, seed=args.seed,
            prm_kv_blocks=args.prm_kv_blocks)
    except (FileNotFoundError, ValueError, TypeError) as e:  # a bad model or option
        print(f"ponder serve: {e}", file=sys.stderr)
        return 2
    app = build_app(async_engine, args.served_model_name or args.model, api_key=args.api_key)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                            timeout_graceful_shutdown=args.graceful_timeout,
                            access_log=args.log_level == "debug")
    # uvicorn handles SIGINT/SIGTERM while it runs (graceful shutdown, then the lifespan
    # shuts the engine down) and raises the signal again once it is done.
    try:
        uvicorn.Server(config).run()
    finally:
        async_engine.close()   # returns at once after the lifespan's shutdown
    return 0


class _Stopped(Exception):
    pass


def _stopped(_signum, _frame):
    raise _Stopped()
