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
