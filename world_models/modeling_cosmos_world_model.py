"""The ``cosmos`` backbone: diffusers' ``CosmosTransformer3DModel`` (the Cosmos-Predict2 Video2World
architecture) with action conditioning, as NVIDIA's action-conditioned Predict2 adds it: an MLP embeds
the action chunk and its output is added to the timestep embedding (before its norm) and to the
adaLN-LoRA embedding. The parent's modules and state-dict keys are unchanged, so a local
Cosmos-Predict2 Video2World folder in diffusers format loads as it is; only ``action_embedder.*``,
``state_embedder.*`` and ``state_head.*`` are new. Post-training a pretrained model starts the action
layers at zero (it then equals its base model); from scratch they get a small non-zero init, which
learns faster. In a Wan VAE's latent space (``latents.py``) a frame can have more latent channels than
the base model (depth and masks beside RGB); ``widen_frame_channels`` adds them without changing what
the base model computes for its own channels.

As a world model (``denoise_next_frame``, the same contract as the ``unet`` backbone) the K context
frames and the noisy next frame form one (K+1)-frame video: the context frames carry the condition mask
and timestep 0, the last frame its flow time t; the network predicts the velocity of the whole frame, as
Predict2 was trained (``objectives.RectifiedFlow``). The robot and object state is the single
cross-attention token (where Video2World has its text), and a small head predicts the next state.
"""

from __future__ import annotations

import contextlib
import math
import types
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from diffusers import CosmosTransformer3DModel
from diffusers.configuration_utils import register_to_config
from diffusers.models.transformers import transformer_cosmos
from torch import nn


def _install_padding_mask_resize() -> None:
    """``concat_padding_mask`` resizes the mask with torchvision, which cannot load beside CPU torch;
    nearest-neighbour ``F.interpolate`` computes the same mask."""
    if getattr(transformer_cosmos, "transforms", None) is not None:
        return

    def resize(mask: torch.Tensor, size: list[int], interpolation=None) -> torch.Tensor:
        return F.interpolate(mask, size=tuple(size), mode="nearest")

    transformer_cosmos.transforms = types.SimpleNamespace(
        functional=types.SimpleNamespace(resize=resize),
        InterpolationMode=types.SimpleNamespace(NEAREST="nearest"),
    )


