"""Pipeline stages over files. The seed stage: run the scripted expert on each seed of a manifest in the
headless simulator and append the trajectories to a robomimic-layout HDF5 dataset, resuming after the
last complete demo when the output already exists."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .dataset import (
    CLIP,
    DatasetWriter,
    Demo,
    dataset_header,
    demo_names,
    demo_record,
    open_dataset,
    read_demo,
    read_header,
)
from .distributed import map_on_workers
from .errors import ArgumentError
from .keys import EXECUTED_ACTIONS
from .manifest import Manifest, as_manifest, manifest_text
from .sim.base import SimDiverged, instance_table


@dataclass
class EpisodeResult:
    seed: int
    demo: Demo | None
    reason: str = ""  # why no demo: the simulation diverged
    seconds: float = 0.0


def _stack_obs(observations: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {key: np.stack([o[key] for o in observations]) for key in observations[0]}


Actor = Callable[[dict[str, np.ndarray], int], tuple[np.ndarray, np.ndarray]]


def record_episode(
    env,
    seed: int,
    act: Actor,
    attrs: dict,
    start_state: np.ndarray | None = None,
    steps: int | None = None,
) -> EpisodeResult:
    """Run ``act(obs, t) -> (executed action, label)`` from the scene of ``seed`` (or from
    ``start_state``, a state of that scene) until success, the horizon or ``steps``; one demo with T+1
    observations whose ``actions`` are the labels (``executed_actions`` beside them where they differ)."""
    started = time.perf_counter()
    try:
        obs, _ = env.reset(seed=seed)
        if start_state is not None:
            env.set_state(start_state)
            obs = env.observe()
        observations, states, executed, labels, rewards, dones = [obs], [], [], [], [], []
        success = False
        for t in range(steps or env.manifest.horizon - env.steps):
            states.append(env.get_state())
            action, label = act(obs, t)
            obs, reward, terminated, truncated, info = env.step(action)
            observations.append(obs)
            executed.append(action)
            labels.append(label)
            rewards.append(reward)
            dones.append(terminated)
            success = bool(info["success"])
            if terminated or truncated:
                break
    except SimDiverged as exc:
        return EpisodeResult(seed, None, f"simulation diverged: {exc}", time.perf_counter() - started)
    attrs = {
        "seed": seed,
        "success": success,
        "sim_backend": type(env.backend).__name__,
        "scene": env.backend.scene.to_dict(),
        **attrs,
    }
    demo = episode_demo(observations, states, executed, labels, rewards, dones, attrs)
    return EpisodeResult(seed, demo, "", time.perf_counter() - started)


def episode_demo(observations, states, executed, labels, rewards, dones, attrs: dict) -> Demo:
    """A recorded episode's per-step lists as a :class:`Demo` (T+1 observations); ``executed_actions``
    beside the labels only where they differ."""
    executed_actions = np.asarray(executed, dtype=np.float32)
    label_actions = np.asarray(labels, dtype=np.float32)
    return Demo(
        actions=label_actions,
        states=np.asarray(states, dtype=np.float64),
        obs=_stack_obs(observations),
        rewards=np.asarray(rewards, dtype=np.float32),
        dones=np.asarray(dones, dtype=np.uint8),
        attrs=attrs,
        extras={}
        if np.array_equal(executed_actions, label_actions)
        else {EXECUTED_ACTIONS: executed_actions},
    )


def record_expert_episode(env, seed: int) -> EpisodeResult:
    """Run the scripted expert on ``seed`` until success or the horizon; one demo with T+1 observations."""
    from .experts import make_expert, object_poses

    expert = make_expert(env.manifest)

    def act(obs, t):
        if t == 0:
            expert.reset(seed, object_poses(env))
        action = expert.act(env.controller.commanded_tcp_world(), object_poses(env))
        return action, action

    attrs = {"source": "sim"}  # no parent, branch step, noise seed or model: DemoRecord reads None
    return record_episode(env, seed, act, attrs)


def record_play_episode(
    env, seed: int, parent: str, parent_actions: np.ndarray, action_noise: float, noise_seed: int
) -> EpisodeResult:
    """A non-expert "play" rollout: a recorded demo's actions replayed open loop from its scene with
    Gaussian noise of ``action_noise`` on the translation channels, so the commanded pose random-walks
    around the demo's path. World-model training data (``source="play"``), never policy labels."""
    from .manifest import rng_for

    rng = rng_for(noise_seed, "play")

    def act(obs, t):
        action = np.array(parent_actions[t], dtype=np.float32)
        action[:3] += rng.normal(0.0, action_noise, 3).astype(np.float32)
        action = np.clip(action, -1.0, 1.0)
        return action, action

    attrs = {
        "source": "play",
        "parent": parent,
        "branch_step": 0,
        "noise_seed": noise_seed,
        "action_noise": action_noise,
    }
    return record_episode(env, seed, act, attrs, steps=len(parent_actions))


