"""Training samples for policies from a worldgen (robomimic-layout) HDF5 dataset.

``PolicyDataset`` holds the chosen demos in memory, each observation key concatenated over demos. A
sample is one time step ``t`` of one demo:

- ``obs[key]``: (n_obs_steps, ...) the observations at t - n_obs_steps + 1 .. t, clamped to the demo's
  first step (robomimic's and LeRobot's padding of the first frames);
- ``action``: (horizon, action_dim) the actions at t .. t + horizon - 1, the last action repeated past
  the demo's end, where ``action_is_pad`` is true.

Demos are chosen by a mask (``train``, ``seed``, ``synthetic``, ``passed``, ...) and/or by name.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from worldgen.dataset import DatasetError, dataset_digest, demo_names, demo_record, open_dataset


class PolicyDataset:
    def __init__(
        self,
        path: str | Path,
        obs_keys: list[str],
        image_keys: list[str] | None = None,
        n_obs_steps: int = 1,
        horizon: int = 1,
        mask: str | None = None,
        demos: list[str] | None = None,
    ):
        self.path = Path(path)
        self.obs_keys, self.image_keys = list(obs_keys), list(image_keys or [])
        self.n_obs_steps, self.horizon = n_obs_steps, horizon
        keys = [*self.obs_keys, *self.image_keys]
        with open_dataset(self.path) as f:
            names = demo_names(f, mask)
            if demos is not None:
                chosen = set(demos)
                names = [n for n in names if n in chosen]
            records = [r for r in (demo_record(f, n) for n in names) if r.num_samples > 0]
            names = [r.name for r in records]
            if not names:
                raise DatasetError(
                    f"{self.path}: no demos in mask {mask!r}" + (" of those named" * bool(demos))
                )
            first = f["data"][names[0]]
            missing = [k for k in keys if k not in first["obs"]]
            if missing:
                raise DatasetError(
                    f"{self.path}: {names[0]} has no observation keys {missing}; "
                    f"it has {sorted(first['obs'])}"
                )
            self.names = names
            self.data_hash = dataset_digest(f, names)
            self.seeds = sorted({r.seed for r in records})
            self.sources = sorted({r.source for r in records})
            self.lengths = np.array([r.num_samples for r in records])
            # Made by a generation recipe, in the world model or in the simulator (a recipe's twin).
            self.generated = np.array([r.recipe is not None for r in records])
            self.obs = {k: np.concatenate([f["data"][n]["obs"][k][()] for n in names]) for k in keys}
            self.actions = np.concatenate([f["data"][n]["actions"][()] for n in names]).astype(np.float32)
        self.starts = np.concatenate([[0], np.cumsum(self.lengths)[:-1]])
        self.demo_of = np.repeat(np.arange(len(names)), self.lengths)
        self.low_dim_shapes = {k: int(self.obs[k].shape[-1]) for k in self.obs_keys}

    def __len__(self) -> int:
        return int(self.lengths.sum())

    @property
    def action_dim(self) -> int:
        return int(self.actions.shape[1])

    def low_dim(self) -> dict[str, torch.Tensor]:
        """Every sample's low-dimensional observation (for normalisation statistics)."""
        return {k: torch.from_numpy(self.obs[k]) for k in self.obs_keys}

    def get(self, index: np.ndarray) -> dict[str, torch.Tensor | dict[str, torch.Tensor]]:
        """Samples at flat indices (into the concatenated demos)."""
        index = np.asarray(index)
        demo = self.demo_of[index]
        start, end = self.starts[demo], self.starts[demo] + self.lengths[demo] - 1
        back = np.arange(-self.n_obs_steps + 1, 1)
        obs_index = np.maximum(index[:, None] + back[None], start[:, None])
        ahead = index[:, None] + np.arange(self.horizon)[None]
        act_index = np.minimum(ahead, end[:, None])
        return {
            "obs": {k: torch.from_numpy(v[obs_index]) for k, v in self.obs.items()},
            "action": torch.from_numpy(self.actions[act_index]),
            "action_is_pad": torch.from_numpy(ahead > end[:, None]),
        }

    def sample(
        self, batch_size: int, generator: torch.Generator, generated_share: float | None = None
    ) -> dict:
        """A batch of samples drawn uniformly; with ``generated_share``, that share of the batch (rounded)
        from the generated demos' samples and the rest from the others' (uniform within each), so a few
        seed demos are not outweighed by many generated ones. Without generated demos (or without others)
        the share does not apply."""
        generated = self.generated[self.demo_of]
        if generated_share is None or generated.all() or not generated.any():
            index = torch.randint(0, len(self), (batch_size,), generator=generator).numpy()
            return self.get(index)
        pools = np.flatnonzero(generated), np.flatnonzero(~generated)
        n_generated = int(round(batch_size * generated_share))
        index = np.concatenate(
            [
                pool[torch.randint(0, len(pool), (count,), generator=generator).numpy()]
                for pool, count in zip(pools, (n_generated, batch_size - n_generated), strict=True)
            ]
        )
        return self.get(index)
