from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = sorted((ROOT / "scenarios").glob("*.yaml"))
PUSH = ROOT / "scenarios" / "push_to_target.yaml"


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


# A tiny real pipeline shared by the generation and export tests: 2 push_to_target seed demos with
# cameras, a 6-step narrow world model trained on them and their play rollouts, and recovery attempts in it.


@pytest.fixture(scope="session")
def push():
    from worldgen.manifest import load_manifest

    return load_manifest(PUSH)


@pytest.fixture(scope="session")
def seeds(tmp_path_factory):
    from worldgen.pipeline import run_seed_stage

    path = tmp_path_factory.mktemp("gen") / "seeds.hdf5"
    run_seed_stage(PUSH, path, n=2)
    return path


@pytest.fixture(scope="session")
def world_model(seeds, push, tmp_path_factory):
    from worldgen.pipeline import run_play_stage

    from world_models.train import train_world_model

    root = tmp_path_factory.mktemp("wm")
    train = root / "wm_train.hdf5"
    # A narrow U-Net (world_model.channels rides in the training data's manifest): these tests need the
    # pipeline's plumbing, not fidelity, and sampling the default width at 64 x 64 made most of their set-up.
    narrow = push.world_model.model_copy(update={"channels": (16, 32, 32)})
    run_play_stage(push.model_copy(update={"world_model": narrow}), seeds, train, [0.3])
    ckpt = root / "ckpt"
    train_world_model(train, ckpt, steps=6, batch_size=4, checkpoint_every=6)
    return train, ckpt


@pytest.fixture(scope="session")
def recovered(seeds, world_model, tmp_path_factory):
    """The seed demos and 8 recovery attempts generated in the world model, in one file."""
    from worldgen.manifest import load_manifest

    from world_models.recipes import generate_in_world_model, recipe_spec

    out = tmp_path_factory.mktemp("recovered") / "recover.hdf5"
    spec = recipe_spec(
        "recover", load_manifest(PUSH), per_seed=2, start_steps=(0, 20), action_noise=0.2, success_margin=0.0
    )
    generate_in_world_model("recover", seeds, world_model[1], out, spec)
    return out


@pytest.fixture(scope="session")
def first_run(tmp_path_factory):
    """``worldgen run --profile tiny`` on push_to_target, every stage: (folder, run record, progress lines).
    Tests that change a run work on a copy."""
    from worldgen.apps.run import run_pipeline
    from worldgen.manifest import load_manifest

    folder = tmp_path_factory.mktemp("run") / "push"
    lines: list[str] = []
    record = run_pipeline(load_manifest(PUSH), folder, profile="tiny", say=lines.append)
    return folder, record, lines
