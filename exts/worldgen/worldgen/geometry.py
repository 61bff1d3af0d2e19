"""Small rigid-transform helpers shared by the stage compiler, the controller and the backends.

Quaternions are (w, x, y, z) unless a name says ``xyzw`` (Warp, Newton and robomimic use x, y, z, w).
Matrices act on column vectors.
"""

from __future__ import annotations

import math

import numpy as np


def quat_from_matrix(m: np.ndarray) -> np.ndarray:
    """Unit quaternion (w, x, y, z), w >= 0, of the rotation part of a 3x3 or 4x4 matrix."""
    r = np.asarray(m, dtype=float)[:3, :3]
    trace = np.trace(r)
    if trace > 0:
        s = 2.0 * math.sqrt(trace + 1.0)
        q = [0.25 * s, (r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s]
    else:
        i = int(np.argmax(np.diag(r)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * math.sqrt(1.0 + r[i, i] - r[j, j] - r[k, k])
        q = [0.0, 0.0, 0.0, 0.0]
        q[0] = (r[k, j] - r[j, k]) / s
        q[1 + i] = 0.25 * s
        q[1 + j] = (r[j, i] + r[i, j]) / s
        q[1 + k] = (r[k, i] + r[i, k]) / s
    q = np.asarray(q)
    return q / np.linalg.norm(q) * (1.0 if q[0] >= 0 else -1.0)


def matrix_from_quat(q: np.ndarray) -> np.ndarray:
    """3x3 rotation matrix of a quaternion (w, x, y, z)."""
    w, x, y, z = np.asarray(q, dtype=float) / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def wxyz_to_xyzw(q: np.ndarray) -> np.ndarray:
    return np.asarray(q)[..., [1, 2, 3, 0]]


def xyzw_to_wxyz(q: np.ndarray) -> np.ndarray:
    return np.asarray(q)[..., [3, 0, 1, 2]]


def rotation_from_axis_angle(v: np.ndarray) -> np.ndarray:
    """Rodrigues: the rotation by |v| radians about v."""
    v = np.asarray(v, dtype=float)
    angle = float(np.linalg.norm(v))
    if angle < 1e-12:
        return np.eye(3)
    k = v / angle
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(angle) * kx + (1 - math.cos(angle)) * kx @ kx


def axis_angle_from_rotation(r: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rotation_from_axis_angle` (angle in [0, pi])."""
    q = quat_from_matrix(r)
    s = float(np.linalg.norm(q[1:]))
    if s < 1e-12:
        return np.zeros(3)
    return q[1:] / s * 2.0 * math.atan2(s, q[0])


def axis_angles_from_rotations(r: np.ndarray) -> np.ndarray:
    """:func:`axis_angle_from_rotation` for a batch of 3x3 matrices (N, 3, 3) -> (N, 3): the common case
    (positive trace) vectorised, any other row one at a time."""
    r = np.asarray(r, dtype=float)
    out = np.empty((len(r), 3))
    trace = np.trace(r, axis1=1, axis2=2)
    common = trace > 0
    if common.any():
        m = r[common]
        s = 2.0 * np.sqrt(trace[common] + 1.0)
        q = np.stack(
            [
                0.25 * s,
                (m[:, 2, 1] - m[:, 1, 2]) / s,
                (m[:, 0, 2] - m[:, 2, 0]) / s,
                (m[:, 1, 0] - m[:, 0, 1]) / s,
            ],
            axis=1,
        )
        q = q / np.linalg.norm(q, axis=1, keepdims=True)  # w > 0 here
        sin_half = np.linalg.norm(q[:, 1:], axis=1)
        safe = np.where(sin_half < 1e-12, 1.0, sin_half)
        axis_angle = q[:, 1:] / safe[:, None] * (2.0 * np.arctan2(sin_half, q[:, 0]))[:, None]
        out[common] = np.where((sin_half < 1e-12)[:, None], 0.0, axis_angle)
    for i in np.flatnonzero(~common):
        out[i] = axis_angle_from_rotation(r[i])
    return out


def rot_z(theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def look_at_matrix(position, target) -> np.ndarray:
    """Rotation of a camera at ``position`` looking at ``target``: it looks down its -Z, +Y up."""
    forward = np.subtract(target, position).astype(float)
    forward /= np.linalg.norm(forward)
    up = np.array([0.0, 0.0, 1.0]) if abs(forward[2]) < 0.99 else np.array([1.0, 0.0, 0.0])
    right = np.cross(forward, up)
    right /= np.linalg.norm(right)
    return np.stack([right, np.cross(right, forward), -forward], axis=1)
