"""Prometheus metrics of one server, in its own registry (so two servers in one process, or a
test, never share counters).

Engine gauges and counters are read from ``AsyncEngine.stats()`` at each scrape; latency
histograms are observed by the server as it hands tokens to clients:

ponder_requests_running, ponder_requests_waiting           requests in the engine
ponder_kv_blocks_used, ponder_kv_blocks_free               policy KV pool
ponder_prm_kv_blocks_used, ponder_prm_kv_blocks_free       PRM KV pool (0 without a PRM)
ponder_tokens_generated_total, ponder_tokens_prefilled_total
ponder_search_rounds_total, ponder_prm_tokens_total
ponder_forward_passes_total, ponder_preemptions_total
ponder_time_to_first_token_seconds   request arrival to its first token (histogram)
ponder_inter_token_latency_seconds   between a request's successive tokens (histogram)
ponder_e2e_request_latency_seconds   request arrival to its last byte (histogram)
ponder_http_requests_total{endpoint, status}
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_GAUGES = {
    "running": ("ponder_requests_running", "Requests running in the engine"),
    "waiting": ("ponder_requests_waiting", "Requests submitted and not yet running"),
    "kv_blocks_used": ("ponder_kv_blocks_used", "Policy KV blocks in use"),
    "kv_blocks_free": ("ponder_kv_blocks_free", "Policy KV blocks free"),
    "prm_kv_blocks_used": ("ponder_prm_kv_blocks_used", "PRM KV blocks in use"),
    "prm_kv_blocks_free": ("ponder_prm_kv_blocks_free", "PRM KV blocks free"),
}
_COUNTERS = {
    "tokens_generated": ("ponder_tokens_generated", "Tokens sampled by the policy"),
    "tokens_prefilled": ("ponder_tokens_prefilled", "Tokens run through the policy as input"),
    "search_rounds": ("ponder_search_rounds", "Search rounds finished"),
    "prm_tokens": ("ponder_prm_tokens", "Tokens run through the PRM"),
    "forward_passes": ("ponder_forward_passes", "Engine steps that ran a forward pass"),
    "preemptions": ("ponder_preemptions", "Sequences preempted for KV"),
}

# TTFT spans a queue wait and a prefill; ITL one decode step (sub-ms on a GPU, tens of ms
# for a large batch on a CPU).
_TTFT_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                 7.5, 10.0, 20.0, 40.0, 80.0)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2,
                0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
_E2E_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0)


class _EngineCollector:
    """Reads the engine's stats snapshot at each scrape."""

    def __init__(self, async_engine):
        self.async_engine = async_engine

    def collect(self):
        stats = self.async_engine.stats()
        for key, (name, doc) in _GAUGES.items():
            yield GaugeMetricFamily(name, doc, value=float(stats.get(key, 0)))
        for key, (name, doc) in _COUNTERS.items():
            yield CounterMetricFamily(name, doc, value=float(stats.get(key, 0)))


class ServerMetrics:
    def __init__(self, async_engine):
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_EngineCollector(async_engine))
        self.ttft = Histogram("ponder_time_to_first_token_seconds",
                              "Request arrival to its first token", buckets=_TTFT_BUCKETS,
                              registry=self.registry)
        self.itl = Histogram("ponder_inter_token_latency_seconds",
                             "Time between a request's successive tokens", buckets=_ITL_BUCKETS,
                             registry=self.registry)
        self.e2e = Histogram("ponder_e2e_request_latency_seconds",
                             "Request arrival to its last byte", buckets=_E2E_BUCKETS,
                             registry=self.registry)
        self.http = Counter("ponder_http_requests", "HTTP requests by endpoint and status",
                            ["endpoint", "status"], registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def timer(self) -> RequestTimer:
        return RequestTimer(self)


class RequestTimer:
    """Latencies of one request, from its arrival: ``tokens()`` each time tokens go out."""

    def __init__(self, metrics: ServerMetrics):
        self.metrics = metrics
        self.t0 = self.last = time.perf_counter()
        self.first = True

    def tokens(self) -> None:
        now = time.perf_counter()
        if self.first:
            self.metrics.ttft.observe(now - self.t0)
            self.first = False
        else:
            self.metrics.itl.observe(now - self.last)
        self.last = now

    def done(self) -> None:
        self.metrics.e2e.observe(time.perf_counter() - self.t0)