def record_expert_episodes_together(
    manifest: Manifest, seeds: list[int], envs: int, cameras: bool = False
) -> Iterable[EpisodeResult]:
    """:func:`record_expert_episode` for ``seeds``, ``envs`` scenes stepped together
    (``worldgen.vector_env``; with ``cameras``, each world rendered through a view of its scene),
    yielded in ``seeds`` order batch by batch. Scenes stepped together are not
    bit-identical to one at a time (MuJoCo solves their contacts together); the demos record the
    number of scenes they were stepped with (``vector_envs``), and the same number gives the same bytes."""
    from .experts import make_expert
    from .vector_env import WorldgenVectorEnv, balanced_batches

    n, batches = balanced_batches(seeds, envs)
    venv = WorldgenVectorEnv(manifest, n, autoreset_mode="Disabled", cameras=cameras)
    dynamic = [o.name for o in manifest.task.objects if not o.static]

    def poses() -> list[dict]:
        """Every world's dynamic object poses, as the experts read them."""
        each = {name: venv.backend.body_pose(name) for name in dynamic}
        return [{name: (p[i], q[i]) for name, (p, q) in each.items()} for i in range(n)]

    try:
        for _, count, slots in batches:
            batch = slots[:count]
            started = time.perf_counter()
            obs, _ = venv.reset(seed=slots)
            experts = [make_expert(manifest) for _ in slots]
            for expert, seed, world in zip(experts, slots, poses(), strict=True):
                expert.reset(seed, world)
            history = [
                {
                    "obs": [{k: v[i] for k, v in obs.items()}],
                    "states": [],
                    "actions": [],
                    "rewards": [],
                    "dones": [],
                }
                for i in range(n)
            ]
            active, success, diverged = np.arange(n) < len(batch), np.zeros(n, bool), np.zeros(n, bool)
            actions = np.zeros((n, venv.single_action_space.shape[0]), np.float32)
            actions[:, -1] = -1.0
            while active.any():
                now = poses()
                for i in np.flatnonzero(active):
                    history[i]["states"].append(venv.get_state(i))
                    actions[i] = experts[i].act(venv.controllers[i].commanded_tcp_world(), now[i])
                obs, rewards, terminated, truncated, info = venv.step(actions)
                for i in np.flatnonzero(active):
                    h = history[i]
                    h["obs"].append({k: v[i] for k, v in obs.items()})
                    h["actions"].append(actions[i].copy())
                    h["rewards"].append(rewards[i])
                    h["dones"].append(terminated[i])
                    success[i], diverged[i] = bool(terminated[i]), bool(info["diverged"][i])
                    active[i] = not (terminated[i] or truncated[i])
            seconds = (time.perf_counter() - started) / len(batch)
            for i, seed in enumerate(batch):
                if diverged[i]:
                    yield EpisodeResult(seed, None, "simulation diverged (scenes stepped together)", seconds)
                    continue
                h = history[i]
                attrs = {
                    "seed": seed,
                    "success": bool(success[i]),
                    "sim_backend": type(venv.backend).__name__,
                    "vector_envs": n,
                    "scene": venv.backend.worlds[i].scene.to_dict(),
                    "source": "sim",
                }
                acted = h["actions"]  # the expert's actions: executed and labels alike
                demo = episode_demo(h["obs"], h["states"], acted, acted, h["rewards"], h["dones"], attrs)
                yield EpisodeResult(seed, demo, "", seconds)
    finally:
        venv.close()


class SeedWorker:
    """Holds one environment and records episodes; also the body of a Ray actor."""

    def __init__(
        self, manifest: Manifest, cameras: bool = True, device: str | None = None, backend: str = "newton"
    ):
        from .envs import WorldgenEnv

        simulator = None  # WorldgenEnv makes a NewtonBackend
        if backend == "isaac":
            from .sim.isaac import IsaacBackend  # inside Isaac Sim, once SimulationApp runs

            simulator = IsaacBackend(manifest, render=cameras)
        self.env = WorldgenEnv(manifest, cameras=cameras, device=device, backend=simulator)

    def run(self, seed: int) -> EpisodeResult:
        return record_expert_episode(self.env, seed)


