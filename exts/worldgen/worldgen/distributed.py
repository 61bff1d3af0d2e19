"""Ray sharding of independent work items over worker processes: ``ray.init(num_cpus=W)`` locally, or a
cluster at ``--ray-address`` (the files the workers open must be on a path every node sees). Each actor
is one worker object that loads what it needs once (:class:`worldgen.pipeline.SeedWorker` holds one
environment so its Warp kernels load once; the evaluation, replay and generation workers likewise) and
runs whole items: episodes by seed, replays by demo name, generation tasks. Results come back as they
finish and the caller writes them in its own order, so outputs are the same as a single-process run's.
Knows nothing of what the workers compute."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import Any


def _init_ray(workers: int, address: str | None):
    import ray

    if not ray.is_initialized():
        env_vars = {k: os.environ[k] for k in ("WARP_CACHE_PATH", "PYTHONHASHSEED") if k in os.environ}
        # Ray gives a one-CPU actor one math thread; reductions split over another number of threads sum
        # in another order, so workers use the caller's count and compute what it computes, bit for bit.
        torch = sys.modules.get("torch")
        threads = torch.get_num_threads() if torch is not None else os.cpu_count() or 1
        env_vars.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        kwargs = {"runtime_env": {"env_vars": env_vars}, "log_to_driver": False}
        if address is None:
            ray.init(num_cpus=workers, include_dashboard=False, **kwargs)
        else:
            ray.init(address=address, **kwargs)
    return ray


def map_on_workers(
    worker_cls: type,
    init_args: tuple,
    items: list[Any],
    workers: int = 1,
    address: str | None = None,
    retries: int = 2,
) -> Iterator[Any]:
    """``worker_cls(*init_args).run(item)`` for every item on ``workers`` Ray actors; yields the results
    in completion order. An actor that dies (its process killed, out of memory) is replaced and its item
    run again, up to ``retries`` times an item; results already yielded are never recomputed. One worker
    and no ``address``: one worker object in this process (no Ray), items in order, closed at the end."""
    if not items:
        return
    if workers <= 1 and address is None:
        worker = worker_cls(*init_args)
        try:
            for item in items:
                yield worker.run(item)
        finally:
            if hasattr(worker, "close"):
                worker.close()
        return
    ray = _init_ray(workers, address)
    from ray.exceptions import RayActorError

    actor_cls = ray.remote(num_cpus=1)(worker_cls)
    actors = [actor_cls.remote(*init_args) for _ in range(min(workers, len(items)))]
    pending: dict[Any, tuple[Any, int]] = {}  # result ref -> (actor, item index)
    queue = list(range(len(items)))
    failures = [0] * len(items)

    def submit(actor) -> None:
        if queue:
            index = queue.pop(0)
            pending[actor.run.remote(items[index])] = (actor, index)

    for actor in actors:
        submit(actor)
    try:
        while pending:
            (ready,), _ = ray.wait(list(pending), num_returns=1)
            actor, index = pending.pop(ready)
            try:
                result = ray.get(ready)
            except RayActorError:
                failures[index] += 1
                if failures[index] > retries:
                    raise
                actors.remove(actor)
                actor = actor_cls.remote(*init_args)
                actors.append(actor)
                queue.insert(0, index)
                submit(actor)
                continue
            submit(actor)
            yield result
    finally:
        for actor in actors:
            ray.kill(actor)
