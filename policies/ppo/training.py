"""PPO with stable-baselines3 on a worldgen environment: the simulator (``WorldgenEnv``) or the world
model (``world_models.env.WorldModelEnv``), wrapped so SB3 sees one feature vector per step.

Wrappers, outermost last: ``TrainingSeeds`` (simulator only: resets draw scenes from the manifest's
training seeds, never the evaluation panel) -> ``TaskReward`` (optional dense progress terms) ->
``LowDimFeatures`` (the policy's observation keys as one vector) -> SB3's ``Monitor``; then
``VecNormalize`` for observation and return statistics.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecMonitor, VecNormalize
from worldgen.envs import object_slice
from worldgen.errors import ArgumentError
from worldgen.manifest import Manifest, as_manifest

from ..observation import low_dim_features
from .configuration_ppo import PPOConfig
from .modeling_ppo import CLIP_OBS, PPOPolicy, feature_space


class TrainingSeeds(gym.Wrapper):
    """Each reset without an explicit scene seed draws one of ``seeds``."""

    def __init__(self, env: gym.Env, seeds: list[int]):
        super().__init__(env)
        self.seeds = list(seeds)
        self.rng = np.random.default_rng(0)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        return self.env.reset(seed=int(self.rng.choice(self.seeds)), options=options)


class TaskProgress:
    """Dense progress terms read from the low-dimensional observation, so they work on simulated and on
    predicted state alike: ``0.5 * (reach + goal)``, with ``reach`` = 1 - tanh(2.5 d) for the
    hand-to-object distance d (still sloped at the 0.4 m the hand starts from; tanh(10 d) was flat there
    and PPO learnt nothing) and ``goal`` = 1 - tanh(5 d) for the object's distance to the region's
    centre, or for a lift the height gained over ``min_height`` (capped at 1). (Potential-based shaping,
    the difference of the same terms, taught PPO nothing in 16k CPU steps.)"""

    def __init__(self, manifest: Manifest):
        self.manifest = manifest
        self.slice = object_slice(manifest, manifest.task.success.object)
        spec = manifest.task.success
        self.region = next((r for r in manifest.task.regions if r.name == spec.region), None)

    def object_z(self, objects: np.ndarray) -> np.ndarray:
        """The success object's height in ``object`` observations (..., F)."""
        return np.asarray(objects)[..., self.slice][..., 2]

    def __call__(self, objects: np.ndarray, start_z: np.ndarray | float) -> np.ndarray:
        """Progress for ``object`` observations (..., F) and the object's height at reset."""
        features = np.asarray(objects)[..., self.slice]
        reach = 1.0 - np.tanh(2.5 * np.linalg.norm(features[..., 7:10], axis=-1))
        if self.region is not None:
            offset = features[..., :2] - np.asarray(self.region.center)
            goal = 1.0 - np.tanh(5.0 * np.linalg.norm(offset, axis=-1))
        else:
            lift = (features[..., 2] - start_z) / self.manifest.task.success.min_height
            goal = np.clip(lift, 0.0, 1.0)
        return 0.5 * (reach + goal)


class TaskReward(gym.Wrapper):
    """The success reward plus :class:`TaskProgress` at every step."""

    def __init__(self, env: gym.Env, manifest: Manifest):
        super().__init__(env)
        self.progress = TaskProgress(manifest)

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self.start_z = float(self.progress.object_z(obs["object"]))
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, reward + float(self.progress(obs["object"], self.start_z)), terminated, truncated, info


class LowDimFeatures(gym.ObservationWrapper):
    """Dict observation -> the policy's feature vector (quaternions as rotation-matrix columns)."""

    def __init__(self, env: gym.Env, config: PPOConfig):
        super().__init__(env)
        self.keys = list(config.obs_keys)
        self.observation_space = feature_space(config)

    def observation(self, observation: dict[str, np.ndarray]) -> np.ndarray:
        return feature_vector(observation, self.keys)


def feature_vector(observation: dict[str, np.ndarray], keys: list[str]) -> np.ndarray:
    """The policy's float32 feature vector of one observation (F,), or of a batch of them (N, F)."""
    obs = {k: torch.from_numpy(np.asarray(observation[k])) for k in keys}
    return low_dim_features(obs, keys).numpy().astype(np.float32)


