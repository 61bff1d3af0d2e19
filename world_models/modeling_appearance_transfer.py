"""Appearance transfer on a diffusers ``UNet2DModel``: depth + segmentation (+ the previous output frame)
to an RGB frame in the target domain's appearance, as Cosmos-Transfer repaints simulated video from its
depth and segmentation controls.

The inputs are what a real RGB-D camera with an off-the-shelf segmenter gives, so the model trains on
unlabelled target-domain clips and is applied to simulated frames, whose depth and segmentation are the
same kind of signal. Segmentation enters as one channel per instance id (the dataset's instance table);
depth in [-1, 1]; the previous frame the model produced (zeros with a flag of 0 for a clip's first
frame) keeps a clip consistent from frame to frame. The U-Net runs at a quarter of the resolution
after a 4x pixel-unshuffle (each cell's 16 pixels become channels, so none is dropped), which a CPU
trains in minutes. The generator is deterministic (one U-Net pass, no sampling): a transferred demo
regenerates bit for bit, and the policy sees the mean appearance it learnt, not sensor noise drawn
anew for every frame.
"""

from __future__ import annotations

import torch
from diffusers import ModelMixin, UNet2DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from torch.nn import functional as F  # noqa: N812 - torch's own spelling


class AppearanceTransferModel(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(
        self,
        instances: int = 8,
        resolution: tuple[int, int] = (96, 96),
        block_out_channels: tuple[int, ...] = (64, 64, 64),
        layers_per_block: int = 1,
        unshuffle: int = 4,
    ):
        super().__init__()
        width, height = resolution
        self.unet = UNet2DModel(
            sample_size=(height // unshuffle, width // unshuffle),
            # depth, one-hot instances, the previous frame and its flag; pixels unshuffled into channels
            in_channels=(1 + instances + 3 + 1) * unshuffle**2,
            out_channels=3 * unshuffle**2,
            block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block,
            down_block_types=("DownBlock2D",) * len(block_out_channels),
            up_block_types=("UpBlock2D",) * len(block_out_channels),
            norm_num_groups=min(32, block_out_channels[0]),
        )

    def controls(self, depth: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        """(B, 1 + instances, H, W) from depth (B, H, W) in [0, 1] and instance ids (B, H, W)."""
        one_hot = F.one_hot(seg.long().clamp(max=self.config.instances - 1), self.config.instances)
        return torch.cat([depth[:, None] * 2.0 - 1.0, one_hot.permute(0, 3, 1, 2).to(depth.dtype)], dim=1)

    def forward(
        self, controls: torch.Tensor, previous: torch.Tensor, has_previous: torch.Tensor
    ) -> torch.Tensor:
        """RGB in [-1, 1] (B, 3, H, W) from ``controls`` (:meth:`controls`), the previous frame (B, 3, H, W)
        in [-1, 1] and whether there is one (B,)."""
        flag = has_previous.to(controls.dtype)[:, None, None, None].expand(-1, 1, *controls.shape[2:])
        x = torch.cat([controls, previous * flag, flag], dim=1)
        timestep = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)  # one pass: no noise level
        r = self.config.unshuffle
        return F.pixel_shuffle(self.unet(F.pixel_unshuffle(x, r), timestep).sample, r)
