"""Ray sharding of seeds over worker processes: ``ray.init(num_cpus=W)`` locally, or a cluster at
``--ray-address``. Each actor is one worker object (e.g. :class:`worldgen.pipeline.SeedWorker`, which
holds one environment so its Warp kernels load once) and runs whole episodes; results come back as they
finish and the caller writes them under seed-derived names, so the dataset is the same as a
single-process run's. Knows nothing of what the workers compute."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any


def _init_ray(workers: int, address: str | None):
    import ray

    if not ray.is_initialized():
        env_vars = {k: os.environ[k] for k in ("WARP_CACHE_PATH", "PYTHONHASHSEED") if k in os.environ}
        kwargs = {"runtime_env": {"env_vars": env_vars}, "log_to_driver": False}
        if address is None:
            ray.init(num_cpus=workers, include_dashboard=False, **kwargs)
        else:
            ray.init(address=address, **kwargs)
    return ray


def map_seeds(
    worker_cls: type, init_args: tuple, seeds: list[int], workers: int, address: str | None = None
) -> Iterator[Any]:
    """``worker_cls(*init_args).run(seed)`` for every seed on ``workers`` Ray actors; yields the results
    in completion order."""
    if not seeds:
        return
    ray = _init_ray(workers, address)
    actor_cls = ray.remote(num_cpus=1)(worker_cls)
    actors = [actor_cls.remote(*init_args) for _ in range(min(workers, len(seeds)))]
    pending = {}
    queue = list(seeds)
    for actor in actors:
        if queue:
            pending[actor.run.remote(queue.pop(0))] = actor
    try:
        while pending:
            (ready,), _ = ray.wait(list(pending), num_returns=1)
            actor = pending.pop(ready)
            if queue:
                pending[actor.run.remote(queue.pop(0))] = actor
            yield ray.get(ready)
    finally:
        for actor in actors:
            ray.kill(actor)
