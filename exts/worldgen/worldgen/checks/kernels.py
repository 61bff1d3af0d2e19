"""Warp kernels that reduce a clip's frames to the per-frame, per-instance statistics the checks score.

One thread per (frame, image row), looping over the row: on CPU, Warp's cost per thread is as large
as a pixel's work, and a row per thread took the kernels from 3.1x to 8.2x their numpy references
(bench/checks_throughput.py, 2 CPU cores).
Results land in small (T, 256) tables through atomics. Each launch
function returns numpy arrays with the same names and shapes as its reference in ``reference.py``.
Runs on CPU or CUDA (``device``); integer counts match the reference exactly, float sums to rounding.
"""

from __future__ import annotations

import numpy as np

from ..warp_setup import quiet_warp

wp = quiet_warp()

N_IDS = 256  # instance ids are uint8


@wp.func
def count_mask_change(
    seg: wp.array3d(dtype=wp.uint8),
    depth: wp.array3d(dtype=wp.float32),
    tol: wp.float32,
    t: int,
    v: int,
    u: int,
    area: wp.array2d(dtype=wp.int32),
    border: wp.array2d(dtype=wp.int32),
    lost_to_nearer: wp.array2d(dtype=wp.int32),
    gained_from_nearer: wp.array2d(dtype=wp.int32),
):
    """Mask areas, border contact, and label changes that a nearer surface arriving/leaving explains."""
    cur = int(seg[t, v, u])
    wp.atomic_add(area, t, cur, 1)
    if v == 0 or u == 0 or v == seg.shape[1] - 1 or u == seg.shape[2] - 1:
        wp.atomic_add(border, t, cur, 1)
    if t > 0:
        prev = int(seg[t - 1, v, u])
        if prev != cur:
            d0 = depth[t - 1, v, u]
            d1 = depth[t, v, u]
            if d1 > 0.0 and (d0 <= 0.0 or d1 < d0 - tol):
                wp.atomic_add(lost_to_nearer, t, prev, 1)
            if d0 > 0.0 and (d1 <= 0.0 or d0 < d1 - tol):
                wp.atomic_add(gained_from_nearer, t, cur, 1)


@wp.func
def count_static_depth(
    seg: wp.array3d(dtype=wp.uint8),
    depth: wp.array3d(dtype=wp.float32),
    is_static: wp.array(dtype=wp.int32),
    tol: wp.float32,
    t: int,
    v: int,
    u: int,
    total: wp.array(dtype=wp.int32),
    changed: wp.array(dtype=wp.int32),
):
    """Pixels showing the same static instance in frames t-1 and t, and how many changed depth."""
    a = int(seg[t - 1, v, u])
    if a != int(seg[t, v, u]) or is_static[a] == 0:
        return
    d0 = depth[t - 1, v, u]
    d1 = depth[t, v, u]
    if d0 <= 0.0 or d1 <= 0.0:
        return
    wp.atomic_add(total, t, 1)
    if wp.abs(d1 - d0) > tol:
        wp.atomic_add(changed, t, 1)


@wp.func
def count_boundary_edges(
    seg: wp.array3d(dtype=wp.uint8),
    depth: wp.array3d(dtype=wp.float32),
    is_tracked: wp.array(dtype=wp.int32),
    edge: wp.float32,
    t: int,
    v: int,
    u: int,
    boundary: wp.array2d(dtype=wp.int32),
    edged: wp.array2d(dtype=wp.int32),
):
    """Neighbour pairs across a tracked object's outline, and those with a depth step at least ``edge``."""
    i = int(seg[t, v, u])
    if is_tracked[i] == 0:
        return
    d = depth[t, v, u]
    for n in range(4):
        dv = 0
        du = 0
        if n == 0:
            dv = -1
        elif n == 1:
            dv = 1
        elif n == 2:
            du = -1
        else:
            du = 1
        vv = v + dv
        uu = u + du
        # Nested, not "and": Warp does not short-circuit, and the read below must stay in bounds.
        if vv >= 0 and uu >= 0 and vv < seg.shape[1] and uu < seg.shape[2]:  # noqa: SIM102
            if int(seg[t, vv, uu]) != i:
                wp.atomic_add(boundary, t, i, 1)
                dn = depth[t, vv, uu]
                if dn <= 0.0 or wp.abs(dn - d) >= edge:
                    wp.atomic_add(edged, t, i, 1)


