"""The arm controller shared by every backend: normalised actions in [-1, 1] to joint position targets.

``ee_delta`` actions are (dx, dy, dz, rx, ry, rz, gripper): a translation of the *commanded* tool
centre point (TCP) and a world-frame axis-angle rotation of its commanded orientation, scaled by the
embodiment's ``max_translation`` / ``max_rotation``. The commanded pose integrates the actions, and
damped-least-squares IK on the Panda's kinematics turns it into joint targets for the joint drives.
``joint_position`` actions map each joint's range linearly onto [-1, 1]. The gripper is -1 open and
+1 closed (robomimic's convention).
"""

from __future__ import annotations

import numpy as np

from .assets import panda
from .geometry import axis_angle_from_rotation, axis_angles_from_rotations, rotation_from_axis_angle
from .manifest import EmbodimentSpec

# TCP workspace (base frame): keeps the commanded pose reachable so IK never chases the impossible.
WORKSPACE_LOW = np.array([0.15, -0.6, 0.0])
WORKSPACE_HIGH = np.array([0.85, 0.6, 0.8])
IK_ITERATIONS = 8
IK_DAMPING = 0.05


def solve_ik(target: np.ndarray, q_init: np.ndarray, iterations: int = IK_ITERATIONS) -> np.ndarray:
    """Damped least squares from ``q_init`` towards a 4x4 TCP pose in the base frame."""
    q = np.array(q_init, dtype=float)
    for _ in range(iterations):
        pose, jac = panda.tcp_pose_and_jacobian(q)
        err = np.concatenate(
            [target[:3, 3] - pose[:3, 3], axis_angle_from_rotation(target[:3, :3] @ pose[:3, :3].T)]
        )
        if np.linalg.norm(err) < 1e-6:
            break
        dq = jac.T @ np.linalg.solve(jac @ jac.T + IK_DAMPING**2 * np.eye(6), err)
        q = np.clip(q + dq, panda.JOINT_LOWER, panda.JOINT_UPPER)
    return q


def solve_ik_batch(targets: np.ndarray, q_init: np.ndarray, iterations: int = IK_ITERATIONS) -> np.ndarray:
    """:func:`solve_ik` for N targets (N, 4, 4) from N starts (N, 7), vectorised: each row stops where
    its own error does, as one call would (equal to the one-at-a-time results to rounding)."""
    q = np.array(q_init, dtype=float)
    active = np.ones(len(q), dtype=bool)
    for _ in range(iterations):
        rows = np.flatnonzero(active)
        if not len(rows):
            break
        pose, jac = panda.tcp_poses_and_jacobians(q[rows])
        target = targets[rows]
        err = np.concatenate(
            [
                target[:, :3, 3] - pose[:, :3, 3],
                axis_angles_from_rotations(target[:, :3, :3] @ np.transpose(pose[:, :3, :3], (0, 2, 1))),
            ],
            axis=1,
        )
        converged = np.linalg.norm(err, axis=1) < 1e-6
        active[rows[converged]] = False
        rows, jac, err = rows[~converged], jac[~converged], err[~converged]
        jt = np.transpose(jac, (0, 2, 1))
        step = np.linalg.solve(jac @ jt + IK_DAMPING**2 * np.eye(6), err[:, :, None])
        q[rows] = np.clip(q[rows] + (jt @ step)[:, :, 0], panda.JOINT_LOWER, panda.JOINT_UPPER)
    return q


