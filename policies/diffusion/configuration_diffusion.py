from __future__ import annotations

from dataclasses import dataclass

from ..pretrained import PolicyConfig


@dataclass
class DiffusionConfig(PolicyConfig):
    """Diffusion Policy (Chi et al. 2023): a chunk of ``horizon`` actions denoised from Gaussian noise,
    conditioned on the last ``n_obs_steps`` observations; ``n_action_steps`` of them are executed.
    Trained with diffusers' DDPM noise schedule, sampled with DDIM in ``num_inference_steps``."""

    n_obs_steps: int = 2
    horizon: int = 16
    n_action_steps: int = 8
    hidden_dim: int = 512
    blocks: int = 4
    time_embed_dim: int = 128
    num_train_timesteps: int = 100
    num_inference_steps: int = 10
    beta_schedule: str = "squaredcos_cap_v2"
    learning_rate: float = 3e-4
