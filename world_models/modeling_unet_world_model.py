"""DIAMOND-style next-frame diffusion world model on a diffusers ``UNet2DModel``.

A frame is multi-channel: RGB (3) + depth (1) + one mask channel per tracked object, all in [-1, 1].
The last ``context_frames`` frames are stacked in channels beside the noisy sample; the last
``context_frames`` actions and the current low-dimensional state are embedded by a small MLP and added
to the timestep embedding (``class_embed_type="identity"``), which scales and shifts every resnet's group
norm (adaptive group norm, as DIAMOND conditions on actions). The U-Net runs at half resolution after a
2x pixel-unshuffle and predicts the *residual* from the last context frame under the EDM objective
(preconditioning and sampling from diffusers' ``EDMEulerScheduler``). A low-dimensional head predicts
the change of the state over the step, so every generated frame comes with a state to check.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import ModelMixin, UNet2DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from torch import nn
from worldgen.errors import ArgumentError
from worldgen.manifest import unet_shape_problem


class UNetWorldModel(ModelMixin, ConfigMixin):
    _supports_gradient_checkpointing = True  # reaches the inner U-Net's blocks
    NEW_LAYERS = ("condition", "state_head")  # trained in full beside LoRA adapters

    @register_to_config
    def __init__(
        self,
        frame_channels: int = 5,
        context_frames: int = 4,
        action_dim: int = 7,
        state_dim: int = 15,
        resolution: int = 64,
        block_out_channels: tuple[int, ...] = (64, 128, 128),
        layers_per_block: int = 1,
        unshuffle: int = 2,
        hidden_dim: int = 256,
        resnet_time_scale_shift: str = "scale_shift",
    ):
        super().__init__()
        problem = unet_shape_problem(block_out_channels, (resolution, resolution), unshuffle)
        if problem:
            raise ArgumentError(f"world_model.{problem}")
        time_embed_dim = block_out_channels[0] * 4
        self.unet = UNet2DModel(
            sample_size=resolution // unshuffle,
            in_channels=frame_channels * (context_frames + 1) * unshuffle**2,
            out_channels=frame_channels * unshuffle**2,
            block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block,
            down_block_types=("DownBlock2D",) * len(block_out_channels),
            up_block_types=("UpBlock2D",) * len(block_out_channels),
            class_embed_type="identity",
            resnet_time_scale_shift=resnet_time_scale_shift,
            norm_num_groups=min(32, block_out_channels[0]),
        )
        condition_dim = context_frames * action_dim + state_dim
        self.condition = nn.Sequential(
            nn.Linear(condition_dim + 1, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, time_embed_dim)
        )
        self.state_head = nn.Sequential(
            nn.Linear(condition_dim, hidden_dim),
            nn.SiLU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.SiLU(),
            nn.Linear(hidden_dim, state_dim),
        )

    def _conditioning(self, actions: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        return torch.cat([actions.flatten(1), state], dim=1)

    def forward(
        self,
        noisy: torch.Tensor,
        timestep: torch.Tensor,
        context: torch.Tensor,
        actions: torch.Tensor,
        state: torch.Tensor,
        context_noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """EDM network output F for the noisy residual (B, C, H, W).

        context: (B, K, C, H, W) past frames; actions: (B, K, A) normalised; state: (B, S) normalised;
        timestep: (B,) EDM noise conditioning (``scheduler.precondition_noise(sigma)``); context_noise:
        (B,) std of the noise added to the context frames in training, in units of sigma_data (0 when
        sampling).
        """
        r = self.config.unshuffle
        x = torch.cat([noisy, context.flatten(1, 2)], dim=1)
        x = F.pixel_unshuffle(x, r)
        if context_noise is None:
            context_noise = torch.zeros(x.shape[0], dtype=state.dtype, device=state.device)
        cond = self.condition(torch.cat([self._conditioning(actions, state), context_noise[:, None]], dim=1))
        out = self.unet(x, timestep.reshape(-1).to(x.dtype), class_labels=cond).sample
        return F.pixel_shuffle(out, r)

    def denoise_next_frame(self, *args, **kwargs) -> torch.Tensor:
        """The name every backbone answers to (the cosmos one keeps its parent's ``forward``)."""
        return self(*args, **kwargs)

    def predict_state_delta(self, actions: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """Normalised change of the low-dimensional state over the step."""
        return self.state_head(self._conditioning(actions, state))