class ArmController:
    """Turns normalised actions into the 9 joint targets (7 arm + 2 fingers) of the Panda."""

    # Commanded TCP position (3) + rotation matrix, row-major (9) + arm targets (7) + finger target (1).
    # The matrix, not a quaternion, so a restored controller continues bit-identically.
    STATE_DIM = 20

    def __init__(self, embodiment: EmbodimentSpec, base_position: np.ndarray):
        self.embodiment = embodiment
        self.base = np.asarray(base_position, dtype=float)
        self.cmd_pose = np.eye(4)
        self.q_target = panda.HOME_Q.copy()
        self.finger_target = panda.FINGER_MAX

    @classmethod
    def for_manifest(cls, manifest) -> ArmController:
        """The controller of a manifest's robot, based on the table top at its base position."""
        base = manifest.embodiment.base_position
        return cls(manifest.embodiment, np.array([base[0], base[1], manifest.task.table.height]))

    @classmethod
    def from_env_state(cls, manifest, env_state: np.ndarray) -> ArmController:
        """The controller as it was when ``WorldgenEnv.get_state`` returned ``env_state``."""
        controller = cls.for_manifest(manifest)
        controller.set_state(np.asarray(env_state)[-(cls.STATE_DIM + 2) : -2])
        return controller

    @property
    def action_dim(self) -> int:
        return self.embodiment.action_dim

    def reset(self, q_arm: np.ndarray, finger: float) -> None:
        self.q_target = np.array(q_arm, dtype=float)
        self.cmd_pose = panda.tcp_pose(self.q_target)
        self.finger_target = float(finger)

    def targets(self) -> np.ndarray:
        return np.concatenate([self.q_target, [self.finger_target, self.finger_target]])

    def commanded_tcp_world(self) -> np.ndarray:
        pose = self.cmd_pose.copy()
        pose[:3, 3] += self.base
        return pose

    def apply(self, action: np.ndarray) -> np.ndarray:
        """Update the commanded pose from one action; returns the joint targets."""
        a = self._checked(action)
        if self.embodiment.action_space == "ee_delta":
            pose = self._next_pose(a)
            self.q_target = solve_ik(pose, self.q_target)
            self.cmd_pose = pose
        else:
            self.q_target = panda.JOINT_LOWER + (a[:7] + 1.0) / 2.0 * (panda.JOINT_UPPER - panda.JOINT_LOWER)
            self.cmd_pose = panda.tcp_pose(self.q_target)
        self.finger_target = panda.FINGER_MAX * (1.0 - a[-1]) / 2.0
        return self.targets()

    def _checked(self, action: np.ndarray) -> np.ndarray:
        a = np.clip(np.asarray(action, dtype=float), -1.0, 1.0)
        if a.shape != (self.action_dim,):
            raise ValueError(f"expected an action of shape ({self.action_dim},), got {a.shape}")
        return a

    def _next_pose(self, a: np.ndarray) -> np.ndarray:
        """The commanded TCP pose after an ``ee_delta`` action."""
        pose = self.cmd_pose.copy()
        pose[:3, 3] = np.clip(
            pose[:3, 3] + a[:3] * self.embodiment.max_translation, WORKSPACE_LOW, WORKSPACE_HIGH
        )
        pose[:3, :3] = rotation_from_axis_angle(a[3:6] * self.embodiment.max_rotation) @ pose[:3, :3]
        return pose

    def get_state(self) -> np.ndarray:
        return np.concatenate(
            [self.cmd_pose[:3, 3], self.cmd_pose[:3, :3].reshape(-1), self.q_target, [self.finger_target]]
        )

    def set_state(self, state: np.ndarray) -> None:
        state = np.asarray(state, dtype=float)
        self.cmd_pose = np.eye(4)
        self.cmd_pose[:3, 3] = state[:3]
        self.cmd_pose[:3, :3] = state[3:12].reshape(3, 3)
        self.q_target = state[12:19].copy()
        self.finger_target = float(state[19])


def apply_actions(controllers: list[ArmController], actions: np.ndarray) -> np.ndarray:
    """:meth:`ArmController.apply` for many controllers at once (N, 9), their IK solved together
    (:func:`solve_ik_batch`); joint-space controllers need no IK and apply one by one."""
    if not controllers or controllers[0].embodiment.action_space != "ee_delta":
        return np.stack([c.apply(a) for c, a in zip(controllers, actions, strict=True)])
    checked = [c._checked(a) for c, a in zip(controllers, actions, strict=True)]
    poses = np.stack([c._next_pose(a) for c, a in zip(controllers, checked, strict=True)])
    q = solve_ik_batch(poses, np.stack([c.q_target for c in controllers]))
    for c, a, pose, q_target in zip(controllers, checked, poses, q, strict=True):
        c.q_target, c.cmd_pose = q_target, pose
        c.finger_target = panda.FINGER_MAX * (1.0 - a[-1]) / 2.0
    return np.stack([c.targets() for c in controllers])
