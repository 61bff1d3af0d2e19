"""Behaviour cloning: observations -> encoder -> MLP -> tanh -> a chunk of ``horizon`` actions in [-1, 1].

With ``horizon`` > 1 the first ``n_action_steps`` actions of each prediction are executed before the
policy looks again (action chunking); the default predicts and executes one action per step.
"""

from __future__ import annotations

import torch
from torch import nn

from ..observation import ObservationEncoder
from ..pretrained import PretrainedPolicy
from .configuration_bc import BCConfig


def mlp(sizes: list[int], dropout: float = 0.0) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.Mish())
            if dropout:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class BCPolicy(PretrainedPolicy):
    name = "bc"
    config_class = BCConfig

    def __init__(self, config: BCConfig):
        super().__init__(config)
        self.encoder = ObservationEncoder(config)
        out = config.horizon * config.action_dim
        self.head = mlp([self.encoder.out_dim, *config.hidden_dims, out], config.dropout)

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, horizon, action_dim) actions."""
        c = self.config
        return torch.tanh(self.head(self.encoder(obs))).view(-1, c.horizon, c.action_dim)

    def compute_loss(self, batch: dict) -> torch.Tensor:
        error = (self(batch["obs"]) - batch["action"]).pow(2).mean(-1)
        keep = (~batch["action_is_pad"]).float()
        return (error * keep).sum() / keep.sum().clamp_min(1.0)

    def predict_chunk(self, obs: dict[str, torch.Tensor], generator: torch.Generator) -> torch.Tensor:
        return self(obs)[0]
