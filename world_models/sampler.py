"""A trained world model ready to roll out futures, and its predictions as dataset observations.

From a seed demo's frames up to step k, N futures are sampled autoregressively (batched: one model call
per denoising step for all N), each from its own noise seed (:func:`noise_seed` of base seed, demo, k
and i): same record, same batch layout, the same future bit for bit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from worldgen.dataset import demo_index
from worldgen.errors import CheckpointError
from worldgen.keys import DEPTH, RGB, SEG, image_key
from worldgen.manifest import rng_for

from .checkpoint import WORLD_MODELS, checkpoint_hash, read_checkpoint_meta
from .data import STATE_KEYS, frame_channels, obs_from_frames
from .latents import WanFrameCodec
from .objectives import objective_from_config


def noise_seed(base_seed: int, demo: str, step: int, index: int) -> int:
    """The noise seed of branch ``index`` from ``demo`` at ``step``: stable, independent per branch."""
    ss = np.random.SeedSequence([base_seed, demo_index(demo), step, index])
    return int(ss.generate_state(1, dtype=np.uint32)[0])


class WorldModelSampler:
    """A trained checkpoint ready to roll out futures.

    The model works in its own frame space: pixel frames, or with a ``vae/`` in the checkpoint that VAE's
    latents. :meth:`rollout` takes and returns pixel frames; :meth:`step` works in model space, with
    :meth:`encode` / :meth:`decode` between the two.
    """

    def __init__(self, ckpt: str | Path, sampling_steps: int | None = None, device: str = "cpu"):
        self.ckpt = Path(ckpt)
        self.meta = read_checkpoint_meta(self.ckpt)
        self.device = torch.device(device)
        try:
            model = WORLD_MODELS[self.meta.backbone].from_pretrained(self.ckpt / "model")
        except (KeyError, OSError) as exc:  # an unknown backbone; missing or unreadable weights
            raise CheckpointError(f"{self.ckpt}: cannot load the model ({exc})") from None
        self.model = model.eval().to(self.device)
        self.norm = self.meta.normalization
        self.objective = objective_from_config(self.meta.objective)
        if sampling_steps is not None:
            self.objective.sampling_steps = sampling_steps
        self.codec = None
        if self.meta.latent:
            channels = frame_channels(self.meta.instances)
            self.codec = WanFrameCodec.from_pretrained(self.ckpt / "vae", channels).to(self.device)
        self.hash = checkpoint_hash(self.ckpt)

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """Pixel frames (..., C, h, w) -> model frames, on the CPU."""
        if self.codec is None:
            return frames
        return self.codec.encode(frames.flatten(0, -4)).cpu().unflatten(0, frames.shape[:-3])

    def decode(self, frames: torch.Tensor) -> torch.Tensor:
        """Model frames (..., C', h', w') -> pixel frames, on the CPU."""
        if self.codec is None:
            return frames.cpu()
        return self.codec.decode(frames.flatten(0, -4)).cpu().unflatten(0, frames.shape[:-3])

    @torch.no_grad()
    def rollout(
        self,
        context: torch.Tensor,
        past_actions: torch.Tensor,
        state: torch.Tensor,
        actions: torch.Tensor,
        seeds: list[int],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Futures for N noise seeds, batched.

        context (K, C, h, w) frames up to the branch step; past_actions (K, A) actions before it
        (zeros where none); state (S,) raw; actions (N, H, A) future actions per branch.
        Returns frames (N, H, C, h, w) and raw states (N, H, S), on the CPU.
        """
        n, horizon = actions.shape[:2]
        k = self.meta.context_frames
        generators = [torch.Generator().manual_seed(s) for s in seeds]
        frames = self.encode(context).to(self.device)[None].repeat(n, 1, 1, 1, 1)
        acts = torch.cat([past_actions[None].repeat(n, 1, 1), actions], dim=1).to(self.device)
        states = self.norm.normalize(state.to(self.device))[None].repeat(n, 1)
        out_frames, out_states = [], []
        for j in range(horizon):
            nxt, states = self._step(frames[:, -k:], acts[:, j + 1 : j + 1 + k], states, generators)
            frames = torch.cat([frames, nxt[:, None]], dim=1)
            out_frames.append(nxt)
            out_states.append(self.norm.denormalize(states))
        return self.decode(torch.stack(out_frames, 1)), torch.stack(out_states, 1).cpu()

    @torch.no_grad()
    def step(
        self,
        window: torch.Tensor,
        actions: torch.Tensor,
        states: torch.Tensor,
        generators: list[torch.Generator],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One frame ahead for a batch: window (N, K, C, h, w) the last K model frames, actions (N, K, A) the
        action taken after each of them (raw), states (N, S) normalised. Returns the next frames
        (N, C, h, w) and the next normalised states (N, S), on the CPU; each (CPU) generator draws one
        branch's noise."""
        d = self.device
        nxt, states = self._step(window.to(d), actions.to(d), states.to(d), generators)
        return nxt.cpu(), states.cpu()

    def _step(self, window, actions, states, generators):
        actions = self.norm.normalize_actions(actions)
        noise = torch.stack([torch.randn(window.shape[2:], generator=g) for g in generators]).to(self.device)
        nxt = self.objective.sample(self.model, window, actions, states, noise)
        if self.codec is None:  # pixel frames live in [-1, 1]; latents are unbounded
            nxt = nxt.clamp(-1.0, 1.0)
        return nxt, states + self.model.predict_state_delta(actions, states)


def state_obs(states: np.ndarray, layout: dict[str, int]) -> dict[str, np.ndarray]:
    out, start = {}, 0
    for key in STATE_KEYS:
        out[key] = states[:, start : start + layout[key]].astype(np.float32)
        start += layout[key]
    return out


def noisy_futures(actions: torch.Tensor, seeds: list[int], action_noise: float) -> torch.Tensor:
    """(len(seeds), H, A): the parent's next H actions once per noise seed, each with its own Gaussian
    noise of std ``action_noise`` (drawn from the seed's ``action_noise`` stream), clipped to [-1, 1]."""
    future = actions[None].repeat(len(seeds), 1, 1)
    for i, seed in enumerate(seeds):
        rng = rng_for(seed, "action_noise")
        future[i] += torch.from_numpy(rng.normal(0.0, action_noise, future[i].shape).astype(np.float32))
    return future.clamp(-1.0, 1.0)


def predicted_obs(
    camera: str,
    instances: list[int],
    frames: torch.Tensor,
    states: np.ndarray,
    layout: dict[str, int],
    size: tuple[int, int],
) -> dict[str, np.ndarray]:
    """A rollout's T+1 model frames and raw states as dataset observations: the camera's images at the
    camera's (h, w) and the low-dimensional keys."""
    return {**predicted_images(camera, instances, frames, size), **state_obs(states, layout)}


def predicted_images(
    camera: str, instances: list[int], frames: torch.Tensor, size: tuple[int, int]
) -> dict[str, np.ndarray]:
    """Model frames (T, C, h, w) as the camera's dataset images at its (h, w)."""
    picture = obs_from_frames(F.interpolate(frames, size=size, mode="nearest"), instances)
    return {image_key(camera, kind): picture[kind] for kind in (RGB, DEPTH, SEG)}
