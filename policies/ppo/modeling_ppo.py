"""A PPO policy: stable-baselines3's ``ActorCriticPolicy`` and the observation statistics its
``VecNormalize`` gathered during training, saved as safetensors (nothing pickled). Acting is
deterministic (the Gaussian's mean)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.policies import ActorCriticPolicy

from ..observation import feature_dim, low_dim_features
from ..pretrained import PretrainedPolicy
from .configuration_ppo import PPOConfig

CLIP_OBS, EPSILON = 10.0, 1e-8  # VecNormalize's defaults


def feature_space(config: PPOConfig) -> gym.spaces.Box:
    dim = sum(feature_dim(k, config.low_dim_shapes[k]) for k in config.obs_keys)
    return gym.spaces.Box(-np.inf, np.inf, (dim,), np.float32)


class PPOPolicy(PretrainedPolicy):
    name = "ppo"
    config_class = PPOConfig

    def __init__(self, config: PPOConfig):
        super().__init__(config)
        space = feature_space(config)
        self.register_buffer("obs_mean", torch.zeros(space.shape[0]))
        self.register_buffer("obs_var", torch.ones(space.shape[0]))
        self.actor_critic = ActorCriticPolicy(
            space,
            gym.spaces.Box(-1.0, 1.0, (config.action_dim,), np.float32),
            lambda _: config.learning_rate,
            net_arch={"pi": list(config.net_arch), "vf": list(config.net_arch)},
            log_std_init=config.log_std_init,
        )

    def predict_chunk(self, obs: dict[str, torch.Tensor], generator: torch.Generator) -> torch.Tensor:
        x = low_dim_features(obs, self.config.obs_keys)[:, -1]
        x = ((x - self.obs_mean) / torch.sqrt(self.obs_var + EPSILON)).clamp(-CLIP_OBS, CLIP_OBS)
        return self.actor_critic._predict(x, deterministic=True).clamp(-1.0, 1.0)
