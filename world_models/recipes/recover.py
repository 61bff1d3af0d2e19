"""``recover``: whole task attempts from the seed demos' states whose labels fit the states they visit.

``recover`` (DART / DAgger in imagination): from a seed demo's state at a start step, the scripted expert
acts on the world model's *predicted* state (the commanded TCP pose is exact: the controller integrates
the executed actions; the object poses come from the predicted ``object`` state), Gaussian noise is
added to the translation of every executed action for ``perturb_steps`` steps, and the expert's clean
action at each visited state is the label. The attempt runs in the world model until the manifest's
success predicate has held on the predicted state for ``hold_steps``, or the horizon; only successful
attempts are kept (acceptance uses the world model alone). Its simulator twin runs the same
attempts (same starts, same expert, same noise) in the simulator: the ceiling of the recipe.

Every generated demo records ``recipe``, ``parent``, ``branch_step`` (the start step), ``noise_seed``,
``action_noise``, ``perturb_steps``, ``model`` (checkpoint hash) and its ``executed_actions``, so it
regenerates bit-identically (same record, same batch layout) and replays in the simulator from the
parent's ``states[branch_step]`` (:func:`world_models.replay.replay_demo`, a diagnostic never used for
acceptance).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from worldgen.control import ArmController
from worldgen.dataset import Demo, DemoRecord, dataset_manifest, open_dataset
from worldgen.envs import WorldgenEnv, object_slice
from worldgen.experts import object_poses
from worldgen.geometry import axis_angle_from_rotation
from worldgen.manifest import Manifest, rng_for
from worldgen.pipeline import record_episode

from ..data import Episode, camera_size, state_layout
from ..imagination import Actor, imagine, perturbed, tracking_offset
from ..sampler import WorldModelSampler, noise_seed
from .base import Parent, Recipe, Task, register, seed_parents, spec_from_manifest

RECIPE = "recover"


@dataclass(frozen=True)
class RecoverSpec:
    """``per_seed`` attempts from each successful seed demo at each of ``start_steps``; noise of
    ``action_noise`` (std, normalised units) on the executed translation for the first ``perturb_steps``
    steps of an attempt (``None``: all of them)."""

    per_seed: int
    start_steps: tuple[int, ...]
    action_noise: float
    perturb_steps: int | None
    base_seed: int
    labeler: str  # "expert", or "parent": back toward the parent's path (no expert needed)
    # "controller": the end effector in imagination is the commanded TCP (the controller integrates the
    # executed actions exactly) plus the mean tracking offset measured on the seed demos; "model": the
    # world model's own state head. The robot's own pose is known; the world model predicts the world.
    robot_state: str
    success_margin: float  # m to spare before the predicted state counts as a success

    @classmethod
    def from_manifest(cls, manifest: Manifest, **overrides: Any) -> RecoverSpec:
        """The manifest's ``generation.recover``; ``overrides`` that are not None win."""
        recipe = manifest.generation.recover
        values = {
            "per_seed": recipe.per_seed,
            "start_steps": tuple(recipe.at_steps),
            "action_noise": recipe.action_noise,
            "perturb_steps": recipe.perturb_steps,
            "labeler": recipe.labeler,
            "robot_state": recipe.robot_state,
            "success_margin": manifest.generation.success_margin,
            "base_seed": manifest.seeds.base_seed,
        }
        return spec_from_manifest(cls, values, overrides)


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


def attempt_seeds(spec: RecoverSpec, parent: str, step: int) -> list[int]:
    return [noise_seed(spec.base_seed, parent, step, i) for i in range(spec.per_seed)]


def _record_attrs(parent: Parent, step: int, seed: int, spec: RecoverSpec, i: int, model: str) -> dict:
    return {
        "seed": parent.seed,
        "recipe": RECIPE,
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
    rngs = [rng_for(s, RECIPE) for s in seeds]
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


class WorldModelAttempts:
    """What the attempts from one dataset's seed demos in one world model need, loaded once: the
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
        self.offset = tracking_offset(self.manifest, [p.demo for p in parents]) if controller else None

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


@register
class Recover(Recipe):
    """DART in the world model, labelled by the scripted expert on the predicted state; the variant
    ``recover-parent`` labels back toward the parent's path instead (Diffusion Meets DAgger)."""

    name = RECIPE
    spec_class = RecoverSpec
    summary = "DART from the seed demos' states, labelled by the expert (recover-parent: the parent's path)"
    variants = {"recover-parent": {"labeler": "parent"}}
    world_model_worker = WorldModelAttempts

    def check(self, manifest: Manifest, spec: RecoverSpec) -> None:
        late = [k for k in spec.start_steps if k >= manifest.horizon]
        if late:
            raise ValueError(f"start steps {late} must be below the horizon {manifest.horizon}")

    def tasks(self, spec: RecoverSpec, parents: list[Parent]) -> list[Task]:
        return [(p.name, k) for p in parents for k in spec.start_steps if k < p.demo.num_samples]

    def task_of(self, spec: RecoverSpec, record: DemoRecord) -> Task | None:
        if record.recipe != RECIPE or record.labeler != spec.labeler:
            return None
        return (record.parent, record.branch_step)

    def task_size(self, spec: RecoverSpec, task: Task) -> int:
        return spec.per_seed

    def task_label(self, task: Task) -> str:
        return f"{task[0]} from step {task[1]}"

    def attempts_in_simulator(
        self, env: WorldgenEnv, manifest: Manifest, parents: list[Parent], spec: RecoverSpec, task: Task
    ) -> list[Demo]:
        name, step = task
        parent = next(p for p in parents if p.name == name)
        demos = []
        for i, seed in enumerate(attempt_seeds(spec, name, step)):
            labeler, rng = labeler_at(spec, manifest, parent, step), rng_for(seed, RECIPE)

            def act(obs, t, labeler=labeler, rng=rng):
                label = labeler.act(env.controller.commanded_tcp_world(), object_poses(env))
                noisy = spec.perturb_steps is None or t < spec.perturb_steps
                return perturbed(label, rng, spec.action_noise, noisy), label

            attrs = {**_record_attrs(parent, step, seed, spec, i, ""), "source": "sim"}
            result = record_episode(env, parent.seed, act, attrs, start_state=parent.demo.states[step])
            if result.demo is not None:  # a diverged simulation makes no demo
                demos.append(result.demo)
        return demos
