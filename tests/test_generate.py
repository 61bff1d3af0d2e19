"""Experts that survive perturbation, play rollouts, and the recover recipe in the world model and in the
simulator, on tiny real configs (real Newton, a real 6-step world model, real HDF5)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from worldgen.control import ArmController
from worldgen.dataset import demo_names, read_demo
from worldgen.envs import WorldgenEnv, predicate_holds, predicate_steps, success_step
from worldgen.experts import make_expert, object_poses, poses_from_object_obs
from worldgen.geometry import xyzw_to_wxyz
from worldgen.manifest import load_manifest

from world_models.data import WorldModelData, frames_from_obs
from world_models.imagination import tracking_offset
from world_models.recipes import (
    Parent,
    accepted_demos,
    generate_in_simulator,
    generate_in_world_model,
    recipe_spec,
    seed_parents,
)
from world_models.recipes.recover import ParentPathLabeler
from world_models.recipes.retarget import commanded_path, retarget_transform, source_segments
from world_models.replay import replay_demo, replay_demos_together, replay_generated

from .conftest import PUSH, read_with_robomimic


def spec_of(recipe: str, **overrides):
    """The recipe's spec under the push manifest, with no success margin unless one is given."""
    return recipe_spec(recipe, load_manifest(PUSH), **{"success_margin": 0.0, **overrides})


def test_success_step_counts_consecutive_holds():
    assert success_step(np.array([0, 1, 1, 0, 1, 1, 1, 0], bool), 3) == 7
    assert success_step(np.array([1, 1, 0, 1, 1], bool), 3) == -1
    assert success_step(np.array([], bool), 1) == -1


def test_success_margin_shrinks_the_goal_region_and_raises_the_lift(push):
    """generation.success_margin: the goal region shrunk on every side, the lift raised by it."""
    region = push.task.regions[0]
    center, half = np.asarray(region.center), np.asarray(region.half_extents)
    z = push.task.table.height + 0.02
    near_edge = np.array([center[0] + half[0] - 0.01, center[1], z])  # 1 cm inside the region
    fingers = np.zeros(2)
    assert predicate_holds(push, near_edge, fingers, z)
    assert predicate_holds(push, near_edge, fingers, z, margin=0.009)
    assert not predicate_holds(push, near_edge, fingers, z, margin=0.011)
    side = np.array([center[0], center[1] - half[1] + 0.01, z])
    assert not predicate_holds(push, side, fingers, z, margin=0.011)
    lifted = push.model_copy(
        update={
            "task": push.task.model_copy(
                update={
                    "success": push.task.success.model_copy(
                        update={"predicate": "object_lifted", "min_height": 0.05}
                    )
                }
            )
        }
    )
    up = np.array([0.5, 0.0, z + 0.06])
    assert predicate_holds(lifted, up, fingers, z) and predicate_holds(lifted, up, fingers, z, margin=0.009)
    assert not predicate_holds(lifted, up, fingers, z, margin=0.011)


def test_expert_replans_the_approach_from_the_objects_current_pose(push):
    expert = make_expert(push)
    start = {"block": (np.array([0.44, 0.0, 0.42]), np.array([1.0, 0.0, 0.0, 0.0]))}
    expert.reset(3, start)
    push_end = expert.waypoints[2].position.copy()
    moved = {"block": (np.array([0.44, 0.05, 0.42]), start["block"][1])}
    # Sit on each waypoint until the push segment begins, with the block moved meanwhile.
    for _ in range(200):
        if expert.index == 2:
            break
        wp = expert.waypoints[expert.index]
        pose = np.eye(4)
        pose[:3, 3], pose[:3, :3] = wp.position, _tcp_rotation(wp.yaw)
        expert.act(pose, moved)
    assert expert.index == 2
    replanned = expert.waypoints[1].position
    assert not np.allclose(expert.waypoints[2].position, push_end)
    # The push now ends on the line from the moved block to the goal, behind it as before.
    goal = np.asarray(push.task.regions[0].center)
    direction = (expert.waypoints[2].position[:2] - replanned[:2]) / np.linalg.norm(
        expert.waypoints[2].position[:2] - replanned[:2]
    )
    to_goal = (goal - moved["block"][0][:2]) / np.linalg.norm(goal - moved["block"][0][:2])
    assert np.dot(direction, to_goal) > 0.99


