"""Generated demos replayed in the simulator: their executed actions from where they started, and how far
the replay strays from the prediction. A diagnostic: acceptance never uses it."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
from worldgen.dataset import (
    DatasetError,
    Demo,
    DemoRecord,
    dataset_manifest,
    demo_record,
    open_dataset,
    read_demo,
)
from worldgen.distributed import map_on_workers
from worldgen.envs import WorldgenEnv, object_slice
from worldgen.keys import EEF_POS
from worldgen.manifest import Manifest

from .recipes import get_recipe


def replay_errors(manifest: Manifest, demo: Demo, replayed: dict[str, np.ndarray], success: bool) -> dict:
    """Replay success and the distances between replayed and predicted positions: the end effector's and
    every dynamic object's largest over the clip, and the success object's at the last step; ``replayed``
    holds the replay's observations after each step (R <= T rows)."""
    steps = len(replayed[EEF_POS])
    eef_err = np.linalg.norm(replayed[EEF_POS] - demo.obs[EEF_POS][1 : steps + 1], axis=1)

    def object_error(name: str) -> np.ndarray:
        sl = object_slice(manifest, name)
        return np.linalg.norm(
            replayed["object"][:, sl][:, :3] - demo.obs["object"][1 : steps + 1, sl][:, :3], axis=1
        )

    dynamic = [o.name for o in manifest.task.objects if not o.static]
    success_err = object_error(manifest.task.success.object)
    return {
        "replay_success": success,
        "eef_error_max": float(eef_err.max(initial=0.0)),
        "object_error_max": max(float(object_error(n).max(initial=0.0)) for n in dynamic),
        "object_error_end": float(success_err[-1]) if steps else 0.0,
    }


class ReplayBatchWorker:
    """``num_envs`` scenes stepped together replaying generated demos, a batch at a time
    (:func:`worldgen.vector_env.balanced_batches` of (start state, demo, scene seed)); also the body of a
    Ray actor."""

    def __init__(self, manifest: Manifest, num_envs: int):
        from worldgen.vector_env import WorldgenVectorEnv

        self.manifest = manifest
        self.venv = WorldgenVectorEnv(manifest, num_envs, autoreset_mode="Disabled")

    def run(self, batch: tuple[int, int, list[tuple[np.ndarray, Demo, int]]]) -> tuple[int, list[dict]]:
        start, count, replays = batch
        venv, n = self.venv, self.venv.num_envs
        venv.reset(seed=[seed for _, _, seed in replays])
        for i, (state, _, _) in enumerate(replays):
            if state is not None:
                venv.set_state(i, state)
        actions = [d.executed_actions for _, d, _ in replays]
        seen = [{EEF_POS: [], "object": []} for _ in replays]
        success, active = np.zeros(n, bool), np.array([len(a) > 0 for a in actions])
        t = 0
        while active.any():
            hold = np.zeros(venv.single_action_space.shape, np.float32)
            step = np.stack([a[t] if t < len(a) else hold for a in actions])
            obs, _, terminated, truncated, info = venv.step(step)
            for i in np.flatnonzero(active):
                seen[i][EEF_POS].append(obs[EEF_POS][i])
                seen[i]["object"].append(obs["object"][i])
                success[i] |= bool(info["success"][i])
                active[i] = not (terminated[i] or truncated[i]) and t + 1 < len(actions[i])
            t += 1
        results = []
        for i in range(count):
            demo = replays[i][1]
            replayed = {k: np.reshape(v, (len(v), demo.obs[k].shape[1])) for k, v in seen[i].items()}
            results.append(replay_errors(self.manifest, demo, replayed, bool(success[i])))
        return start, results

    def close(self) -> None:
        self.venv.close()


def replay_demos_together(
    manifest: Manifest,
    replays: list[tuple[np.ndarray, Demo, int]],
    envs: int,
    workers: int = 1,
    ray_address: str | None = None,
) -> list[dict]:
    """:func:`replay_demo` for many demos, ``envs`` scenes stepped together (``worldgen.vector_env``);
    ``replays`` holds (start state, demo, scene seed) each. Scenes stepped together are not bit-identical
    to one at a time (MuJoCo solves their contacts together): a diagnostic, as replay is. ``workers`` > 1
    or a ``ray_address``: the batches on that many Ray actors, the same batches and results."""
    from worldgen.vector_env import balanced_batches

    n, batches = balanced_batches(replays, envs)
    done = dict(map_on_workers(ReplayBatchWorker, (manifest, n), batches, workers, ray_address))
    return [result for start in sorted(done) for result in done[start]]


