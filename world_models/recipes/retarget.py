"""``retarget`` (MimicGen in the world model): whole episodes in new scenes, labelled with the actions taken.

A new scene is drawn from the manifest's reset distribution on a seed outside the seed and evaluation
ranges; the simulator renders only its first frame (the stand-in for a photograph of a new real scene).
A source demo is drawn among the seed demos whose success object started nearest the new one, and cut
into object-centric segments at the step its success object first moves (contact, or the grasp lifting
it): before it the commanded end-effector path is taken relative to that object, after it relative to
the goal region (a task without a region keeps one segment, relative to the object). When a segment
begins, its path is moved to the object's current pose (predicted, in the world model), joined to the
commanded pose by a straight interpolation, and followed: every action goes from the commanded TCP to
the next target, with Gaussian noise on its translation, and the executed actions are the labels. The
attempt runs in the world model until the success predicate has held on the predicted state for
``hold_steps``, or to the horizon; acceptance uses the world model alone. Its simulator twin
follows the same plans (same scenes, sources and noise) in the simulator: the recipe's ceiling.

Frames: a pushed object's frame turns with the line from it to the region (where it is pushed matters,
not which way it faces); a grasped object's frame turns with the object, by the smallest turn its
footprint's symmetry allows (so the hand never turns more than it must).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from worldgen.control import ArmController
from worldgen.dataset import Demo, DemoRecord, dataset_manifest, open_dataset
from worldgen.envs import WorldgenEnv, object_slice
from worldgen.experts import ObjectPoses, object_poses, poses_from_object_obs, yaw_of
from worldgen.geometry import axis_angle_from_rotation, rot_z, rotation_from_axis_angle
from worldgen.keys import image_key
from worldgen.manifest import Manifest, rng_for
from worldgen.pipeline import record_episode

from ..data import IMAGE_KINDS, STATE_KEYS, camera_size, frames_from_obs, state_layout
from ..imagination import imagine, perturbed, tracking_offset
from ..sampler import WorldModelSampler, noise_seed
from .base import Parent, Recipe, Task, register, seed_parents, spec_from_manifest

RECIPE = "retarget"
CONTACT_MOVE = 0.01  # m the success object has moved from its start: contact made (or grasped and lifting)


@dataclass(frozen=True)
class RetargetSpec:
    """``count`` new scenes on seeds ``scene_base_seed + i``; each attempt's source drawn among the
    ``nearest`` seed demos; Gaussian noise of ``action_noise`` (std, normalised units) on the executed
    translation; ``batch`` scenes per world-model call; at least ``interpolation_steps`` steps to join
    a segment (more where the gap is longer than 80 % of the largest step would cover)."""

    count: int
    scene_base_seed: int
    nearest: int
    action_noise: float
    interpolation_steps: int
    success_margin: float  # m to spare before the predicted state counts as a success
    batch: int
    base_seed: int

    @classmethod
    def from_manifest(cls, manifest: Manifest, **overrides: Any) -> RetargetSpec:
        """The manifest's ``generation.retarget``; ``overrides`` that are not None win."""
        recipe = manifest.generation.retarget
        values = {
            "count": recipe.count,
            "scene_base_seed": recipe.scene_base_seed,
            "nearest": recipe.nearest,
            "action_noise": recipe.action_noise,
            "interpolation_steps": recipe.interpolation_steps,
            "batch": recipe.batch,
            "success_margin": manifest.generation.success_margin,
            "base_seed": manifest.seeds.base_seed,
        }
        return spec_from_manifest(cls, values, overrides)

    def scenes(self) -> list[int]:
        return [self.scene_base_seed + i for i in range(self.count)]


def check_scene_seeds(manifest: Manifest, spec: RetargetSpec) -> None:
    """New scenes must be new: refuse seeds inside the seed range or the reserved held-out seeds."""
    lo, hi = spec.scene_base_seed, spec.scene_base_seed + spec.count
    taken = manifest.taken_seed_range(lo, hi)
    if taken is not None:
        name, a, b = taken
        raise ValueError(
            f"retarget scene seeds {lo}..{hi - 1} overlap the manifest's {name} range {a}..{b - 1}"
        )


@dataclass(frozen=True)
class Segment:
    """Actions ``start`` to ``end`` (exclusive) of a source demo, taken relative to ``reference``:
    "object" (the success object as the segment begins) or "region" (the goal region)."""

    start: int
    end: int
    reference: str


