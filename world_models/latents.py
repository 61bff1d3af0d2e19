"""The optional latent space of the world model: multi-channel frames through a Wan VAE
(diffusers' ``AutoencoderKLWan``, the tokenizer of Cosmos-Predict2).

A Wan VAE encodes images of a fixed channel count (RGB for the released weights). A worldgen frame has
more channels (RGB + depth + one mask per tracked object), so its channels are cut into groups of the
VAE's image channels (the last group padded with -1, "empty") and every group is encoded as its own
one-frame video; the group latents are stacked in channels. Each frame is encoded on its own (a causal
video VAE encodes the first frame of a clip alone), with the posterior mode, so encoding is
deterministic, and latents are normalised by the VAE's ``latents_mean`` / ``latents_std`` as the Cosmos
pipelines do. The world model then denoises latent frames exactly as it denoises pixel frames.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan
from worldgen.errors import ArgumentError, CheckpointError

CHUNK = 64  # frames per VAE call: bounds the activation memory of a large VAE


class WanFrameCodec:
    """Frames (N, C, H, W) in [-1, 1] <-> latents (N, groups * z_dim, H / f, W / f)."""

    def __init__(self, vae: AutoencoderKLWan, frame_channels: int):
        self.vae = vae.eval().requires_grad_(False)
        config = vae.config
        patch = config.patch_size or 1
        self.image_channels = config.in_channels // patch**2
        if config.out_channels != config.in_channels:
            raise CheckpointError(
                f"a VAE with {config.in_channels} in and {config.out_channels} out channels"
            )
        if len(config.latents_mean) != config.z_dim or len(config.latents_std) != config.z_dim:
            raise CheckpointError(f"VAE latents_mean / latents_std must hold z_dim={config.z_dim} values")
        self.frame_channels = frame_channels
        self.groups = math.ceil(frame_channels / self.image_channels)
        self.latent_channels = self.groups * config.z_dim
        # Every encoder level but the last halves the resolution (patchifying divides it first).
        self.factor = patch * 2 ** (len(config.dim_mult) - 1)
        self.mean = torch.tensor(config.latents_mean).view(1, -1, 1, 1)
        self.std = torch.tensor(config.latents_std).view(1, -1, 1, 1)

    @classmethod
    def from_pretrained(cls, path: str | Path, frame_channels: int) -> WanFrameCodec:
        config = json.loads((Path(path) / "config.json").read_text())
        if config.get("_class_name") != "AutoencoderKLWan":
            name = config.get("_class_name")
            raise CheckpointError(f"{path}: config.json names {name}; expected AutoencoderKLWan")
        return cls(AutoencoderKLWan.from_pretrained(path), frame_channels)

    def to(self, device: str | torch.device) -> WanFrameCodec:
        self.vae.to(device)
        self.mean, self.std = self.mean.to(device), self.std.to(device)
        return self

    def latent_size(self, resolution: int) -> int:
        if resolution % self.factor:
            raise ArgumentError(
                f"world_model.resolution {resolution} must divide by the VAE's downsampling {self.factor}"
            )
        return resolution // self.factor

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        c, h, w = frames.shape[1:]
        if c != self.frame_channels:
            raise ValueError(f"frames have {c} channels; the codec was built for {self.frame_channels}")
        device = self.mean.device
        pad = self.groups * self.image_channels - c
        out = []
        for chunk in frames.split(CHUNK):
            x = chunk.to(device, torch.float32)
            if pad:
                x = torch.cat([x, -x.new_ones(x.shape[0], pad, h, w)], dim=1)
            x = x.reshape(-1, self.image_channels, 1, h, w)  # every group a one-frame video
            z = self.vae.encode(x).latent_dist.mode()[:, :, 0]
            z = (z - self.mean) / self.std
            out.append(z.reshape(chunk.shape[0], self.latent_channels, *z.shape[-2:]))
        return torch.cat(out)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        h, w = latents.shape[-2:]
        out = []
        for chunk in latents.split(CHUNK):
            z = chunk.to(self.mean.device, torch.float32).reshape(-1, self.vae.config.z_dim, h, w)
            x = self.vae.decode((z * self.std + self.mean)[:, :, None]).sample[:, :, 0]
            out.append(x.reshape(chunk.shape[0], -1, *x.shape[-2:])[:, : self.frame_channels])
        return torch.cat(out)

    def digest(self) -> str:
        """Hash of the VAE's configuration and weights: a checkpoint records which latent space it is in."""
        config = {k: v for k, v in self.vae.config.items() if not k.startswith("_")}  # not where it was read
        h = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
        for name, tensor in sorted(self.vae.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()
