"""A robomimic-layout copy with what Isaac Lab Mimic reads besides, per demo:

- ``initial_state`` and ``states``: Isaac Lab's nested scene state
  (``articulation/robot/{root_pose, root_velocity, joint_position, joint_velocity}``,
  ``rigid_object/<object>/{root_pose, root_velocity}``), poses as position + quaternion (w, x, y, z)
  relative to the environment origin (worldgen's world origin), velocities as linear velocity of the
  centre of mass then angular velocity, both in the world frame (Newton's free-joint velocities);
- ``obs/datagen_info``: ``eef_pose/<robot>``, ``target_eef_pose/<robot>`` (the controller's commanded
  TCP after each action) and ``object_pose/<object>`` as (T, 4, 4) world-frame matrices, and
  ``subtask_term_signals/<signal>`` (T,) bools that switch 0 -> 1 once, from events every demo records
  (gripper command, object motion), so seed, played and generated demos get them alike.

worldgen's flat simulator states move to ``sim_states``. A world-model demo has no simulator states
(its ``sim_states`` has no columns): its ``initial_state`` is its parent's state at the branch step,
its ``states`` come from its predicted observations, velocities from their differences step to step.
Every leaf is numeric or bool, as Isaac Lab's ``HDF5DatasetFileHandler`` requires.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from ..control import ArmController
from ..dataset import (
    SIM_STATES,
    DatasetError,
    Demo,
    dataset_manifest,
    demo_record,
    flat_states,
    open_dataset,
    read_demo,
)
from ..envs import object_slice
from ..geometry import axis_angle_from_rotation, matrix_from_quat, xyzw_to_wxyz
from ..keys import EEF_POS, EEF_QUAT, GRIPPER_QPOS, JOINT_POS, image_kind
from ..manifest import Manifest
from ..sim.newton import StateLayout
from .robomimic import copy_demos
from .staging import selected_demos, staged

CONTROLLER_TAIL = ArmController.STATE_DIM + 2  # WorldgenEnv.get_state: backend, controller, [steps, streak]
GRASP_LIFT = 0.01  # metres the held object must rise above its start for the grasp to count as done
CONTACT_SHIFT = 0.005  # metres a pushed object must move for contact to count as made


def export_isaaclab(dataset: str | Path, out: str | Path, mask: str | None = None) -> int:
    """Copy the demos of ``mask`` (every demo when None) into a new file ``out`` and add Isaac Lab
    Mimic's groups to each; returns how many."""
    with open_dataset(dataset) as f:
        names = selected_demos(f, mask)
        manifest = dataset_manifest(f)
        layout = scene_layout(manifest, demo_record(f, names[0]).seed)
        with staged(out) as path:
            copy_demos(f, names, path)
            with h5py.File(path, "r+") as g:
                for name in names:
                    source = f["data"][name]
                    # Poses, actions and states only: the images were copied, not read again.
                    low_dim = [
                        k
                        for k, v in source["obs"].items()
                        if isinstance(v, h5py.Dataset) and not image_kind(k)
                    ]
                    demo = read_demo(source, low_dim)
                    start = _start_state(f, name, demo)
                    group = g["data"][name]
                    group.move("states", SIM_STATES)
                    for key, value in mimic_groups(manifest, layout, demo, start).items():
                        _write_tree(group, key, value)
    return len(names)


def scene_layout(manifest: Manifest, seed: int) -> StateLayout:
    """The state layout of ``manifest``'s scenes, read from the simulator's model of one of them."""
    from ..sim.newton import NewtonBackend

    backend = NewtonBackend(manifest, device="cpu", render=False)
    try:
        backend.reset(seed)
        return backend.layout
    finally:
        backend.close()


def _start_state(f: h5py.File, name: str, demo: Demo) -> np.ndarray:
    """The flat simulator state a demo starts from: its own first one, else its parent's at the branch
    step (a world-model demo)."""
    if demo.states.shape[1]:
        return demo.states[0]
    record = demo_record(f, name)
    if record.parent is None or record.parent not in f["data"] or record.branch_step is None:
        raise DatasetError(
            f"{f.filename}: {name} has no simulator states and its parent ({record.parent}) is not in it"
        )
    return flat_states(f["data"][record.parent])[record.branch_step]


def mimic_groups(manifest: Manifest, layout: StateLayout, demo: Demo, start: np.ndarray) -> dict:
    """``initial_state``, ``states`` and ``obs/datagen_info`` of one demo, as nested dicts of arrays."""
    commanded, joint_targets = _commanded(manifest, start, demo.executed_actions)
    if demo.states.shape[1]:
        states = _flat_scene_state(layout, demo.states)
    else:
        states = _observed_scene_state(manifest, layout, demo.obs, joint_targets)
    return {
        "initial_state": _flat_scene_state(layout, start[None]),
        "states": states,
        "obs/datagen_info": datagen_info(manifest, demo, commanded),
    }


