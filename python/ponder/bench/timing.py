"""Timing helpers: warm-up, then the median of repeats sized to a time budget."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def median_us(fn: Callable[[], object], device: torch.device, budget_s: float = 0.3,
              min_reps: int = 5, max_reps: int = 200) -> float:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(2):
        fn()
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    once = max(time.perf_counter() - t0, 1e-6)
    reps = int(min(max_reps, max(min_reps, budget_s / once)))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def copy_bandwidth_gbs(device: torch.device, nbytes: int = 1 << 30) -> float:
    """Measured device copy rate (bytes read + written per second), the ceiling for a
    memory-bound kernel."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    us = median_us(lambda: dst.copy_(src), device, budget_s=0.5)
    return 2 * nbytes / (us * 1e-6) / 1e9
