"""Generation recipes: whole task attempts whose labels fit the states they visit.

``recover`` (DART / DAgger in imagination): from a seed demo's state at a start step, the scripted expert
acts on the world model's *predicted* state (the commanded TCP pose is exact: the controller integrates
the executed actions; the object poses come from the predicted ``object`` state), Gaussian noise is
added to the translation of every executed action for ``perturb_steps`` steps, and the expert's clean
action at each visited state is the label. The attempt runs in the world model until the manifest's
success predicate has held on the predicted state for ``hold_steps``, or the horizon; only successful
attempts are kept (acceptance uses the world model alone). ``recover_in_simulator`` runs the same
attempts (same starts, same expert, same noise) in the simulator: the ceiling of the recipe.

Every generated demo records ``recipe``, ``parent``, ``branch_step`` (the start step), ``noise_seed``,
``action_noise``, ``perturb_steps``, ``model`` (checkpoint hash) and its ``executed_actions``, so it
regenerates bit-identically (same record, same batch layout) and replays in the simulator from the
parent's ``states[branch_step]`` (:func:`replay_demo`, a diagnostic never used for acceptance).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from worldgen.control import ArmController
from worldgen.dataset import (
    DatasetError,
    DatasetWriter,
    Demo,
    DemoRecord,
    dataset_manifest,
    demo_names,
    demo_record,
    open_dataset,
    read_demo,
    read_header,
)
from worldgen.distributed import map_on_workers
from worldgen.envs import OBJECT_FEATURES, WorldgenEnv, object_slice, predicate_steps, success_step
from worldgen.experts import ObjectPoses, WaypointExpert, make_expert, object_poses, poses_from_object_obs
from worldgen.geometry import axis_angle_from_rotation
from worldgen.keys import EEF_POS, EXECUTED_ACTIONS, GRIPPER_QPOS
from worldgen.manifest import Manifest, rng_for
from worldgen.pipeline import record_episode

from .branch import WorldModelSampler, noise_seed, predicted_obs, state_obs
from .data import Episode, camera_size, state_layout

# Recipes whose attempts begin at a new scene's reset rather than at a parent demo's state.
NEW_SCENE_RECIPES = ("retarget",)


@dataclass(frozen=True)
class RecoverSpec:
    """``per_seed`` attempts from each successful seed demo at each of ``start_steps``; noise of
    ``action_noise`` (std, normalised units) on the executed translation for the first ``perturb_steps``
    steps of an attempt (``None``: all of them)."""

    per_seed: int = 4
    start_steps: tuple[int, ...] = (0,)
    action_noise: float = 0.1
    perturb_steps: int | None = None
    base_seed: int = 0
    labeler: str = "expert"  # or "parent": back toward the parent's path (no expert needed)
    # "controller": the end effector in imagination is the commanded TCP (the controller integrates the
    # executed actions exactly) plus the mean tracking offset measured on the seed demos; "model": the
    # world model's own state head. The robot's own pose is known; the world model predicts the world.
    robot_state: str = "controller"
    success_margin: float = 0.0  # m to spare before the predicted state counts as a success

    @classmethod
    def from_manifest(cls, manifest: Manifest, **overrides: Any) -> RecoverSpec:
        """The manifest's ``generation.recover``; ``overrides`` that are not None win."""
        recipe = manifest.generation.recover
        values = {
            "per_seed": recipe.per_seed,
            "start_steps": tuple(recipe.at_steps),
            "action_noise": recipe.action_noise,
            "labeler": recipe.labeler,
            "robot_state": recipe.robot_state,
            "success_margin": manifest.generation.success_margin,
            "base_seed": manifest.seeds.base_seed,
        }
        return cls(**{**values, **{k: v for k, v in overrides.items() if v is not None}})


@dataclass
class Parent:
    """What an attempt needs of its seed demo."""

    name: str
    seed: int
    demo: Demo

    @property
    def object_obs(self) -> np.ndarray:
        return self.demo.obs["object"]

    def expert_at(self, manifest: Manifest, step: int) -> WaypointExpert:
        """The scripted expert as it was at ``step`` of this demo: planned from the scene's first
        poses, then advanced through the recorded commanded poses."""
        expert = make_expert(manifest)
        expert.reset(self.seed, poses_from_object_obs(manifest, self.object_obs[0]))
        for t in range(step):
            controller = ArmController.from_env_state(manifest, self.demo.states[t])
            expert.act(controller.commanded_tcp_world(), poses_from_object_obs(manifest, self.object_obs[t]))
        return expert


