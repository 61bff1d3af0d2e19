"""Exports other stacks read as they are: Isaac Lab (Mimic) HDF5 and LeRobot v3.0, on a tiny real pipeline
(real Newton seed demos with cameras, a real 6-step world model, recovery attempts generated in it)."""

from __future__ import annotations

import io
import json

import h5py
import numpy as np
import pytest
import torch
from worldgen.apps.cli import main
from worldgen.control import ArmController
from worldgen.dataset import demo_names, demo_record, open_dataset, read_demo
from worldgen.geometry import xyzw_to_wxyz
from worldgen.manifest import load_manifest

from .conftest import PUSH, read_with_robomimic


def load_as_isaac_lab(path) -> tuple[str, dict[str, dict]]:
    """Every episode of a file by the rules of Isaac Lab's ``HDF5DatasetFileHandler.load_episode``: every
    key under /data is an episode, every group becomes a dict, every leaf ``torch.tensor(np.array(leaf))``
    (a string leaf raises), and ``env_args`` is JSON naming the environment."""

    def load(group):
        return {
            k: load(v) if isinstance(v, h5py.Group) else torch.tensor(np.array(v)) for k, v in group.items()
        }

    with h5py.File(path, "r") as f:
        env_name = json.loads(f["data"].attrs["env_args"])["env_name"]
        return env_name, {name: load(f["data"][name]) for name in f["data"]}


def subtask_end(signal: torch.Tensor) -> int:
    """Where Isaac Lab Mimic's DataGenInfoPool ends a subtask: the first 0 -> 1 switch of its signal."""
    s = signal.flatten().int()
    return int((s[1:] - s[:-1]).nonzero()[0][0]) + 2


@pytest.fixture(scope="module")
def isaaclab_export(recovered, tmp_path_factory):
    out = tmp_path_factory.mktemp("isaaclab") / "mimic.hdf5"
    assert main(["export", str(recovered), "--format", "isaaclab", "-o", str(out)]) == 0
    return out


def test_isaac_lab_loads_every_episode_with_mimic_groups(recovered, isaaclab_export):
    manifest = load_manifest(PUSH)
    env_name, episodes = load_as_isaac_lab(isaaclab_export)
    assert env_name == "worldgen/push_to_target"
    with open_dataset(recovered) as src:
        assert sorted(episodes) == sorted(demo_names(src))
        synthetic = set(demo_names(src, "synthetic"))
        for name, ep in episodes.items():
            t = int(src["data"][name].attrs["num_samples"])
            initial, states, info = ep["initial_state"], ep["states"], ep["obs"]["datagen_info"]
            robot = initial["articulation"]["robot"]
            assert [tuple(robot[k].shape) for k in ("root_pose", "root_velocity", "joint_position")] == [
                (1, 7),
                (1, 6),
                (1, 9),
            ]
            block = states["rigid_object"]["block"]
            assert block["root_pose"].shape == (t, 7) and block["root_velocity"].shape == (t, 6)
            assert states["articulation"]["robot"]["joint_velocity"].shape == (t, 9)
            for key in ("eef_pose", "target_eef_pose"):
                assert info[key]["panda"].shape == (t, 4, 4)
            assert info["object_pose"]["block"].shape == (t, 4, 4)
            contact = info["subtask_term_signals"]["contact"]
            assert contact.dtype == torch.bool and contact.shape == (t,)
            assert bool(torch.all(contact[1:].int() >= contact[:-1].int()))  # switches 0 -> 1 once at most
            record = demo_record(src, name)
            if record.success:  # Mimic parses subtask bounds from successful demos
                assert 1 < subtask_end(contact) <= t
            # Poses agree with the observations they come from (world frame, quaternion w, x, y, z).
            obs = read_demo(src["data"][name]).obs
            np.testing.assert_allclose(
                info["eef_pose"]["panda"][:, :3, 3], obs["robot0_eef_pos"][:t], atol=1e-6
            )
            np.testing.assert_allclose(block["root_pose"][:, :3], obs["object"][:t, :3], atol=1e-6)
            quat = xyzw_to_wxyz(obs["object"][:t, 3:7])
            quat /= np.linalg.norm(quat, axis=1, keepdims=True)  # a world model's are not unit length
            np.testing.assert_allclose(
                np.abs(np.sum(block["root_pose"][:, 3:].numpy() * quat, 1)), 1.0, atol=1e-5
            )
            if name in synthetic:
                # The start is the parent's simulator state at the branch step.
                parent = read_demo(src["data"][record.parent])
                target = ArmController.from_env_state(manifest, parent.states[record.branch_step])
                start_obs = {k: v[record.branch_step] for k, v in parent.obs.items()}
            else:
                target = ArmController.from_env_state(manifest, src["data"][name]["states"][1])
                start_obs = {k: v[0] for k, v in obs.items()}
                # The nested velocities are the world-frame linear velocity of the block, then angular.
                moved = np.diff(obs["object"][: t + 1, :3], axis=0) * manifest.control_hz
                fast = np.linalg.norm(moved, axis=1) > 0.02
                v = block["root_velocity"][:, :3].numpy()[fast]
                cosine = (
                    np.sum(v * moved[fast], 1)
                    / np.linalg.norm(v, axis=1)
                    / np.linalg.norm(moved[fast], axis=1)
                )
                assert fast.sum() > 5 and np.median(cosine) > 0.9
                # The target after the first action is the controller's commanded TCP in the next state.
                np.testing.assert_allclose(
                    info["target_eef_pose"]["panda"][0], target.commanded_tcp_world(), atol=1e-5
                )
            joints = np.concatenate([start_obs["robot0_joint_pos"], start_obs["robot0_gripper_qpos"]])
            np.testing.assert_allclose(robot["joint_position"][0], joints, atol=1e-6)
            if name in synthetic:
                executed = src["data"][name]["executed_actions"][0]
                target.apply(executed.astype(np.float64))
                np.testing.assert_allclose(
                    info["target_eef_pose"]["panda"][0], target.commanded_tcp_world(), atol=1e-5
                )


