from __future__ import annotations

from dataclasses import dataclass, field

from ..pretrained import PolicyConfig


@dataclass
class BCConfig(PolicyConfig):
    """Behaviour cloning (robomimic's BC): an MLP from encoded observations to actions, trained with
    mean squared error. ``bc-mlp`` uses low-dimensional keys only; ``bc-image`` adds camera keys
    (``<camera>_rgb`` / ``<camera>_depth``) with proprioception in ``obs_keys``."""

    hidden_dims: list[int] = field(default_factory=lambda: [512, 512])
    dropout: float = 0.0
