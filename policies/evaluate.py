"""Closed-loop evaluation in the headless simulator on a held-out panel of seeds.

The panel is ``evaluation.held_out_base_seed + i`` for ``i < episodes``; it must not share a seed with
the policy's training data. Each episode runs until the task's success predicate has held for
``hold_steps`` or the horizon. The first success and the first failure are replayed with every camera
(the simulator replays a seed and its actions bit-identically) and written as GIFs.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from worldgen.envs import WorldgenEnv
from worldgen.errors import ArgumentError, CheckpointError
from worldgen.files import write_atomically
from worldgen.keys import RGB, image_kind
from worldgen.manifest import Manifest, as_manifest
from worldgen.report import frames_gif

from . import load_policy
from .pretrained import PretrainedPolicy, policy_meta


@dataclass
class Episode:
    seed: int
    success: bool
    ret: float
    length: int
    actions: list[list[float]] = field(repr=False, default_factory=list)


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval for a binomial proportion (95 % for z = 1.96)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def panel_seeds(manifest: Manifest, episodes: int | None = None, offset: int = 0) -> list[int]:
    """Held-out seeds ``held_out_base_seed + offset + i``; ``offset`` gives replicates disjoint panels."""
    spec = manifest.evaluation
    return [spec.held_out_base_seed + offset + i for i in range(episodes or spec.episodes)]


def check_contract(policy: PretrainedPolicy, env: WorldgenEnv) -> None:
    """The policy's observation keys exist in the environment and its actions fit the action space."""
    space = env.observation_space
    missing = [k for k in policy.observation_keys if k not in space.spaces]
    if missing:
        raise CheckpointError(f"{env.manifest.name}: the environment has no observation keys {missing}")
    for key, size in policy.config.low_dim_shapes.items():
        if space[key].shape[-1] != size:
            raise CheckpointError(
                f"{key}: the policy expects {size} values, the environment gives {space[key].shape}"
            )
    if policy.config.action_dim != env.action_space.shape[0]:
        raise CheckpointError(
            f"the policy acts in {policy.config.action_dim} dimensions, "
            f"the environment in {env.action_space.shape[0]}"
        )


def run_episode(env: WorldgenEnv, policy: PretrainedPolicy, seed: int) -> Episode:
    obs, _ = env.reset(seed=seed)
    policy.reset(seed)
    ret, actions, success = 0.0, [], False
    while True:
        action = np.clip(policy.select_action(obs), -1.0, 1.0)
        obs, reward, terminated, truncated, info = env.step(action)
        ret += reward
        actions.append(action.tolist())
        if terminated or truncated:
            success = bool(info["success"])
            break
    return Episode(seed, success, ret, len(actions), actions)


def run_episodes_together(
    manifest: Manifest,
    policy: PretrainedPolicy,
    seeds: list[int],
    envs: int,
    progress: Callable[[Episode, int, int], None] | None = None,
) -> tuple[list[Episode], list[list[int]]]:
    """The episodes of ``seeds`` in equal batches of at most ``envs`` worlds stepped together (one policy
    copy per world); returns them in ``seeds`` order and the layout, the seeds of each batch in world
    order (a short last batch is filled up with repeats of its last seed, whose episodes are not
    counted)."""
    from worldgen.vector_env import WorldgenVectorEnv, balanced_batches

    n, batches = balanced_batches(seeds, envs)
    venv = WorldgenVectorEnv(manifest, n, autoreset_mode="Disabled")
    policies = [copy.deepcopy(policy) for _ in range(n)]
    keys = policy.observation_keys
    results: dict[int, Episode] = {}
    layout = []
    try:
        for start, count, batch in batches:
            layout.append(batch)
            obs, _ = venv.reset(seed=batch)
            for p, seed in zip(policies, batch, strict=True):
                p.reset(seed)
            active = np.arange(n) < count
            returns, actions = np.zeros(n), [[] for _ in range(n)]
            # Finished and filler worlds repeat their last action (hold still) until the batch ends.
            chosen = np.zeros((n, venv.single_action_space.shape[0]), dtype=np.float32)
            chosen[:, -1] = -1.0
            while active.any():
                for i in np.flatnonzero(active):
                    chosen[i] = np.clip(policies[i].select_action({k: obs[k][i] for k in keys}), -1.0, 1.0)
                obs, rewards, terminated, truncated, _ = venv.step(chosen)
                for i in np.flatnonzero(active):
                    returns[i] += rewards[i]
                    actions[i].append(chosen[i].tolist())
                    if terminated[i] or truncated[i]:
                        active[i] = False
                        episode = Episode(
                            batch[i], bool(terminated[i]), float(returns[i]), len(actions[i]), actions[i]
                        )
                        results[start + i] = episode
                        if progress is not None:
                            progress(episode, len(results), len(seeds))
    finally:
        venv.close()
    return [results[i] for i in range(len(seeds))], layout