class ParentPathLabeler:
    """Diffusion Meets DAgger's labels, which need no expert: the action that brings the commanded TCP
    back to the parent demo's commanded path ``LOOKAHEAD`` steps ahead of the nearest point on it
    (spread over those steps, so on the path it is the parent's own pace), with the parent's gripper
    command at that point."""

    LOOKAHEAD = 3
    SEARCH = 10  # how far along the path the nearest point is looked for, so the path is never skipped

    def __init__(self, manifest: Manifest, parent: Parent, step: int):
        self.manifest = manifest
        states = parent.demo.states
        self.path = [ArmController.from_env_state(manifest, s).commanded_tcp_world() for s in states]
        self.gripper = parent.demo.actions[:, -1]
        self.t = step

    def act(self, commanded_tcp: np.ndarray, poses) -> np.ndarray:
        emb, last = self.manifest.embodiment, len(self.path) - 1
        window = range(self.t, min(self.t + self.SEARCH, last) + 1)
        self.t = min(window, key=lambda k: float(np.linalg.norm(self.path[k][:3, 3] - commanded_tcp[:3, 3])))
        target = self.path[min(self.t + self.LOOKAHEAD, last)]
        a_pos = (target[:3, 3] - commanded_tcp[:3, 3]) / (self.LOOKAHEAD * emb.max_translation)
        rot = axis_angle_from_rotation(target[:3, :3] @ commanded_tcp[:3, :3].T)
        a_rot = rot / (self.LOOKAHEAD * emb.max_rotation)
        action = np.concatenate([a_pos, a_rot, [self.gripper[min(self.t, len(self.gripper) - 1)]]])
        return np.clip(action, -1.0, 1.0).astype(np.float32)


def labeler_at(spec: RecoverSpec, manifest: Manifest, parent: Parent, step: int):
    """The labeler of an attempt from ``parent`` at ``step``: the scripted expert as it was there, or the
    parent's path."""
    if spec.labeler == "parent":
        return ParentPathLabeler(manifest, parent, step)
    return parent.expert_at(manifest, step)


def tracking_offset(manifest: Manifest, parents: list[Parent]) -> np.ndarray:
    """Mean of (measured end effector - commanded TCP) over the seed demos: the joint drives' static
    tracking error (about 6 mm on push_to_target; 1.4 mm is left once it is removed)."""
    gaps = [
        d.demo.obs[EEF_POS][t] - ArmController.from_env_state(manifest, s).commanded_tcp_world()[:3, 3]
        for d in parents
        for t, s in enumerate(d.demo.states)
    ]
    return np.mean(gaps, axis=0)


def with_end_effector(states: np.ndarray, eef: np.ndarray, layout: dict[str, int]) -> np.ndarray:
    """(N, S) raw states with the end effector replaced by ``eef`` (N, 3) and each object's position
    relative to it recomputed."""
    out = states.copy()
    out[:, : layout[EEF_POS]] = eef
    start = layout[EEF_POS] + layout[GRIPPER_QPOS]
    for o in range(start, states.shape[1], OBJECT_FEATURES):
        out[:, o + 7 : o + 10] = out[:, o : o + 3] - eef
    return out


def seed_parents(f: h5py.File) -> list[Parent]:
    """The successful simulator demos of a dataset's ``seed`` mask, less those it holds out for validation
    (``valid``): an attempt never starts from a demo that the seeds-only policy does not train on."""
    held_out = set(demo_names(f, "valid")) if "mask/valid" in f else set()
    parents = []
    for name in demo_names(f, "seed"):
        if name in held_out:
            continue
        record = demo_record(f, name)
        if record.success:
            parents.append(Parent(name, record.seed, read_demo(f["data"][name])))
    return parents


