"""Scale-out on Ray: data-parallel engine actors, one Engine each (one GPU per actor when the
study runs on CUDA). The driver hands each actor work items as it has room, keeps at most
``concurrency`` in flight per actor, and collects finished searches every second, so records
stream back to the driver, which grades and writes them (the only writer). An actor that
dies is replaced and the items it held are run again; seeded results are those of the
single-process run (the engine's sampling is batch-invariant).

``ponder eval --workers N`` starts a local Ray with N actors; ``--ray ADDRESS`` joins a
cluster and, without --workers, starts one actor per GPU (or per 2 CPUs) it has.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import deque
from collections.abc import Callable

from ponder.eval.config import EvalConfig

log = logging.getLogger("ponder.eval")
MAX_RESTARTS = 8          # actor deaths tolerated per run before giving up
POLL_S = 1.0              # how long an actor steps before it reports finished searches


class _Worker:
    """The actor: an EngineWorker behind add / advance calls (Ray runs them in order)."""

    def __init__(self, cfg: dict, threads: int):
        from ponder import _core
        from ponder.eval.runner import EngineWorker

        if threads > 0:
            import torch

            torch.set_num_threads(threads)
            _core.set_num_threads(threads)
        self.worker = EngineWorker(EvalConfig(**cfg))

    def add(self, items: list[dict]) -> None:
        self.worker.add(items)

    def advance(self, seconds: float) -> list[dict]:
        return self.worker.advance(seconds)


def _connect(cfg: EvalConfig) -> tuple:
    """Ray, and whether this run started it (and so shuts it down)."""
    import ray

    if ray.is_initialized():
        return ray, False
    if cfg.ray:
        ray.init(address=cfg.ray, log_to_driver=False)
    else:
        ray.init(num_cpus=max(cfg.workers, 1), include_dashboard=False, log_to_driver=False)
    return ray, True


def _plan_actors(cfg: EvalConfig, ray) -> tuple[int, dict]:
    """How many actors, and the resources each takes."""
    res = ray.cluster_resources()
    gpus, cpus = int(res.get("GPU", 0)), int(res.get("CPU", 1))
    if cfg.device.startswith("cuda"):
        if not gpus:
            raise ValueError("device cuda: the Ray cluster has no GPUs")
        return cfg.workers or gpus, {"num_gpus": 1, "num_cpus": 1}
    n = cfg.workers or max(1, cpus // 2)
    return n, {"num_cpus": max(1, cpus // n) if cfg.ray else 1}


def run_on_ray(cfg: EvalConfig, items: list, on_raw: Callable[[dict], None]) -> None:
    """Runs the items on Ray actors, calling on_raw(raw_record) in the driver as each
    search finishes."""
    ray, owned = _connect(cfg)
    try:
        _run(ray, cfg, items, on_raw)
    finally:
        if owned:
            ray.shutdown()


def _run(ray, cfg: EvalConfig, items: list, on_raw: Callable[[dict], None]) -> None:
    from ray.exceptions import RayActorError, RayTaskError

    n, resources = _plan_actors(cfg, ray)
    threads = resources.get("num_cpus", 1) if "num_gpus" not in resources else 0
    remote = ray.remote(**resources)(_Worker)
    payload = dataclasses.asdict(cfg)
    pending = deque(dataclasses.asdict(it) for it in items)
    actors = [remote.remote(payload, threads) for _ in range(n)]
    held: list[dict[str, dict]] = [{} for _ in range(n)]     # key -> item, per actor
    calls: dict = {}                                         # ObjectRef -> actor index
    restarts = 0

    def feed(i: int) -> None:
        if i in calls.values():
            return
        room = cfg.concurrency - len(held[i])
        batch = [pending.popleft() for _ in range(min(room, len(pending)))]
        if batch:
            for it in batch:
                held[i][_key(it)] = it
            actors[i].add.remote(batch)
        if held[i]:
            calls[actors[i].advance.remote(POLL_S)] = i

    for i in range(n):
        feed(i)
    while calls:
        (ref,), _ = ray.wait(list(calls), num_returns=1)
        i = calls.pop(ref)
        try:
            raws = ray.get(ref)
        except (RayActorError, RayTaskError) as e:
            restarts += 1
            if restarts > MAX_RESTARTS:
                raise RuntimeError(f"{restarts} engine actors died; the last: {e}") from e
            log.warning(f"engine actor {i} died ({type(e).__name__}); restarting it and "
                        f"running its {len(held[i])} searches again")
            ray.kill(actors[i], no_restart=True)
            pending.extendleft(reversed(list(held[i].values())))
            held[i] = {}
            actors[i] = remote.remote(payload, threads)
            raws = []
        for raw in raws:
            held[i].pop(raw["key"], None)
            on_raw(raw)
        for j in range(n):  # idle actors take what a dead one left
            feed(j)
    for a in actors:
        ray.kill(a, no_restart=True)


def _key(item: dict) -> str:
    from ponder.eval.records import record_key

    return record_key(item["problem_id"], item["strategy"], item["budget"], item["seed"])