def replay_gif(env: WorldgenEnv, episode: Episode, path: Path) -> Path:
    """Replay an episode's actions from its seed and write the colour cameras as a GIF."""
    keys = [k for k in env.observation_space.spaces if image_kind(k) == RGB]
    obs, _ = env.reset(seed=episode.seed)
    frames = {k: [obs[k]] for k in keys}
    for action in episode.actions:
        obs, *_ = env.step(np.asarray(action, dtype=np.float32))
        for k in keys:
            frames[k].append(obs[k])
    stride = 2
    return frames_gif(
        {k: np.stack(v[::stride]) for k, v in frames.items()}, path, env.manifest.control_hz / stride
    )


def evaluate_policy(
    policy: str | Path | PretrainedPolicy,
    manifest: str | Path | Manifest,
    episodes: int | None = None,
    out: str | Path | None = None,
    gifs: bool = True,
    progress: Callable[[Episode, int, int], None] | None = None,
    panel_offset: int = 0,
    envs: int = 1,
) -> dict[str, Any]:
    """Success rate with its Wilson 95 % interval, mean return and per-episode records; written to
    ``out/eval.json`` (plus ``success.gif`` / ``failure.gif``) when ``out`` is given. ``envs`` > 1:
    that many scenes stepped together (low-dimensional policies; ``worldgen.vector_env``), the batches'
    seeds recorded as ``layout``."""
    meta = policy_meta(policy) if not isinstance(policy, PretrainedPolicy) else {}
    if not isinstance(policy, PretrainedPolicy):
        policy = load_policy(policy)
    manifest = as_manifest(manifest)
    seeds = panel_seeds(manifest, episodes, panel_offset)
    overlap = sorted(set(seeds) & set(meta.get("training_seeds", [])))
    if overlap:
        raise ArgumentError(
            f"the evaluation panel shares seeds {overlap[:5]} with the policy's training data; "
            "choose another evaluation.held_out_base_seed"
        )
    if envs > 1 and policy.needs_cameras:
        raise ArgumentError(
            f"--envs {envs}: scenes stepped together render no cameras; this policy needs them"
        )
    env = WorldgenEnv(manifest, cameras=policy.needs_cameras)
    layout = None
    try:
        check_contract(policy, env)
        if envs > 1:
            results, layout = run_episodes_together(manifest, policy, seeds, envs, progress)
        else:
            results = []
            for i, seed in enumerate(seeds, start=1):
                results.append(run_episode(env, policy, seed))
                if progress is not None:
                    progress(results[-1], i, len(seeds))
    finally:
        env.close()
    successes = sum(e.success for e in results)
    low, high = wilson_interval(successes, len(results))
    report: dict[str, Any] = {
        "manifest": manifest.name,
        "manifest_hash": manifest.content_hash(),
        "policy_manifest_hash": meta.get("manifest_hash"),
        "algo": meta.get("algo"),
        "episodes": len(results),
        "successes": successes,
        "success_rate": successes / len(results),
        "ci95": [low, high],
        "mean_return": float(np.mean([e.ret for e in results])),
        "mean_length": float(np.mean([e.length for e in results])),
        "panel": {"base_seed": seeds[0], "count": len(seeds)},
        "envs": envs,
        "layout": layout,
        "per_episode": [{k: v for k, v in asdict(e).items() if k != "actions"} for e in results],
    }
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        if gifs and envs > 1:
            # A GIF replays its episode alone, which is not bit-identical to the run among other scenes.
            report["gifs"] = {}
            report["gifs_left_out"] = "episodes ran with other scenes; replayed alone they may end otherwise"
        elif gifs:
            chosen = {
                name: next((e for e in results if e.success == wanted), None)
                for name, wanted in (("success", True), ("failure", False))
            }
            camera_env = WorldgenEnv(manifest, cameras=True)
            try:
                report["gifs"] = {
                    name: str(replay_gif(camera_env, episode, out / f"{name}.gif"))
                    for name, episode in chosen.items()
                    if episode is not None
                }
            finally:
                camera_env.close()
        write_atomically(out / "eval.json", (json.dumps(report, indent=2) + "\n").encode())
    return report
