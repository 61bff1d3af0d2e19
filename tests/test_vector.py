"""Many scenes in one Newton model (worldgen.sim.vector) and the gymnasium VectorEnv over it, on the real
push_to_target scene: per-world state round trips, resets without a rebuild that equal a fresh build,
worlds that do not interact, the same bytes for the same layout, divergence kept to its world."""

from __future__ import annotations

import numpy as np
import pytest
from gymnasium.vector import AutoresetMode
from worldgen.assets import panda
from worldgen.control import ArmController, apply_actions
from worldgen.manifest import load_manifest
from worldgen.sim.newton import NewtonBackend
from worldgen.sim.vector import VectorNewtonBackend
from worldgen.vector_env import WorldgenVectorEnv

from .conftest import PUSH

SEEDS = [1000, 1001, 1002]


@pytest.fixture(scope="module")
def manifest():
    return load_manifest(PUSH)


def drive(manifest, backends, steps: int, seed: int = 0, n: int = 3) -> None:
    """Step every backend with the same random ee_delta actions (the arm sweeps down and about)."""
    rng = np.random.default_rng(seed)
    controllers = [ArmController.for_manifest(manifest) for _ in range(n)]
    for c in controllers:
        c.reset(panda.HOME_Q, panda.FINGER_MAX)
    for _ in range(steps):
        actions = np.clip(rng.normal(0.0, 0.5, (n, 7)), -1.0, 1.0)
        actions[:, 2] = -0.6
        targets = np.stack([c.apply(a) for c, a in zip(controllers, actions, strict=True)])
        for b in backends:
            b.step(targets)


def test_a_world_starts_as_its_scene_alone_and_restores_exactly(manifest):
    vector = VectorNewtonBackend(manifest, device="cpu")
    vector.reset(SEEDS)
    single = NewtonBackend(manifest, device="cpu", render=False)
    # The single-scene state layout, its own frame: equal up to float32 rounding of the scene offset.
    np.testing.assert_allclose(vector.get_state(1), single.reset(SEEDS[1]), atol=1e-6)
    np.testing.assert_allclose(vector.body_pose("block")[0][1], single.body_pose("block")[0], atol=1e-6)
    drive(manifest, [vector], 15)
    saved = [vector.get_state(i) for i in range(3)]
    drive(manifest, [vector], 15, seed=1)
    after = [vector.get_state(i) for i in range(3)]
    for i in range(3):
        vector.set_state(i, saved[i])
        assert np.array_equal(vector.get_state(i), saved[i])
    drive(manifest, [vector], 15, seed=1)
    assert all(np.array_equal(vector.get_state(i), after[i]) for i in range(3))


def test_reset_without_rebuild_equals_a_fresh_build(manifest):
    reused = VectorNewtonBackend(manifest, device="cpu")
    reused.reset(SEEDS)
    drive(manifest, [reused], 10)
    reused.reset_worlds(np.array([True, False, True]), [2000, 0, 2002])
    fresh = VectorNewtonBackend(manifest, device="cpu")
    fresh.reset([2000, SEEDS[1], 2002])
    for i in (0, 2):  # masses, frictions, placements and a zero warm start: as built for that seed
        assert np.array_equal(reused.get_state(i), fresh.get_state(i))
    for key in ("body_mass", "body_inertia", "geom_friction"):
        assert np.array_equal(getattr(reused.solver.mj_model, key), getattr(fresh.solver.mj_model, key)), key
    # MuJoCo compiles a geom's offset in its body from the body's build-time pose: equal to the last bit.
    np.testing.assert_allclose(
        reused.solver.mj_model.geom_pos, fresh.solver.mj_model.geom_pos, rtol=0, atol=1e-15
    )
    fresh.set_state(1, reused.get_state(1))  # the world that was not reset carries on where it was
    drive(manifest, [reused, fresh], 20)
    for i in range(3):
        np.testing.assert_allclose(reused.get_state(i), fresh.get_state(i), rtol=0, atol=1e-9)


def test_worlds_do_not_interact(manifest):
    a, b = VectorNewtonBackend(manifest, device="cpu"), VectorNewtonBackend(manifest, device="cpu")
    a.reset(SEEDS)
    b.reset(SEEDS)
    state = b.get_state(1)
    single = NewtonBackend(manifest, device="cpu", render=False)
    single.reset(SEEDS[1])
    _, qd_start = single.layout.objects["block"]
    state[1 + single.layout.nq + qd_start] = 1.5  # world 1's block is pushed: it slides at 1.5 m/s
    b.set_state(1, state)
    drive(manifest, [a, b], 20)
    moved = np.linalg.norm(b.body_pose("block")[0][1] - a.body_pose("block")[0][1])
    assert moved > 0.02
    for i in (0, 2):  # MuJoCo solves all contacts together: the others agree to solver tolerance
        np.testing.assert_allclose(a.get_state(i)[1:], b.get_state(i)[1:], atol=1e-5)


