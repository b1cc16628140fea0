"""ponder: a compiled decoding engine for test-time search."""

from __future__ import annotations

import torch  # noqa: F401  (loads torch's OpenMP runtime first, so ponder shares its threads)

from ponder import _core, ops
from ponder._core import KvCacheManager
from ponder.engine.async_engine import (
    AsyncEngine,
    CompletionDelta,
    EngineClosed,
    QueueFull,
    SearchProgress,
)
from ponder.engine.engine import Engine
from ponder.engine.outputs import (
    BeamOutput,
    CompletionOutput,
    RequestError,
    RequestOutput,
    StepEvent,
)
from ponder.sampling import Sampling
from ponder.search.specs import (
    DVTS,
    MCTS,
    AStar,
    BeamSearch,
    BestOfN,
    ParticleFilter,
    ParticleGibbs,
    SearchSpec,
)

__version__ = "0.1.0"
__all__ = [
    "AStar",
    "AsyncEngine",
    "BeamOutput",
    "BeamSearch",
    "BestOfN",
    "CompletionDelta",
    "CompletionOutput",
    "DVTS",
    "Engine",
    "EngineClosed",
    "KvCacheManager",
    "MCTS",
    "ParticleFilter",
    "ParticleGibbs",
    "QueueFull",
    "RequestError",
    "RequestOutput",
    "Sampling",
    "SearchProgress",
    "SearchSpec",
    "StepEvent",
    "cuda_available",
    "ops",
]


def cuda_available() -> bool:
    """Whether this build has CUDA kernels and the CUDA runtime sees a device."""
    return bool(_core.cuda_built() and _core.cuda_device_count() > 0)