def source_segments(manifest: Manifest, demo: Demo) -> list[Segment]:
    """A seed demo cut where its success object has first moved ``CONTACT_MOVE`` from its start."""
    spec, steps = manifest.task.success, demo.num_samples
    position = demo.obs["object"][:, object_slice(manifest, spec.object)][:, :3]
    moved = np.flatnonzero(np.linalg.norm(position - position[0], axis=1) > CONTACT_MOVE)
    contact = int(moved[0]) if len(moved) else steps
    if spec.region is None or not 0 < contact < steps:
        return [Segment(0, steps, "object")]
    return [Segment(0, contact, "object"), Segment(contact, steps, "region")]


def commanded_path(manifest: Manifest, demo: Demo, executed: np.ndarray) -> np.ndarray:
    """(T+1, 4, 4) the commanded TCP pose before each action of a simulator demo, and after its last."""
    path = [ArmController.from_env_state(manifest, s).commanded_tcp_world() for s in demo.states]
    last = ArmController.from_env_state(manifest, demo.states[-1])
    last.apply(executed[-1].astype(np.float64))
    return np.stack([*path, last.commanded_tcp_world()])


def _frame(position: np.ndarray, yaw: float) -> np.ndarray:
    f = np.eye(4)
    f[:3, :3] = rot_z(yaw)
    f[:3, 3] = position
    return f


def _fold(angle: float, symmetry: float) -> float:
    return (angle + symmetry / 2) % symmetry - symmetry / 2


def retarget_transform(
    manifest: Manifest, reference: str, source: ObjectPoses, new: ObjectPoses, prehensile: bool
) -> np.ndarray:
    """4x4 ``T`` that moves a source pose to the new scene (``T @ pose``): the segment's reference frame
    in the new scene times its inverse in the source, from the success object's poses as the segment
    begins in each."""
    task = manifest.task
    obj = task.object(task.success.object)
    (src_pos, src_quat), (new_pos, new_quat) = source[obj.name], new[obj.name]
    region = next((r for r in task.regions if r.name == task.success.region), None)

    def toward_region(pos: np.ndarray) -> float:
        return math.atan2(region.center[1] - pos[1], region.center[0] - pos[0])

    if reference == "region":
        if prehensile:  # the region does not move; what the hand carries turned with it
            return np.eye(4)
        centre = np.array([region.center[0], region.center[1], 0.0])
        return _frame(centre, toward_region(new_pos)) @ np.linalg.inv(_frame(centre, toward_region(src_pos)))
    if region is not None and not prehensile:
        return _frame(new_pos, toward_region(new_pos)) @ np.linalg.inv(
            _frame(src_pos, toward_region(src_pos))
        )
    symmetry = math.pi / 2 if abs(obj.size[0] - obj.size[1]) < 1e-6 else math.pi
    turn = _fold(yaw_of(new_quat) - yaw_of(src_quat), symmetry)
    return _frame(new_pos, turn) @ np.linalg.inv(_frame(src_pos, 0.0))


def pose_action(
    manifest: Manifest, commanded_tcp: np.ndarray, target: np.ndarray, gripper: float
) -> np.ndarray:
    """The ``ee_delta`` action that takes the commanded TCP to ``target`` in one step (clipped)."""
    emb = manifest.embodiment
    a_pos = (target[:3, 3] - commanded_tcp[:3, 3]) / emb.max_translation
    a_rot = axis_angle_from_rotation(target[:3, :3] @ commanded_tcp[:3, :3].T) / emb.max_rotation
    return np.clip(np.concatenate([a_pos, a_rot, [gripper]]), -1.0, 1.0).astype(np.float32)


def interpolation(manifest: Manifest, start: np.ndarray, end: np.ndarray, at_least: int) -> list[np.ndarray]:
    """Poses from ``start`` (excluded) to ``end`` (included) along a straight line and the shortest turn,
    each step within 80 % of the largest action; none when they already coincide."""
    emb = manifest.embodiment
    turn = axis_angle_from_rotation(end[:3, :3] @ start[:3, :3].T)
    distance, angle = float(np.linalg.norm(end[:3, 3] - start[:3, 3])), float(np.linalg.norm(turn))
    if distance < 1e-4 and angle < 1e-3:
        return []
    n = max(
        at_least,
        math.ceil(distance / (0.8 * emb.max_translation)),
        math.ceil(angle / (0.8 * emb.max_rotation)),
    )
    poses = []
    for k in range(1, n + 1):
        pose = np.eye(4)
        pose[:3, 3] = start[:3, 3] + (end[:3, 3] - start[:3, 3]) * k / n
        pose[:3, :3] = rotation_from_axis_angle(turn * k / n) @ start[:3, :3]
        poses.append(pose)
    return poses


