"""Behaviour cloning and RL policies trained on worldgen datasets (README: Policies).

One folder per policy in the LeRobot manner (``bc/``, ``diffusion/``, ``ppo/``: a configuration and a
modeling file each); every policy saves as ``config.json`` + ``model.safetensors`` + ``worldgen.json``
and acts through ``reset(seed)`` / ``select_action(observation)``.
"""

from __future__ import annotations

import json
from pathlib import Path

from worldgen.errors import CheckpointError

from .pretrained import CONFIG_NAME, PretrainedPolicy


def policy_class(kind: str) -> type[PretrainedPolicy]:
    if kind == "bc":
        from .bc import BCPolicy

        return BCPolicy
    if kind == "diffusion":
        from .diffusion import DiffusionPolicy

        return DiffusionPolicy
    if kind == "ppo":
        from .ppo import PPOPolicy

        return PPOPolicy
    raise CheckpointError(f"unknown policy type {kind!r}")


def load_policy(directory: str | Path) -> PretrainedPolicy:
    """Any policy folder written by ``save_pretrained``."""
    directory = Path(directory)
    config = directory / CONFIG_NAME
    if not config.is_file():
        raise CheckpointError(f"{directory}: not a policy folder (no {CONFIG_NAME})")
    return policy_class(json.loads(config.read_text())["type"]).from_pretrained(directory)
