"""The HDF5 dataset: layout, masks, crash safety and resume, worker parity, robomimic compatibility."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from worldgen.apps.cli import main
from worldgen.dataset import (
    DatasetError,
    DatasetReader,
    DatasetWriter,
    Demo,
    demo_names,
    demo_record,
    open_dataset,
    read_demo,
    read_obs,
)
from worldgen.pipeline import run_seed_stage

from .conftest import ROOT, read_with_robomimic

PICK = ROOT / "scenarios" / "pick_cube.yaml"
PUSH = ROOT / "scenarios" / "push_to_target.yaml"


@pytest.fixture(scope="module")
def pick_dataset(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pick") / "pick.hdf5"
    run_seed_stage(PICK, path, n=3)
    return path


def _arrays(path: Path) -> dict[str, np.ndarray]:
    out = {}
    with h5py.File(path, "r") as f:

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and name.startswith("data/"):
                out[name] = obj[()]

        f.visititems(visit)
    return out


def test_layout_follows_robomimic_and_isaac_lab(pick_dataset):
    with h5py.File(pick_dataset, "r") as f:
        data = f["data"]
        env_args = json.loads(data.attrs["env_args"])
        assert env_args["type"] == 2 and env_args["env_name"] == "worldgen/pick_cube"
        info = json.loads(data.attrs["worldgen"])
        assert len(info["manifest_hash"]) == 64 and "pick_cube" in info["manifest"]
        names = sorted(data)
        assert names == ["demo_0", "demo_1", "demo_2"]
        total = 0
        for name in names:
            demo = data[name]
            t = int(demo.attrs["num_samples"])
            total += t
            assert demo["actions"].shape == (t, 7) and demo["actions"].dtype == np.float32
            assert np.abs(demo["actions"][()]).max() <= 1.0
            assert (
                demo["states"].shape[0] == t and demo["rewards"].shape == (t,) and demo["dones"].shape == (t,)
            )
            for key in demo["obs"]:
                assert (
                    demo["obs"][key].shape[0] == t and demo["next_obs"][key].shape == demo["obs"][key].shape
                )
                assert np.array_equal(demo["obs"][key][1:], demo["next_obs"][key][:-1])
            assert demo["obs/front_left_rgb"].dtype == np.uint8 and demo["obs/front_left_rgb"].shape[1:] == (
                96,
                96,
                3,
            )
            assert (
                demo["obs/front_left_depth"].dtype == np.float32
                and demo["obs/front_left_depth"].shape[-1] == 1
            )
            assert demo["obs/front_left_rgb"].chunks == (1, 96, 96, 3)
            assert demo["obs/front_left_rgb"].compression == "gzip"
            assert demo.attrs["source"] == "sim" and bool(demo.attrs["success"])
            assert int(demo.attrs["seed"]) == int(name.split("_")[1])
            assert json.loads(demo.attrs["scene"])["seed"] == int(demo.attrs["seed"])
        assert int(data.attrs["total"]) == total
        assert json.loads(data.attrs["depth_range"])["front_left"] == [0.02, 3.0]
        masks = {k: sorted(x.decode() for x in f[f"mask/{k}"][()]) for k in f["mask"]}
        assert masks["seed"] == names and masks["synthetic"] == [] and masks["passed"] == []
        assert sorted(masks["train"] + masks["valid"]) == names and masks["valid"]
    assert not Path(str(pick_dataset) + ".parts").exists()


def test_reader_and_inspect(pick_dataset, tmp_path, capsys):
    with DatasetReader(pick_dataset) as reader:
        assert [n for n, _ in reader.iter_demos(mask="valid")] == reader.mask("valid")
        assert reader.summary()["demos"] == 3
        with pytest.raises(DatasetError, match="no mask"):
            reader.mask("nope")
    out = tmp_path / "pics"
    assert main(["inspect", str(pick_dataset), "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "3 demos" in text and "success 100%" in text
    assert sorted(p.name for p in out.iterdir()) == [
        f"demo_{i}.{e}" for i in range(3) for e in ("gif", "png")
    ]


def test_robomimic_sequence_dataset_reads_it(pick_dataset, robomimic):
    low_dim = ["robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos", "object"]
    for mask in ("train", "valid"):
        images = ("front_left_rgb", "front_left_depth")
        ds = read_with_robomimic(robomimic, pick_dataset, low_dim, images, mask=mask)
        assert len(ds) > 0
        item = ds[0]
        assert item["actions"].shape == (10, 7)
        assert item["obs"]["front_left_rgb"].shape[-3:] in ((96, 96, 3), (3, 96, 96))
        assert item["next_obs"]["robot0_eef_pos"].shape == (10, 3)


def _demo(t: int, seed: int) -> Demo:
    rng = np.random.default_rng(seed)
    return Demo(
        actions=rng.uniform(-1, 1, (t, 7)).astype(np.float32),
        states=rng.normal(size=(t, 5)),
        obs={
            "cam_rgb": rng.integers(0, 255, (t + 1, 8, 8, 3), dtype=np.uint8),
            "robot0_eef_pos": rng.normal(size=(t + 1, 3)).astype(np.float32),
        },
        rewards=np.zeros(t, np.float32),
        dones=np.zeros(t, np.uint8),
        attrs={"seed": seed, "success": True, "source": "sim"},
    )


HEADER = {
    "env_args": {"env_name": "x", "type": 2, "env_kwargs": {}},
    "worldgen": {"manifest_hash": "a" * 64},
    "depth_range": {},
    "segmentation": [],
}


def test_writer_resumes_and_appends_to_a_finalized_file(tmp_path):
    path = tmp_path / "d.hdf5"
    writer = DatasetWriter(path, HEADER)
    writer.append(_demo(5, 0), "demo_0")
    writer.append(_demo(6, 1), "demo_1")
    with h5py.File(path, "r") as f:  # in progress: external links, readable
        assert isinstance(f["data"].get("demo_0", getlink=True), h5py.ExternalLink)
        assert f["data/demo_1/actions"].shape == (6, 7)
    writer.finalize()
    again = DatasetWriter(path, HEADER)
    assert again.done_seeds() == {0, 1}
    again.append(_demo(4, 2), "demo_2")
    again.discard(3, "simulation diverged: test")
    again.finalize()
    with DatasetReader(path) as reader:
        assert reader.names == ["demo_0", "demo_1", "demo_2"]
        assert reader.data["demo_0/actions"].shape == (5, 7)
        assert reader.attr_json("discarded") == [{"reason": "simulation diverged: test", "seed": 3}]
    assert DatasetWriter(path, HEADER).done_seeds() == {0, 1, 2, 3}
    other = {**HEADER, "worldgen": {"manifest_hash": "b" * 64}}
    with pytest.raises(DatasetError, match="written for manifest"):
        DatasetWriter(path, other)


def test_records_read_old_sentinels_as_none_and_round_trip_demos(tmp_path):
    path = tmp_path / "d.hdf5"
    writer = DatasetWriter(path, HEADER)
    old = _demo(5, 0)  # a simulator demo as files before DemoRecord stored it
    old.attrs.update(parent="", branch_step=-1, noise_seed=-1, model="")
    branch = _demo(3, 1)
    branch.attrs.update(source="world_model", recipe="perturb", parent="demo_0", branch_step=2, noise_seed=7)
    writer.append(old, "demo_0")
    writer.append(branch, "demo_1")
    writer.finalize()
    with open_dataset(path) as f:
        first, second = demo_record(f, "demo_0"), demo_record(f, "demo_1")
        assert (first.parent, first.branch_step, first.noise_seed, first.model, first.recipe) == (None,) * 5
        assert (first.num_samples, first.seed, first.success, first.source) == (5, 0, True, "sim")
        assert (second.parent, second.branch_step, second.noise_seed) == ("demo_0", 2, 7)
        assert second.recipe == "perturb" and second.check_passed is None
        # read_obs undoes the obs / next_obs split: the T+1 observations appended come back.
        again = read_obs(f["data"]["demo_1"])
        assert all(np.array_equal(again[k], branch.obs[k]) for k in branch.obs)
    assert [r.name for r in DatasetWriter(path, HEADER).records()] == ["demo_0", "demo_1"]


def test_robomimic_export_of_a_mask_round_trips(pick_dataset, tmp_path, robomimic, capsys):
    out = tmp_path / "valid_only.hdf5"
    assert main(["export", str(pick_dataset), "--format", "robomimic", "--mask", "seed", "-o", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out and sorted(p.name for p in tmp_path.iterdir()) == [out.name]
    with open_dataset(pick_dataset) as src, open_dataset(out) as dst:
        names = demo_names(src, "seed")
        assert demo_names(dst) == names and json.loads(dst["data"].attrs["worldgen"]) == json.loads(
            src["data"].attrs["worldgen"]
        )
        for name in names:
            a, b = read_demo(src["data"][name]), read_demo(dst["data"][name])
            assert all(np.array_equal(a.obs[k], b.obs[k]) for k in a.obs)
            assert np.array_equal(a.actions, b.actions) and np.array_equal(a.states, b.states)
            assert demo_record(src, name) == demo_record(dst, name)
    low_dim = ["robot0_eef_pos", "object"]
    ds = read_with_robomimic(robomimic, out, low_dim, ("front_left_rgb",), mask="train", seq_length=4)
    assert len(ds) > 0 and ds[0]["actions"].shape == (4, 7)
    # An export never overwrites: the same command again is refused and leaves the file as it was.
    before = out.read_bytes()
    assert main(["export", str(pick_dataset), "--format", "robomimic", "-o", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err and out.read_bytes() == before


def test_kill_9_leaves_readable_demos_and_rerun_resumes(tmp_path):
    out = tmp_path / "push.hdf5"
    cmd = [
        sys.executable,
        "-m",
        "worldgen.apps.cli",
        "seed",
        str(PUSH),
        "-o",
        str(out),
        "--n",
        "5",
        "--no-cameras",
        "-q",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    parts = Path(str(out) + ".parts")
    deadline = time.monotonic() + 600
    # A demo's shard appears just before the main file links it: once the third shard exists, the main
    # file links at least two (waiting for two raced the link of the second).
    while time.monotonic() < deadline and len(list(parts.glob("demo_*.hdf5"))) < 3 and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    with h5py.File(out, "r") as f:
        names = sorted(f["data"])
        assert len(names) >= 2
        for name in names:
            assert f[f"data/{name}/actions"].shape[0] == int(f[f"data/{name}"].attrs["num_samples"])
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    assert_same_as_uninterrupted(out, 5, tmp_path / "ref.hdf5")


def assert_same_as_uninterrupted(out: Path, n: int, reference: Path) -> None:
    """``out`` holds, array by array, what recording ``n`` push seeds without cameras in one go makes."""
    run_seed_stage(PUSH, reference, n=n, cameras=False)
    a, b = _arrays(out), _arrays(reference)
    assert sorted(a) == sorted(b)
    for key in a:
        assert np.array_equal(a[key], b[key]), key


def test_two_ray_workers_give_the_single_process_result(tmp_path):
    single, sharded = tmp_path / "one.hdf5", tmp_path / "two.hdf5"
    run_seed_stage(PUSH, single, n=4, cameras=False)
    run_seed_stage(PUSH, sharded, n=4, cameras=False, workers=2)
    a, b = _arrays(single), _arrays(sharded)
    assert sorted(a) == sorted(b) and len(a) > 0
    for key in a:
        assert np.array_equal(a[key], b[key]), key


def test_seed_cli_rejects_a_foreign_dataset(tmp_path, capsys):
    path = tmp_path / "d.hdf5"
    DatasetWriter(path, HEADER).finalize()
    code = main(["seed", str(PUSH), "-o", str(path), "--n", "1", "-q"])
    assert code == 2 and "written for manifest" in capsys.readouterr().err


def test_policy_batches_keep_the_generated_share(tmp_path):
    """Two seed demos beside eight generated ones: uniform batches are mostly generated samples; with
    ``generated_share`` each batch holds that share of them, and a seed-only dataset ignores it."""
    import torch

    from policies.datasets import PolicyDataset

    path = tmp_path / "mixed.hdf5"
    writer = DatasetWriter(path, HEADER)
    for i in range(10):
        demo = _demo(20, i)
        if i >= 2:
            demo.attrs = {**demo.attrs, "source": "world_model", "recipe": "recover", "parent": "demo_0"}
        writer.append(demo, f"demo_{i}")
    writer.finalize()
    data = PolicyDataset(path, ["robot0_eef_pos"])
    generated_rows = {tuple(np.round(v, 5)) for v in data.obs["robot0_eef_pos"][data.generated[data.demo_of]]}

    def share(batch: dict) -> float:
        rows = [tuple(np.round(v, 5)) for v in batch["obs"]["robot0_eef_pos"][:, 0].numpy()]
        return float(np.mean([r in generated_rows for r in rows]))

    uniform = share(data.sample(1000, torch.Generator().manual_seed(0)))
    assert 0.75 < uniform < 0.85  # 160 of 200 samples are generated
    assert share(data.sample(1000, torch.Generator().manual_seed(0), generated_share=0.5)) == 0.5
    assert share(data.sample(64, torch.Generator().manual_seed(1), generated_share=0.25)) == 0.25
    seeds_only = PolicyDataset(path, ["robot0_eef_pos"], demos=["demo_0", "demo_1"])
    batch = seeds_only.sample(50, torch.Generator().manual_seed(0), generated_share=0.5)
    assert share(batch) == 0.0 and len(batch["action"]) == 50