@wp.func
def world_point(
    u: int,
    v: int,
    d: float,
    width: int,
    height: int,
    fx: float,
    fy: float,
    rotation: wp.mat33,
    position: wp.vec3,
) -> wp.vec3:
    """The world point pixel (u, v) shows at optical depth ``d`` (``PinholeCamera.unproject``)."""
    x = (float(u) + 0.5 - float(width) * 0.5) / fx * d
    y = -(float(v) + 0.5 - float(height) * 0.5) / fy * d
    return rotation * wp.vec3(x, y, -d) + position


@wp.kernel
def pixel_counts_kernel(
    seg: wp.array3d(dtype=wp.uint8),
    depth: wp.array3d(dtype=wp.float32),
    is_static: wp.array(dtype=wp.int32),
    is_tracked: wp.array(dtype=wp.int32),
    occlusion_tol: wp.float32,
    static_tol: wp.float32,
    edge_step: wp.float32,
    area: wp.array2d(dtype=wp.int32),
    border: wp.array2d(dtype=wp.int32),
    lost_to_nearer: wp.array2d(dtype=wp.int32),
    gained_from_nearer: wp.array2d(dtype=wp.int32),
    static_total: wp.array(dtype=wp.int32),
    static_changed: wp.array(dtype=wp.int32),
    boundary: wp.array2d(dtype=wp.int32),
    edged: wp.array2d(dtype=wp.int32),
):
    """The segmentation + depth counts of one image row, in one pass over the clip."""
    t, v = wp.tid()
    for u in range(seg.shape[2]):
        count_mask_change(
            seg, depth, occlusion_tol, t, v, u, area, border, lost_to_nearer, gained_from_nearer
        )
        if t > 0:
            count_static_depth(seg, depth, is_static, static_tol, t, v, u, static_total, static_changed)
        count_boundary_edges(seg, depth, is_tracked, edge_step, t, v, u, boundary, edged)


@wp.kernel
def object_points_kernel(
    seg: wp.array3d(dtype=wp.uint8),
    depth: wp.array3d(dtype=wp.float32),
    is_tracked: wp.array(dtype=wp.int32),
    fx: wp.float32,
    fy: wp.float32,
    rotation: wp.mat33,
    position: wp.vec3,
    sums: wp.array2d(dtype=wp.vec3d),
    counts: wp.array2d(dtype=wp.int32),
    z_max_um: wp.array2d(dtype=wp.int32),
    z_min_um: wp.array2d(dtype=wp.int32),
):
    """Back-project tracked objects' pixels to the world (one image row per thread); accumulate centroid
    sums and z extent.

    The extent is kept in integer micrometres: integer atomics are exact under Warp's multi-threaded
    CPU launches, where a float max/min could lose an update."""
    t, v = wp.tid()
    for u in range(seg.shape[2]):
        i = int(seg[t, v, u])
        d = depth[t, v, u]
        if d <= 0.0 or is_tracked[i] == 0:
            continue
        p = world_point(u, v, d, seg.shape[2], seg.shape[1], fx, fy, rotation, position)
        wp.atomic_add(sums, t, i, wp.vec3d(wp.float64(p[0]), wp.float64(p[1]), wp.float64(p[2])))
        wp.atomic_add(counts, t, i, 1)
        z_um = int(wp.round(p[2] * 1.0e6))
        wp.atomic_max(z_max_um, t, i, z_um)
        wp.atomic_min(z_min_um, t, i, z_um)