def perturbed(label: np.ndarray, rng: np.random.Generator, sigma: float, on: bool) -> np.ndarray:
    """The executed action: the label with Gaussian noise on its translation channels."""
    action = np.array(label, dtype=np.float32)
    if on and sigma > 0:
        action[:3] += rng.normal(0.0, sigma, 3).astype(np.float32)
    return np.clip(action, -1.0, 1.0)


def attempt_seeds(spec: RecoverSpec, parent: str, step: int) -> list[int]:
    return [noise_seed(spec.base_seed, parent, step, i) for i in range(spec.per_seed)]


def start_output(
    f: h5py.File, dataset: Path, out: str | Path
) -> tuple[Manifest, DatasetWriter, list[Parent]]:
    """The dataset's manifest, a writer for ``out`` holding its seed demos, and the parents."""
    writer = DatasetWriter(out, read_header(f))
    for name in demo_names(f, "seed"):
        if name not in writer.demos:
            writer.append(read_demo(f["data"][name]), name)
    return dataset_manifest(f), writer, seed_parents(f)


def _done(writer: DatasetWriter, spec: RecoverSpec) -> set[tuple[str, int]]:
    return {
        (r.parent, r.branch_step)
        for r in writer.records()
        if r.recipe == "recover" and r.labeler == spec.labeler
    }


def _record_attrs(parent: Parent, step: int, seed: int, spec: RecoverSpec, i: int, model: str) -> dict:
    return {
        "seed": parent.seed,
        "recipe": "recover",
        "labeler": spec.labeler,
        "robot_state": spec.robot_state,
        "parent": parent.name,
        "branch_step": step,
        "noise_seed": seed,
        "action_noise": spec.action_noise,
        "perturb_steps": -1 if spec.perturb_steps is None else spec.perturb_steps,
        "success_margin": spec.success_margin,
        "batch_layout": json.dumps({"size": spec.per_seed, "index": i}),
        "model": model,
    }


class WorldModelAttempts:
    """What ``recover`` attempts from one dataset's seed demos in one world model need, loaded once: the
    sampler, the manifest, the parents and their frames. Also the body of a Ray actor
    (``worldgen.distributed``), so each worker process loads them once."""

    def __init__(self, dataset: str | Path, ckpt: str | Path, spec: RecoverSpec, device: str = "cpu"):
        self.sampler = WorldModelSampler(ckpt, device=device)
        self.spec = spec
        meta = self.sampler.meta
        with open_dataset(dataset) as f:
            self.manifest = dataset_manifest(f)
            parents = seed_parents(f)
            self.episodes = {
                p.name: Episode.load(f["data"][p.name], meta.camera, meta.instances, meta.resolution)
                for p in parents
            }
            self.layout = state_layout(f["data"][parents[0].name])
            self.cam_hw = camera_size(f["data"][parents[0].name], meta.camera)
        self.parents = {p.name: p for p in parents}
        controller = spec.robot_state == "controller"
        self.offset = tracking_offset(self.manifest, parents) if controller else None

    def run(self, task: tuple[str, int]) -> tuple[tuple[str, int], list[Demo]]:
        """The ``per_seed`` attempts from seed demo ``task[0]`` at step ``task[1]``."""
        name, step = task
        meta = self.sampler.meta
        demos = _attempts_in_world_model(
            self.sampler,
            self.manifest,
            self.parents[name],
            self.episodes[name],
            step,
            self.spec,
            self.layout,
            meta.context_frames,
            self.cam_hw,
            self.offset,
        )
        return task, demos


def recover_in_world_model(
    dataset: str | Path,
    ckpt: str | Path,
    out: str | Path,
    spec: RecoverSpec,
    device: str = "cpu",
    progress: Callable[[str, int, int, int], None] | None = None,
    workers: int = 1,
    ray_address: str | None = None,
) -> dict:
    """Append the seed demos of ``dataset`` and every recovery attempt to ``out`` (resumes per parent and
    start step); an attempt's ``success`` is the world model's verdict, and only those that succeeded are
    meant for training (:func:`accepted_demos`). Returns counts: attempts, accepted. ``workers`` > 1 or a
    ``ray_address``: (parent, start step) tasks on that many Ray actors, written in the order one process
    writes them."""
    dataset = Path(dataset)
    with open_dataset(dataset) as f:
        _, writer, parents = start_output(f, dataset, out)
    done, counts = _done(writer, spec), {"attempts": 0, "accepted": 0}
    tasks = [
        (p.name, step)
        for p in parents
        for step in spec.start_steps
        if (p.name, step) not in done and step < p.demo.num_samples
    ]
    if tasks:
        init = (dataset, ckpt, spec, device)
        results = map_on_workers(WorldModelAttempts, init, tasks, workers, ray_address)
        report = None if progress is None else (lambda task, accepted, n: progress(*task, accepted, n))
        append_in_task_order(writer, tasks, results, counts, report)
    writer.finalize()
    return written_counts(writer)