def seed_range(manifest: Manifest, n: int | None) -> list[int]:
    count = manifest.seeds.count if n is None else n
    return list(range(manifest.seeds.base_seed, manifest.seeds.base_seed + count))


def run_seed_stage(
    manifest: Manifest | str | Path,
    output: str | Path,
    n: int | None = None,
    workers: int = 1,
    ray_address: str | None = None,
    cameras: bool = True,
    progress: Callable[[EpisodeResult, int, int], None] | None = None,
    envs: int = 1,
    backend: str = "newton",
    domain: str = "source",
    labels: bool = True,
) -> DatasetWriter:
    """Append expert demos for the manifest's seeds to ``output``; returns the (finalized) writer.

    Demo names are ``demo_<seed - base_seed>``, so the file is the same for any number of workers.
    ``envs`` > 1: that many scenes stepped together in one process. ``backend="isaac"``
    (PhysX and Replicator, inside Isaac Sim under a running SimulationApp): one scene at a time, here.
    ``domain="target"``: rendered in the manifest's target domain (:meth:`Manifest.in_domain`).
    ``labels=False``: unlabelled clips (camera images alone, ``source: clip``), what real RGB-D
    footage with a segmenter gives.
    """
    if envs > 1 and (workers > 1 or ray_address is not None):
        raise ArgumentError(f"--envs {envs}: scenes stepped together record in one process (no --workers)")
    if backend == "isaac" and (envs > 1 or workers > 1 or ray_address is not None):
        raise ArgumentError("--backend isaac: one Isaac Sim app records one scene at a time, in this process")
    if not labels and not cameras:
        raise ArgumentError("clips without labels are camera images: drop --no-cameras")
    manifest = as_manifest(manifest).in_domain(domain)
    header = dataset_header(manifest, instance_table(manifest), manifest_text(manifest))
    header["worldgen"]["domain"] = domain
    writer = DatasetWriter(output, header)
    source = "sim" if labels else CLIP
    todo = [s for s in seed_range(manifest, n) if s not in writer.done_seeds(source)]
    total = len(todo)
    results: Iterable[EpisodeResult]
    if envs > 1:
        results = record_expert_episodes_together(manifest, todo, envs, cameras) if todo else []
    else:  # one process, or Ray actors
        results = map_on_workers(SeedWorker, (manifest, cameras, None, backend), todo, workers, ray_address)
    for done, result in enumerate(results, start=1):
        if result.demo is None:
            writer.discard(result.seed, result.reason)
        else:
            demo = result.demo if labels else result.demo.as_clip()
            writer.append(demo, name=f"demo_{result.seed - manifest.seeds.base_seed}")
        if progress is not None:
            progress(result, done, total)
    writer.finalize()
    return writer


def run_play_stage(
    manifest: Manifest,
    dataset: str | Path,
    output: str | Path,
    action_noise: list[float],
    cameras: bool = True,
    progress: Callable[[EpisodeResult, int, int], None] | None = None,
) -> DatasetWriter:
    """``output``: the dataset's demos, plus one play rollout per successful seed demo and noise level
    (the seed's actions with that much noise, from its scene; noise seed from the demo and level).
    Resumes: rollouts already in ``output`` are kept."""

    from .envs import WorldgenEnv

    with open_dataset(dataset) as f:
        writer = DatasetWriter(output, read_header(f))
        parents = {}
        for name in demo_names(f):
            group, record = f["data"][name], demo_record(f, name)
            if name not in writer.demos:
                writer.append(read_demo(group), name)
            if record.source == "sim" and record.success:
                parents[name] = (record.seed, group["actions"][()])
    done = {(r.parent, r.action_noise) for r in writer.records()}
    todo = [(n, s) for n in parents for s in action_noise if (n, float(s)) not in done]
    env = WorldgenEnv(manifest, cameras=cameras)
    try:
        for i, (name, sigma) in enumerate(todo, start=1):
            seed, actions = parents[name]
            noise_seed = int(np.random.SeedSequence([seed, round(sigma * 1000)]).generate_state(1)[0])
            result = record_play_episode(env, seed, name, actions, sigma, noise_seed)
            if result.demo is None:
                writer.discard(seed, result.reason)
            else:
                writer.append(result.demo)
            if progress is not None:
                progress(result, i, len(todo))
    finally:
        env.close()
    writer.finalize()
    return writer
