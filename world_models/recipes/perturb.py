"""``perturb``: the negative control. World-model futures from the seed demos' states under the parent's own
actions plus Gaussian noise, labelled with those actions.

From each seed demo at each start step, ``per_seed`` futures of ``horizon`` steps are sampled (one model
call per denoising step for all of them), each from its own noise seed. They add samples without
information (the labels are the noisy actions, not corrections), so they are never judged: every one is
kept, and there is no simulator twin. Branches record ``parent``, ``branch_step``, ``noise_seed``,
``model`` and the batch layout, so they regenerate bit for bit; their reset state is the parent's
``states[branch_step]``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from worldgen.dataset import Demo, DemoRecord, open_dataset
from worldgen.manifest import Manifest

from ..data import Episode, camera_size, state_layout
from ..sampler import WorldModelSampler, noise_seed, noisy_futures, predicted_obs
from .base import Parent, Recipe, Task, register, seed_parents, spec_from_manifest

RECIPE = "perturb"


@dataclass(frozen=True)
class PerturbSpec:
    """``per_seed`` futures of ``horizon`` steps from each seed demo at each of ``start_steps``, under its
    actions with noise of std ``action_noise`` (normalised units)."""

    per_seed: int
    start_steps: tuple[int, ...]
    action_noise: float
    horizon: int
    base_seed: int

    @classmethod
    def from_manifest(cls, manifest: Manifest, **overrides: Any) -> PerturbSpec:
        """The manifest's ``generation.perturb`` and ``world_model.horizon``; ``overrides`` not None win."""
        recipe = manifest.generation.perturb
        values = {
            "per_seed": recipe.per_seed,
            "start_steps": tuple(recipe.at_steps),
            "action_noise": recipe.action_noise,
            "horizon": manifest.world_model.horizon,
            "base_seed": manifest.seeds.base_seed,
        }
        return spec_from_manifest(cls, values, overrides)


class PerturbAttempts:
    """The seed demos' frames and a world model, loaded once; also the body of a Ray actor."""

    def __init__(self, dataset: str | Path, ckpt: str | Path, spec: PerturbSpec, device: str = "cpu"):
        self.sampler, self.spec = WorldModelSampler(ckpt, device=device), spec
        meta = self.sampler.meta
        with open_dataset(dataset) as f:
            parents = seed_parents(f)
            self.episodes = {
                p.name: Episode.load(f["data"][p.name], meta.camera, meta.instances, meta.resolution)
                for p in parents
            }
            self.layout = state_layout(f["data"][parents[0].name])
            self.cam_hw = camera_size(f["data"][parents[0].name], meta.camera)
        self.parents = {p.name: p for p in parents}

    def run(self, task: tuple[str, int]) -> tuple[tuple[str, int], list[Demo]]:
        name, step = task
        spec, sampler, meta = self.spec, self.sampler, self.sampler.meta
        parent, episode = self.parents[name], self.episodes[name]
        context, past, state = episode.history(step, meta.context_frames)
        seeds = [noise_seed(spec.base_seed, name, step, i) for i in range(spec.per_seed)]
        future = noisy_futures(episode.actions[step : step + spec.horizon], seeds, spec.action_noise)
        frames, states = sampler.rollout(context, past, state, future, seeds)
        demos = []
        for i, seed in enumerate(seeds):
            attrs = {
                "seed": parent.seed,
                "success": False,
                "source": "world_model",
                "recipe": RECIPE,
                "parent": name,
                "branch_step": step,
                "noise_seed": seed,
                "model": sampler.hash,
                "batch_layout": json.dumps({"size": spec.per_seed, "index": i}),
                "scene": parent.demo.attrs.get("scene", "{}"),
            }
            obs = predicted_obs(
                meta.camera,
                meta.instances,
                torch.cat([episode.frames[step : step + 1], frames[i]]),
                np.concatenate([state[None].numpy(), states[i].numpy()]),
                self.layout,
                self.cam_hw,
            )
            demos.append(
                Demo(
                    actions=future[i].numpy(),
                    states=np.zeros((spec.horizon, 0)),
                    obs=obs,
                    rewards=np.zeros(spec.horizon, np.float32),
                    dones=np.zeros(spec.horizon, np.uint8),
                    attrs=attrs,
                )
            )
        return task, demos


@register
class Perturb(Recipe):
    name = RECIPE
    spec_class = PerturbSpec
    summary = "the negative control: the parent's actions with noise, every branch kept"
    keeps_every_attempt = True
    world_model_worker = PerturbAttempts

    def tasks(self, spec: PerturbSpec, parents: list[Parent]) -> list[Task]:
        # Only starts with a whole horizon of the parent's actions ahead of them.
        return [
            (p.name, k) for p in parents for k in spec.start_steps if k + spec.horizon <= p.demo.num_samples
        ]

    def task_of(self, spec: PerturbSpec, record: DemoRecord) -> Task | None:
        return (record.parent, record.branch_step) if record.recipe == RECIPE else None

    def task_size(self, spec: PerturbSpec, task: Task) -> int:
        return spec.per_seed

    def task_label(self, task: Task) -> str:
        return f"{task[0]} from step {task[1]}"