def written_counts(writer: DatasetWriter) -> dict[str, int]:
    """The attempts in the whole output and how many succeeded, those a resumed call found written
    included (a run killed after its last attempt and resumed makes none, and must report them all)."""
    attempts = [r for r in writer.records() if r.recipe is not None]
    return {"attempts": len(attempts), "accepted": sum(bool(r.success) for r in attempts)}


def append_in_task_order(
    writer: DatasetWriter,
    tasks: list,
    results,
    counts: dict[str, int],
    progress: Callable[[object, int, int], None] | None = None,
) -> None:
    """Append each task's attempts as ``(task, demos)`` results arrive, in task order whatever order they
    finish in (so demo names are those one process writes), counting attempts and accepted ones;
    ``progress(task, accepted, attempts)`` after each task."""
    finished, next_task = {}, 0
    for task, demos in results:
        finished[task] = demos
        while next_task < len(tasks) and tasks[next_task] in finished:
            written = finished.pop(tasks[next_task])
            for demo in written:
                writer.append(demo)
            accepted = sum(bool(d.attrs["success"]) for d in written)
            counts["attempts"] += len(written)
            counts["accepted"] += accepted
            if progress is not None:
                progress(tasks[next_task], accepted, len(written))
            next_task += 1


@dataclass
class Imagined:
    """Attempts acted out in the world model together: pixel frames after each step (n, T, C, h, w), raw
    states (n, T+1, S), labels and executed actions (n, T, A), and whether the success predicate held
    on the predicted state after each step (n, T)."""

    frames: torch.Tensor
    states: np.ndarray
    labels: np.ndarray
    executed: np.ndarray
    held: np.ndarray

    def demo(
        self,
        i: int,
        first_frame: torch.Tensor,
        attrs: dict,
        manifest: Manifest,
        sampler: WorldModelSampler,
        layout: dict[str, int],
        cam_hw: tuple[int, int],
    ) -> Demo:
        """Attempt ``i`` as a demo, cut where the predicate has held for ``hold_steps`` (then its
        ``success`` is the world model's verdict, the only one used), from the model frame it started
        at (1, C, h, w); executed actions beside the labels only where they differ."""
        end = success_step(self.held[i], manifest.task.success.hold_steps)
        t = end if end >= 0 else self.held.shape[1]
        dones = np.zeros(t, np.uint8)
        dones[-1] = end >= 0
        seq = torch.cat([first_frame, self.frames[i, :t]])
        labels, executed = self.labels[i, :t], self.executed[i, :t]
        meta = sampler.meta
        return Demo(
            actions=labels,
            states=np.zeros((t, 0)),
            obs=predicted_obs(meta.camera, meta.instances, seq, self.states[i, : t + 1], layout, cam_hw),
            rewards=self.held[i, :t].astype(np.float32),
            dones=dones,
            attrs={**attrs, "success": end >= 0, "source": "world_model"},
            extras={} if np.array_equal(labels, executed) else {EXECUTED_ACTIONS: executed},
        )


Actor = Callable[[np.ndarray, ObjectPoses, int], tuple[np.ndarray, np.ndarray]]