class ActionEmbedder(nn.Module):
    def __init__(self, action_dim: int, hidden_size: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(action_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, 4 * hidden_size)
        )

    def forward(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, action_dim) -> additions to the timestep embedding (B, H) and the adaLN-LoRA one (B, 3H)."""
        out = self.net(actions)
        hidden = out.shape[-1] // 4
        return out[:, :hidden], out[:, hidden:]


class ActionConditionedEmbedding(transformer_cosmos.CosmosEmbedding):
    """The parent's timestep embedding with an action chunk's embedding added: to the timestep projection
    before its norm, and to the adaLN-LoRA embedding. Swapped in for ``time_embed`` (the same children, so
    the same state-dict keys); :meth:`adding` holds the additions for one forward call, which the parent's
    forward cannot pass through."""

    def __init__(self, embedding_dim: int, condition_dim: int):
        super().__init__(embedding_dim, condition_dim)
        self._added: tuple[torch.Tensor, torch.Tensor] | None = None

    @contextlib.contextmanager
    def adding(self, to_time: torch.Tensor, to_lora: torch.Tensor) -> Iterator[None]:
        """Within the block, add (B, H) to the timestep projection and (B, 3H) to the adaLN-LoRA one."""
        self._added = (to_time, to_lora)
        try:
            yield
        finally:
            self._added = None

    def forward(
        self, hidden_states: torch.Tensor, timestep: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self._added is None:
            return super().forward(hidden_states, timestep)
        proj = self.time_proj(timestep).type_as(hidden_states)
        add_t, add_lora = (x.type_as(hidden_states) for x in self._added)
        if add_t.shape[0] != proj.shape[0]:  # per-frame timesteps: B*T rows
            reps = proj.shape[0] // add_t.shape[0]
            add_t, add_lora = add_t.repeat_interleave(reps, 0), add_lora.repeat_interleave(reps, 0)
        return self.t_embedder(proj) + add_lora, self.norm(proj + add_t)


def _linear_with(weight: torch.Tensor) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device=weight.device, dtype=weight.dtype)
    layer.weight.data.copy_(weight)
    return layer


class CosmosWorldModel(CosmosTransformer3DModel):
    NEW_LAYERS = ("action_embedder", "state_embedder", "state_head")

    @register_to_config
    def __init__(
        self,
        action_dim: int = 7,
        action_chunk: int = 4,
        state_dim: int = 15,
        # The parent's configuration, spelled out so that from_pretrained passes a base folder's config on.
        in_channels: int = 16,
        out_channels: int = 16,
        num_attention_heads: int = 32,
        attention_head_dim: int = 128,
        num_layers: int = 28,
        mlp_ratio: float = 4.0,
        text_embed_dim: int = 1024,
        adaln_lora_dim: int = 256,
        max_size: tuple[int, int, int] = (128, 240, 240),
        patch_size: tuple[int, int, int] = (1, 2, 2),
        rope_scale: tuple[float, float, float] = (2.0, 1.0, 1.0),
        concat_padding_mask: bool = True,
        extra_pos_embed_type: str | None = "learnable",
        use_crossattn_projection: bool = False,
        crossattn_proj_in_channels: int = 1024,
        encoder_hidden_states_channels: int = 1024,
        controlnet_block_every_n: int | None = None,
        img_context_dim_in: int | None = None,
        img_context_num_tokens: int = 256,
        img_context_dim_out: int = 2048,
    ):
        super().__init__(
            in_channels=in_channels,
            out_channels=out_channels,
            num_attention_heads=num_attention_heads,
            attention_head_dim=attention_head_dim,
            num_layers=num_layers,
            mlp_ratio=mlp_ratio,
            text_embed_dim=text_embed_dim,
            adaln_lora_dim=adaln_lora_dim,
            max_size=max_size,
            patch_size=patch_size,
            rope_scale=rope_scale,
            concat_padding_mask=concat_padding_mask,
            extra_pos_embed_type=extra_pos_embed_type,
            use_crossattn_projection=use_crossattn_projection,
            crossattn_proj_in_channels=crossattn_proj_in_channels,
            encoder_hidden_states_channels=encoder_hidden_states_channels,
            controlnet_block_every_n=controlnet_block_every_n,
            img_context_dim_in=img_context_dim_in,
            img_context_num_tokens=img_context_num_tokens,
            img_context_dim_out=img_context_dim_out,
        )
        _install_padding_mask_resize()
        hidden = self.config.num_attention_heads * self.config.attention_head_dim
        self.action_embedder = ActionEmbedder(action_dim * action_chunk, hidden)
        # The state (and the training context-noise level) as one cross-attention token.
        self.state_embedder = nn.Linear(state_dim + 1, self.config.text_embed_dim)
        self.state_head = nn.Sequential(
            nn.Linear(action_dim * action_chunk + state_dim, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, state_dim),
        )
        self.init_action_layers(zero=False)
        # The action-conditioned embedding takes the parent's place with the parent's weights; made under a
        # forked RNG so the rest of the model initialises as it did before the swap.
        with torch.random.fork_rng(devices=[]):
            embedding = ActionConditionedEmbedding(hidden, hidden)
        embedding.load_state_dict(self.time_embed.state_dict())
        self.time_embed = embedding

    def init_action_layers(self, zero: bool) -> None:
        """Zero the last action layer (post-training: the model starts as its base) or give it a small
        non-zero init (from scratch)."""
        last = self.action_embedder.net[-1]
        with torch.no_grad():
            if zero:
                last.weight.zero_()
            else:
                nn.init.normal_(last.weight, std=1e-3)
            last.bias.zero_()

    @classmethod
    def for_frames(
        cls, frame_channels: int, context_frames: int, action_dim: int, state_dim: int, resolution: int
    ) -> CosmosWorldModel:
        """A small from-scratch configuration for multi-channel frames. It runs on a CPU (tests, pipeline
        checks); learning to draw whole frames from scratch takes GPU-scale training."""
        return cls(
            action_dim=action_dim,
            action_chunk=context_frames,
            state_dim=state_dim,
            in_channels=frame_channels + 1,  # + the condition mask
            out_channels=frame_channels,
            num_attention_heads=4,
            attention_head_dim=32,
            num_layers=4,
            text_embed_dim=128,
            adaln_lora_dim=32,
            max_size=(context_frames + 1, resolution, resolution),
            patch_size=(1, 4, 4),
            rope_scale=(1.0, 1.0, 1.0),
        )

    @classmethod
    def from_base(
        cls, path: str, action_dim: int, action_chunk: int, frame_channels: int | None = None, **kwargs
    ) -> CosmosWorldModel:
        """Load a Cosmos-Predict2 Video2World transformer folder (diffusers format) and add zeroed action
        layers. New layers that ``from_pretrained`` leaves on the meta device are materialised here.
        ``frame_channels`` above the base's latent channels widens the model (:meth:`widen_frame_channels`).
        """
        model = cls.from_pretrained(path, action_dim=action_dim, action_chunk=action_chunk, **kwargs)
        for name in cls.NEW_LAYERS:
            module = getattr(model, name)
            if any(p.is_meta for p in module.parameters()):
                module.to_empty(device="cpu")
                for layer in module.modules():
                    if isinstance(layer, nn.Linear):
                        layer.reset_parameters()
        model.init_action_layers(zero=True)
        if frame_channels is not None:
            model.widen_frame_channels(frame_channels)
        return model

    def widen_frame_channels(self, channels: int) -> None:
        """Take frames of ``channels`` channels where the base model had fewer (the VAE latents of depth and
        masks beside those of RGB). The new channels enter the patch embedding through zero weights and
        leave the output projection as zeros, so the base model's channels behave exactly as before (the
        InstructPix2Pix way of adding input channels to a pretrained model)."""
        old = self.config.out_channels
        if channels == old:
            return
        if channels < old:
            raise ValueError(f"frames of {channels} channels for a model of {old}: expected at least {old}")
        extra, patch = channels - old, math.prod(self.config.patch_size)
        # Patch-embedding inputs are channel-major ([frame, condition, padding] x patch); outputs
        # channel-minor (patch x frame channels).
        w_in = self.patch_embed.proj.weight.data.unflatten(1, (-1, patch))
        w_in = torch.cat([w_in[:, :old], w_in.new_zeros(w_in.shape[0], extra, patch), w_in[:, old:]], dim=1)
        w_out = self.proj_out.weight.data.unflatten(0, (patch, old))
        w_out = torch.cat([w_out, w_out.new_zeros(patch, extra, w_out.shape[-1])], dim=1)
        self.patch_embed.proj = _linear_with(w_in.flatten(1))
        self.proj_out = _linear_with(w_out.flatten(0, 1))
        self.register_to_config(in_channels=self.config.in_channels + extra, out_channels=channels)

    def denoise_next_frame(
        self,
        noisy: torch.Tensor,
        timestep: torch.Tensor,
        context: torch.Tensor,
        actions: torch.Tensor,
        state: torch.Tensor,
        context_noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Network output for the noisy next frame (B, C, H, W) at flow time ``timestep`` (B,); the other
        arguments as ``UNetWorldModel.forward``."""
        b, k, _, h, w = context.shape
        video = torch.cat([context, noisy[:, None]], dim=1).transpose(1, 2)  # (B, C, K+1, H, W)
        condition = torch.zeros(b, 1, k + 1, h, w, dtype=video.dtype, device=video.device)
        condition[:, :, :k] = 1.0
        timesteps = torch.zeros(b, 1, k + 1, 1, 1, dtype=video.dtype, device=video.device)
        timesteps[:, 0, -1, 0, 0] = timestep.reshape(-1).to(video.dtype)
        if context_noise is None:
            context_noise = torch.zeros(b, dtype=state.dtype, device=state.device)
        token = self.state_embedder(torch.cat([state, context_noise[:, None]], dim=1))[:, None]
        padding = torch.zeros(1, 1, h, w, dtype=video.dtype, device=video.device)
        out = self(video, timesteps, token, actions=actions, condition_mask=condition, padding_mask=padding)
        return out.sample[:, :, -1]

    def predict_state_delta(self, actions: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """Normalised change of the low-dimensional state over the step."""
        return self.state_head(torch.cat([actions.flatten(1), state], dim=1))

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        actions: torch.Tensor | None = None,
        **kwargs,
    ):
        """The parent's forward; ``actions`` (B, action_chunk, action_dim) condition every frame."""
        if actions is None:
            return super().forward(hidden_states, timestep, encoder_hidden_states, **kwargs)
        added = self.action_embedder(actions.flatten(1).type_as(hidden_states))
        with self.time_embed.adding(*added):
            return super().forward(hidden_states, timestep, encoder_hidden_states, **kwargs)
