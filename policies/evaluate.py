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
from worldgen.distributed import map_on_workers
from worldgen.envs import WorldgenEnv
from worldgen.errors import ArgumentError, CheckpointError
from worldgen.files import write_atomically
from worldgen.keys import RGB, image_kind
from worldgen.manifest import Manifest, as_manifest
from worldgen.report import frames_gif

from . import load_policy
from .pretrained import PretrainedPolicy, policy_meta


@dataclass
class EvaluationEpisode:
    """One closed-loop episode of a policy: its scene seed, outcome, return, length and actions."""

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
    # Exactly, the interval holds p (its bound is 1 at p = 1); in floating point it can miss by an ulp.
    return min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half))


# Student's t 0.975 quantiles for 1..30 degrees of freedom (beyond: the normal's 1.96).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)  # fmt: skip


def replicate_interval(successes: list[int], episodes: list[int]) -> tuple[float, float]:
    """A 95 % interval for a row's success rate whose unit is the replicate (a seed set, world model,
    generation draw or policy seed), not the episode: the mean of the replicates' rates +- Student's t
    (n - 1 degrees of freedom) times their standard error, widened where needed to the Wilson interval of
    the pooled episodes. Episodes within a replicate share everything the replicate drew, so pooling them
    alone is too narrow when replicates differ; and replicates that happen to agree do not make an
    interval narrower than their episodes allow. (The t factor is the price of estimating the spread from
    n replicates; it is not applied to the binomial spread, which is not estimated.) One replicate: Wilson."""
    if len(successes) != len(episodes) or not successes:
        raise ValueError("replicate_interval: one success count and one episode count per replicate")
    pooled_low, pooled_high = wilson_interval(sum(successes), sum(episodes))
    if len(successes) == 1:
        return pooled_low, pooled_high
    rates = np.asarray(successes, float) / np.asarray(episodes, float)
    n, mean = len(rates), float(rates.mean())
    t = _T975[n - 2] if n - 1 <= len(_T975) else 1.96
    half = t * float(rates.std(ddof=1)) / math.sqrt(n)
    return max(0.0, min(mean - half, pooled_low)), min(1.0, max(mean + half, pooled_high))


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


def run_episode(env: WorldgenEnv, policy: PretrainedPolicy, seed: int) -> EvaluationEpisode:
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
    return EvaluationEpisode(seed, success, ret, len(actions), actions)


class BatchWorker:
    """``num_envs`` scenes stepped together with one policy copy each: whole batches of episodes
    (:func:`worldgen.vector_env.balanced_batches`); also the body of a Ray actor, so a worker process
    builds its scenes once."""

    def __init__(self, policy: str | Path | PretrainedPolicy, manifest: Manifest, num_envs: int):
        from worldgen.vector_env import WorldgenVectorEnv

        policy = policy if isinstance(policy, PretrainedPolicy) else load_policy(policy)
        self.venv = WorldgenVectorEnv(
            manifest, num_envs, autoreset_mode="Disabled", cameras=policy.needs_cameras
        )
        self.policies = [copy.deepcopy(policy) for _ in range(num_envs)]
        self.keys = policy.observation_keys

    def run(self, batch: tuple[int, int, list[int]]) -> tuple[int, list[EvaluationEpisode]]:
        """The first ``count`` episodes of (start, count, seeds): the batch's start and its episodes."""
        start, count, seeds = batch
        venv, n = self.venv, len(self.policies)
        obs, _ = venv.reset(seed=seeds)
        for p, seed in zip(self.policies, seeds, strict=True):
            p.reset(seed)
        active = np.arange(n) < count
        returns, actions = np.zeros(n), [[] for _ in range(n)]
        episodes: dict[int, EvaluationEpisode] = {}
        # Finished and filler worlds repeat their last action (hold still) until the batch ends.
        chosen = np.zeros((n, venv.single_action_space.shape[0]), dtype=np.float32)
        chosen[:, -1] = -1.0
        while active.any():
            for i in np.flatnonzero(active):
                chosen[i] = np.clip(self.policies[i].select_action({k: obs[k][i] for k in self.keys}), -1, 1)
            obs, rewards, terminated, truncated, _ = venv.step(chosen)
            for i in np.flatnonzero(active):
                returns[i] += rewards[i]
                actions[i].append(chosen[i].tolist())
                if terminated[i] or truncated[i]:
                    active[i] = False
                    success = bool(terminated[i])
                    episodes[i] = EvaluationEpisode(
                        seeds[i], success, float(returns[i]), len(actions[i]), actions[i]
                    )
        return start, [episodes[i] for i in range(count)]

    def close(self) -> None:
        self.venv.close()