def test_vector_env_same_layout_same_bytes_and_next_step_autoreset(manifest):
    def run():
        env = WorldgenVectorEnv(manifest, 3)
        obs, info = env.reset(seed=SEEDS)
        assert list(info["scene_seed"]) == SEEDS and obs["object"].shape == (3, 10)
        rng = np.random.default_rng(3)
        history = [obs]
        for _ in range(12):
            obs, rewards, terminated, truncated, info = env.step(
                rng.uniform(-1, 1, (3, 7)).astype(np.float32)
            )
            history.append(obs)
        env.close()
        return history

    first, second = run(), run()
    assert all(np.array_equal(x[k], y[k]) for x, y in zip(first, second, strict=True) for k in x)
    env = WorldgenVectorEnv(manifest, 2, autoreset_mode=AutoresetMode.NEXT_STEP)
    env.reset(seed=[1000, 1001])
    # World 0 at its horizon: it is truncated on this step and starts a new scene on the next.
    env.steps[0] = manifest.horizon - 1
    _, _, terminated, truncated, info = env.step(np.zeros((2, 7), np.float32))
    assert list(truncated) == [True, False] and not terminated.any()
    _, rewards, terminated, truncated, info = env.step(np.zeros((2, 7), np.float32))
    assert list(info["steps"]) == [0, 2] and rewards[0] == 0.0 and not (terminated | truncated).any()
    assert info["scene_seed"][0] != 1000 and info["scene_seed"][1] == 1001
    env.close()


def test_a_diverged_world_is_truncated_alone(manifest):
    env = WorldgenVectorEnv(manifest, 3)
    env.reset(seed=SEEDS)
    state = env.backend.get_state(2)
    single = NewtonBackend(manifest, device="cpu", render=False)
    single.reset(SEEDS[2])
    state[1 + single.layout.nq + single.layout.robot_qd[3]] = 500.0  # an arm joint spinning at 500 rad/s
    env.backend.set_state(2, state)
    _, _, terminated, truncated, info = env.step(np.zeros((3, 7), np.float32))
    assert list(info["diverged"]) == [False, False, True] and list(truncated) == [False, False, True]
    _, _, _, truncated, info = env.step(np.zeros((3, 7), np.float32))  # it restarts; the others go on
    assert list(info["steps"]) == [2, 2, 0] and not truncated.any() and not info["diverged"].any()
    env.close()


def test_ik_for_many_controllers_equals_one_at_a_time(manifest):
    """The vector env solves every world's IK together; each row stops where its own error does."""
    rng = np.random.default_rng(7)
    one = [ArmController.for_manifest(manifest) for _ in range(16)]
    many = [ArmController.for_manifest(manifest) for _ in range(16)]
    for c in one + many:
        c.reset(panda.HOME_Q, panda.FINGER_MAX)
    for _ in range(40):
        actions = np.clip(rng.normal(0.0, 0.6, (16, 7)), -1.0, 1.0)
        actions[:4] = 0.0  # these sit still: their IK converges at once
        expected = np.stack([c.apply(a) for c, a in zip(one, actions, strict=True)])
        np.testing.assert_allclose(apply_actions(many, actions), expected, rtol=0, atol=1e-12)
        for a, b in zip(one, many, strict=True):
            np.testing.assert_allclose(b.get_state(), a.get_state(), rtol=0, atol=1e-12)


def test_seed_recording_on_scenes_stepped_together(manifest, tmp_path):
    """`worldgen seed --envs`: the expert's demos from scenes stepped together, in seed order, with the
    one-at-a-time recording's verdicts and starts; the same number of scenes gives the same bytes."""
    from worldgen.dataset import demo_names, open_dataset, read_demo
    from worldgen.pipeline import run_seed_stage

    alone, together, again = tmp_path / "alone.hdf5", tmp_path / "together.hdf5", tmp_path / "again.hdf5"
    run_seed_stage(PUSH, alone, n=3, cameras=False)
    run_seed_stage(PUSH, together, n=3, cameras=False, envs=2)  # batches of 2 and 1 (+1 repeat)
    run_seed_stage(PUSH, again, n=3, cameras=False, envs=2)
    with open_dataset(alone) as a, open_dataset(together) as b, open_dataset(again) as c:
        assert demo_names(a) == demo_names(b) == ["demo_0", "demo_1", "demo_2"]
        for name in demo_names(a):
            x, y, z = (read_demo(f["data"][name]) for f in (a, b, c))
            assert x.attrs["success"] == y.attrs["success"] and int(y.attrs["vector_envs"]) == 2
            assert abs(x.num_samples - y.num_samples) <= 3
            np.testing.assert_allclose(y.states[0], x.states[0], atol=1e-6)  # the same scene and start
            assert np.array_equal(y.actions, z.actions) and np.array_equal(y.states, z.states)
    with pytest.raises(ValueError, match="in one process"):
        run_seed_stage(PUSH, tmp_path / "ray.hdf5", n=2, cameras=False, envs=2, workers=2)


