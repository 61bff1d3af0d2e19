"""``WorldModelEnv``: a gymnasium environment whose step is one world-model prediction.

Episodes start from a seed demo's first frames (chosen by the reset seed), each step predicts the next
frame and the next robot and object state from the action, and the reward is the manifest's success
predicate evaluated on the predicted state (1 while it holds; the episode terminates once it has held
for ``hold_steps``, and is truncated at the manifest's horizon). Observations are the predicted
low-dimensional keys (``robot0_eef_pos``, ``robot0_gripper_qpos``, ``object``) and, with
``cameras=True``, the world-model camera's predicted ``<camera>_rgb`` / ``_depth`` / ``_seg``.
A policy trained here is evaluated in the simulator (``worldgen eval``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from worldgen.dataset import DatasetError, dataset_manifest, demo_names, open_dataset
from worldgen.envs import object_slice, predicate_holds
from worldgen.keys import DEPTH, GRIPPER_QPOS, RGB, SEG, image_key
from worldgen.manifest import rng_for

from .data import Episode, obs_from_frames, state_layout
from .sampler import WorldModelSampler, state_obs


class WorldModelEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"]}

    def __init__(
        self,
        ckpt: str | Path,
        dataset: str | Path,
        mask: str = "seed",
        cameras: bool = False,
        render_mode: str | None = None,
    ):
        self.sampler = WorldModelSampler(ckpt)
        meta = self.sampler.meta
        self.camera, self.instances, self.k = meta.camera, meta.instances, meta.context_frames
        dataset = Path(dataset)
        with open_dataset(dataset) as f:
            self.manifest = dataset_manifest(f)
            names = demo_names(f, mask)
            if not names:
                raise DatasetError(f"{dataset}: mask {mask!r} holds no demos to start from")
            groups = [f["data"][n] for n in names]
            self.layout = state_layout(groups[0])
            self.starts = [
                Episode.load(g, self.camera, self.instances, meta.resolution).history(0, self.k)
                for g in groups
            ]
        self.cameras, self.render_mode = cameras, render_mode
        self.metadata = {**self.metadata, "render_fps": self.manifest.control_hz}
        self.action_space = gym.spaces.Box(-1.0, 1.0, (self.manifest.embodiment.action_dim,), np.float32)
        box = gym.spaces.Box
        spaces: dict[str, gym.Space] = {
            key: box(-np.inf, np.inf, (size,), np.float32) for key, size in self.layout.items()
        }
        if cameras:
            w, h = meta.resolution
            spaces[image_key(self.camera, RGB)] = box(0, 255, (h, w, 3), np.uint8)
            spaces[image_key(self.camera, DEPTH)] = box(0.0, 1.0, (h, w, 1), np.float32)
            spaces[image_key(self.camera, SEG)] = box(0, 255, (h, w, 1), np.uint8)
        self.observation_space = gym.spaces.Dict(spaces)
        self.success_slice = object_slice(self.manifest, self.manifest.task.success.object)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        episode_seed = int(self.np_random.integers(0, 2**31 - 1)) if seed is None else int(seed)
        rng = rng_for(episode_seed, "world_model_env")
        frames, past, state = self.starts[int(rng.integers(len(self.starts)))]
        self.frames, self.actions = self.sampler.encode(frames)[None].clone(), past[None].clone()
        self.state = self.sampler.norm.normalize(state)[None]
        self.generator = torch.Generator().manual_seed(episode_seed)
        self.steps, self.streak = 0, 0
        obs = self._observe(state.numpy()[None])
        self.start_z = float(obs["object"][self.success_slice][2])
        return obs, {"success": False, "episode_seed": episode_seed, "steps": 0}

    def step(self, action):
        action = torch.as_tensor(np.clip(action, -1.0, 1.0), dtype=torch.float32)[None, None]
        self.actions = torch.cat([self.actions[:, 1:], action], 1)
        nxt, self.state = self.sampler.step(self.frames, self.actions, self.state, [self.generator])
        self.frames = torch.cat([self.frames[:, 1:], nxt[:, None]], 1)
        obs = self._observe(self.sampler.norm.denormalize(self.state).numpy())
        self.steps += 1
        pos = obs["object"][self.success_slice][:3]
        holds = predicate_holds(self.manifest, pos, obs[GRIPPER_QPOS], self.start_z)
        self.streak = self.streak + 1 if holds else 0
        done = self.streak >= self.manifest.task.success.hold_steps
        truncated = self.steps >= self.manifest.horizon and not done
        return obs, float(holds), done, truncated, {"success": done, "steps": self.steps}

    def render(self):
        if self.render_mode != "rgb_array":
            return None
        return obs_from_frames(self.sampler.decode(self.frames[0, -1:]), self.instances)["rgb"][0]

    def _observe(self, state: np.ndarray) -> dict[str, np.ndarray]:
        obs = {k: v[0] for k, v in state_obs(state, self.layout).items()}
        if self.cameras:
            picture = obs_from_frames(self.sampler.decode(self.frames[0, -1:]), self.instances)
            obs.update({image_key(self.camera, name): value[0] for name, value in picture.items()})
        return obs