def run_episodes_together(
    manifest: Manifest,
    policy: str | Path | PretrainedPolicy,
    seeds: list[int],
    envs: int,
    progress: Callable[[EvaluationEpisode, int, int], None] | None = None,
    workers: int = 1,
    ray_address: str | None = None,
) -> tuple[list[EvaluationEpisode], list[list[int]]]:
    """The episodes of ``seeds`` in equal batches of at most ``envs`` worlds stepped together (one policy
    copy per world); returns them in ``seeds`` order and the layout, the seeds of each batch in world
    order (a short last batch is filled up with repeats of its last seed, whose episodes are not
    counted). ``workers`` > 1 or a ``ray_address``: the batches on that many Ray actors (a saved policy
    only), the same layout and so the same episodes as in one process."""
    from worldgen.vector_env import balanced_batches

    n, batches = balanced_batches(seeds, envs)
    layout = [batch for _, _, batch in batches]
    done: dict[int, EvaluationEpisode] = {}
    for start, episodes in map_on_workers(BatchWorker, (policy, manifest, n), batches, workers, ray_address):
        for i, episode in enumerate(episodes):
            done[start + i] = episode
            if progress is not None:
                progress(episode, len(done), len(seeds))
    return [done[i] for i in range(len(seeds))], layout


class EpisodeWorker:
    """One environment and one copy of a saved policy: whole episodes by seed; also the body of a Ray
    actor (``worldgen.distributed``), so a worker process loads both once."""

    def __init__(self, policy: str | Path, manifest: Manifest):
        self.policy = load_policy(policy)
        self.env = WorldgenEnv(manifest, cameras=self.policy.needs_cameras)

    def run(self, seed: int) -> EvaluationEpisode:
        return run_episode(self.env, self.policy, seed)


def run_episodes_on_workers(
    policy: str | Path,
    manifest: Manifest,
    seeds: list[int],
    workers: int,
    ray_address: str | None = None,
    progress: Callable[[EvaluationEpisode, int, int], None] | None = None,
) -> list[EvaluationEpisode]:
    """The episodes of ``seeds`` on ``workers`` Ray actors, one scene each, in ``seeds`` order: the same
    episodes as one process runs them (each depends on its seed and the policy alone)."""
    done: dict[int, EvaluationEpisode] = {}
    for episode in map_on_workers(EpisodeWorker, (str(policy), manifest), seeds, workers, ray_address):
        done[episode.seed] = episode
        if progress is not None:
            progress(episode, len(done), len(seeds))
    return [done[seed] for seed in seeds]


def replay_gif(env: WorldgenEnv, episode: EvaluationEpisode, path: Path) -> Path:
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
    progress: Callable[[EvaluationEpisode, int, int], None] | None = None,
    panel_offset: int = 0,
    envs: int = 1,
    workers: int = 1,
    ray_address: str | None = None,
) -> dict[str, Any]:
    """Success rate with its Wilson 95 % interval, mean return and per-episode records; written to
    ``out/eval.json`` (plus ``success.gif`` / ``failure.gif``) when ``out`` is given. ``envs`` > 1:
    that many scenes stepped together (low-dimensional policies; ``worldgen.vector_env``), the batches'
    seeds recorded as ``layout``. ``workers`` > 1 or a ``ray_address``: the episodes (or with ``envs`` > 1
    the batches) on that many Ray actors (a saved policy only), the same episodes as in one process."""
    on_workers = workers > 1 or ray_address is not None
    if on_workers and isinstance(policy, PretrainedPolicy):
        raise ArgumentError("evaluation on Ray workers takes a saved policy folder, not a policy object")
    policy_folder = policy
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
    env = WorldgenEnv(manifest, cameras=policy.needs_cameras)
    layout = None
    try:
        check_contract(policy, env)
        if envs > 1:
            chosen = policy_folder if on_workers else policy
            results, layout = run_episodes_together(
                manifest, chosen, seeds, envs, progress, workers, ray_address
            )
        elif on_workers:
            results = run_episodes_on_workers(policy_folder, manifest, seeds, workers, ray_address, progress)
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
        "workers": workers,
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
