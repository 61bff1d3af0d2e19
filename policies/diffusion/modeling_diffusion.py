"""Diffusion policy: an action chunk denoised by a residual MLP whose blocks are modulated (FiLM) by
the encoded observations and the diffusion timestep. Noise schedules and samplers are diffusers'
(``DDPMScheduler`` for training, ``DDIMScheduler`` with the same betas for sampling)."""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler, DDPMScheduler
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from torch import nn

from ..observation import ObservationEncoder
from ..pretrained import PretrainedPolicy
from .configuration_diffusion import DiffusionConfig


class FiLMBlock(nn.Module):
    def __init__(self, dim: int, cond_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.film = nn.Linear(cond_dim, 2 * dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.Mish(), nn.Linear(dim, dim))

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(cond).chunk(2, -1)
        return x + self.mlp(self.norm(x) * (1 + scale) + shift)


class ChunkDenoiser(nn.Module):
    """(B, horizon, A) noisy actions, (B,) timesteps, (B, cond) features -> (B, horizon, A) noise."""

    def __init__(self, config: DiffusionConfig, cond_dim: int):
        super().__init__()
        flat = config.horizon * config.action_dim
        self.time_proj = Timesteps(config.time_embed_dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embed = TimestepEmbedding(config.time_embed_dim, config.time_embed_dim)
        cond = cond_dim + config.time_embed_dim
        self.inp = nn.Linear(flat, config.hidden_dim)
        self.blocks = nn.ModuleList(FiLMBlock(config.hidden_dim, cond) for _ in range(config.blocks))
        self.out = nn.Sequential(nn.LayerNorm(config.hidden_dim), nn.Linear(config.hidden_dim, flat))

    def forward(self, sample: torch.Tensor, timesteps: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        t = self.time_embed(self.time_proj(timesteps).to(features.dtype))
        cond = torch.cat([features, t], -1)
        x = self.inp(sample.flatten(1))
        for block in self.blocks:
            x = block(x, cond)
        return self.out(x).view_as(sample)


class DiffusionPolicy(PretrainedPolicy):
    name = "diffusion"
    config_class = DiffusionConfig

    def __init__(self, config: DiffusionConfig):
        super().__init__(config)
        self.encoder = ObservationEncoder(config)
        self.denoiser = ChunkDenoiser(config, self.encoder.out_dim)
        self.noise_scheduler = DDPMScheduler(
            num_train_timesteps=config.num_train_timesteps,
            beta_schedule=config.beta_schedule,
            clip_sample=True,
            prediction_type="epsilon",
        )
        self.sampler = DDIMScheduler.from_config(self.noise_scheduler.config)

    def compute_loss(self, batch: dict) -> torch.Tensor:
        actions = batch["action"]
        features = self.encoder(batch["obs"])
        noise = torch.randn_like(actions)
        t = torch.randint(0, self.config.num_train_timesteps, (actions.shape[0],))
        noisy = self.noise_scheduler.add_noise(actions, noise, t)
        error = (self.denoiser(noisy, t, features) - noise).pow(2).mean(-1)
        keep = (~batch["action_is_pad"]).float()
        return (error * keep).sum() / keep.sum().clamp_min(1.0)

    @torch.no_grad()
    def generate(
        self, obs: dict[str, torch.Tensor], generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """(B, horizon, action_dim) actions sampled for a batch of observation histories."""
        c = self.config
        features = self.encoder(obs)
        x = torch.randn((features.shape[0], c.horizon, c.action_dim), generator=generator)
        self.sampler.set_timesteps(c.num_inference_steps)
        for t in self.sampler.timesteps:
            eps = self.denoiser(x, t.expand(x.shape[0]), features)
            x = self.sampler.step(eps, t, x, generator=generator).prev_sample
        return x.clamp(-1.0, 1.0)

    def predict_chunk(self, obs: dict[str, torch.Tensor], generator: torch.Generator) -> torch.Tensor:
        return self.generate(obs, generator)[0]