class RetargetPlan:
    """One attempt: the source demo's segments moved to the new scene as each begins, followed step by
    step. ``act(commanded_tcp, poses, j)`` gives (executed action, label), which are the same action."""

    def __init__(self, manifest: Manifest, source: Parent, spec: RetargetSpec, seed: int):
        demo = source.demo
        executed = demo.executed_actions
        self.manifest, self.spec = manifest, spec
        self.segments = source_segments(manifest, demo)
        self.path = commanded_path(manifest, demo, executed)
        self.gripper = demo.actions[:, -1].astype(np.float64)
        self.prehensile = bool((self.gripper > 0.5).any())
        self.source_poses = [
            poses_from_object_obs(manifest, source.object_obs[s.start]) for s in self.segments
        ]
        self.rng = rng_for(seed, RECIPE)
        self.queue: list[tuple[np.ndarray, float]] = []
        self.next_segment = 0
        self.last_gripper = float(self.gripper[0])

    def _plan(self, commanded_tcp: np.ndarray, poses: ObjectPoses) -> None:
        k = self.next_segment
        seg, self.next_segment = self.segments[k], k + 1
        move = retarget_transform(self.manifest, seg.reference, self.source_poses[k], poses, self.prehensile)
        targets = move @ self.path[seg.start : seg.end + 1]
        joins = interpolation(self.manifest, commanded_tcp, targets[0], self.spec.interpolation_steps)
        self.queue = [(p, self.last_gripper) for p in joins]
        self.queue += list(zip(targets[1:], self.gripper[seg.start : seg.end], strict=True))

    def act(self, commanded_tcp: np.ndarray, poses: ObjectPoses, j: int) -> tuple[np.ndarray, np.ndarray]:
        while not self.queue and self.next_segment < len(self.segments):
            self._plan(commanded_tcp, poses)
        if self.queue:
            target, self.last_gripper = self.queue.pop(0)
            action = pose_action(self.manifest, commanded_tcp, target, self.last_gripper)
            action = perturbed(action, self.rng, self.spec.action_noise, True)
        else:  # the plan is done: hold still, no noise
            action = pose_action(self.manifest, commanded_tcp, commanded_tcp, self.last_gripper)
        return action, action


def source_start(manifest: Manifest, parent: Parent) -> np.ndarray:
    """Where a seed demo's success object started (x, y)."""
    return parent.object_obs[0][object_slice(manifest, manifest.task.success.object)][:2]


def choose_source(
    manifest: Manifest, parents: list[Parent], start: ObjectPoses, scene: int, k: int
) -> Parent:
    """A seed demo drawn (from the scene's own stream) among the ``k`` whose success object started
    nearest where it starts in the new scene."""
    here = start[manifest.task.success.object][0][:2]
    order = sorted(parents, key=lambda p: (float(np.linalg.norm(source_start(manifest, p) - here)), p.name))
    return order[int(rng_for(scene, f"{RECIPE}/source").integers(min(k, len(order))))]


def plan_attempt(
    manifest: Manifest, parents: list[Parent], start: ObjectPoses, scene: int, spec: RetargetSpec
) -> tuple[Parent, int, RetargetPlan]:
    """The attempt in new scene ``scene`` whose objects start at ``start``: its source, noise seed and
    plan, the same in the world model and in the simulator."""
    source = choose_source(manifest, parents, start, scene, spec.nearest)
    seed = noise_seed(spec.base_seed, source.name, scene, 0)
    return source, seed, RetargetPlan(manifest, source, spec, seed)


def _record_attrs(
    scene: int, source: Parent, seed: int, spec: RetargetSpec, batch: list[int], model: str
) -> dict:
    return {
        "seed": scene,
        "recipe": RECIPE,
        "parent": source.name,
        "branch_step": 0,
        "noise_seed": seed,
        "action_noise": spec.action_noise,
        "success_margin": spec.success_margin,
        "batch_layout": json.dumps({"scenes": batch, "index": batch.index(scene)}),
        "model": model,
    }


@dataclass
class SceneStart:
    """A new scene as the simulator shows it before the first action: its first observation, the
    simulator and controller state, and the scene drawn."""

    seed: int
    obs: dict[str, np.ndarray]
    state: np.ndarray
    scene: dict


def scene_start(env: WorldgenEnv, seed: int) -> SceneStart:
    """A new scene reset in the simulator: its first observation (images too where ``env`` renders)."""
    obs, _ = env.reset(seed=seed)
    return SceneStart(seed, obs, env.get_state(), env.backend.scene.to_dict())


