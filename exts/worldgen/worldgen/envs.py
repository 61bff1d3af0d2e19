"""A gymnasium environment over a manifest and a simulation backend.

Observations are a dict of camera images (``<camera>_rgb``, ``<camera>_depth``, ``<camera>_seg``)
and robomimic-style low-dimensional keys (``robot0_eef_pos``, ``robot0_eef_quat`` (x, y, z, w),
``robot0_joint_pos``, ``robot0_gripper_qpos``, ``object``). Actions are the manifest's normalised
action space. The reward is 1 on steps where the task's success predicate holds; an episode
terminates once it has held for ``hold_steps`` and is truncated at ``horizon``.

Each shipped scenario is registered: ``gymnasium.make("worldgen/pick_cube")``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from .assets import panda
from .control import ArmController
from .geometry import wxyz_to_xyzw
from .keys import DEPTH, EEF_POS, EEF_QUAT, GRIPPER_QPOS, JOINT_POS, RGB, SEG, image_key
from .manifest import Manifest, as_manifest
from .sensor import sensor_frame
from .sim.base import CameraFrame, SimBackend

SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"  # package data; ./scenarios links here
OBJECT_FEATURES = (
    10  # per dynamic object: position (3), quaternion xyzw (4), position relative to the eef (3)
)
SUFFIX = {"rgb": RGB, "depth": DEPTH, "segmentation": SEG}  # manifest output -> image kind


def predicate_holds(
    manifest: Manifest, object_pos: np.ndarray, fingers: np.ndarray, start_z: float, margin: float = 0.0
) -> bool:
    """The task's success predicate on the success object's position and the finger joint positions
    (``start_z``: the object's height at reset, for ``object_lifted``). Shared by the simulator and by
    environments that run on predicted state. ``margin`` (m) asks for that much to spare: the goal
    region shrunk by it on every side, or the lift raised by it (generation's ``success_margin``)."""
    spec = manifest.task.success
    if spec.predicate == "object_lifted":
        return bool(object_pos[2] - start_z >= spec.min_height + margin)
    region = next(r for r in manifest.task.regions if r.name == spec.region)
    offset = np.abs(object_pos[:2] - np.asarray(region.center))
    inside = bool(np.all(offset <= np.asarray(region.half_extents) - margin))
    low = object_pos[2] - manifest.task.table.height <= spec.max_height
    released = True
    if spec.gripper_open:
        released = float(np.sum(fingers)) >= min(manifest.task.object(spec.object).size[:2]) + 0.01
    return inside and low and released


def predicate_steps(
    manifest: Manifest, objects: np.ndarray, fingers: np.ndarray, start_z: float, margin: float = 0.0
) -> np.ndarray:
    """Whether the success predicate (with ``margin`` to spare) holds at each of T steps, from
    (T, ``object`` features) and (T, 2) finger positions (simulated or predicted)."""
    sl = object_slice(manifest, manifest.task.success.object)
    return np.array(
        [
            predicate_holds(manifest, o[sl][:3], g, start_z, margin)
            for o, g in zip(objects, fingers, strict=True)
        ]
    )


def success_step(holds: np.ndarray, hold_steps: int) -> int:
    """The number of steps after which the predicate has held for ``hold_steps`` consecutive steps
    (``holds[t]``: it holds after step t + 1), or -1 if it never does."""
    streak = 0
    for t, h in enumerate(holds):
        streak = streak + 1 if h else 0
        if streak >= hold_steps:
            return t + 1
    return -1


class SuccessTracker:
    """Evaluates the manifest's success predicate on simulator state, step by step."""

    def __init__(self, manifest: Manifest, backend: SimBackend, margin: float = 0.0):
        self.spec = manifest.task.success
        self.manifest = manifest
        self.margin = margin
        self.start_z = backend.body_pose(self.spec.object)[0][2]
        self.streak = 0

    def holds(self, backend: SimBackend) -> bool:
        pos, _ = backend.body_pose(self.spec.object)
        return predicate_holds(self.manifest, pos, backend.robot_q()[7:], self.start_z, self.margin)

    def update(self, backend: SimBackend) -> bool:
        """True once the predicate has held for ``hold_steps`` consecutive steps."""
        self.streak = self.streak + 1 if self.holds(backend) else 0
        return self.streak >= self.spec.hold_steps


def _unit_xyzw(quat_wxyz: np.ndarray) -> np.ndarray:
    """Unit quaternions (..., 4) as x, y, z, w. One quaternion keeps the plain vector norm the recorded
    datasets were computed with (a batched norm may round its last bit differently)."""
    quat_wxyz = np.asarray(quat_wxyz)
    norm = (
        np.linalg.norm(quat_wxyz)
        if quat_wxyz.ndim == 1
        else np.linalg.norm(quat_wxyz, axis=-1, keepdims=True)
    )
    return np.clip(wxyz_to_xyzw(quat_wxyz / norm), -1.0, 1.0)


def low_dim_observation(manifest: Manifest, backend) -> dict[str, np.ndarray]:
    """The low-dimensional observation of a backend's scene, or of every world of a vector backend
    (whose queries return one row per world)."""
    eef_pos, eef_quat = backend.body_pose("tcp")
    q = backend.robot_q()
    objects = []
    for obj in manifest.task.objects:
        if obj.static:
            continue
        pos, quat = backend.body_pose(obj.name)
        objects.append(np.concatenate([pos, _unit_xyzw(quat), pos - eef_pos], axis=-1))
    return {
        EEF_POS: eef_pos.astype(np.float32),
        EEF_QUAT: _unit_xyzw(eef_quat).astype(np.float32),
        JOINT_POS: q[..., :7].astype(np.float32),
        GRIPPER_QPOS: q[..., 7:].astype(np.float32),
        "object": np.concatenate(objects, axis=-1).astype(np.float32),
    }


def object_slice(manifest: Manifest, name: str) -> slice:
    """Where a dynamic object's features sit in the ``object`` observation."""
    dynamic = [o.name for o in manifest.task.objects if not o.static]
    start = dynamic.index(name) * OBJECT_FEATURES
    return slice(start, start + OBJECT_FEATURES)


def camera_observation(
    manifest: Manifest, frames: dict[str, CameraFrame], seed: int, step: int
) -> dict[str, np.ndarray]:
    """The image observations of rendered frames, through each camera's sensor model (``sensor``) at
    ``step`` of the episode of scene ``seed``."""
    obs = {}
    for cam in manifest.cameras:
        frame = sensor_frame(cam, frames[cam.name], seed, step)
        for output in cam.outputs:
            obs[image_key(cam.name, SUFFIX[output])] = getattr(frame, SUFFIX[output])
    return obs


def observation_space(manifest: Manifest, cameras: bool) -> gym.spaces.Dict:
    n_objects = sum(not o.static for o in manifest.task.objects)
    box = gym.spaces.Box
    spaces: dict[str, gym.Space] = {
        EEF_POS: box(-np.inf, np.inf, (3,), np.float32),
        EEF_QUAT: box(-1.0, 1.0, (4,), np.float32),
        # Joint limits are soft in the solver: allow a little overshoot.
        JOINT_POS: box(
            (panda.JOINT_LOWER - 0.1).astype(np.float32), (panda.JOINT_UPPER + 0.1).astype(np.float32)
        ),
        GRIPPER_QPOS: box(-0.01, panda.FINGER_MAX + 0.01, (2,), np.float32),
        "object": box(-np.inf, np.inf, (OBJECT_FEATURES * n_objects,), np.float32),
    }
    if cameras:
        for cam in manifest.cameras:
            w, h = cam.resolution
            for output in cam.outputs:
                key = image_key(cam.name, SUFFIX[output])
                if output == "rgb":
                    spaces[key] = box(0, 255, (h, w, 3), np.uint8)
                elif output == "depth":
                    spaces[key] = box(0.0, 1.0, (h, w, 1), np.float32)
                else:
                    spaces[key] = box(0, 255, (h, w, 1), np.uint8)
    return gym.spaces.Dict(spaces)


class WorldgenEnv(gym.Env):
    """``reset(seed=s)`` builds the scene of seed ``s`` (the manifest's randomised values for ``s``)."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(
        self,
        manifest: Manifest | str | Path,
        backend: SimBackend | None = None,
        cameras: bool = True,
        render_mode: str | None = None,
        device: str | None = None,
        success_margin: float = 0.0,
    ):
        """``success_margin`` (m): an episode ends in success only once the predicate holds with that much
        to spare (:func:`predicate_holds`), so a recipe's simulator twin stops where its world-model
        attempts stop; evaluation keeps the task's own predicate (0)."""
        self.manifest = as_manifest(manifest)
        self.success_margin = success_margin
        if backend is None:
            from .sim.newton import NewtonBackend

            backend = NewtonBackend(self.manifest, device=device, render=cameras or render_mode is not None)
        self.backend = backend
        self.cameras = cameras
        self.render_mode = render_mode
        self.metadata = {**self.metadata, "render_fps": self.manifest.control_hz}
        self.controller = ArmController.for_manifest(self.manifest)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (self.manifest.embodiment.action_dim,), np.float32)
        self.observation_space = observation_space(self.manifest, cameras)
        self.steps = 0
        self.scene_seed: int | None = None
        self._frames: dict[str, CameraFrame] = {}

    # -- gymnasium API -------------------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.scene_seed = int(seed) if seed is not None else int(self.np_random.integers(0, 2**31 - 1))
        self.backend.reset(self.scene_seed)
        q = self.backend.robot_q()
        self.controller.reset(panda.HOME_Q, q[7])
        self.success = SuccessTracker(self.manifest, self.backend, self.success_margin)
        self.steps = 0
        return self._observe(), self._info(False)

    def step(self, action):
        targets = self.controller.apply(np.asarray(action, dtype=np.float64))
        self.backend.step(targets)
        self.steps += 1
        done = self.success.update(self.backend)
        reward = float(self.success.streak > 0)  # the predicate holds at this step
        truncated = self.steps >= self.manifest.horizon and not done
        return self._observe(), reward, done, truncated, self._info(done)

    def render(self):
        if self.render_mode != "rgb_array":
            return None
        frames = self._frames or self.backend.render()
        first = self.manifest.cameras[0].name
        return frames[first].rgb

    def close(self) -> None:
        self.backend.close()

    # -- state for exact replay -------------------------------------------------------------------------

    def get_state(self) -> np.ndarray:
        """Backend state + controller state + [steps, success streak]."""
        return np.concatenate(
            [self.backend.get_state(), self.controller.get_state(), [self.steps, self.success.streak]]
        )

    def set_state(self, state: np.ndarray) -> None:
        state = np.asarray(state, dtype=np.float64)
        n = ArmController.STATE_DIM + 2
        self.backend.set_state(state[:-n])
        self.controller.set_state(state[-n:-2])
        self.steps, self.success.streak = int(state[-2]), int(state[-1])
        self._frames = {}

    def observe(self) -> dict[str, np.ndarray]:
        """The observation of the current state (after :meth:`set_state`)."""
        return self._observe()

    # -- helpers ----------------------------------------------------------------------------------------

    def _observe(self) -> dict[str, np.ndarray]:
        obs = low_dim_observation(self.manifest, self.backend)
        self._frames = {}
        if self.cameras:
            self._frames = self.backend.render()
            obs.update(camera_observation(self.manifest, self._frames, self.scene_seed, self.steps))
        return obs

    def _info(self, success: bool) -> dict[str, Any]:
        return {"success": success, "scene_seed": self.scene_seed, "steps": self.steps}


def register_scenarios() -> list[str]:
    """Register ``worldgen/<name>`` for every shipped scenario; returns the ids."""
    ids = []
    for path in sorted(SCENARIO_DIR.glob("*.yaml")):
        env_id = f"worldgen/{path.stem}"
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point="worldgen.envs:WorldgenEnv", kwargs={"manifest": str(path)})
        ids.append(env_id)
    return ids


register_scenarios()