def _tcp_rotation(yaw: float) -> np.ndarray:
    from worldgen.experts import DOWN
    from worldgen.geometry import rot_z

    return rot_z(yaw) @ DOWN


def test_expert_succeeds_under_action_noise(push):
    """The expert advanced only on an exact match and never succeeded under noise (0/40); with a
    tolerance it completes noisy pushes."""
    env = WorldgenEnv(push, cameras=False)
    successes = 0
    for seed in range(3):
        env.reset(seed=seed)
        expert = make_expert(push)
        expert.reset(seed, object_poses(env))
        rng = np.random.default_rng(seed)
        for _ in range(push.horizon):
            action = expert.act(env.controller.commanded_tcp_world(), object_poses(env))
            action[:3] += rng.normal(0.0, 0.1, 3)
            *_, terminated, truncated, info = env.step(np.clip(action, -1, 1))
            if terminated or truncated:
                break
        successes += info["success"]
    env.close()
    assert successes == 3


def test_play_rollouts_train_the_world_model_but_are_no_policy_data(world_model, seeds):
    train, _ = world_model
    with h5py.File(train, "r") as f:
        play = demo_names(f, "play")
        assert len(play) == 2
        assert not set(play) & (set(demo_names(f, "seed")) | set(demo_names(f, "train")))
        g = f["data"][play[0]]
        assert g.attrs["source"] == "play" and g.attrs["parent"] in demo_names(f, "seed")
    push = load_manifest(PUSH)
    data = WorldModelData(train, "train", "front", (64, 64), [4], push.world_model.context_frames, ("play",))
    assert len(data.episodes) == len(demo_names(h5py.File(train, "r"), "train")) + 2


def test_recover_in_world_model_labels_are_the_expert_on_the_predicted_state(world_model, seeds, tmp_path):
    _, ckpt = world_model
    spec = spec_of("recover", per_seed=2, start_steps=(0, 20), action_noise=0.2, success_margin=0.005)
    out = tmp_path / "recover.hdf5"
    counts = generate_in_world_model("recover", seeds, ckpt, out, spec)
    manifest = load_manifest(PUSH)
    with h5py.File(seeds, "r") as s:
        parents = {p.name: p for p in seed_parents(s)}
    offset = tracking_offset(manifest, [p.demo for p in parents.values()])
    assert 1e-3 < np.linalg.norm(offset) < 2e-2
    assert counts["attempts"] == 2 * 2 * len(parents)
    with h5py.File(out, "r") as f:
        generated = demo_names(f, "synthetic")
        assert len(generated) == counts["attempts"]
        for name in generated:
            g = f["data"][name]
            demo = read_demo(g)
            assert g.attrs["recipe"] == "recover" and g.attrs["labeler"] == "expert"
            executed = demo.extras["executed_actions"]
            assert np.array_equal(executed[:, 3:], demo.actions[:, 3:])  # noise on translation only
            assert not np.array_equal(executed[:, :3], demo.actions[:, :3])
            # Replaying the expert along the predicted states and the executed actions gives the labels.
            parent: Parent = parents[str(g.attrs["parent"])]
            step = int(g.attrs["branch_step"])
            expert = parent.expert_at(manifest, step)
            controller = ArmController.from_env_state(manifest, parent.demo.states[step])
            for t in range(demo.num_samples):
                label = expert.act(
                    controller.commanded_tcp_world(), poses_from_object_obs(manifest, demo.obs["object"][t])
                )
                np.testing.assert_allclose(label, demo.actions[t], atol=1e-5)
                controller.apply(executed[t].astype(np.float64))
                # The robot's own pose in imagination: the commanded TCP plus the drives' tracking offset.
                eef = controller.commanded_tcp_world()[:3, 3] + offset
                np.testing.assert_allclose(demo.obs["robot0_eef_pos"][t + 1], eef, atol=1e-5)
                rel = demo.obs["object"][t + 1][:3] - demo.obs["robot0_eef_pos"][t + 1]
                np.testing.assert_allclose(demo.obs["object"][t + 1][7:10], rel, atol=1e-5)
            # The verdict is the success predicate on the predicted state, with the margin recorded.
            assert g.attrs["success_margin"] == spec.success_margin
            holds = predicate_steps(
                manifest,
                demo.obs["object"][1:],
                demo.obs["robot0_gripper_qpos"][1:],
                float(parent.object_obs[0][2]),
                spec.success_margin,
            )
            end = success_step(holds, manifest.task.success.hold_steps)
            assert bool(g.attrs["success"]) == (end >= 0)
            assert (name in accepted_demos(out)) == bool(g.attrs["success"])
            if end < 0:  # a failed attempt runs to the horizon
                assert demo.num_samples == manifest.horizon - step
    # Same record, same batch layout: the same bytes.
    again = tmp_path / "again.hdf5"
    generate_in_world_model("recover", seeds, ckpt, again, spec)
    with h5py.File(out, "r") as a, h5py.File(again, "r") as b:
        for name in demo_names(a):
            for key in ("actions", "executed_actions", "obs/object", "obs/front_rgb"):
                if key in a["data"][name]:
                    assert np.array_equal(a["data"][name][key][()], b["data"][name][key][()]), (name, key)