@wp.kernel
def state_distances_kernel(
    seg: wp.array3d(dtype=wp.uint8),
    depth: wp.array3d(dtype=wp.float32),
    robot_id: int,
    slot: wp.array(dtype=wp.int32),
    fx: wp.float32,
    fy: wp.float32,
    rotation: wp.mat33,
    position: wp.vec3,
    eef: wp.array(dtype=wp.vec3),
    centres: wp.array2d(dtype=wp.vec3),
    radius: wp.array(dtype=wp.float32),
    lag: int,
    depth_tol: wp.float32,
    robot_pixels: wp.array(dtype=wp.int32),
    robot_changed: wp.array(dtype=wp.int32),
    robot_to_eef_um: wp.array(dtype=wp.int32),
    robot_to_object_um: wp.array2d(dtype=wp.int32),
    object_pixels: wp.array2d(dtype=wp.int32),
    object_outside: wp.array2d(dtype=wp.int32),
):
    """Where the frames put the robot and the objects, against where the state says they are (one image
    row per thread).

    A robot pixel's surface point updates the frame's nearest distance to the state's end effector and
    to each object's state centre (integer micrometres: exact under threaded CPU atomics); a pixel of
    tracked object k counts as outside when its point lies beyond ``radius[k]`` of the state's centre; a
    pixel that shows the robot in frame t or t - ``lag`` but not both, or its depth changed by more than
    ``depth_tol``, counts as changed robot."""
    t, v = wp.tid()
    for u in range(seg.shape[2]):
        d = depth[t, v, u]
        i = int(seg[t, v, u])
        if t >= lag:
            was = int(seg[t - lag, v, u]) == robot_id
            now = i == robot_id
            if was != now or (now and wp.abs(d - depth[t - lag, v, u]) > depth_tol):
                wp.atomic_add(robot_changed, t, 1)
        k = slot[i]
        if d <= 0.0 or (i != robot_id and k < 0):
            continue
        p = world_point(u, v, d, seg.shape[2], seg.shape[1], fx, fy, rotation, position)
        if i == robot_id:
            wp.atomic_add(robot_pixels, t, 1)
            wp.atomic_min(robot_to_eef_um, t, int(wp.round(wp.length(p - eef[t]) * 1.0e6)))
            for j in range(centres.shape[1]):
                to_object = int(wp.round(wp.length(p - centres[t, j]) * 1.0e6))
                wp.atomic_min(robot_to_object_um, t, j, to_object)
        else:
            wp.atomic_add(object_pixels, t, k, 1)
            if wp.length(p - centres[t, k]) > radius[k]:
                wp.atomic_add(object_outside, t, k, 1)


@wp.func
def rgb_distance(rgb: wp.array4d(dtype=wp.uint8), ta: int, tb: int, v: int, u: int) -> float:
    d = 0.0
    for c in range(3):
        d = wp.max(d, wp.abs(float(rgb[ta, v, u, c]) - float(rgb[tb, v, u, c])))
    return d


@wp.kernel
def flicker_counts_kernel(rgb: wp.array4d(dtype=wp.uint8), tau: wp.float32, counts: wp.array(dtype=wp.int32)):
    """Pixels of frame t that jump away from t-1 and back at t+1 while t-1 and t+1 agree (a row per
    thread)."""
    k, v = wp.tid()
    t = k + 1
    for u in range(rgb.shape[2]):
        # Nested, not "and": Warp evaluates every operand of "and", and most pixels fail the first test.
        if rgb_distance(rgb, t, t - 1, v, u) > tau:  # noqa: SIM102
            if rgb_distance(rgb, t, t + 1, v, u) > tau and rgb_distance(rgb, t + 1, t - 1, v, u) < 0.5 * tau:
                wp.atomic_add(counts, t, 1)


def _zeros(shape, dtype, device):
    return wp.zeros(shape, dtype=dtype, device=device)


def as_warp(array, dtype, device: str = "cpu"):
    """A Warp view of a numpy array (no copy on CPU when the layout allows); Warp arrays pass through,
    so a caller can upload a clip once and run every kernel on it."""
    if isinstance(array, wp.array):
        return array
    return wp.array(np.ascontiguousarray(array), dtype=dtype, device=device, copy=device != "cpu")


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
    """Mask-change, static-depth and outline-edge counts (see the ``count_*`` functions)."""
    t = seg.shape[0]
    mask = {
        k: _zeros((t, N_IDS), wp.int32, device)
        for k in ("area", "border", "lost_to_nearer", "gained_from_nearer")
    }
    static = {k: _zeros(t, wp.int32, device) for k in ("total", "changed")}
    edges = {k: _zeros((t, N_IDS), wp.int32, device) for k in ("boundary", "edged")}
    wp.launch(
        pixel_counts_kernel,
        dim=seg.shape[:2],
        inputs=[
            as_warp(seg, wp.uint8, device),
            as_warp(depth, wp.float32, device),
            as_warp(is_static.astype(np.int32), wp.int32, device),
            as_warp(is_tracked.astype(np.int32), wp.int32, device),
            occlusion_tol,
            static_tol,
            edge_step,
        ],
        outputs=[*mask.values(), *static.values(), *edges.values()],
        device=device,
    )
    return {
        "mask": {k: v.numpy() for k, v in mask.items()},
        "static_depth": {k: v.numpy() for k, v in static.items()},
        "edges": {k: v.numpy() for k, v in edges.items()},
    }


