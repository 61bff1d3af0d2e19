"""The base every policy shares: a config dataclass saved as ``config.json`` beside ``model.safetensors``
(the LeRobot ``PreTrainedPolicy`` layout), and the ``reset`` / ``select_action`` interface the closed-loop
evaluation drives.

A policy folder::

    config.json          {"type": "bc" | "diffusion" | "ppo", ...the config's fields}
    model.safetensors    weights and normalisation statistics (buffers)
    worldgen.json        how it was trained: dataset, mask, data hash, manifest hash, training seeds
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from safetensors.torch import load_model, save_model
from torch import nn
from worldgen.errors import CheckpointError
from worldgen.files import staging_folder, swap_in_folder
from worldgen.keys import EEF_POS

CONFIG_NAME, WEIGHTS_NAME, META_NAME = "config.json", "model.safetensors", "worldgen.json"


@dataclass
class PolicyConfig:
    """Fields every policy has. ``low_dim_shapes``/``image_shapes`` are filled from the training data."""

    obs_keys: list[str] = field(default_factory=lambda: [EEF_POS, "object"])
    image_keys: list[str] = field(default_factory=list)
    low_dim_shapes: dict[str, int] = field(default_factory=dict)
    image_size: int = 64  # images are resized to image_size x image_size before the encoder
    action_dim: int = 7
    n_obs_steps: int = 1  # observations the policy sees: the current one and n_obs_steps - 1 before it
    horizon: int = 1  # actions predicted per inference
    n_action_steps: int = 1  # of those, how many are executed before predicting again
    # training
    steps: int = 3000
    batch_size: int = 256
    learning_rate: float = 1e-3
    weight_decay: float = 1e-6
    seed: int = 0
    # The share of each batch drawn from generated (world-model) demos; None: uniform over samples.
    generated_share: float | None = None

    def __post_init__(self) -> None:
        if self.n_action_steps > self.horizon:
            raise ValueError(f"n_action_steps ({self.n_action_steps}) > horizon ({self.horizon})")
        if not self.obs_keys and not self.image_keys:
            raise ValueError("a policy needs at least one observation key")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PolicyConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known - {"type"})
        if unknown:
            raise CheckpointError(f"unknown {cls.__name__} fields {unknown}")
        return cls(**{k: v for k, v in data.items() if k in known})


class PretrainedPolicy(nn.Module):
    """``save_pretrained`` / ``from_pretrained`` and the closed-loop interface."""

    name: ClassVar[str]
    config_class: ClassVar[type[PolicyConfig]]

    def __init__(self, config: PolicyConfig):
        super().__init__()
        self.config = config

    # -- the closed-loop interface ----------------------------------------------------------------

    @property
    def needs_cameras(self) -> bool:
        return bool(self.config.image_keys)

    @property
    def observation_keys(self) -> list[str]:
        return [*self.config.obs_keys, *self.config.image_keys]

    def reset(self, seed: int = 0) -> None:
        """Forget the observation history and queued actions; seed any sampling."""
        self._history: deque[dict[str, torch.Tensor]] = deque(maxlen=self.config.n_obs_steps)
        self._queue: deque[np.ndarray] = deque()
        self._generator = torch.Generator().manual_seed(seed)

    def predict_chunk(self, obs: dict[str, torch.Tensor], generator: torch.Generator) -> torch.Tensor:
        """(1, n_obs_steps, ...) observation history -> (horizon, action_dim) actions from now on."""
        raise NotImplementedError

    @torch.no_grad()
    def select_action(self, observation: dict[str, np.ndarray]) -> np.ndarray:
        """The next action; a new chunk is predicted once the queued ``n_action_steps`` are used up."""
        if not hasattr(self, "_queue"):
            self.reset()
        keys = self.observation_keys
        self._history.append({k: torch.from_numpy(np.asarray(observation[k]))[None] for k in keys})
        if not self._queue:
            while len(self._history) < self.config.n_obs_steps:  # repeat the first observation
                self._history.appendleft(self._history[0])
            obs = {k: torch.stack([h[k] for h in self._history], 1) for k in keys}
            chunk = self.predict_chunk(obs, self._generator)
            self._queue.extend(chunk[: self.config.n_action_steps].numpy())
        return self._queue.popleft().astype(np.float32)

    # -- files ------------------------------------------------------------------------------------

    def save_pretrained(self, directory: str | Path, meta: dict[str, Any] | None = None) -> Path:
        """Write the folder beside any old one, then swap it in, so a crash leaves one or the other."""
        directory = Path(directory)
        staging = staging_folder(directory)
        config = {"type": self.name, **asdict(self.config)}
        (staging / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        save_model(self, str(staging / WEIGHTS_NAME))
        if meta is not None:
            (staging / META_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        swap_in_folder(staging, directory)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> PretrainedPolicy:
        directory = Path(directory)
        data = json.loads((directory / CONFIG_NAME).read_text())
        policy = cls(cls.config_class.from_dict(data))
        load_model(policy, str(directory / WEIGHTS_NAME))
        return policy.eval()


def policy_meta(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / META_NAME
    return json.loads(path.read_text()) if path.exists() else {}