def test_recover_in_simulator_succeeds_and_replays_exactly(seeds, tmp_path, robomimic):
    out = tmp_path / "recover_sim.hdf5"
    spec = spec_of("recover", per_seed=1, start_steps=(5,), action_noise=0.1)
    counts = generate_in_simulator("recover", seeds, out, spec)
    # One attempt from the training seed demo; none from the demo held out for validation.
    assert counts == {"attempts": 1, "accepted": 1}
    manifest = load_manifest(PUSH)
    env = WorldgenEnv(manifest, cameras=False)
    with h5py.File(out, "r") as f, h5py.File(seeds, "r") as s:
        seed_names = demo_names(f, "seed")
        assert len(seed_names) == 2 and len(accepted_demos(out)) == 3
        generated = [n for n in demo_names(f) if n not in seed_names]
        for name in generated:
            g = f["data"][name]
            assert g.attrs["source"] == "sim" and g.attrs["recipe"] == "recover"
            parent = s["data"][str(g.attrs["parent"])]
            start = parent["states"][int(g.attrs["branch_step"])]
            result = replay_demo(env, start, g, int(g.attrs["seed"]))
            assert result["replay_success"] and result["object_error_max"] < 1e-6
    env.close()
    ds = read_with_robomimic(robomimic, out, ["robot0_eef_pos", "object"], seq_length=4)
    assert len(ds) > 0 and ds[0]["actions"].shape == (4, 7)


def test_replays_stepped_together_agree_with_one_at_a_time(recovered, seeds, push):
    """Replay verification of world-model demos on scenes stepped together: the same verdicts as one
    replay at a time, errors within 5 mm + 1 % (MuJoCo solves the scenes' contacts together; over a hundred
    steps of pushing, a 1e-6 difference grows to about a millimetre, more for a block this tiny model's
    actions knock off the table; replay tolerances are centimetres)."""
    env = WorldgenEnv(push, cameras=False)
    alone, replays = [], []
    with h5py.File(recovered, "r") as f, h5py.File(seeds, "r") as s:
        for name in demo_names(f, "synthetic"):
            g = f["data"][name]
            start = s["data"][str(g.attrs["parent"])]["states"][int(g.attrs["branch_step"])]
            alone.append(replay_demo(env, start, g, int(g.attrs["seed"])))
            replays.append((start, read_demo(g), int(g.attrs["seed"])))
    env.close()
    together = replay_demos_together(push, replays, envs=3)  # 4 replays: two batches of 2
    assert len(together) == len(alone) == 4
    for a, b in zip(alone, together, strict=True):
        assert a["replay_success"] == b["replay_success"]
        for key in ("eef_error_max", "object_error_max", "object_error_end"):
            assert abs(a[key] - b[key]) < 5e-3 + 0.01 * max(a[key], b[key]), (key, a, b)


