"""World-model training data from a worldgen dataset: one camera's frames as multi-channel tensors
(RGB + depth + a mask per tracked object, in [-1, 1]), actions, and a low-dimensional state.

``frames_from_obs`` / ``obs_from_frames`` convert between the dataset's observations and model frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from worldgen.dataset import DatasetError, dataset_digest, demo_names, open_dataset, read_obs
from worldgen.keys import EEF_POS, GRIPPER_QPOS, IMAGE_KINDS, RGB, image_key

from .latents import WanFrameCodec

STATE_KEYS = (EEF_POS, GRIPPER_QPOS, "object")


def state_layout(group: h5py.Group) -> dict[str, int]:
    """How many columns each of STATE_KEYS has in a demo's observations (the model's state layout)."""
    return {key: int(group["obs"][key].shape[1]) for key in STATE_KEYS}


def camera_size(group: h5py.Group, camera: str) -> tuple[int, int]:
    """(height, width) of a demo's images from ``camera``."""
    return tuple(group["obs"][image_key(camera, RGB)].shape[1:3])


def frame_channels(instances: list[int]) -> int:
    """Channels of a model frame: RGB, depth, and one mask per tracked object."""
    return 4 + len(instances)


def frames_from_obs(
    rgb: np.ndarray, depth: np.ndarray, seg: np.ndarray, instances: list[int], resolution: tuple[int, int]
) -> torch.Tensor:
    """(T, H, W, 3) uint8, (T, H, W, 1) depth in [0, 1], (T, H, W, 1) ids -> (T, C, h, w) in [-1, 1]."""
    w, h = resolution
    color = torch.from_numpy(rgb).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    dep = torch.from_numpy(depth).permute(0, 3, 1, 2).float() * 2.0 - 1.0
    masks = [torch.from_numpy(seg[..., 0] == i).float()[:, None] * 2.0 - 1.0 for i in instances]
    dense = F.interpolate(torch.cat([color, dep], 1), size=(h, w), mode="area")
    parts = [dense]
    if masks:
        parts.append(F.interpolate(torch.cat(masks, 1), size=(h, w), mode="nearest"))
    return torch.cat(parts, 1).clamp(-1.0, 1.0)