def object_points(
    seg: np.ndarray, depth: np.ndarray, is_tracked: np.ndarray, camera, device: str = "cpu"
) -> dict[str, np.ndarray]:
    """Per tracked instance and frame: sum of its surface points (world), their count and z extent."""
    t = seg.shape[0]
    sums = _zeros((t, N_IDS), wp.vec3d, device)  # float64: thousands of points per instance
    counts = _zeros((t, N_IDS), wp.int32, device)
    z_max = wp.full((t, N_IDS), -(2**31) + 1, dtype=wp.int32, device=device)
    z_min = wp.full((t, N_IDS), 2**31 - 1, dtype=wp.int32, device=device)
    wp.launch(
        object_points_kernel,
        dim=seg.shape[:2],
        inputs=[
            as_warp(seg, wp.uint8, device),
            as_warp(depth, wp.float32, device),
            as_warp(is_tracked.astype(np.int32), wp.int32, device),
            float(camera.fx),
            float(camera.fy),
            wp.mat33(*np.asarray(camera.rotation, dtype=np.float32).reshape(-1)),
            wp.vec3(*np.asarray(camera.position, dtype=np.float32)),
        ],
        outputs=[sums, counts, z_max, z_min],
        device=device,
    )
    empty = counts.numpy() == 0
    z_max_m = np.where(empty, -1e9, z_max.numpy() * 1e-6).astype(np.float32)
    z_min_m = np.where(empty, 1e9, z_min.numpy() * 1e-6).astype(np.float32)
    return {"sums": sums.numpy(), "counts": counts.numpy(), "z_max": z_max_m, "z_min": z_min_m}


def flicker_counts(rgb: np.ndarray, tau: float, device: str = "cpu") -> np.ndarray:
    counts = _zeros(rgb.shape[0], wp.int32, device)
    if rgb.shape[0] >= 3:
        wp.launch(
            flicker_counts_kernel,
            dim=(rgb.shape[0] - 2, rgb.shape[1]),
            inputs=[as_warp(rgb, wp.uint8, device), tau],
            outputs=[counts],
            device=device,
        )
    return counts.numpy()


FAR_UM = 2**31 - 1  # "no robot pixel": the initial value of the nearest-distance minima


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
    """Per frame: robot pixels, those changed since frame t - ``lag``, and their nearest distance (m) to
    the state's end effector ``eef`` (T, 3) and to each object centre ``centres`` (T, K, 3); per frame and
    object: its pixels and those farther than ``radius`` (K,) from its centre. ``slot`` (256,) maps an
    instance id to its object index or -1."""
    t, k = centres.shape[:2]
    robot_pixels = _zeros(t, wp.int32, device)
    robot_changed = _zeros(t, wp.int32, device)
    to_eef = wp.full(t, FAR_UM, dtype=wp.int32, device=device)
    to_object = wp.full((t, k), FAR_UM, dtype=wp.int32, device=device)
    object_pixels = _zeros((t, k), wp.int32, device)
    outside = _zeros((t, k), wp.int32, device)
    wp.launch(
        state_distances_kernel,
        dim=seg.shape[:2],
        inputs=[
            as_warp(seg, wp.uint8, device),
            as_warp(depth, wp.float32, device),
            int(robot_id),
            as_warp(slot.astype(np.int32), wp.int32, device),
            float(camera.fx),
            float(camera.fy),
            wp.mat33(*np.asarray(camera.rotation, dtype=np.float32).reshape(-1)),
            wp.vec3(*np.asarray(camera.position, dtype=np.float32)),
            as_warp(eef.astype(np.float32), wp.vec3, device),
            as_warp(centres.astype(np.float32), wp.vec3, device),
            as_warp(radius.astype(np.float32), wp.float32, device),
            int(lag),
            float(depth_tol),
        ],
        outputs=[robot_pixels, robot_changed, to_eef, to_object, object_pixels, outside],
        device=device,
    )
    return {
        "robot_pixels": robot_pixels.numpy(),
        "robot_changed": robot_changed.numpy(),
        "robot_to_eef": _metres(to_eef.numpy()),
        "robot_to_object": _metres(to_object.numpy()),
        "object_pixels": object_pixels.numpy(),
        "object_outside": outside.numpy(),
    }


def _metres(um: np.ndarray) -> np.ndarray:
    return np.where(um == FAR_UM, np.inf, um * 1e-6).astype(np.float32)