def test_parent_path_labels_point_back_to_the_parents_path(seeds, push):
    with h5py.File(seeds, "r") as f:
        parent = seed_parents(f)[0]
    step = 10
    on_path = ParentPathLabeler(push, parent, step)
    cmd = on_path.path[step].copy()
    on_label = on_path.act(cmd, {})
    # On the path the label is the parent's own pace: the mean of its next LOOKAHEAD translations.
    np.testing.assert_allclose(on_label[:3], parent.demo.actions[step : step + 3, :3].mean(0), atol=1e-4)
    assert on_label[-1] == parent.demo.actions[step, -1]
    off = cmd.copy()
    off[1, 3] += 0.02  # 2 cm to the side of the path
    off_label = ParentPathLabeler(push, parent, step).act(off, {})
    # The parent's own pace plus the 2 cm back toward the path, spread over the lookahead; nothing else.
    correction = -0.02 / (ParentPathLabeler.LOOKAHEAD * push.embodiment.max_translation)
    np.testing.assert_allclose(off_label - on_label, [0, correction, 0, 0, 0, 0, 0], atol=1e-4)


def test_retargeted_segments_follow_the_object(seeds, push):
    """A seed demo cut at contact: the approach is moved with the block (same distance and bearing from
    it, measured against the line to the goal), the push with the line to the goal, about its centre."""
    with h5py.File(seeds, "r") as s:
        parent = seed_parents(s)[0]
    segments = source_segments(push, parent.demo)
    assert [g.reference for g in segments] == ["object", "region"]
    assert segments[0].end == segments[1].start and segments[1].end == parent.demo.num_samples
    source = poses_from_object_obs(push, parent.object_obs[0])
    pos, quat = source["block"]
    new = {"block": (pos + np.array([-0.03, 0.05, 0.0]), quat)}
    move = retarget_transform(push, "object", source, new, prehensile=False)
    goal = np.array(push.task.regions[0].center)

    def bearing(target, block):  # distance and angle of a target from the block, against the goal line
        line, rel = goal - block[:2], target[:2] - block[:2]
        angle = np.arctan2(rel[1], rel[0]) - np.arctan2(line[1], line[0])
        return np.linalg.norm(rel), np.cos(angle), np.sin(angle)

    path = commanded_path(push, parent.demo, parent.demo.actions)
    for pose in path[: segments[0].end + 1 : 10]:
        np.testing.assert_allclose(
            bearing((move @ pose)[:3, 3], new["block"][0]), bearing(pose[:3, 3], pos), atol=1e-9
        )
        assert abs((move @ pose)[2, 3] - pose[2, 3]) < 1e-9
    region = retarget_transform(push, "region", source, new, prehensile=False)
    np.testing.assert_allclose(region @ np.r_[goal, 0.5, 1.0], np.r_[goal, 0.5, 1.0], atol=1e-12)
    assert not np.allclose(region, np.eye(4))  # the push turns with the new line to the goal
    # A grasped block turns with the block, by the smallest turn its square footprint allows.
    turned = {"block": (pos, xyzw_to_wxyz(np.r_[0.0, 0.0, np.sin(1.3 / 2), np.cos(1.3 / 2)]))}
    grasp = retarget_transform(push, "object", {"block": (pos, np.r_[1.0, 0, 0, 0])}, turned, prehensile=True)
    np.testing.assert_allclose(np.arctan2(grasp[1, 0], grasp[0, 0]), 1.3 - np.pi / 2, atol=1e-9)


