"""``gymnasium.vector.VectorEnv`` over :class:`~worldgen.sim.vector.VectorNewtonBackend`: N scenes of one
manifest stepped together, the observations of :class:`~worldgen.envs.WorldgenEnv` (low-dimensional;
``cameras=True`` adds every camera output, each world rendered as its scene alone renders), the same
actions, rewards, success and horizon per world.

``reset(seed=[s0, s1, ...])`` puts scene ``s_i`` in world i (``seed=s``: ``s + i``). Autoreset follows
gymnasium: ``next_step`` (the default) resets a world on the step after it ended (its action ignored,
its scene seed drawn from its own random stream); ``disabled`` leaves resets to the caller,
``reset(seed=..., options={"reset_mask": mask})``. A reset rewrites the worlds it resets (about 60 ms a
scene on a CPU, most of it reading the new scene's stage) and leaves the others as they are. A world
that diverges is truncated with ``info["diverged"]`` and the others continue.
"""

from __future__ import annotations

import numbers
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from .assets import panda
from .control import ArmController, apply_actions
from .envs import camera_observation, low_dim_observation, observation_space, predicate_holds
from .manifest import Manifest, as_manifest
from .sim.vector import VectorNewtonBackend


def balanced_batches(items: list, envs: int) -> tuple[int, list[tuple[int, int, list]]]:
    """``items`` in equal batches of at most ``envs`` worlds (100 on 32 run as 4 x 25, not 3 x 32 + 4):
    the number of worlds, and per batch (index of its first item, how many of its items are real, the
    batch filled up to that many worlds with repeats of its last item, whose results are not used)."""
    n = -(-len(items) // -(-len(items) // envs))
    out = []
    for start in range(0, len(items), n):
        batch = list(items[start : start + n])
        out.append((start, len(batch), batch + [batch[-1]] * (n - len(batch))))
    return n, out


class WorldgenVectorEnv(gym.vector.VectorEnv):
    def __init__(
        self,
        manifest: Manifest | str,
        num_envs: int,
        device: str | None = None,
        autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
        cameras: bool = False,
    ):
        self.manifest = as_manifest(manifest)
        self.num_envs = int(num_envs)
        self.cameras = cameras
        self.backend = VectorNewtonBackend(self.manifest, device=device, render=cameras)
        self.single_observation_space = observation_space(self.manifest, cameras=cameras)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.single_action_space = gym.spaces.Box(
            -1.0, 1.0, (self.manifest.embodiment.action_dim,), np.float32
        )
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.metadata = {
            "autoreset_mode": AutoresetMode(autoreset_mode),
            "render_fps": self.manifest.control_hz,
        }
        self.controllers = [ArmController.for_manifest(self.manifest) for _ in range(self.num_envs)]
        self.spec_success = self.manifest.task.success
        self.scene_seeds = np.zeros(self.num_envs, dtype=np.int64)
        self.steps = np.zeros(self.num_envs, dtype=np.int64)
        self.streak = np.zeros(self.num_envs, dtype=np.int64)
        self.start_z = np.zeros(self.num_envs)
        self._autoreset = np.zeros(self.num_envs, dtype=bool)
        self._rngs = [np.random.default_rng() for _ in range(self.num_envs)]

    # -- gymnasium API ----------------------------------------------------------------------------

    def reset(self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None):
        mask = np.ones(self.num_envs, dtype=bool)
        if options and "reset_mask" in options:
            mask = np.asarray(options["reset_mask"], dtype=bool)
            if self.backend.model is None and not mask.all():
                raise ValueError("the first reset must reset every world")
        if mask.shape != (self.num_envs,):
            raise ValueError(f"reset_mask has shape {mask.shape}, expected ({self.num_envs},)")
        if isinstance(seed, numbers.Integral):
            seed = [int(seed) + i for i in range(self.num_envs)]
        if seed is not None:
            if len(seed) != self.num_envs:
                raise ValueError(f"expected {self.num_envs} seeds, got {len(seed)}")
            for i in np.flatnonzero(mask):
                self._rngs[i] = np.random.default_rng(seed[i])
                self.scene_seeds[i] = seed[i]
        else:
            for i in np.flatnonzero(mask):
                self.scene_seeds[i] = int(self._rngs[i].integers(0, 2**31 - 1))
        self._reset_worlds(mask)
        return self._observe(), self._infos()

    def step(self, actions):
        actions = np.asarray(actions, dtype=np.float64)
        restarting = self._autoreset.copy()
        if restarting.any():
            for i in np.flatnonzero(restarting):
                self.scene_seeds[i] = int(self._rngs[i].integers(0, 2**31 - 1))
            self._reset_worlds(restarting)
            held = {i: self.backend.get_state(i) for i in np.flatnonzero(restarting)}
        targets = np.stack([c.targets() for c in self.controllers])
        acting = np.flatnonzero(~restarting)
        targets[acting] = apply_actions([self.controllers[i] for i in acting], actions[acting])
        diverged = self.backend.step(targets)
        if restarting.any():  # a world that has just been reset does not step (gymnasium's next-step reset)
            for i, state in held.items():
                self.backend.set_state(i, state)
            diverged[restarting] = False
        stepping = ~restarting
        self.steps[stepping] += 1
        holds = self._holds()
        self.streak = np.where(stepping, np.where(holds, self.streak + 1, 0), self.streak)
        terminated = stepping & (self.streak >= self.spec_success.hold_steps)
        truncated = stepping & ~terminated & ((self.steps >= self.manifest.horizon) | diverged)
        rewards = np.where(stepping & (self.streak > 0), 1.0, 0.0)
        if self.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP:
            self._autoreset = terminated | truncated
        infos = self._infos()
        infos["success"] = terminated
        infos["diverged"] = diverged
        return self._observe(), rewards, terminated, truncated, infos

    def get_state(self, i: int) -> np.ndarray:
        """World i's state in ``WorldgenEnv.get_state``'s layout (backend, controller, [steps, streak])."""
        return np.concatenate(
            [self.backend.get_state(i), self.controllers[i].get_state(), [self.steps[i], self.streak[i]]]
        )

    def set_state(self, i: int, state: np.ndarray) -> None:
        """World i to a ``WorldgenEnv.get_state`` vector (backend, controller, [steps, success streak]) of
        the scene it holds: a state recorded one scene at a time continues here."""
        state = np.asarray(state, dtype=np.float64)
        n = ArmController.STATE_DIM + 2
        self.backend.set_state(i, state[:-n])
        self.controllers[i].set_state(state[-n:-2])
        self.steps[i], self.streak[i] = int(state[-2]), int(state[-1])

    def close_extras(self, **kwargs) -> None:
        self.backend.close()

    # -- helpers ----------------------------------------------------------------------------------

    def _reset_worlds(self, mask: np.ndarray) -> None:
        if self.backend.model is None or mask.all():
            self.backend.reset(self.scene_seeds.tolist())
        else:
            self.backend.reset_worlds(mask, self.scene_seeds.tolist())
        q = self.backend.robot_q()
        z = self.backend.body_pose(self.spec_success.object)[0][:, 2]
        for i in np.flatnonzero(mask):
            self.controllers[i].reset(panda.HOME_Q, q[i, 7])
            self.steps[i], self.streak[i], self.start_z[i] = 0, 0, z[i]
        self._autoreset[mask] = False

    def _holds(self) -> np.ndarray:
        pos = self.backend.body_pose(self.spec_success.object)[0]
        fingers = self.backend.robot_q()[:, 7:]
        return np.array(
            [
                predicate_holds(self.manifest, pos[i], fingers[i], self.start_z[i])
                for i in range(self.num_envs)
            ]
        )

    def _observe(self) -> dict[str, np.ndarray]:
        obs = low_dim_observation(self.manifest, self.backend)
        if self.cameras:
            per_world = [
                camera_observation(self.manifest, frames, int(self.scene_seeds[i]), int(self.steps[i]))
                for i, frames in enumerate(self.backend.render())
            ]
            obs.update({key: np.stack([o[key] for o in per_world]) for key in per_world[0]})
        return obs

    def _infos(self) -> dict[str, Any]:
        return {"scene_seed": self.scene_seeds.copy(), "steps": self.steps.copy()}
