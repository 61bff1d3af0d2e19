"""Plain numpy references of the Warp kernels in ``kernels.py``: same names, arguments and outputs.

They define what the kernels compute; the tests hold the kernels to them, and the benchmark times both.
"""

from __future__ import annotations

import numpy as np

N_IDS = 256


def _per_frame_bincount(frames: np.ndarray, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    t = ids.shape[0]
    flat = (frames[:, None, None] * N_IDS + ids)[mask]
    return np.bincount(flat.ravel(), minlength=t * N_IDS).reshape(t, N_IDS).astype(np.int32)


def mask_change_counts(
    seg: np.ndarray, depth: np.ndarray, tol: float, device: str = "cpu"
) -> dict[str, np.ndarray]:
    t, h, w = seg.shape
    ids = seg.astype(np.int64)
    frames = np.arange(t)
    everywhere = np.ones_like(seg, dtype=bool)
    on_border = np.zeros((h, w), dtype=bool)
    on_border[[0, -1], :] = True
    on_border[:, [0, -1]] = True
    out = {
        "area": _per_frame_bincount(frames, ids, everywhere),
        "border": _per_frame_bincount(frames, ids, np.broadcast_to(on_border, seg.shape)),
        "lost_to_nearer": np.zeros((t, N_IDS), np.int32),
        "gained_from_nearer": np.zeros((t, N_IDS), np.int32),
    }
    if t > 1:
        changed = ids[1:] != ids[:-1]
        d0, d1 = depth[:-1], depth[1:]
        lost = changed & (d1 > 0) & ((d0 <= 0) | (d1 < d0 - tol))
        gained = changed & (d0 > 0) & ((d1 <= 0) | (d0 < d1 - tol))
        out["lost_to_nearer"][1:] = _per_frame_bincount(frames[:-1], ids[:-1], lost)
        out["gained_from_nearer"][1:] = _per_frame_bincount(frames[:-1], ids[1:], gained)
    return out


def object_points(
    seg: np.ndarray, depth: np.ndarray, is_tracked: np.ndarray, camera, device: str = "cpu"
) -> dict[str, np.ndarray]:
    t = seg.shape[0]
    ids = seg.astype(np.int64)
    valid = (depth > 0) & (is_tracked[ids] != 0)
    frames_v, rows, cols = np.nonzero(valid)
    d = depth[valid].astype(np.float64)
    x = (cols + 0.5 - camera.width / 2) / camera.fx * d
    y = -(rows + 0.5 - camera.height / 2) / camera.fy * d
    world = np.stack([x, y, -d], axis=-1) @ camera.rotation.T + camera.position
    key = frames_v * N_IDS + ids[valid]
    sums = np.zeros((t * N_IDS, 3))
    for axis in range(3):
        sums[:, axis] = np.bincount(key, weights=world[:, axis], minlength=t * N_IDS)
    z_max = np.full(t * N_IDS, -1e9)
    z_min = np.full(t * N_IDS, 1e9)
    np.maximum.at(z_max, key, world[:, 2])
    np.minimum.at(z_min, key, world[:, 2])
    return {
        "sums": sums.reshape(t, N_IDS, 3),
        "counts": np.bincount(key, minlength=t * N_IDS).reshape(t, N_IDS).astype(np.int32),
        "z_max": z_max.reshape(t, N_IDS).astype(np.float32),
        "z_min": z_min.reshape(t, N_IDS).astype(np.float32),
    }


def _rgb_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.astype(np.int16) - b.astype(np.int16)).max(axis=-1)


def flicker_counts(rgb: np.ndarray, tau: float, device: str = "cpu") -> np.ndarray:
    counts = np.zeros(rgb.shape[0], np.int32)
    if rgb.shape[0] >= 3:
        prev, cur, nxt = rgb[:-2], rgb[1:-1], rgb[2:]
        spike = (
            (_rgb_distance(cur, prev) > tau)
            & (_rgb_distance(cur, nxt) > tau)
            & (_rgb_distance(nxt, prev) < 0.5 * tau)
        )
        counts[1:-1] = spike.sum(axis=(1, 2))
    return counts


