"""Inject each defect class a world model produces into real simulator clips, at three strengths.

Geometric defects move an object's pixels in 3-D (back-project with the clip's camera, displace,
re-project with a depth test) and fill the vacated pixels from their nearest unaffected neighbours, so
RGB, depth and segmentation stay mutually consistent; only the physics is wrong.

=============  ===========================================  ==========  ==========  ==========
class          what                                          mild        moderate    strong
=============  ===========================================  ==========  ==========  ==========
vanish         part of an object disappears for 3 frames      40 %        70 %        100 %
teleport       an object jumps sideways and stays there      3 cm        6 cm        12 cm
sink           an object drops into its support              1 cm        2 cm        4 cm
float          an object rises off its support for 6 frames  2 cm        4 cm        8 cm
flicker        a patch of 15 % of the image flashes 1 frame  15 levels   40 levels   80 levels
depth_jump     a patch of 15 % of the depth jumps 1 frame    1 cm        5 cm        15 cm
frozen         the frames stop while the actions and the     6 frames    12 frames   24 frames
               state move on
contradict     the frames retrace the clip backwards while   6 frames    12 frames   24 frames
               the actions and the state move forwards
state_drift    an object's state drifts sideways from where  2 cm        5 cm        10 cm
               its frames show it (reached over 10 frames)
=============  ===========================================  ==========  ==========  ==========

The last three are how a world model fails while every frame stays plausible; they touch only what
the model predicts (frames, or state) and need the clip's state and actions.
"""

from __future__ import annotations

import copy

import numpy as np

from .clip import Clip

STRENGTHS = ("mild", "moderate", "strong")
LEVELS = {
    "vanish": (0.4, 0.7, 1.0),
    "teleport": (0.03, 0.06, 0.12),
    "sink": (0.01, 0.02, 0.04),
    "float": (0.02, 0.04, 0.08),
    "flicker": (15.0, 40.0, 80.0),
    "depth_jump": (0.01, 0.05, 0.15),
    "frozen": (6, 12, 24),
    "contradict": (6, 12, 24),
    "state_drift": (0.02, 0.05, 0.10),
}
DEFECTS = tuple(LEVELS)
WORLD_MODEL_DEFECTS = ("frozen", "contradict", "state_drift")
DRIFT_FRAMES = 10


def _fill_from_neighbours(
    values: np.ndarray, hole: np.ndarray, source: np.ndarray | None = None
) -> np.ndarray:
    """Fill ``hole`` pixels of an (H, W, ...) image from the nearest ``source`` pixel (default: any
    non-hole pixel); filled pixels become sources in turn, so the fill grows inwards."""
    out = values.copy()
    hole = hole.copy()
    ok = ~hole if source is None else (source & ~hole)
    for _ in range(2 * max(hole.shape)):
        if not hole.any():
            break
        grew = False
        for dv, du in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            take = hole & np.roll(ok, (dv, du), axis=(0, 1))
            if take.any():
                out[take] = np.roll(out, (dv, du), axis=(0, 1))[take]
                hole, ok, grew = hole & ~take, ok | take, True
        if not grew:  # no source pixel reaches the rest: fall back to any neighbour
            ok = ~hole
    return out


def _reveal_background(clip: Clip, t: int, hole: np.ndarray) -> tuple[np.ndarray, ...]:
    """What a removed object would uncover: filled from nearby static surfaces (table, ground, bins),
    never from the robot or other objects in front."""
    source = np.isin(clip.seg[t], clip.static_ids)
    seg = _fill_from_neighbours(clip.seg[t], hole, source)
    depth = _fill_from_neighbours(clip.depth[t], hole, source)
    rgb = _fill_from_neighbours(clip.rgb[t], hole, source) if clip.rgb is not None else None
    return seg, depth, rgb


def _visible_frames(clip: Clip, instance: int, min_pixels: int = 20) -> np.ndarray:
    return np.nonzero((clip.seg == instance).sum(axis=(1, 2)) >= min_pixels)[0]


def _move(clip: Clip, t: int, instance: int, delta: np.ndarray, floor: float | None = None) -> None:
    """Displace the object's surface points in frame t by ``delta`` (metres, world) in place."""
    mask = clip.seg[t] == instance
    points = clip.camera.unproject(clip.depth[t])[mask] + delta
    colors = clip.rgb[t][mask] if clip.rgb is not None else None
    seg, depth, rgb = _reveal_background(clip, t, mask)
    keep = np.ones(len(points), dtype=bool) if floor is None else points[:, 2] >= floor
    u, v, d = clip.camera.project(points[keep])
    u, v = np.round(u).astype(int), np.round(v).astype(int)
    inside = (u >= 0) & (v >= 0) & (u < clip.camera.width) & (v < clip.camera.height) & (d > 0)
    for k in np.argsort(-d[inside]):  # far to near, so the nearest point wins each pixel
        uu, vv, dd = u[inside][k], v[inside][k], d[inside][k]
        if depth[vv, uu] <= 0 or dd < depth[vv, uu] + 0.005:
            depth[vv, uu], seg[vv, uu] = dd, instance
            if rgb is not None:
                rgb[vv, uu] = colors[keep][inside][k]
    clip.seg[t], clip.depth[t] = seg, depth
    if rgb is not None:
        clip.rgb[t] = rgb


