from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = sorted((ROOT / "scenarios").glob("*.yaml"))


@pytest.fixture(params=SCENARIOS, ids=lambda p: p.stem)
def scenario_path(request) -> Path:
    return request.param


@pytest.fixture(scope="session")
def robomimic():
    """robomimic 0.3.0 is a test-only dependency, installed with --no-deps (see the Makefile): its
    dataset code needs torch and h5py; its torchvision-backed model code is never imported here."""
    import robomimic.utils.obs_utils as obs_utils
    from robomimic.utils.dataset import SequenceDataset

    return obs_utils, SequenceDataset


def read_with_robomimic(robomimic, path, low_dim, images=(), mask=None, seq_length=10):
    """robomimic's ``SequenceDataset`` over a worldgen file, as a robomimic training config opens it."""
    obs_utils, sequence_dataset = robomimic
    specs = {"low_dim": list(low_dim)}
    for key in images:
        specs.setdefault("depth" if key.endswith("_depth") else "rgb", []).append(key)
    obs_utils.initialize_obs_utils_with_obs_specs({"obs": specs})
    return sequence_dataset(
        hdf5_path=str(path),
        obs_keys=(*low_dim, *images),
        dataset_keys=("actions", "rewards", "dones"),
        load_next_obs=True,
        frame_stack=1,
        seq_length=seq_length,
        pad_frame_stack=True,
        pad_seq_length=True,
        get_pad_mask=False,
        goal_mode=None,
        hdf5_cache_mode="low_dim",
        hdf5_use_swmr=True,
        hdf5_normalize_obs=False,
        filter_by_attribute=mask,
    )
