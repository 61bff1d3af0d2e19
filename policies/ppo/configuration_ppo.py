from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from worldgen.errors import ArgumentError
from worldgen.manifest import Manifest

from ..pretrained import PolicyConfig


@dataclass
class PPOConfig(PolicyConfig):
    """PPO (stable-baselines3) on low-dimensional observations, in the simulator or in the world model.
    ``steps`` is the number of environment steps; the rest are SB3's PPO arguments."""

    steps: int = 20_000
    learning_rate: float = 3e-4
    batch_size: int = 64
    n_steps: int = 1024  # environment steps per rollout
    n_epochs: int = 10
    gamma: float = 0.99
    gae_lambda: float = 0.95
    ent_coef: float = 0.0
    net_arch: list[int] = field(default_factory=lambda: [64, 64])
    # Initial exploration std exp(-1) = 0.37: with std 1 most sampled actions clip to the box's faces.
    log_std_init: float = -1.0
    reward: str = "shaped"  # "shaped": task progress terms + success; "success": the predicate only

    @classmethod
    def from_manifest(cls, manifest: Manifest, **overrides: Any) -> PPOConfig:
        """The manifest's observation keys and action size, with the ``overrides`` that are not None."""
        fields = {"obs_keys": list(manifest.policy.obs_keys), "action_dim": manifest.embodiment.action_dim}
        return cls(**{**fields, **{k: v for k, v in overrides.items() if v is not None}})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.image_keys:
            raise ArgumentError("PPO here uses low-dimensional observations only; drop image_keys")
        if self.reward not in ("shaped", "success"):
            raise ArgumentError(f"reward {self.reward!r}: expected 'shaped' or 'success'")