def test_isaaclab_export_round_trips_and_robomimic_still_reads_it(recovered, isaaclab_export, robomimic):
    with open_dataset(recovered) as src, open_dataset(isaaclab_export) as dst:
        for name in demo_names(src):
            a, b = read_demo(src["data"][name]), read_demo(dst["data"][name])
            assert np.array_equal(a.actions, b.actions) and np.array_equal(a.states, b.states)
            assert a.obs.keys() == b.obs.keys() and all(np.array_equal(a.obs[k], b.obs[k]) for k in a.obs)
            assert all(np.array_equal(a.extras[k], b.extras[k]) for k in a.extras)
            assert demo_record(src, name) == demo_record(dst, name)
    ds = read_with_robomimic(
        robomimic, isaaclab_export, ["robot0_eef_pos", "object"], ("front_rgb",), seq_length=4
    )
    assert len(ds) > 0 and ds[0]["obs"]["front_rgb"].shape[0] == 4


# -- LeRobot ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lerobot_export(recovered, tmp_path_factory):
    out = tmp_path_factory.mktemp("lerobot") / "push"
    assert main(["export", str(recovered), "--format", "lerobot", "-o", str(out)]) == 0
    return out


def hdf5_frames(path, name: str) -> dict[str, np.ndarray]:
    """What a LeRobot export should hold for one demo, from the HDF5 file."""
    with open_dataset(path) as f:
        demo = read_demo(f["data"][name])
        near, far = json.loads(f["data"].attrs["depth_range"])["front"]
    t, obs = demo.num_samples, demo.obs
    return {
        "observation.state": np.concatenate([obs["robot0_eef_pos"], obs["robot0_gripper_qpos"]], 1)[:t],
        "observation.environment_state": obs["object"][:t],
        "action": demo.actions,
        "next.reward": demo.rewards,
        "next.done": demo.dones.astype(bool),
        "observation.images.front": obs["front_rgb"][:t],
        "observation.images.front_depth": (
            near + obs["front_depth"][:t].astype(np.float64) * (far - near)
        ).astype(np.float32),
        "observation.images.front_segmentation": obs["front_seg"][:t],
    }


