"""``train_policy``: behaviour cloning (``bc-mlp``, ``bc-image``, ``diffusion``) from a dataset mask, or
PPO (``ppo``) in the manifest's simulated environment. Defaults come from the manifest's ``policy``
block; every run is seeded and the same inputs give the same weights on the same machine."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers.optimization import get_scheduler
from worldgen.data_parallel import DataParallel
from worldgen.dataset import DatasetError, dataset_manifest, open_dataset
from worldgen.errors import ArgumentError
from worldgen.keys import EEF_POS, GRIPPER_QPOS, RGB, image_key
from worldgen.manifest import BC_ALGORITHMS, Manifest
from worldgen.training_log import TrainingLog

from .bc import BCConfig, BCPolicy
from .datasets import PolicyDataset
from .diffusion import DiffusionConfig, DiffusionPolicy
from .observation import low_dim_features
from .pretrained import PolicyConfig, PretrainedPolicy

# The policy class of each behaviour-cloning recipe named in worldgen.manifest.BC_ALGORITHMS.
BC_POLICIES = {"bc-mlp": BCPolicy, "bc-image": BCPolicy, "diffusion": DiffusionPolicy}
PROPRIOCEPTION = [EEF_POS, GRIPPER_QPOS]


def default_config(algo: str, manifest: Manifest, **overrides: Any) -> PolicyConfig:
    """The config an algorithm gets from a manifest; ``overrides`` (not None) win."""
    spec = manifest.policy
    base: dict[str, Any] = {"obs_keys": list(spec.obs_keys), "action_dim": manifest.embodiment.action_dim}
    if algo == "bc-image":
        base["obs_keys"] = PROPRIOCEPTION
        base["image_keys"] = [image_key(manifest.world_model_camera, RGB)]
    if spec.algorithm == algo:  # the manifest's budget is for its own algorithm
        base.update(steps=spec.train_steps, batch_size=spec.batch_size, learning_rate=spec.learning_rate)
    base["generated_share"] = spec.generated_share
    base.update({k: v for k, v in overrides.items() if v is not None})
    config_class = DiffusionConfig if algo == "diffusion" else BCConfig
    return config_class(**base)


def evaluate_loss(policy: PretrainedPolicy, data: PolicyDataset, batch_size: int = 512) -> float:
    """Mean loss over every sample of ``data`` (seeded, so diffusion's noise is the same each time)."""
    policy.eval()
    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            index = np.arange(start, min(start + batch_size, len(data)))
            total += float(policy.compute_loss(data.get(index))) * len(index)
            count += len(index)
    torch.random.set_rng_state(state)
    policy.train()
    return total / max(count, 1)


def train_bc(
    dataset: str | Path,
    out: str | Path,
    algo: str = "bc-mlp",
    mask: str | None = "train",
    demos: list[str] | None = None,
    progress: Callable[[int, int, float], None] | None = None,
    manifest: Manifest | None = None,
    log_dir: str | Path | None = None,
    wandb_project: str | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Train a behaviour-cloning policy on the demos of ``mask`` (and/or ``demos``); write ``out``.
    ``manifest``: the one to train for (its policy section), when not the dataset's own; it must describe
    the scene the demos were recorded in. ``log_dir``: TensorBoard event files (loss, learning rate),
    mirrored to Weights & Biases project ``wandb_project`` when given."""
    if algo not in BC_POLICIES:
        raise ArgumentError(f"algo {algo!r}: expected one of {list(BC_ALGORITHMS)}")
    dataset, out = Path(dataset), Path(out)
    with open_dataset(dataset) as f:
        recorded = dataset_manifest(f)
        has_valid = "mask/valid" in f and mask == "train" and demos is None
    if manifest is None:
        manifest = recorded
    elif manifest.scene_hash() != recorded.scene_hash():
        raise DatasetError(f"{dataset}: recorded for another scene than manifest {manifest.name!r} describes")
    config = default_config(algo, manifest, **overrides)
    data = PolicyDataset(
        dataset, config.obs_keys, config.image_keys, config.n_obs_steps, config.horizon, mask, demos
    )
    config.low_dim_shapes = data.low_dim_shapes
    if data.action_dim != config.action_dim:
        raise DatasetError(
            f"{dataset}: actions have {data.action_dim} dimensions, the manifest says {config.action_dim}"
        )
    torch.manual_seed(config.seed)
    policy = BC_POLICIES[algo](config)
    if config.obs_keys:
        policy.encoder.set_statistics(low_dim_features(data.low_dim(), config.obs_keys))
    optimizer = torch.optim.AdamW(
        policy.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    lr_schedule = get_scheduler(
        "cosine", optimizer, num_warmup_steps=min(200, config.steps // 10), num_training_steps=config.steps
    )
    # Under torchrun / accelerate launch: every rank draws the global batch and trains on its share.
    parallel = DataParallel()
    parallel.check_batch(config.batch_size)
    generator = torch.Generator().manual_seed(config.seed)
    policy.train()
    started, losses = time.perf_counter(), []
    log = TrainingLog(log_dir if parallel.main else None, wandb_project)
    for step in range(1, config.steps + 1):
        batch = data.sample(config.batch_size, generator, config.generated_share)
        loss = policy.compute_loss(parallel.share(batch))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        parallel.average_gradients(policy.parameters())
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 10.0)
        optimizer.step()
        lr_schedule.step()
        losses.append(parallel.mean(loss.item()))
        if (step % 50 == 0 or step == config.steps) and parallel.main:
            mean_loss = float(np.mean(losses[-50:]))
            rate = step * config.batch_size / (time.perf_counter() - started)
            log.scalars(
                step,
                {
                    "train/loss": mean_loss,
                    "train/lr": lr_schedule.get_last_lr()[0],
                    "train/samples_per_s": rate,
                },
            )
            if progress is not None:
                progress(step, config.steps, mean_loss)
    log.close()
    meta: dict[str, Any] = {
        "algo": algo,
        "dataset": str(dataset.resolve()),
        "mask": mask,
        "demos": len(data.names),
        "samples": len(data),
        "sources": data.sources,
        "data_hash": data.data_hash,
        "manifest": manifest.name,
        "manifest_hash": manifest.content_hash(),
        "training_seeds": data.seeds,
        "train_loss": float(np.mean(losses[-100:])),
        "loss_curve": losses[::10],  # the global batch's loss every 10 steps from the first
        "data_parallel_ranks": parallel.world,
        "seconds": round(time.perf_counter() - started, 1),
    }
    if has_valid and parallel.main:
        valid = PolicyDataset(
            dataset, config.obs_keys, config.image_keys, config.n_obs_steps, config.horizon, "valid"
        )
        meta["valid_loss"] = evaluate_loss(policy, valid)
    if parallel.main:
        policy.eval().save_pretrained(out, meta)
    parallel.close()
    return meta