def make_env(
    manifest: Manifest, config: PPOConfig, world_model: str | Path | None, dataset: str | Path | None
) -> gym.Env:
    """The wrapped training environment; fills ``config.low_dim_shapes`` from its observation space."""
    if world_model is not None:
        from world_models.env import WorldModelEnv

        if dataset is None:
            raise ArgumentError("training in the world model needs the dataset its seed demos start from")
        env: gym.Env = WorldModelEnv(world_model, dataset)
    else:
        from worldgen.envs import WorldgenEnv

        env = TrainingSeeds(WorldgenEnv(manifest, cameras=False), training_seeds(manifest))
    missing = [k for k in config.obs_keys if k not in env.observation_space.spaces]
    if missing:
        raise ArgumentError(
            f"the environment has no observation keys {missing}; it has {sorted(env.observation_space)}"
        )
    config.low_dim_shapes = {k: int(env.observation_space[k].shape[-1]) for k in config.obs_keys}
    if config.reward == "shaped":
        env = TaskReward(env, manifest)
    return Monitor(LowDimFeatures(env, config))


class VectorTaskEnv(VecEnv):
    """SB3's ``VecEnv`` over ``worldgen.vector_env.WorldgenVectorEnv``: scenes drawn from the training
    seeds, the reward of :class:`TaskReward` (``config.reward``), the policy's feature vectors, and SB3's
    reset within the step (a finished world restarts at once; its last observation goes in its info as
    ``terminal_observation``, ``TimeLimit.truncated`` saying whether the horizon ended it)."""

    def __init__(self, manifest: Manifest, config: PPOConfig, num_envs: int, seed: int = 0):
        from worldgen.vector_env import WorldgenVectorEnv

        self.env = WorldgenVectorEnv(manifest, num_envs, autoreset_mode="Disabled")
        missing = [k for k in config.obs_keys if k not in self.env.single_observation_space.spaces]
        if missing:
            raise ArgumentError(f"the environment has no observation keys {missing}")
        config.low_dim_shapes = {
            k: int(self.env.single_observation_space[k].shape[-1]) for k in config.obs_keys
        }
        self.render_mode = None  # SB3 asks every VecEnv for one
        super().__init__(num_envs, feature_space(config), self.env.single_action_space)
        self.keys = list(config.obs_keys)
        self.shaped = config.reward == "shaped"
        self.progress = TaskProgress(manifest)
        self.seeds = training_seeds(manifest)
        self.rng = np.random.default_rng(seed)
        self.scene_seeds = self._draw(num_envs)

    def _draw(self, n: int) -> list[int]:
        return [int(s) for s in self.rng.choice(self.seeds, n)]

    def reset(self) -> np.ndarray:
        obs, _ = self.env.reset(seed=self.scene_seeds)
        self.start_z = self.progress.object_z(obs["object"])
        return feature_vector(obs, self.keys)

    def step_async(self, actions: np.ndarray) -> None:
        self.actions = np.asarray(actions, dtype=np.float32)

    def step_wait(self):
        obs, rewards, terminated, truncated, info = self.env.step(self.actions)
        if self.shaped:
            rewards = rewards + self.progress(obs["object"], self.start_z)
        # A diverged world ends as a failure, not at a time limit: PPO must not bootstrap from its
        # (blown-up) last observation, and nothing non-finite may reach the normalisation statistics.
        diverged = info["diverged"]
        rewards = np.where(diverged, 0.0, np.nan_to_num(rewards))
        dones = terminated | truncated
        features = np.nan_to_num(feature_vector(obs, self.keys), posinf=0.0, neginf=0.0)
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        if dones.any():
            for i in np.flatnonzero(dones):
                limit = bool(truncated[i] and not diverged[i])
                infos[i] = {"terminal_observation": features[i], "TimeLimit.truncated": limit}
                self.scene_seeds[i] = self._draw(1)[0]
            obs, _ = self.env.reset(seed=self.scene_seeds, options={"reset_mask": dones})
            self.start_z = np.where(dones, self.progress.object_z(obs["object"]), self.start_z)
            features = feature_vector(obs, self.keys)
        return features, rewards.astype(np.float32), dones, infos

    def close(self) -> None:
        self.env.close()

    def get_attr(self, attr_name, indices=None):
        return [getattr(self, attr_name)] * len(self._get_indices(indices))

    def set_attr(self, attr_name, value, indices=None) -> None:
        if len(self._get_indices(indices)) != self.num_envs:
            raise NotImplementedError("the worlds share their attributes: set them for all or none")
        setattr(self, attr_name, value)

    def env_method(self, method_name, *args, indices=None, **kwargs):
        raise NotImplementedError("the worlds of a vector env have no methods of their own")

    def env_is_wrapped(self, wrapper_class, indices=None):
        return [False] * len(self._get_indices(indices))


