"""Pipeline stages over files. The seed stage: run the scripted expert on each seed of a manifest in the
headless simulator and append the trajectories to a robomimic-layout HDF5 dataset, resuming after the
last complete demo when the output already exists."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .dataset import DatasetWriter, Demo, dataset_header
from .manifest import Manifest, load_manifest
from .sim.base import SimDiverged, instance_table


@dataclass
class EpisodeResult:
    seed: int
    demo: Demo | None
    reason: str = ""  # why no demo: the simulation diverged
    seconds: float = 0.0


def _stack_obs(observations: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {key: np.stack([o[key] for o in observations]) for key in observations[0]}


def record_expert_episode(env, seed: int) -> EpisodeResult:
    """Run the scripted expert on ``seed`` until success or the horizon; one demo with T+1 observations."""
    from .experts import make_expert

    started = time.perf_counter()
    try:
        obs, _ = env.reset(seed=seed)
        expert = make_expert(env)
        expert.reset(seed)
        observations, states, actions, rewards, dones = [obs], [], [], [], []
        success = False
        for _ in range(env.manifest.horizon):
            states.append(env.get_state())
            action = expert.act()
            obs, reward, terminated, truncated, info = env.step(action)
            observations.append(obs)
            actions.append(action)
            rewards.append(reward)
            dones.append(terminated)
            success = bool(info["success"])
            if terminated or truncated:
                break
    except SimDiverged as exc:
        return EpisodeResult(seed, None, f"simulation diverged: {exc}", time.perf_counter() - started)
    demo = Demo(
        actions=np.asarray(actions, dtype=np.float32),
        states=np.asarray(states, dtype=np.float64),
        obs=_stack_obs(observations),
        rewards=np.asarray(rewards, dtype=np.float32),
        dones=np.asarray(dones, dtype=np.uint8),
        attrs={
            "seed": seed,
            "success": success,
            "source": "sim",
            "parent": "",
            "branch_step": -1,
            "noise_seed": -1,
            "model": "",
            "sim_backend": type(env.backend).__name__,
            "scene": env.backend.scene.to_dict(),
        },
    )
    return EpisodeResult(seed, demo, "", time.perf_counter() - started)


class SeedWorker:
    """Holds one environment and records episodes; also the body of a Ray actor."""

    def __init__(self, manifest_path: str, cameras: bool = True, device: str | None = None):
        from .envs import WorldgenEnv

        self.env = WorldgenEnv(manifest_path, cameras=cameras, device=device)

    def run(self, seed: int) -> EpisodeResult:
        return record_expert_episode(self.env, seed)


def seed_range(manifest: Manifest, n: int | None) -> list[int]:
    count = manifest.seeds.count if n is None else n
    return list(range(manifest.seeds.base_seed, manifest.seeds.base_seed + count))


def run_seed_stage(
    manifest_path: str | Path,
    output: str | Path,
    n: int | None = None,
    workers: int = 1,
    ray_address: str | None = None,
    cameras: bool = True,
    progress: Callable[[EpisodeResult, int, int], None] | None = None,
) -> DatasetWriter:
    """Append expert demos for the manifest's seeds to ``output``; returns the (finalized) writer.

    Demo names are ``demo_<seed - base_seed>``, so the file is the same for any number of workers.
    """
    manifest_path = Path(manifest_path)
    manifest = load_manifest(manifest_path)
    header = dataset_header(manifest, instance_table(manifest), manifest_path.read_text(encoding="utf-8"))
    writer = DatasetWriter(output, header)
    todo = [s for s in seed_range(manifest, n) if s not in writer.done_seeds()]
    total = len(todo)
    results: Iterable[EpisodeResult]
    if workers > 1 or ray_address is not None:
        from .distributed import map_seeds

        results = map_seeds(str(manifest_path), todo, workers, ray_address, cameras)
    else:
        worker = SeedWorker(str(manifest_path), cameras=cameras)
        results = (worker.run(seed) for seed in todo)
    for done, result in enumerate(results, start=1):
        if result.demo is None:
            writer.discard(result.seed, result.reason)
        else:
            writer.append(result.demo, name=f"demo_{result.seed - manifest.seeds.base_seed}")
        if progress is not None:
            progress(result, done, total)
    writer.finalize()
    return writer
