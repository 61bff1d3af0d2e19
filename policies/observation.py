"""Observation encoding shared by the behaviour-cloning policies.

Low-dimensional keys are concatenated and standardised with statistics from the training data; keys
named ``*_quat`` (x, y, z, w) become the first two columns of their rotation matrix, which is continuous
and blind to the quaternion's sign (the Panda hand pointing down sits at w = 0, where the sign flips).
Each camera key gets a small convolutional encoder ending in a spatial soft-argmax (robomimic's image
encoder, scaled down for CPU training).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from worldgen.errors import ArgumentError
from worldgen.keys import DEPTH, RGB, image_kind

from .pretrained import PolicyConfig

KEYPOINTS = 32


def rotation_6d(quat_xyzw: torch.Tensor) -> torch.Tensor:
    """(..., 4) unit quaternions -> (..., 6): the rotation matrix's first two columns."""
    x, y, z, w = quat_xyzw.unbind(-1)
    col0 = torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y + z * w), 2 * (x * z - y * w)], -1)
    col1 = torch.stack([2 * (x * y - z * w), 1 - 2 * (x * x + z * z), 2 * (y * z + x * w)], -1)
    return torch.cat([col0, col1], -1)


def feature_dim(key: str, size: int) -> int:
    return 6 if key.endswith("_quat") else size


def low_dim_features(obs: dict[str, torch.Tensor], keys: list[str]) -> torch.Tensor:
    parts = []
    for key in keys:
        value = obs[key].float()
        parts.append(rotation_6d(value) if key.endswith("_quat") else value)
    return torch.cat(parts, -1)


def image_channels(key: str) -> int:
    if image_kind(key) == RGB:
        return 3
    if image_kind(key) == DEPTH:
        return 1
    raise ArgumentError(f"image key {key!r}: expected a camera's '<name>_rgb' or '<name>_depth'")


class SpatialSoftmax(nn.Module):
    """Feature maps -> the expected (x, y) image position of each of ``keypoints`` learned maps."""

    def __init__(self, channels: int, keypoints: int):
        super().__init__()
        self.project = nn.Conv2d(channels, keypoints, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        maps = self.project(features)
        b, k, h, w = maps.shape
        attention = maps.flatten(2).softmax(-1).view(b, k, h, w)
        ys = torch.linspace(-1.0, 1.0, h, device=maps.device)
        xs = torch.linspace(-1.0, 1.0, w, device=maps.device)
        x = (attention.sum(2) * xs).sum(-1)
        y = (attention.sum(3) * ys).sum(-1)
        return torch.cat([x, y], -1)


class ImageEncoder(nn.Module):
    def __init__(self, channels: int, out_dim: int = 64):
        super().__init__()

        def block(cin: int, cout: int, kernel: int, stride: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, kernel, stride, kernel // 2), nn.GroupNorm(8, cout), nn.ReLU()]

        self.convs = nn.Sequential(
            *block(channels, 32, 5, 2), *block(32, 64, 3, 2), *block(64, 64, 3, 1), nn.Conv2d(64, 64, 3, 1, 1)
        )
        self.keypoints = SpatialSoftmax(64, KEYPOINTS)
        self.out = nn.Linear(2 * KEYPOINTS, out_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.out(self.keypoints(self.convs(images)))


def _random_shift(images: torch.Tensor, pad: int) -> torch.Tensor:
    """Replicate-pad and crop back at a random offset per image (DrQ's augmentation)."""
    n, _, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad), mode="replicate")
    dx = torch.randint(0, 2 * pad + 1, (n,))
    dy = torch.randint(0, 2 * pad + 1, (n,))
    rows = (dy[:, None] + torch.arange(h)[None])[:, None, :, None].expand(n, images.shape[1], h, w + 2 * pad)
    cropped = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w)[None])[:, None, None, :].expand(n, images.shape[1], h, w)
    return cropped.gather(3, cols)


class ObservationEncoder(nn.Module):
    """obs dict of (B, n_obs_steps, ...) tensors -> (B, out_dim) features."""

    def __init__(self, config: PolicyConfig, image_feature_dim: int = 64, shift: int = 4):
        super().__init__()
        self.config = config
        missing = [k for k in config.obs_keys if k not in config.low_dim_shapes]
        if missing:
            raise ValueError(f"no shape for observation keys {missing}; set low_dim_shapes")
        self.low_dim = sum(feature_dim(k, config.low_dim_shapes[k]) for k in config.obs_keys)
        self.register_buffer("low_dim_mean", torch.zeros(self.low_dim))
        self.register_buffer("low_dim_std", torch.ones(self.low_dim))
        self.images = nn.ModuleDict(
            {key: ImageEncoder(image_channels(key), image_feature_dim) for key in config.image_keys}
        )
        self.shift = shift
        self.step_dim = self.low_dim + image_feature_dim * len(config.image_keys)
        self.out_dim = self.step_dim * config.n_obs_steps

    @property
    def keys(self) -> list[str]:
        return [*self.config.obs_keys, *self.config.image_keys]

    def set_statistics(self, features: torch.Tensor) -> None:
        """Standardisation from (N, low_dim) training features; near-constant features are only centred."""
        self.low_dim_mean.copy_(features.mean(0))
        self.low_dim_std.copy_(features.std(0).clamp_min(1e-2))

    def _image(self, key: str, frames: torch.Tensor) -> torch.Tensor:
        """(N, H, W, C) uint8 rgb or float depth in [0, 1] -> (N, C, s, s) in [-1, 1]."""
        x = frames.permute(0, 3, 1, 2).float()
        if frames.dtype == torch.uint8:
            x = x / 255.0
        size = self.config.image_size
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="area")
        if self.training and self.shift:
            x = _random_shift(x, self.shift)
        return x * 2.0 - 1.0

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = []
        if self.config.obs_keys:
            low = low_dim_features(obs, self.config.obs_keys)
            parts.append((low - self.low_dim_mean) / self.low_dim_std)
        for key, encoder in self.images.items():
            frames = obs[key]
            b, n = frames.shape[:2]
            parts.append(encoder(self._image(key, frames.flatten(0, 1))).view(b, n, -1))
        return torch.cat(parts, -1).flatten(1)