def training_seeds(manifest: Manifest) -> list[int]:
    return list(range(manifest.seeds.base_seed, manifest.seeds.base_seed + manifest.seeds.count))


class _Progress(BaseCallback):
    def __init__(self, report: Callable[[int, int, float], None] | None, total: int):
        super().__init__()
        self.report, self.total, self.returns = report, total, []

    def _on_step(self) -> bool:
        for info in self.locals.get("infos", []):
            if "episode" in info:
                self.returns.append(float(info["episode"]["r"]))
                if self.report is not None:
                    self.report(self.num_timesteps, self.total, float(np.mean(self.returns[-10:])))
        return True


def train_ppo(
    manifest: str | Path | Manifest,
    out: str | Path,
    config: PPOConfig | None = None,
    world_model: str | Path | None = None,
    dataset: str | Path | None = None,
    progress: Callable[[int, int, float], None] | None = None,
    envs: int = 1,
) -> dict[str, Any]:
    """Train PPO for ``config.steps`` environment steps; write a policy folder to ``out``. ``envs`` > 1
    (simulator only): that many scenes stepped together (``worldgen.vector_env``); each PPO rollout then
    holds ``config.n_steps`` steps of every scene."""
    manifest = as_manifest(manifest)
    config = config or PPOConfig.from_manifest(manifest)
    if envs > 1 and world_model is not None:
        raise ArgumentError(f"--envs {envs}: scenes stepped together are simulator scenes, not a world model")
    if envs > 1:
        vec: VecEnv = VecMonitor(VectorTaskEnv(manifest, config, envs, seed=config.seed))
    else:
        env = make_env(manifest, config, world_model, dataset)
        vec = DummyVecEnv([lambda: env])
    torch.manual_seed(config.seed)
    venv = VecNormalize(vec, gamma=config.gamma, clip_obs=CLIP_OBS)
    venv.seed(config.seed)
    model = PPO(
        "MlpPolicy",
        venv,
        learning_rate=config.learning_rate,
        n_steps=config.n_steps,
        batch_size=config.batch_size,
        n_epochs=config.n_epochs,
        gamma=config.gamma,
        gae_lambda=config.gae_lambda,
        ent_coef=config.ent_coef,
        policy_kwargs={
            "net_arch": {"pi": list(config.net_arch), "vf": list(config.net_arch)},
            "log_std_init": config.log_std_init,
        },
        seed=config.seed,
        device="cpu",
        verbose=0,
    )
    callback = _Progress(progress, config.steps)
    started = time.perf_counter()
    model.learn(total_timesteps=config.steps, callback=callback)
    policy = PPOPolicy(config)
    policy.actor_critic.load_state_dict(model.policy.state_dict())
    policy.obs_mean.copy_(torch.as_tensor(venv.obs_rms.mean, dtype=torch.float32))
    policy.obs_var.copy_(torch.as_tensor(venv.obs_rms.var, dtype=torch.float32))
    venv.close()
    returns = callback.returns
    meta = {
        "algo": "ppo",
        "trained_in": "world_model" if world_model is not None else "simulation",
        "world_model": str(world_model) if world_model is not None else None,
        "dataset": str(dataset) if dataset is not None else None,
        "manifest": manifest.name,
        "manifest_hash": manifest.content_hash(),
        "training_seeds": list(
            range(manifest.seeds.base_seed, manifest.seeds.base_seed + manifest.seeds.count)
        ),
        "envs": envs,
        "episodes": len(returns),
        "first_returns": float(np.mean(returns[:5])) if returns else None,
        "last_returns": float(np.mean(returns[-5:])) if returns else None,
        "seconds": round(time.perf_counter() - started, 1),
    }
    policy.eval().save_pretrained(out, meta)
    return meta


def mean_return(
    manifest: Manifest,
    act: Callable[[dict[str, np.ndarray]], np.ndarray],
    seeds: list[int],
    shaped: bool = True,
) -> float:
    """Mean (shaped) return of ``act`` in the simulator over scenes ``seeds``."""
    from worldgen.envs import WorldgenEnv

    env: gym.Env = WorldgenEnv(manifest, cameras=False)
    if shaped:
        env = TaskReward(env, manifest)
    total = 0.0
    try:
        for seed in seeds:
            obs, _ = env.reset(seed=seed)
            done = False
            while not done:
                obs, reward, terminated, truncated, _ = env.step(act(obs))
                total += reward
                done = terminated or truncated
    finally:
        env.close()
    return total / len(seeds)