def test_retarget_in_simulator_labels_are_the_executed_actions(seeds, tmp_path, robomimic, push):
    out = tmp_path / "retarget_sim.hdf5"
    spec = spec_of("retarget", count=2, scene_base_seed=700_000)
    assert generate_in_simulator("retarget", seeds, out, spec) == {"attempts": 2, "accepted": 2}
    # Resumed: nothing left to make, nothing written twice, the whole output's counts.
    assert generate_in_simulator("retarget", seeds, out, spec) == {"attempts": 2, "accepted": 2}
    with h5py.File(out, "r") as f:
        assert len(demo_names(f)) == 4
        generated = [n for n in demo_names(f) if n not in demo_names(f, "seed")]
        assert [int(f["data"][n].attrs["seed"]) for n in generated] == [700_000, 700_001]
        for name in generated:
            g = f["data"][name]
            assert g.attrs["recipe"] == "retarget" and g.attrs["parent"] in demo_names(f, "seed")
            assert "executed_actions" not in g  # the labels are what was executed
            result = replay_demo(WorldgenEnv(push, cameras=False), None, g, int(g.attrs["seed"]))
            assert result["replay_success"] and result["object_error_max"] < 1e-6
    with pytest.raises(ValueError, match="overlap the manifest's seeds range"):
        generate_in_simulator(
            "retarget", seeds, tmp_path / "bad.hdf5", spec_of("retarget", count=2, scene_base_seed=40)
        )
    ds = read_with_robomimic(robomimic, out, ["robot0_eef_pos", "object"], seq_length=4)
    assert len(ds) > 0 and ds[0]["actions"].shape == (4, 7)


def test_retarget_in_world_model_starts_from_the_rendered_scene_and_regenerates(
    world_model, seeds, tmp_path, push, robomimic
):
    _, ckpt = world_model
    spec = spec_of("retarget", count=3, batch=2, scene_base_seed=700_000, action_noise=0.1)
    out = tmp_path / "retarget.hdf5"
    counts = generate_in_world_model("retarget", seeds, ckpt, out, spec)
    assert counts["attempts"] == 3
    with h5py.File(seeds, "r") as s:
        offset = tracking_offset(push, [p.demo for p in seed_parents(s)])
    env = WorldgenEnv(push, cameras=True)
    with h5py.File(out, "r") as f:
        generated = demo_names(f, "synthetic")
        assert len(generated) == 3
        for name in generated:
            g = f["data"][name]
            demo, scene = read_demo(g), int(g.attrs["seed"])
            assert g.attrs["recipe"] == "retarget" and g.attrs["source"] == "world_model"
            assert "executed_actions" not in g
            # Its first observation is the new scene as the simulator renders it.
            obs, _ = env.reset(seed=scene)
            np.testing.assert_allclose(demo.obs["object"][0], obs["object"], atol=1e-6)
            rendered = frames_from_obs(
                obs["front_rgb"][None], obs["front_depth"][None], obs["front_seg"][None], [4], (64, 64)
            )
            first = frames_from_obs(
                demo.obs["front_rgb"][:1],
                demo.obs["front_depth"][:1],
                demo.obs["front_seg"][:1],
                [4],
                (64, 64),
            )
            assert float((rendered - first).abs().mean()) < 0.02  # up to resampling 64 -> 96 -> 64
            # The labels drive the commanded TCP the predicted end effector follows.
            controller = ArmController.from_env_state(push, env.get_state())
            for t in range(demo.num_samples):
                controller.apply(demo.actions[t].astype(np.float64))
                eef = controller.commanded_tcp_world()[:3, 3] + offset
                np.testing.assert_allclose(demo.obs["robot0_eef_pos"][t + 1], eef, atol=1e-5)
            holds = predicate_steps(
                push, demo.obs["object"][1:], demo.obs["robot0_gripper_qpos"][1:], float(obs["object"][2])
            )
            end = success_step(holds, push.task.success.hold_steps)
            assert bool(g.attrs["success"]) == (end >= 0)
            assert end >= 0 or demo.num_samples == push.horizon
        replays = replay_generated(f, generated)
        assert len(replays) == 3 and all(r["eef_error_max"] < 0.05 for r in replays)
    env.close()
    ds = read_with_robomimic(robomimic, out, ["robot0_eef_pos", "object"], seq_length=4)
    assert len(ds) > 0 and ds[0]["actions"].shape == (4, 7)
    again = tmp_path / "again.hdf5"
    generate_in_world_model("retarget", seeds, ckpt, again, spec)
    with h5py.File(out, "r") as a, h5py.File(again, "r") as b:
        for name in demo_names(a, "synthetic"):
            for key in ("actions", "obs/object", "obs/front_rgb", "obs/front_seg"):
                assert np.array_equal(a["data"][name][key][()], b["data"][name][key][()]), (name, key)