def obs_from_frames(frames: torch.Tensor, instances: list[int]) -> dict[str, np.ndarray]:
    """Model frames (T, C, h, w) -> rgb uint8 (T, h, w, 3), depth (T, h, w, 1) in [0, 1], seg (T, h, w, 1)."""
    x = frames.detach().float().clamp(-1.0, 1.0)
    rgb = ((x[:, :3] + 1.0) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    depth = ((x[:, 3:4] + 1.0) / 2.0).permute(0, 2, 3, 1).numpy().astype(np.float32)
    seg = np.zeros((*x.shape[:1], *x.shape[2:], 1), dtype=np.uint8)
    if instances:
        logits = x[:, 4 : 4 + len(instances)]
        best = logits.argmax(1).numpy()
        on = (logits.max(1).values > 0).numpy()
        seg[..., 0] = np.where(on, np.asarray(instances, dtype=np.uint8)[best], 0)
    return {"rgb": rgb, "depth": depth, "seg": seg}


@dataclass
class Normalization:
    state_mean: list[float]
    state_std: list[float]
    action_mean: list[float]
    action_std: list[float]

    def normalize(self, state: torch.Tensor) -> torch.Tensor:
        return (state - _like(self.state_mean, state)) / _like(self.state_std, state)

    def denormalize(self, state: torch.Tensor) -> torch.Tensor:
        return state * _like(self.state_std, state) + _like(self.state_mean, state)

    def normalize_actions(self, actions: torch.Tensor) -> torch.Tensor:
        return (actions - _like(self.action_mean, actions)) / _like(self.action_std, actions)


def _like(values: list[float], x: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=x.dtype, device=x.device)


def low_dim_state(group: h5py.Group) -> np.ndarray:
    """(T+1, S) state: the observations, then the last next_obs."""
    obs = read_obs(group, STATE_KEYS)
    return np.concatenate([obs[key].astype(np.float32) for key in STATE_KEYS], axis=1)


@dataclass
class Episode:
    name: str
    frames: torch.Tensor  # (T+1, C, h, w)
    actions: torch.Tensor  # (T, A)
    states: torch.Tensor  # (T+1, S), raw

    @classmethod
    def load(
        cls, group: h5py.Group, camera: str, instances: list[int], resolution: tuple[int, int]
    ) -> Episode:
        """A dataset demo (h5py group) as model frames, actions and raw states."""
        obs = read_obs(group, [image_key(camera, kind) for kind in IMAGE_KINDS])
        full = {kind: obs[image_key(camera, kind)] for kind in IMAGE_KINDS}
        return cls(
            name=group.name.rsplit("/", 1)[-1],
            frames=frames_from_obs(full["rgb"], full["depth"], full["seg"], instances, resolution),
            actions=torch.from_numpy(group["actions"][()].astype(np.float32)),
            states=torch.from_numpy(low_dim_state(group)),
        )

    def history(self, step: int, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """What a rollout from ``step`` starts from: frames step-k+1..step (the first repeated before 0),
        the actions step-k..step-1 (zeros before 0), and the raw state at ``step``."""
        frames = self.frames[torch.clamp(torch.arange(step - k + 1, step + 1), min=0)]
        index = torch.arange(step - k, step)
        past = self.actions[index.clamp(min=0)].clone()
        past[index < 0] = 0.0
        return frames, past, self.states[step]


class WorldModelData:
    """Every demo of a mask held in memory (small datasets: tens of demos at 64 x 64).

    ``extra_masks``: masks added when the dataset has them, e.g. ``play`` (non-expert simulator
    rollouts: real dynamics, so world-model training data, never policy labels)."""

    def __init__(
        self,
        path: str | Path,
        mask: str,
        camera: str,
        resolution: tuple[int, int],
        instances: list[int],
        context_frames: int,
        extra_masks: tuple[str, ...] = (),
    ):
        self.path, self.mask, self.camera = Path(path), mask, camera
        self.instances, self.context = instances, context_frames
        self.episodes: list[Episode] = []
        with open_dataset(self.path) as f:
            names = demo_names(f, mask)
            for extra in extra_masks:
                if f"mask/{extra}" in f:
                    names += [n for n in demo_names(f, extra) if n not in names]
            self.data_hash = dataset_digest(f, names)
            for name in names:
                self.episodes.append(Episode.load(f["data"][name], camera, instances, resolution))
        if not self.episodes:
            raise DatasetError(f"{self.path}: mask {mask!r} holds no demos")
        self.index = [(e, t) for e, ep in enumerate(self.episodes) for t in range(ep.actions.shape[0])]
        self._stack()

    def _stack(self) -> None:
        """Every episode's frames, actions and states concatenated, with per-window gather indices, so a
        batch is a few index operations on whichever device the data lives on (see :meth:`window`)."""
        k = self.context
        frame_start = np.cumsum([0] + [ep.frames.shape[0] for ep in self.episodes])
        action_start = np.cumsum([0] + [ep.actions.shape[0] for ep in self.episodes])
        zero_action = int(action_start[-1])  # the appended zero row stands for actions before step 0
        frame_ids, action_ids, last_window = [], [], []
        for e, t in self.index:
            last_window.append(len(frame_ids) + self.episodes[e].actions.shape[0] - 1 - t)
            steps = np.arange(t - k + 1, t + 1)
            frame_ids.append(frame_start[e] + np.append(np.maximum(steps, 0), t + 1))
            action_ids.append(np.where(steps >= 0, action_start[e] + steps, zero_action))
        self.frames = torch.cat([ep.frames for ep in self.episodes])
        actions = torch.cat([ep.actions for ep in self.episodes])
        self.actions = torch.cat([actions, actions.new_zeros(1, actions.shape[1])])
        self.states = torch.cat([ep.states for ep in self.episodes])
        self.frame_ids = torch.from_numpy(np.stack(frame_ids))  # (windows, K+1): context, then next
        self.action_ids = torch.from_numpy(np.stack(action_ids))  # (windows, K)
        self.last_window = torch.tensor(last_window)  # (windows,): its episode's last window

    def encode(self, codec: WanFrameCodec) -> WorldModelData:
        """Replace every frame by its VAE latent, before :meth:`to`: the model then trains in the VAE's
        latent space."""
        for episode in self.episodes:
            episode.frames = codec.encode(episode.frames).cpu()
        self._stack()
        return self

    def to(self, device: str | torch.device) -> WorldModelData:
        """Hold the stacked tensors on ``device`` (a GPU trains without a per-step host copy)."""
        for name in ("frames", "actions", "states", "frame_ids", "action_ids", "last_window"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def normalization(self) -> Normalization:
        states = torch.cat([ep.states for ep in self.episodes])
        actions = torch.cat([ep.actions for ep in self.episodes])
        # Actions the experts never vary (a fixed gripper, zero rotation) keep a floor of 0.1, so the
        # perturbed actions of branches stay within a few units.
        return Normalization(
            states.mean(0).tolist(),
            states.std(0).clamp_min(1e-3).tolist(),
            actions.mean(0).tolist(),
            actions.std(0).clamp_min(0.1).tolist(),
        )

    def residual_std(self) -> float:
        """Std of the frame-to-frame change over every channel (at least 0.01), rounded to 4 digits: the
        scale of what the model generates."""
        residuals = torch.cat([ep.frames[1:] - ep.frames[:-1] for ep in self.episodes])
        return float(f"{max(residuals.std().item(), 0.01):.4g}")

    def window(self, episode: Episode, t: int, state_horizon: int = 1) -> dict[str, torch.Tensor]:
        """Context frames t-K+1..t (the first frame repeated before 0), actions t-K+1..t (zeros before 0),
        the state at t, and the targets: frame t+1, and the states after steps t..t+H-1 with each step's
        actions (the episode's last step repeated past its end, where ``rollout_valid`` is false)."""
        context, past, state = episode.history(t, self.context)
        last = episode.actions.shape[0] - 1
        steps = [min(t + h, last) for h in range(state_horizon)]

        def actions_through(s: int) -> torch.Tensor:  # actions s-K+1..s
            return torch.cat([episode.history(s, self.context)[1][1:], episode.actions[s : s + 1]])

        actions = [actions_through(s) for s in steps]
        return {
            "context": context,
            "actions": actions[0],
            "state": state,
            "next_frame": episode.frames[t + 1],
            "rollout_actions": torch.stack(actions),
            "rollout_states": torch.cat([state[None], episode.states[[s + 1 for s in steps]]]),
            "rollout_valid": torch.tensor([t + h <= last for h in range(state_horizon)]),
        }

    def batch(self, size: int, generator: torch.Generator, state_horizon: int = 1) -> dict[str, torch.Tensor]:
        """``size`` windows drawn with ``generator``, as :meth:`window` gives them, stacked; on the data's
        device (the generator's device must be the data's or the CPU). With each, the ``state_horizon``
        steps from it that the state head is trained to roll out: ``rollout_actions`` (B, H, K, A),
        ``rollout_states`` (B, H+1, S) and ``rollout_valid`` (B, H), false past the episode's end."""
        picks = torch.randint(len(self.index), (size,), generator=generator, device=generator.device)
        picks = picks.to(self.frame_ids.device)
        ids = self.frame_ids[picks]
        frames = self.frames[ids]
        last = self.last_window[picks][:, None]
        ahead = picks[:, None] + torch.arange(state_horizon, device=picks.device)
        windows = torch.minimum(ahead, last)
        window_frames = self.frame_ids[windows]  # (B, H, K+1): a state shares its frame's index
        return {
            "context": frames[:, :-1],
            "actions": self.actions[self.action_ids[picks]],
            "state": self.states[ids[:, -2]],
            "next_frame": frames[:, -1],
            "rollout_actions": self.actions[self.action_ids[windows]],
            "rollout_states": torch.cat([self.states[ids[:, -2:-1]], self.states[window_frames[..., -1]]], 1),
            "rollout_valid": ahead <= last,
        }