@torch.no_grad()
def imagine(
    sampler: WorldModelSampler,
    manifest: Manifest,
    context: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    actors: list[Actor],
    controllers: list[ArmController],
    layout: dict[str, int],
    start_z: np.ndarray,
    steps: int,
    tracking_offset: np.ndarray | None,
    generators: list[torch.Generator],
    success_margin: float = 0.0,
) -> Imagined:
    """Attempts acted out in the world model, one model call per step for all of them.

    ``context``: model frames (n, K, C, h, w), the actions before them (n, K, A) and raw states (n, S);
    ``actors[i](commanded_tcp, poses, j)`` gives attempt i's (executed action, label) at step j from its
    controller's commanded TCP and the predicted object poses; ``start_z`` (n,) is the success object's
    height when its episode began. Runs ``steps`` steps or until every attempt's predicate, with
    ``success_margin`` to spare, has held for ``hold_steps``. ``tracking_offset``: the end effector is
    the commanded TCP plus this offset (the robot's pose is known), not the model's state head."""
    n, hold = len(actors), manifest.task.success.hold_steps
    window, actions, state = context
    norm_state = sampler.norm.normalize(state)
    raw = [state.numpy()]  # (n, S) per step, raw units
    frames, labels, executed, holds = [], [], [], []
    for j in range(steps):
        objects = state_obs(raw[-1], layout)["object"]
        acted = [
            actors[i](controllers[i].commanded_tcp_world(), poses_from_object_obs(manifest, objects[i]), j)
            for i in range(n)
        ]
        act = np.stack([a for a, _ in acted]).astype(np.float32)
        for i in range(n):
            controllers[i].apply(act[i].astype(np.float64))
        actions = torch.cat([actions[:, 1:], torch.from_numpy(act)[:, None]], 1)
        nxt, norm_state = sampler.step(window, actions, norm_state, generators)
        window = torch.cat([window[:, 1:], nxt[:, None]], 1)
        predicted = sampler.norm.denormalize(norm_state).numpy()
        if tracking_offset is not None:
            commanded = np.stack([c.commanded_tcp_world()[:3, 3] for c in controllers])
            predicted = with_end_effector(predicted, commanded + tracking_offset, layout)
            norm_state = sampler.norm.normalize(torch.from_numpy(predicted))
        raw.append(predicted)
        frames.append(nxt)
        labels.append(np.stack([label for _, label in acted]))
        executed.append(act)
        obs = state_obs(raw[-1], layout)
        objects, fingers = obs["object"], obs[GRIPPER_QPOS]
        holds.append(
            [
                predicate_steps(manifest, objects[i : i + 1], fingers[i : i + 1], start_z[i], success_margin)[
                    0
                ]
                for i in range(n)
            ]
        )
        ends = [success_step(np.asarray(holds)[:, i], hold) for i in range(n)]
        if min(ends) >= 0:
            break
    return Imagined(
        frames=sampler.decode(torch.stack(frames, 1)),
        states=np.stack(raw, 1),
        labels=np.stack(labels, 1).astype(np.float32),
        executed=np.stack(executed, 1).astype(np.float32),
        held=np.asarray(holds).T,
    )


def _attempts_in_world_model(
    sampler: WorldModelSampler,
    manifest: Manifest,
    parent: Parent,
    episode: Episode,
    step: int,
    spec: RecoverSpec,
    layout: dict[str, int],
    k: int,
    cam_hw: tuple[int, int],
    tracking_offset: np.ndarray | None,
) -> list[Demo]:
    """``per_seed`` attempts from ``parent`` at ``step``, batched: one world-model call per step for all."""
    n = spec.per_seed
    seeds = attempt_seeds(spec, parent.name, step)
    rngs = [rng_for(s, "recover") for s in seeds]
    labeler = labeler_at(spec, manifest, parent, step)
    labelers = [copy.deepcopy(labeler) for _ in range(n)]

    def actor(i: int) -> Actor:
        def act(commanded_tcp, poses, j):
            label = labelers[i].act(commanded_tcp, poses)
            noisy = spec.perturb_steps is None or j < spec.perturb_steps
            return perturbed(label, rngs[i], spec.action_noise, noisy), label

        return act

    context, past, state = episode.history(step, k)
    start_z = float(parent.object_obs[0][object_slice(manifest, manifest.task.success.object)][2])
    batch = (
        sampler.encode(context)[None].repeat(n, 1, 1, 1, 1),
        past[None].repeat(n, 1, 1),
        state[None].repeat(n, 1),
    )
    imagined = imagine(
        sampler,
        manifest,
        batch,
        [actor(i) for i in range(n)],
        [ArmController.from_env_state(manifest, parent.demo.states[step]) for _ in range(n)],
        layout,
        np.full(n, start_z),
        manifest.horizon - step,
        tracking_offset,
        [torch.Generator().manual_seed(s) for s in seeds],
        spec.success_margin,
    )
    scene = parent.demo.attrs.get("scene", "{}")
    return [
        imagined.demo(
            i,
            episode.frames[step : step + 1],
            {**_record_attrs(parent, step, seeds[i], spec, i, sampler.hash), "scene": scene},
            manifest,
            sampler,
            layout,
            cam_hw,
        )
        for i in range(n)
    ]