def _frames_equal(a, b) -> None:
    """The same pictures and labels; depth to float32 rounding (a world's poses pass through its origin,
    metres away, so they carry float32 rounding of that offset)."""
    for name in a:
        assert np.array_equal(a[name].rgb, b[name].rgb) and np.array_equal(a[name].seg, b[name].seg), name
        np.testing.assert_allclose(a[name].depth, b[name].depth, rtol=0, atol=1e-6)


def test_worlds_render_as_their_scene_alone(manifest):
    """Each world is rendered as the single-scene backend renders its scene at the same state (its own
    light, jitter and textures, no neighbour in view), before and after stepping and after a per-world
    reset."""
    seeds = [5, 6]
    vector = VectorNewtonBackend(manifest, device="cpu", render=True)
    vector.reset(seeds)
    single = NewtonBackend(manifest, device="cpu", render=True)
    frames = vector.render()
    for i, seed in enumerate(seeds):
        single.reset(seed)
        _frames_equal(frames[i], single.render())
    drive(manifest, [vector], 12, n=2)
    frames = vector.render()
    for i, seed in enumerate(seeds):
        single.reset(seed)
        single.set_state(vector.get_state(i))
        # The same joint state; the single scene's forward kinematics put its bodies where the combined
        # simulation has them to float32 rounding, so at most a few edge pixels may differ.
        np.testing.assert_allclose(single.body_pose("block")[0], vector.body_pose("block")[0][i], atol=1e-5)
        alone = single.render()
        for name in alone:
            differ = np.any(alone[name].rgb != frames[i][name].rgb, axis=-1)
            assert differ.mean() < 0.005, (name, differ.mean())
    vector.reset_worlds(np.array([False, True]), [5, 9])
    single.reset(9)
    _frames_equal(vector.render()[1], single.render())
    assert not np.array_equal(vector.render()[0]["front"].rgb, single.render()["front"].rgb)


def test_separate_worlds_render_each_world_in_one_sensor_update(manifest):
    """The GPU layout (each scene a Newton world of its own, one sensor for all), built on the CPU: each
    world's depth and labels are its scene's alone, and world 0 (whose light the sensor has) is its
    scene's picture; stepping is refused, as MuJoCo's CPU solver would step world 0 alone."""
    seeds = [5, 6, 7]
    vector = VectorNewtonBackend(manifest, device="cpu", render=True, separate_worlds=True)
    vector.reset(seeds)
    assert vector.model.world_count == 3 and not vector.views
    single = NewtonBackend(manifest, device="cpu", render=True)
    frames = vector.render()
    for i, seed in enumerate(seeds):
        single.reset(seed)
        alone = single.render()
        for name in alone:
            assert np.array_equal(frames[i][name].seg, alone[name].seg), (i, name)
            np.testing.assert_allclose(frames[i][name].depth, alone[name].depth, rtol=0, atol=1e-6)
            if i == 0:
                assert np.array_equal(frames[i][name].rgb, alone[name].rgb), name
        np.testing.assert_allclose(vector.body_pose("block")[0][i], single.body_pose("block")[0], atol=1e-6)
    vector.reset_worlds(np.array([False, True, False]), [5, 9, 7])
    single.reset(9)
    for name, frame in single.render().items():
        assert np.array_equal(vector.render()[1][name].seg, frame.seg), name
    with pytest.raises(RuntimeError, match="GPU only"):
        vector.step(np.zeros((3, 9)))


def test_seed_recording_with_cameras_on_scenes_stepped_together(tmp_path):
    from worldgen.dataset import demo_names, open_dataset, read_demo
    from worldgen.pipeline import run_seed_stage

    alone, together = tmp_path / "alone.hdf5", tmp_path / "together.hdf5"
    run_seed_stage(PUSH, alone, n=2, cameras=True)
    run_seed_stage(PUSH, together, n=2, cameras=True, envs=2)
    with open_dataset(alone) as a, open_dataset(together) as b:
        for name in demo_names(a):
            x, y = (read_demo(f["data"][name]) for f in (a, b))
            assert sorted(x.obs) == sorted(y.obs) and x.attrs["success"] == y.attrs["success"]
            for key in ("front_rgb", "front_depth", "front_seg", "side_rgb"):
                assert y.obs[key].shape[1:] == x.obs[key].shape[1:] and len(y.obs[key]) == y.num_samples + 1
                assert np.array_equal(y.obs[key][0], x.obs[key][0]), key  # the same scene, the same start