def corrupt(clip: Clip, defect: str, strength: str, rng: np.random.Generator) -> tuple[Clip, dict]:
    """A corrupted copy of ``clip`` and a record of what was done (frames, object, level)."""
    if defect not in LEVELS or strength not in STRENGTHS:
        raise ValueError(f"unknown defect {defect!r} or strength {strength!r}")
    level = LEVELS[defect][STRENGTHS.index(strength)]
    out = copy.deepcopy(clip)
    t_count = out.frames
    record = {"defect": defect, "strength": strength, "level": level}

    if defect in WORLD_MODEL_DEFECTS:
        record["frames"] = _world_model_defect(out, defect, level, rng)
        return out, record

    if defect in ("flicker", "depth_jump"):
        t = int(rng.integers(1, t_count - 1))
        h, w = (out.rgb if defect == "flicker" else out.depth).shape[1:3]
        ph, pw = int(h * 0.39), int(w * 0.39)  # ~15 % of the image
        v0, u0 = int(rng.integers(0, h - ph)), int(rng.integers(0, w - pw))
        if defect == "flicker":
            patch = out.rgb[t, v0 : v0 + ph, u0 : u0 + pw].astype(np.int16)
            sign = 1 if patch.mean() < 128 else -1
            out.rgb[t, v0 : v0 + ph, u0 : u0 + pw] = np.clip(patch + sign * level, 0, 255).astype(np.uint8)
        else:
            region = out.depth[t, v0 : v0 + ph, u0 : u0 + pw]
            out.depth[t, v0 : v0 + ph, u0 : u0 + pw] = np.where(region > 0, region + level, region)
        record["frames"] = [t]
        return out, record

    obj = out.objects[int(rng.integers(len(out.objects)))]
    visible = _visible_frames(out, obj.instance)
    if visible.size < 8:
        raise ValueError(f"object {obj.name} is visible in too few frames to corrupt")
    record["object"] = obj.name
    if defect == "vanish":
        start = int(rng.choice(visible[1:-3]))
        frames = [t for t in range(start, start + 3) if t in set(visible.tolist())]
        for t in frames:
            vs, us = np.nonzero(out.seg[t] == obj.instance)
            order = np.argsort(vs if rng.random() < 0.5 else us)  # remove a contiguous part
            cut = order[: int(round(level * len(order)))]
            hole = np.zeros(out.seg[t].shape, dtype=bool)
            hole[vs[cut], us[cut]] = True
            seg, depth, rgb = _reveal_background(out, t, hole)
            out.seg[t], out.depth[t] = seg, depth
            if rgb is not None:
                out.rgb[t] = rgb
    elif defect == "teleport":
        start = int(rng.choice(visible[1:-1]))
        angle = rng.uniform(0, 2 * np.pi)
        delta = np.array([np.cos(angle), np.sin(angle), 0.0]) * level
        frames = [t for t in visible.tolist() if t >= start]
        for t in frames:
            _move(out, t, obj.instance, delta)
    else:  # sink or float: vertical moves while the object rests near the start of the clip
        early = visible[visible < t_count - 8]
        start = int(early[min(2, early.size - 1)])
        frames = (
            list(range(start, min(start + 6, t_count)))
            if defect == "float"
            else [t for t in visible.tolist() if t >= start]
        )
        dz = level if defect == "float" else -level
        for t in frames:
            _move(out, t, obj.instance, np.array([0.0, 0.0, dz]), floor=obj.support_top if dz < 0 else None)
    record["frames"] = frames
    return out, record


def _moving_start(clip: Clip, length: int, earliest: int, rng: np.random.Generator) -> int:
    """A start frame whose next ``length`` frames move the end effector at least 5 cm and change a tenth
    of the robot's pixels (the one that moves it most when none does): freezing or retracing frames in
    which the arm is out of view or still changes nothing."""
    last = clip.frames - length
    if last < earliest:
        raise ValueError(f"a clip of {clip.frames} frames is too short for a {length}-frame defect")
    starts = np.arange(earliest, last + 1)
    moved = np.linalg.norm(clip.eef[starts + length - 1] - clip.eef[starts], axis=1)
    robot = clip.seg == clip.robot_id
    changed = (robot[starts + length - 1] != robot[starts]).sum(axis=(1, 2))
    moving = starts[(moved >= 0.05) & (changed >= 0.1 * np.maximum(robot[starts].sum(axis=(1, 2)), 1))]
    return int(rng.choice(moving)) if moving.size else int(starts[np.argmax(moved)])


def _world_model_defect(clip: Clip, defect: str, level: float, rng: np.random.Generator) -> list[int]:
    """Apply one of WORLD_MODEL_DEFECTS in place; returns the frames it touched."""
    if clip.eef is None or clip.object_positions is None:
        raise ValueError(f"{defect} needs the clip's end-effector and object positions")
    images = [a for a in (clip.rgb, clip.depth, clip.seg) if a is not None]
    if defect == "frozen":
        length = int(level)
        start = _moving_start(clip, length, 1, rng)
        frames = list(range(start + 1, start + length))
        for a in images:
            a[frames] = a[start]
        return frames
    if defect == "contradict":
        length = int(level)
        start = _moving_start(clip, length, length - 1, rng)
        frames = list(range(start + 1, start + length))
        for a in images:
            a[frames] = a[[2 * start - t for t in frames]]
        return frames
    j = int(rng.integers(len(clip.objects)))
    start = int(rng.integers(1, max(clip.frames - DRIFT_FRAMES, 2)))
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.clip((np.arange(clip.frames) - start + 1) / DRIFT_FRAMES, 0.0, 1.0)
    clip.object_positions[:, j, :2] += ramp[:, None] * level * np.array([np.cos(angle), np.sin(angle)])
    return [int(t) for t in np.flatnonzero(ramp > 0)]
