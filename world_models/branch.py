"""Branch stochastic futures from seed states with a trained world model.

From a seed demo's frames up to step k, N futures are sampled autoregressively (batched: one U-Net
call per denoising step for all N), each from its own noise seed derived from
(base seed, demo, k, i), under the seed's actions or Gaussian-perturbed ones. Same record, same
batch layout -> the same branch, bit for bit. Branches are written as ``source="world_model"`` demos
with ``parent``, ``branch_step``, ``noise_seed``, ``model`` (checkpoint hash) and the batch layout.
They carry the predicted frames of the world-model camera (resized to the camera's resolution) and the
predicted low-dimensional keys; their reset state is the parent's ``states[branch_step]``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from worldgen.dataset import (
    DatasetWriter,
    Demo,
    dataset_manifest,
    demo_index,
    demo_names,
    demo_record,
    open_dataset,
    read_demo,
    read_header,
    read_scene,
)
from worldgen.errors import CheckpointError
from worldgen.keys import DEPTH, RGB, SEG, image_key
from worldgen.manifest import rng_for

from .checkpoint import WORLD_MODELS, checkpoint_hash, read_checkpoint_meta
from .data import STATE_KEYS, Episode, camera_size, frame_channels, obs_from_frames, state_layout
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


def branch_dataset(
    dataset: str | Path,
    ckpt: str | Path,
    out: str | Path,
    per_seed: int | None = None,
    at_steps: list[int] | None = None,
    action_noise: float | None = None,
    horizon: int | None = None,
    base_seed: int = 0,
    progress=None,
    device: str = "cpu",
) -> DatasetWriter:
    """Copy the dataset's seed demos to ``out`` and append ``per_seed`` branches per seed and step, each
    ``horizon`` steps long. What is not given comes from the dataset's manifest (``generation.perturb`` and
    ``world_model.horizon``)."""
    sampler = WorldModelSampler(ckpt, device=device)
    meta = sampler.meta
    camera, instances, k = meta.camera, meta.instances, meta.context_frames
    dataset = Path(dataset)
    with open_dataset(dataset) as f:
        manifest = dataset_manifest(f)
        spec = manifest.generation.perturb
        per_seed = per_seed or spec.per_seed
        at_steps = at_steps or spec.at_steps
        action_noise = spec.action_noise if action_noise is None else action_noise
        horizon = horizon or manifest.world_model.horizon
        writer = DatasetWriter(out, read_header(f))
        seed_names = demo_names(f, "seed")
        for name in seed_names:
            if name not in writer.demos:
                writer.append(read_demo(f["data"][name]), name)
        done = {(r.parent, r.branch_step) for r in writer.records() if r.source == "world_model"}
        layout = state_layout(f["data"][seed_names[0]])
        h, w = camera_size(f["data"][seed_names[0]], camera)
        for name in seed_names:
            g, record = f["data"][name], demo_record(f, name)
            if not record.success:
                continue
            episode = Episode.load(g, camera, instances, meta.resolution)
            frames, actions = episode.frames, episode.actions
            t_count = actions.shape[0]
            for step in at_steps:
                if step + horizon > t_count or (name, step) in done:
                    continue
                context, past, state = episode.history(step, k)
                seeds = [noise_seed(base_seed, name, step, i) for i in range(per_seed)]
                future = noisy_futures(actions[step : step + horizon], seeds, action_noise)
                pred_frames, pred_states = sampler.rollout(context, past, state, future, seeds)
                for i in range(per_seed):
                    demo = Demo(
                        actions=future[i].numpy(),
                        states=np.zeros((horizon, 0)),
                        obs=predicted_obs(
                            camera,
                            instances,
                            torch.cat([frames[step : step + 1], pred_frames[i]]),
                            np.concatenate([state[None].numpy(), pred_states[i].numpy()]),
                            layout,
                            (h, w),
                        ),
                        rewards=np.zeros(horizon, np.float32),
                        dones=np.zeros(horizon, np.uint8),
                        attrs={
                            "seed": record.seed,
                            "success": False,
                            "source": "world_model",
                            "recipe": "perturb",
                            "parent": name,
                            "branch_step": step,
                            "noise_seed": seeds[i],
                            "model": sampler.hash,
                            "batch_layout": json.dumps({"size": per_seed, "index": i}),
                            "scene": read_scene(g),
                        },
                    )
                    writer.append(demo)
                if progress is not None:
                    progress(name, step, per_seed)
    writer.finalize()
    return writer
