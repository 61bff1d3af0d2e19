"""A Franka-Panda-like arm built from the Panda's published kinematics (modified DH) and joint limits.

The robot is authored in USD with standard UsdPhysics schemas only (ArticulationRootAPI, revolute and
prismatic joints with DriveAPI, capsule/box colliders) plus the PhysX attributes Isaac Sim reads
(armature, self-collision off). Bodies are authored at q = 0, where every joint frame pair coincides;
the home configuration is authored as the joints' initial state.

The numpy forward kinematics here is the reference the scripted experts' IK uses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Modified DH (Craig) per joint i: (a_{i-1}, d_i, alpha_{i-1}); the last row is the flange.
DH = np.array(
    [
        [0.0, 0.333, 0.0],
        [0.0, 0.0, -math.pi / 2],
        [0.0, 0.316, math.pi / 2],
        [0.0825, 0.0, math.pi / 2],
        [-0.0825, 0.384, -math.pi / 2],
        [0.0, 0.0, math.pi / 2],
        [0.088, 0.0, math.pi / 2],
        [0.0, 0.107, 0.0],
    ]
)
JOINT_LOWER = np.array([-2.8973, -1.7628, -2.8973, -3.0718, -2.8973, -0.0175, -2.8973])
JOINT_UPPER = np.array([2.8973, 1.7628, 2.8973, -0.0698, 2.8973, 3.7525, 2.8973])
HOME_Q = np.array([0.0, -0.3, 0.0, -2.2, 0.0, 1.9, math.pi / 4])
FINGER_MAX = 0.04  # metres of travel per finger
HAND_YAW = -math.pi / 4  # hand frame relative to the flange
HAND_TO_TCP = 0.1034  # tool centre point between the finger pads, along hand z
FINGER_ORIGIN_Z = 0.0584

LINK_NAMES = [f"panda_link{i}" for i in range(8)]
JOINT_NAMES = [f"panda_joint{i}" for i in range(1, 8)]
FINGER_JOINT_NAMES = ["panda_finger_joint1", "panda_finger_joint2"]
# Approximate identified masses (kg) of links 0-7, hand and each finger.
LINK_MASSES = [2.9, 4.97, 0.65, 3.23, 3.59, 1.23, 1.67, 0.74]
HAND_MASS, FINGER_MASS = 0.73, 0.1
LINK_RADII = [0.07, 0.065, 0.06, 0.06, 0.055, 0.055, 0.05, 0.045]

# Joint-space PD gains per radian: stiffness as in MuJoCo menagerie's Panda, damping near critical for
# the links' inertia (a larger damping torque saturates the effort limits and makes the arm lag), and
# effort limits from the datasheet; armature stabilises stiff drives at a 2 ms step.
STIFFNESS = np.array([4500.0, 4500.0, 3500.0, 3500.0, 2000.0, 2000.0, 2000.0])
DAMPING = np.array([100.0, 100.0, 80.0, 80.0, 35.0, 35.0, 35.0])
MAX_EFFORT = np.array([87.0, 87.0, 87.0, 87.0, 12.0, 12.0, 12.0])
ARMATURE = 0.1
FINGER_STIFFNESS, FINGER_DAMPING, FINGER_MAX_FORCE = 2000.0, 100.0, 70.0


def _dh_transform(a: float, d: float, alpha: float, theta: float) -> np.ndarray:
    ca, sa, ct, st = math.cos(alpha), math.sin(alpha), math.cos(theta), math.sin(theta)
    return np.array(
        [
            [ct, -st, 0.0, a],
            [st * ca, ct * ca, -sa, -d * sa],
            [st * sa, ct * sa, ca, d * ca],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )


def _rot_z(theta: float) -> np.ndarray:
    m = np.eye(4)
    c, s = math.cos(theta), math.sin(theta)
    m[:2, :2] = [[c, -s], [s, c]]
    return m


def link_frames(q: np.ndarray) -> list[np.ndarray]:
    """4x4 poses of link0..link7, the flange and the hand, relative to the base, for joint angles q (7,)."""
    frames = [np.eye(4)]
    for i in range(7):
        a, d, alpha = DH[i]
        frames.append(frames[-1] @ _dh_transform(a, d, alpha, float(q[i])))
    a, d, alpha = DH[7]
    flange = frames[-1] @ _dh_transform(a, d, alpha, 0.0)
    frames.append(flange)
    frames.append(flange @ _rot_z(HAND_YAW))
    return frames


def _tcp(frames: list[np.ndarray]) -> np.ndarray:
    tcp = frames[-1].copy()
    tcp[:3, 3] += tcp[:3, 2] * HAND_TO_TCP
    return tcp


def tcp_pose(q: np.ndarray) -> np.ndarray:
    """4x4 pose of the tool centre point relative to the base."""
    return _tcp(link_frames(q))


def tcp_pose_and_jacobian(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """TCP pose and its geometric 6x7 Jacobian (linear; angular) in the base frame, from one FK pass."""
    frames = link_frames(q)
    tcp = _tcp(frames)
    z = np.stack([f[:3, 2] for f in frames[1:8]], axis=1)
    o = np.stack([f[:3, 3] for f in frames[1:8]], axis=1)
    return tcp, np.vstack([np.cross(z.T, tcp[:3, 3] - o.T).T, z])


def _dh_transforms(a: float, d: float, alpha: float, theta: np.ndarray) -> np.ndarray:
    """:func:`_dh_transform` for a batch of joint angles (N,) -> (N, 4, 4)."""
    ca, sa = math.cos(alpha), math.sin(alpha)
    ct, st = np.cos(theta), np.sin(theta)
    out = np.zeros((len(theta), 4, 4))
    out[:, 0, 0], out[:, 0, 1], out[:, 0, 3] = ct, -st, a
    out[:, 1, 0], out[:, 1, 1], out[:, 1, 2], out[:, 1, 3] = st * ca, ct * ca, -sa, -d * sa
    out[:, 2, 0], out[:, 2, 1], out[:, 2, 2], out[:, 2, 3] = st * sa, ct * sa, ca, d * ca
    out[:, 3, 3] = 1.0
    return out


def tcp_poses_and_jacobians(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`tcp_pose_and_jacobian` for a batch of joint angles (N, 7): poses (N, 4, 4) and Jacobians
    (N, 6, 7), the same arithmetic vectorised (equal to the one-at-a-time results to rounding)."""
    q = np.asarray(q, dtype=float)
    frames = [np.broadcast_to(np.eye(4), (len(q), 4, 4))]
    for i in range(7):
        a, d, alpha = DH[i]
        frames.append(frames[-1] @ _dh_transforms(a, d, alpha, q[:, i]))
    a, d, alpha = DH[7]
    flange = frames[-1] @ _dh_transforms(a, d, alpha, np.zeros(len(q)))
    tcp = flange @ _rot_z(HAND_YAW)
    tcp[:, :3, 3] += tcp[:, :3, 2] * HAND_TO_TCP
    z = np.stack([f[:, :3, 2] for f in frames[1:8]], axis=2)  # (N, 3, 7)
    o = np.stack([f[:, :3, 3] for f in frames[1:8]], axis=2)
    linear = np.cross(z, tcp[:, :3, 3, None] - o, axis=1)
    return tcp, np.concatenate([linear, z], axis=1)


def tcp_jacobian(q: np.ndarray) -> np.ndarray:
    """Geometric 6x7 Jacobian (linear; angular) of the TCP in the base frame."""
    return tcp_pose_and_jacobian(q)[1]


@dataclass(frozen=True)
class LinkGeometry:
    """Collision capsule of a link in its own frame: from the origin to ``tip`` (metres)."""

    tip: np.ndarray
    radius: float
    mass: float


def link_geometry() -> list[LinkGeometry]:
    """One capsule per link reaching to the next joint origin at q = 0 (link7 reaches the flange)."""
    frames = link_frames(np.zeros(7))
    out = []
    for i in range(8):
        rel = np.linalg.inv(frames[i]) @ frames[i + 1]
        out.append(LinkGeometry(tip=rel[:3, 3].copy(), radius=LINK_RADII[i], mass=LINK_MASSES[i]))
    return out
