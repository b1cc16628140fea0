"""``ponder serve`` subprocesses for the server tests, on free loopback ports.

Three servers over the tiny random policy start together when the first test needs one
(their start-ups, mostly importing torch and loading, overlap): ``server`` (plain),
``strict_server`` (``--api-key``, ``--max-queued 1``) and ``prm_server`` (a tiny PRM whose
KV pool holds 64 tokens, so a search with long steps fails inside the engine). Each is
stopped with SIGTERM at the end of the session and must exit 0 after a graceful shutdown.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed")
pytest.importorskip("uvicorn", reason="the serve extra is not installed")
pytest.importorskip("openai", reason="the openai client is not installed")

from tests.serve.httpclient import httpx  # noqa: E402

API_KEY = "sk-ponder-test"
KV_BLOCKS = 256
START_TIMEOUT_S = 240


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One ``ponder serve`` process; its log goes to a file (a pipe nobody reads would fill
    and block it)."""

    def __init__(self, model: str, args: list[str], log_path: str):
        self.model = model
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "w")
        cmd = [sys.executable, "-m", "ponder.cli", "serve", model, "--port", str(self.port),
               "--kv-blocks", str(KV_BLOCKS), "--log-level", "warning", *args]
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.ready = self.signalled = False

    def log(self) -> str:
        with open(self.log_path) as f:
            return f.read()[-4000:]

    def wait_ready(self) -> Server:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.ready:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ponder serve exited with {self.proc.returncode}:\n"
                                   f"{self.log()}")
            try:
                self.ready = httpx.get(f"{self.url}/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                pass
            if not self.ready:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"ponder serve did not come up:\n{self.log()}")
                time.sleep(0.25)
        return self

    def terminate(self) -> None:
        if self.proc.poll() is None and not self.signalled:
            self.signalled = True   # once: a second SIGTERM may land after the clean exit
            self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> int:
        self.terminate()
        if self.proc.returncode is None:
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@pytest.fixture(scope="session")
def tiny_prm(smollm2_tokenizer, tmp_path_factory):
    from tests.prm.tiny_prm import build

    path = str(tmp_path_factory.mktemp("prm") / "qwen")
    build("qwen", path, smollm2_tokenizer, seed=0)
    return path


@pytest.fixture(scope="session")
def servers(tiny_policy, tiny_prm, tmp_path_factory):
    logs = tmp_path_factory.mktemp("serve-logs")
    started = {
        "plain": Server(tiny_policy, [], str(logs / "plain.log")),
        "strict": Server(tiny_policy, ["--api-key", API_KEY, "--max-queued", "1"],
                         str(logs / "strict.log")),
        "prm": Server(tiny_policy, ["--prm", tiny_prm, "--prm-kv-blocks", "4",
                                    "--served-model-name", "tiny"], str(logs / "prm.log")),
    }
    yield started
    for s in started.values():
        s.terminate()
    codes = {name: s.stop() for name, s in started.items()}
    bad = {name: code for name, code in codes.items() if code != 0}
    assert not bad, f"servers did not shut down cleanly: {bad}\n" + "\n".join(
        started[n].log() for n in bad)


@pytest.fixture(scope="session")
def server(servers) -> Server:
    return servers["plain"].wait_ready()


@pytest.fixture(scope="session")
def strict_server(servers) -> Server:
    return servers["strict"].wait_ready()


@pytest.fixture(scope="session")
def prm_server(servers) -> Server:
    return servers["prm"].wait_ready()


@pytest.fixture(scope="session")
def engine(tiny_policy):
    """The in-process engine the server's outputs are compared with."""
    import ponder

    return ponder.Engine(tiny_policy, kv_blocks=KV_BLOCKS)


def metrics(url: str) -> dict[str, float]:
    """The server's unlabelled Prometheus samples."""
    out = {}
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out