class RetargetAttempts:
    """What ``retarget`` attempts in one world model need, loaded once: the sampler, the manifest and the
    seed demos. Also the body of a Ray actor (``worldgen.distributed``)."""

    def __init__(self, dataset: str | Path, ckpt: str | Path, spec: RetargetSpec, device: str = "cpu"):
        self.sampler = WorldModelSampler(ckpt, device=device)
        self.spec = spec
        with open_dataset(dataset) as f:
            self.manifest = dataset_manifest(f)
            self.parents = seed_parents(f)
            first = f["data"][self.parents[0].name]
            self.layout = state_layout(first)
            self.cam_hw = camera_size(first, self.sampler.meta.camera)
        self.offset = tracking_offset(self.manifest, [p.demo for p in self.parents])
        self.env = WorldgenEnv(self.manifest, cameras=True)  # renders each new scene's first frame

    def close(self) -> None:
        self.env.close()

    def run(self, batch: tuple[int, ...]) -> tuple[tuple[int, ...], list[Demo]]:
        """The attempts in the new scenes ``batch``, one world-model call per step for all of them."""
        manifest, sampler, meta = self.manifest, self.sampler, self.sampler.meta
        starts = [scene_start(self.env, seed) for seed in batch]
        chosen = [
            plan_attempt(
                manifest, self.parents, poses_from_object_obs(manifest, s.obs["object"]), s.seed, self.spec
            )
            for s in starts
        ]
        sources, seeds, plans = (list(column) for column in zip(*chosen, strict=True))
        cam = meta.camera
        first = torch.cat(
            [
                frames_from_obs(
                    *(s.obs[image_key(cam, kind)][None] for kind in IMAGE_KINDS),
                    meta.instances,
                    meta.resolution,
                )
                for s in starts
            ]
        )  # (n, C, h, w)
        k, n = meta.context_frames, len(batch)
        window = sampler.encode(first[:, None].repeat(1, k, 1, 1, 1))
        past = torch.zeros(n, k, manifest.embodiment.action_dim)
        state = torch.from_numpy(
            np.stack([np.concatenate([s.obs[key].astype(np.float32) for key in STATE_KEYS]) for s in starts])
        )
        sl = object_slice(manifest, manifest.task.success.object)
        imagined = imagine(
            sampler,
            manifest,
            (window, past, state),
            [p.act for p in plans],
            [ArmController.from_env_state(manifest, s.state) for s in starts],
            self.layout,
            np.array([s.obs["object"][sl][2] for s in starts], dtype=np.float64),
            manifest.horizon,
            self.offset,
            [torch.Generator().manual_seed(s) for s in seeds],
            self.spec.success_margin,
        )
        demos = [
            imagined.demo(
                i,
                first[i : i + 1],
                {
                    **_record_attrs(s.seed, sources[i], seeds[i], self.spec, list(batch), sampler.hash),
                    "scene": s.scene,
                },
                manifest,
                sampler,
                self.layout,
                self.cam_hw,
            )
            for i, s in enumerate(starts)
        ]
        return batch, demos


@register
class Retarget(Recipe):
    """MimicGen in the world model: one attempt per new scene, a nearby seed demo's segments moved to it."""

    name = RECIPE
    spec_class = RetargetSpec
    summary = "MimicGen in new scenes: a nearby seed demo's object-centric segments moved to the objects"
    new_scenes = True
    world_model_worker = RetargetAttempts

    def check(self, manifest: Manifest, spec: RetargetSpec) -> None:
        check_scene_seeds(manifest, spec)

    def tasks(self, spec: RetargetSpec, parents: list[Parent]) -> list[Task]:
        scenes = spec.scenes()
        return [tuple(scenes[i : i + spec.batch]) for i in range(0, len(scenes), spec.batch)]

    def task_of(self, spec: RetargetSpec, record: DemoRecord) -> Task | None:
        index = record.seed - spec.scene_base_seed
        if record.recipe != RECIPE or not 0 <= index < spec.count:
            return None
        first = index - index % spec.batch
        return tuple(spec.scenes()[first : first + spec.batch])

    def task_size(self, spec: RetargetSpec, task: Task) -> int:
        return len(task)

    def task_label(self, task: Task) -> str:
        return f"new scenes {task[0]}..{task[-1]}"

    def attempts_in_simulator(
        self, env: WorldgenEnv, manifest: Manifest, parents: list[Parent], spec: RetargetSpec, task: Task
    ) -> list[Demo]:
        """The same plans followed in the simulator, their segments moved to the simulated objects' poses."""
        demos = []
        for scene in task:
            env.reset(seed=scene)  # the scene's object poses choose the source; record_episode resets again
            source, seed, plan = plan_attempt(manifest, parents, object_poses(env), scene, spec)

            def act(obs, t, plan=plan):
                return plan.act(env.controller.commanded_tcp_world(), object_poses(env), t)

            attrs = {**_record_attrs(scene, source, seed, spec, [scene], ""), "source": "sim"}
            result = record_episode(env, scene, act, attrs)
            if result.demo is not None:  # a diverged simulation makes no demo
                demos.append(result.demo)
        return demos