def test_lerobot_export_layout_and_round_trip(recovered, lerobot_export):
    import pyarrow.parquet as pq
    from PIL import Image

    info = json.loads((lerobot_export / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["fps"] == 20 and info["robot_type"] == "panda"
    assert info["video_path"] is None and info["total_tasks"] == 1
    with open_dataset(recovered) as f:
        names = demo_names(f)
        valid = demo_names(f, "valid")
        lengths = {n: int(f["data"][n].attrs["num_samples"]) for n in names}
    assert info["total_episodes"] == len(names) and info["total_frames"] == sum(lengths.values())
    assert info["splits"] == {
        "train": f"0:{len(names) - len(valid)}",
        "valid": f"{len(names) - len(valid)}:{len(names)}",
    }
    # A world model predicts no end-effector orientation or joints: the state is what every demo has.
    assert info["features"]["observation.state"]["names"][0] == "robot0_eef_pos.0"
    assert info["features"]["observation.images.front_depth"]["info"] == {
        "is_depth_map": True,
        "depth_unit": "m",
    }
    tasks = pq.read_table(lerobot_export / "meta/tasks.parquet")
    assert tasks.column("task").to_pylist() == [
        "Push a blue block into the goal region with the closed gripper."
    ]
    episodes = pq.read_table(lerobot_export / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    data = pq.read_table(lerobot_export / "data/chunk-000/file-000.parquet")
    assert data.num_rows == info["total_frames"] and data.column_names == [
        k for k in info["features"] if info["features"][k]["dtype"] != "video"
    ]
    assert [e["worldgen/demo"] for e in episodes][-len(valid) :] == valid  # the valid mask's demos last
    stats = json.loads((lerobot_export / "meta/stats.json").read_text())
    assert np.asarray(stats["observation.images.front"]["mean"]).shape == (3, 1, 1)
    assert stats["action"]["count"] == [info["total_frames"]]
    for episode in episodes:
        name = episode["worldgen/demo"]
        assert episode["length"] == lengths[name]
        assert episode["dataset_to_index"] - episode["dataset_from_index"] == lengths[name]
        with open_dataset(recovered) as f:
            record = demo_record(f, name)
        assert episode["worldgen/source"] == record.source and episode["worldgen/parent"] == record.parent
        rows = data.slice(episode["dataset_from_index"], lengths[name]).to_pydict()
        assert rows["episode_index"] == [episode["episode_index"]] * lengths[name]
        expected = hdf5_frames(recovered, name)
        for key in (
            "observation.state",
            "observation.environment_state",
            "action",
            "next.reward",
            "next.done",
        ):
            assert np.array_equal(np.asarray(rows[key]), expected[key]), (name, key)
        for t in (0, lengths[name] - 1):  # images decode to the stored arrays, bit for bit
            rgb = np.asarray(Image.open(io.BytesIO(rows["observation.images.front"][t]["bytes"])))
            depth = np.asarray(Image.open(io.BytesIO(rows["observation.images.front_depth"][t]["bytes"])))
            seg = np.asarray(
                Image.open(io.BytesIO(rows["observation.images.front_segmentation"][t]["bytes"]))
            )
            assert np.array_equal(rgb, expected["observation.images.front"][t])
            assert np.array_equal(depth, expected["observation.images.front_depth"][t][..., 0])
            assert np.array_equal(seg, expected["observation.images.front_segmentation"][t][..., 0])


def test_lerobot_videos_hold_every_frame(recovered, tmp_path):
    import av

    out = tmp_path / "push_videos"
    assert (
        main(["export", str(recovered), "--format", "lerobot", "--mask", "seed", "--videos", "-o", str(out)])
        == 0
    )
    info = json.loads((out / "meta/info.json").read_text())
    spec = info["features"]["observation.images.front"]
    assert spec["dtype"] == "video" and spec["info"]["video.codec"] == "av1"
    with av.open(str(out / "videos/observation.images.front/chunk-000/file-000.mp4")) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == info["total_frames"]
    with open_dataset(recovered) as f:
        first = read_demo(f["data"][demo_names(f, "seed")[0]]).obs["front_rgb"]
    mse = np.mean((frames[10].astype(float) - first[10].astype(float)) ** 2)
    assert 10 * np.log10(255**2 / mse) > 30  # lossy, but the same picture