def _commanded(manifest: Manifest, start: np.ndarray, executed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The controller's commanded TCP poses (T+1, 4, 4) and arm joint targets (T+1, 7), from the flat
    state a demo starts in and the actions it executed: the controller is deterministic, so for a
    simulator demo these are the ones it recorded."""
    controller = ArmController.from_env_state(manifest, start)
    poses, joints = [controller.commanded_tcp_world()], [controller.q_target.copy()]
    for action in executed:
        controller.apply(np.asarray(action, dtype=np.float64))
        poses.append(controller.commanded_tcp_world())
        joints.append(controller.q_target.copy())
    return np.asarray(poses), np.asarray(joints)


def datagen_info(manifest: Manifest, demo: Demo, commanded: np.ndarray) -> dict:
    """Mimic's per-step poses: the end effector as observed (a world-model demo predicts its position, not
    its orientation: there the commanded one stands in), the commanded target after each action, the
    objects as observed; and the subtask signals."""
    obs, t = demo.obs, demo.num_samples
    robot = manifest.embodiment.robot
    if EEF_QUAT in obs:
        eef = _matrices(obs[EEF_POS][:t], obs[EEF_QUAT][:t])
    else:
        eef = commanded[:t].astype(np.float32)
        eef[:, :3, 3] = obs[EEF_POS][:t]
    objects = {}
    for name in (o.name for o in manifest.task.objects if not o.static):
        positions, quats = _object_pose(manifest, obs, name)
        objects[name] = _matrices(positions[:t], quats[:t])
    return {
        "eef_pose": {robot: eef},
        "target_eef_pose": {robot: commanded[1:].astype(np.float32)},
        "object_pose": objects,
        "subtask_term_signals": subtask_signals(manifest, demo),
    }


def subtask_signals(manifest: Manifest, demo: Demo) -> dict[str, np.ndarray]:
    """When each subtask but the last is done, per step: ``grasp`` (pick tasks: the gripper is commanded
    closed and the object has risen :data:`GRASP_LIFT`) or ``contact`` (push: the object has moved
    :data:`CONTACT_SHIFT`). Once done, a subtask stays done."""
    t = demo.num_samples
    obj = manifest.task.success.object
    pos = demo.obs["object"][1 : t + 1, object_slice(manifest, obj)][:, :3].astype(np.float64)
    start = demo.obs["object"][0, object_slice(manifest, obj)][:3].astype(np.float64)
    executed = demo.executed_actions
    if manifest.task.kind == "push":
        name, done = "contact", np.linalg.norm(pos[:, :2] - start[:2], axis=1) >= CONTACT_SHIFT
    else:
        name, done = "grasp", (executed[:, -1] > 0.0) & (pos[:, 2] - start[2] >= GRASP_LIFT)
    return {name: np.maximum.accumulate(done)}


def _matrices(positions: np.ndarray, quats_xyzw: np.ndarray) -> np.ndarray:
    out = np.tile(np.eye(4, dtype=np.float32), (len(positions), 1, 1))
    for i, (p, q) in enumerate(zip(positions, quats_xyzw, strict=True)):
        out[i, :3, :3] = matrix_from_quat(xyzw_to_wxyz(np.asarray(q, dtype=np.float64)))
        out[i, :3, 3] = p
    return out


def _object_pose(manifest: Manifest, obs: dict[str, np.ndarray], name: str) -> tuple[np.ndarray, np.ndarray]:
    """An object's observed positions and unit quaternions (x, y, z, w); a world model's predicted
    quaternions are not unit length."""
    features = obs["object"][:, object_slice(manifest, name)].astype(np.float64)
    quats = features[:, 3:7]
    return features[:, :3], quats / np.maximum(np.linalg.norm(quats, axis=1, keepdims=True), 1e-9)


def _flat_scene_state(layout: StateLayout, flat: np.ndarray) -> dict:
    """Nested scene states from worldgen's flat simulator states (T, S)."""
    backend = flat[:, :-CONTROLLER_TAIL]
    robot = [layout.robot(s) for s in backend]
    objects = {}
    for name in layout.objects:
        poses, velocities = zip(*(layout.free_body(s, name) for s in backend), strict=True)
        poses = np.asarray(poses)
        objects[name] = {
            "root_pose": np.concatenate([poses[:, :3], xyzw_to_wxyz(poses[:, 3:])], 1),
            "root_velocity": np.asarray(velocities),
        }
    return _scene_state(layout, np.asarray([q for q, _ in robot]), np.asarray([v for _, v in robot]), objects)


def _observed_scene_state(
    manifest: Manifest, layout: StateLayout, obs: dict[str, np.ndarray], joint_targets: np.ndarray
) -> dict:
    """Nested scene states from T+1 observations (a world model's predictions): the first T poses, and
    velocities from each step's difference to the next at the control rate. A world model does not
    predict arm joints: the controller's joint targets (what the drives track) stand in for them."""
    hz = manifest.control_hz
    arm = obs.get(JOINT_POS, joint_targets)
    q = np.concatenate([arm, obs[GRIPPER_QPOS]], 1).astype(np.float64)
    objects = {}
    for name in layout.objects:
        pos, quat = _object_pose(manifest, obs, name)
        rot = [matrix_from_quat(xyzw_to_wxyz(x)) for x in quat]
        spin = [axis_angle_from_rotation(b @ a.T) for a, b in zip(rot[:-1], rot[1:], strict=True)]
        objects[name] = {
            "root_pose": np.concatenate([pos[:-1], xyzw_to_wxyz(quat[:-1])], 1),
            "root_velocity": np.concatenate([np.diff(pos, axis=0), np.asarray(spin)], 1) * hz,
        }
    return _scene_state(layout, q[:-1], np.diff(q, axis=0) * hz, objects)


def _scene_state(layout: StateLayout, joint_position, joint_velocity, objects: dict) -> dict:
    t = len(joint_position)
    robot = {
        "root_pose": np.tile(layout.robot_root, (t, 1)),
        "root_velocity": np.zeros((t, 6)),
        "joint_position": joint_position,
        "joint_velocity": joint_velocity,
    }
    return {"articulation": {"robot": robot}, "rigid_object": objects}


def _write_tree(group: h5py.Group, key: str, value) -> None:
    """Nested dicts as groups, arrays as float32 datasets (bools stay bool), as Isaac Lab writes them."""
    if isinstance(value, dict):
        sub = group.require_group(key)
        for k, v in value.items():
            _write_tree(sub, k, v)
        return
    array = np.asarray(value)
    data = array if array.dtype == bool else array.astype(np.float32)
    group.create_dataset(key, data=data, track_times=False)