def recover_in_simulator(
    dataset: str | Path,
    out: str | Path,
    spec: RecoverSpec,
    cameras: bool = False,
    progress: Callable[[str, int, int, int], None] | None = None,
) -> dict:
    """The same attempts as :func:`recover_in_world_model` (same starts, expert and noise seeds),
    executed in the simulator and appended to ``out`` beside the seed demos (``success`` from the
    simulator)."""
    dataset = Path(dataset)
    with open_dataset(dataset) as f:
        manifest, writer, parents = start_output(f, dataset, out)
    done, counts = _done(writer, spec), {"attempts": 0, "accepted": 0}
    # The world model's stopping rule: an attempt ends once the predicate holds with the margin to spare.
    env = WorldgenEnv(manifest, cameras=cameras, success_margin=spec.success_margin)
    try:
        for parent in parents:
            for step in spec.start_steps:
                if (parent.name, step) in done or step >= parent.demo.num_samples:
                    continue
                accepted = 0
                for i, seed in enumerate(attempt_seeds(spec, parent.name, step)):
                    labeler, rng = labeler_at(spec, manifest, parent, step), rng_for(seed, "recover")

                    def act(obs, t, labeler=labeler, rng=rng):
                        label = labeler.act(env.controller.commanded_tcp_world(), object_poses(env))
                        noisy = spec.perturb_steps is None or t < spec.perturb_steps
                        return perturbed(label, rng, spec.action_noise, noisy), label

                    attrs = {**_record_attrs(parent, step, seed, spec, i, ""), "source": "sim"}
                    result = record_episode(
                        env, parent.seed, act, attrs, start_state=parent.demo.states[step]
                    )
                    counts["attempts"] += 1
                    if result.demo is None:
                        continue
                    writer.append(result.demo)
                    accepted += bool(result.demo.attrs["success"])
                counts["accepted"] += accepted
                if progress is not None:
                    progress(parent.name, step, accepted, spec.per_seed)
    finally:
        env.close()
    writer.finalize()
    return counts


def accepted_demos(path: str | Path) -> list[str]:
    """The seed demos and the generated attempts that succeeded: what a policy trains on."""
    with open_dataset(path) as f:
        records = [demo_record(f, n) for n in demo_names(f)]
    return [r.name for r in records if r.recipe is None or r.success]


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
    recipe that starts from a new scene's reset (``retarget``)."""
    if record.recipe in NEW_SCENE_RECIPES:
        return None
    return f["data"][record.parent]["states"][record.branch_step]


def replay_demo(env: WorldgenEnv, start: np.ndarray | None, group: h5py.Group, seed: int) -> dict:
    """Replay a generated demo's executed actions in the simulator from ``start`` (:func:`replay_start`;
    None: the scene's reset): replay success, and the distances between replayed and predicted positions
    (:func:`replay_errors`)."""
    demo = read_demo(group)
    executed = demo.executed_actions
    env.reset(seed=seed)
    if start is not None:
        env.set_state(start)
    seen, success = {EEF_POS: [], "object": []}, False
    for action in executed:
        obs, _, terminated, truncated, info = env.step(action)
        seen[EEF_POS].append(obs[EEF_POS])
        seen["object"].append(obs["object"])
        success = success or bool(info["success"])
        if terminated or truncated:
            break
    replayed = {k: np.reshape(v, (len(v), demo.obs[k].shape[1])) for k, v in seen.items()}
    return replay_errors(env.manifest, demo, replayed, success)