def static_depth_counts(
    seg: np.ndarray, depth: np.ndarray, is_static: np.ndarray, tol: float, device: str = "cpu"
) -> dict[str, np.ndarray]:
    total = np.zeros(seg.shape[0], np.int32)
    changed = np.zeros(seg.shape[0], np.int32)
    if seg.shape[0] >= 2:
        same = (seg[1:] == seg[:-1]) & (is_static[seg[:-1]] != 0) & (depth[:-1] > 0) & (depth[1:] > 0)
        total[1:] = same.sum(axis=(1, 2))
        changed[1:] = (same & (np.abs(depth[1:] - depth[:-1]) > tol)).sum(axis=(1, 2))
    return {"total": total, "changed": changed}


def boundary_edge_counts(
    seg: np.ndarray, depth: np.ndarray, is_tracked: np.ndarray, edge: float, device: str = "cpu"
) -> dict[str, np.ndarray]:
    t = seg.shape[0]
    ids = seg.astype(np.int64)
    boundary = np.zeros((t, N_IDS), np.int64)
    edged = np.zeros((t, N_IDS), np.int64)
    frames = np.arange(t)[:, None]
    for axis, shift in ((1, 1), (1, -1), (2, 1), (2, -1)):
        # Neighbour of pixel p along axis: p - shift (compared where the neighbour exists).
        nb_ids = np.roll(ids, shift, axis=axis)
        nb_depth = np.roll(depth, shift, axis=axis)
        exists = np.ones_like(seg, dtype=bool)
        index = [slice(None)] * 3
        index[axis] = 0 if shift == 1 else -1
        exists[tuple(index)] = False
        crossing = exists & (nb_ids != ids) & (is_tracked[ids] != 0)
        step = crossing & ((nb_depth <= 0) | (np.abs(nb_depth - depth) >= edge))
        flat_b = (frames[:, :, None] * N_IDS + ids)[crossing]
        flat_e = (frames[:, :, None] * N_IDS + ids)[step]
        boundary += np.bincount(flat_b, minlength=t * N_IDS).reshape(t, N_IDS)
        edged += np.bincount(flat_e, minlength=t * N_IDS).reshape(t, N_IDS)
    return {"boundary": boundary.astype(np.int32), "edged": edged.astype(np.int32)}


def pixel_counts(
    seg: np.ndarray,
    depth: np.ndarray,
    is_static: np.ndarray,
    is_tracked: np.ndarray,
    occlusion_tol: float,
    static_tol: float,
    edge_step: float,
    device: str = "cpu",
) -> dict[str, dict[str, np.ndarray]]:
    return {
        "mask": mask_change_counts(seg, depth, occlusion_tol),
        "static_depth": static_depth_counts(seg, depth, is_static, static_tol),
        "edges": boundary_edge_counts(seg, depth, is_tracked, edge_step),
    }


def state_distances(
    seg: np.ndarray,
    depth: np.ndarray,
    robot_id: int,
    slot: np.ndarray,
    camera,
    eef: np.ndarray,
    centres: np.ndarray,
    radius: np.ndarray,
    lag: int,
    depth_tol: float,
    device: str = "cpu",
) -> dict[str, np.ndarray]:
    t, k = centres.shape[:2]
    points = camera.unproject(depth.astype(np.float64))  # (T, H, W, 3)
    seen = depth > 0
    robot = seen & (seg == robot_id)
    out = {
        "robot_pixels": robot.sum(axis=(1, 2)).astype(np.int32),
        "robot_changed": np.zeros(t, np.int32),
        "robot_to_eef": np.full(t, np.inf, np.float32),
        "robot_to_object": np.full((t, k), np.inf, np.float32),
        "object_pixels": np.zeros((t, k), np.int32),
        "object_outside": np.zeros((t, k), np.int32),
    }
    if t > lag:
        was, now = seg[:-lag] == robot_id, seg[lag:] == robot_id
        moved = now & (np.abs(depth[lag:] - depth[:-lag]) > depth_tol)
        out["robot_changed"][lag:] = ((was != now) | moved).sum(axis=(1, 2))
    for f in range(t):
        arm = points[f][robot[f]]
        if len(arm):
            out["robot_to_eef"][f] = np.linalg.norm(arm - eef[f], axis=1).min()
            out["robot_to_object"][f] = np.linalg.norm(arm[:, None] - centres[f][None], axis=2).min(axis=0)
        for j in range(k):
            own = seen[f] & (slot[seg[f]] == j)
            out["object_pixels"][f, j] = own.sum()
            far = np.linalg.norm(points[f][own] - centres[f, j], axis=1) > radius[j]
            out["object_outside"][f, j] = far.sum()
    return out