class ReplayWorker:
    """One simulator scene replaying generated demos of one dataset by name (:func:`replay_demo`); also
    the body of a Ray actor (``worldgen.distributed``)."""

    def __init__(self, dataset: str | Path, manifest: Manifest):
        self.dataset = Path(dataset)
        self.env = WorldgenEnv(manifest, cameras=False)

    def run(self, name: str) -> tuple[str, dict]:
        with open_dataset(self.dataset) as f:
            record = demo_record(f, name)
            return name, replay_demo(self.env, replay_start(f, record), f["data"][name], record.seed)


def replay_generated(
    f: h5py.File, names: list[str], envs: int = 1, workers: int = 1, ray_address: str | None = None
) -> list[dict]:
    """:func:`replay_demo` for the generated demos ``names`` of an open dataset that also holds their
    parents (generation copies the seed demos into its output); ``envs`` > 1: that many scenes stepped
    together (:func:`replay_demos_together`); ``workers`` > 1 or a ``ray_address``: the demos (or the
    batches of ``envs``) on that many Ray actors, the same replays as in one process."""
    manifest = dataset_manifest(f)
    records = [demo_record(f, n) for n in names]
    for r in records:
        if r.parent is None or r.parent not in f["data"]:
            raise DatasetError(f"{f.filename}: {r.name} has no parent demo in the file to replay it from")
    if envs > 1:
        replays = [(replay_start(f, r), read_demo(f["data"][r.name]), r.seed) for r in records]
        return replay_demos_together(manifest, replays, envs, workers, ray_address)
    if workers > 1 or ray_address is not None:
        done = dict(map_on_workers(ReplayWorker, (f.filename, manifest), names, workers, ray_address))
        return [done[name] for name in names]
    env = WorldgenEnv(manifest, cameras=False)
    try:
        return [replay_demo(env, replay_start(f, r), f["data"][r.name], r.seed) for r in records]
    finally:
        env.close()


def replay_start(f: h5py.File, record: DemoRecord) -> np.ndarray | None:
    """The simulator state a generated demo starts from: its parent's at its start step, or None for a
    recipe whose attempts start from a new scene's reset (``Recipe.new_scenes``)."""
    if get_recipe(record.recipe).new_scenes:
        return None
    return f["data"][record.parent]["states"][record.branch_step]


def replay_executed(
    env: WorldgenEnv, start: np.ndarray | None, demo: Demo, seed: int
) -> tuple[list[dict[str, np.ndarray]], bool]:
    """A generated demo's executed actions replayed in the simulator from ``start`` (:func:`replay_start`;
    None: the scene's reset) until they end or the episode does: the observation at the start and after
    each step, and whether the success predicate held at any step."""
    obs, _ = env.reset(seed=seed)
    if start is not None:
        env.set_state(start)
        obs = env.observe()
    seen, success = [obs], False
    for action in demo.executed_actions:
        obs, _, terminated, truncated, info = env.step(action)
        seen.append(obs)
        success = success or bool(info["success"])
        if terminated or truncated:
            break
    return seen, success


def replay_demo(env: WorldgenEnv, start: np.ndarray | None, group: h5py.Group, seed: int) -> dict:
    """Replay a generated demo's executed actions in the simulator from ``start`` (:func:`replay_start`;
    None: the scene's reset): replay success, and the distances between replayed and predicted positions
    (:func:`replay_errors`)."""
    demo = read_demo(group)
    seen, success = replay_executed(env, start, demo, seed)
    after = seen[1:]
    replayed = {
        k: np.reshape([o[k] for o in after], (len(after), demo.obs[k].shape[1])) for k in (EEF_POS, "object")
    }
    return replay_errors(env.manifest, demo, replayed, success)
