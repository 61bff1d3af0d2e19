"""Physics-consistency checks on clips: Warp kernels reduce frames to per-frame statistics (numpy
references beside them), and small host-side functions turn those into one score per check.

A score above its threshold fails the check; a check whose inputs are missing is ``skipped``, never
``passed``. Thresholds default to ``max(physical bound, margin x 99.9th percentile on seed clips)``.

=============  ====================  =================================================================
check          needs                 score (higher is worse)
=============  ====================  =================================================================
permanence     seg, depth            largest unexplained relative change of an object's mask area
                                     between frames (a nearer surface arriving/leaving explains it;
                                     frames where the object touches the image border are exempt)
teleport       seg, depth, camera    fastest 3-D centroid speed of an object, m/s
acceleration   seg, depth, camera    largest 3-D centroid acceleration, m/s^2, away from the support
                                     (impacts with the support are exempt)
penetration    seg, depth, camera    how far an object's top lies below where its support puts it, m
floating       seg, depth, camera    longest run of frames with an object above its support, not near
                                     the robot and not falling (an ungrasped object must fall at g)
flicker        rgb                   largest fraction of pixels that jump for exactly one frame
depth          seg, depth            largest fraction of static pixels whose depth changes (per 0.02),
                                     or drop of an object's outline depth edges below the clip's
                                     median (per 0.5)
=============  ====================  =================================================================
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from ..manifest import CHECK_NAMES  # re-exported: the manifest validates the same names
from .clip import Clip, PinholeCamera, TrackedObject, clip_from_demo

PHYSICAL_BOUNDS = {
    "permanence": 0.35,  # a third of an object's visible area cannot vanish or appear unexplained
    "teleport": 1.0,  # m/s: faster than the arm moves anything in these tasks
    "acceleration": 20.0,  # m/s^2: two g away from impacts
    "penetration": 0.01,  # m
    "floating": 3.0,  # frames
    "flicker": 0.005,  # fraction of the image
    "depth": 1.0,  # multiples of STATIC_UNSTABLE / EDGE_DROP
}
STATIC_UNSTABLE = 0.02  # fraction of static pixels whose depth may change between frames
EDGE_DROP = 0.5  # drop of an object's outline depth-edge ratio below the clip's median
CALIBRATION_MARGIN = 1.5
OCCLUSION_TOL = 0.01  # m: a surface this much nearer counts as an occluder
STATIC_DEPTH_TOL = 0.01  # m
EDGE_STEP = 0.01  # m: a depth step this large marks a real outline
FLICKER_TAU = 25.0  # 8-bit levels
MIN_PIXELS = 6  # an object needs this many visible pixels to be measured
FLOAT_HEIGHT = 0.015  # m above the support
FALLING_SPEED = 0.3  # m/s downwards counts as falling
ROBOT_NEAR_PX = 3  # robot pixels this close to an object's box mean it may be holding it
__all__ = [
    "CHECK_NAMES",
    "CheckResult",
    "Clip",
    "PinholeCamera",
    "TrackedObject",
    "clip_from_demo",
    "clip_statistics",
    "clip_scores",
    "run_checks",
    "thresholds_from_scores",
]


@dataclass
class CheckResult:
    verdict: str  # "passed" | "failed" | "skipped"
    score: float | None = None
    threshold: float | None = None
    frames: list[int] = field(default_factory=list)  # frames where the score exceeds the threshold
    reason: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def _backend(name: str):
    if name == "warp":
        from . import kernels

        return kernels
    from . import reference

    return reference


def clip_statistics(clip: Clip, backend: str = "warp", device: str = "cpu") -> dict[str, dict]:
    """Run the reductions the available inputs allow (``backend`` ``warp`` or ``numpy``)."""
    k = _backend(backend)
    stats: dict[str, dict] = {}
    seg, depth, rgb = clip.seg, clip.depth, clip.rgb
    if backend == "warp":  # upload each input once for all kernels
        import warp as wp

        seg = None if seg is None else k.as_warp(seg, wp.uint8, device)
        depth = None if depth is None else k.as_warp(depth, wp.float32, device)
        rgb = None if rgb is None else k.as_warp(rgb, wp.uint8, device)
    tracked = np.zeros(256, np.int32)
    tracked[[o.instance for o in clip.objects]] = 1
    is_static = np.zeros(256, np.int32)
    is_static[list(clip.static_ids)] = 1
    if seg is not None and depth is not None:
        stats.update(
            k.pixel_counts(
                seg, depth, is_static, tracked, OCCLUSION_TOL, STATIC_DEPTH_TOL, EDGE_STEP, device=device
            )
        )
        if clip.camera is not None:
            stats["points"] = k.object_points(seg, depth, tracked, clip.camera, device=device)
    if rgb is not None:
        stats["flicker"] = {"counts": k.flicker_counts(rgb, FLICKER_TAU, device=device)}
    return stats


def _robot_near(seg: np.ndarray, instance: int, robot: int) -> np.ndarray:
    """Per frame: robot pixels inside the object's image box grown by ROBOT_NEAR_PX."""
    near = np.zeros(seg.shape[0], dtype=bool)
    for t in range(seg.shape[0]):
        vs, us = np.nonzero(seg[t] == instance)
        if vs.size == 0:
            continue
        r = ROBOT_NEAR_PX
        box = seg[t, max(vs.min() - r, 0) : vs.max() + r + 1, max(us.min() - r, 0) : us.max() + r + 1]
        near[t] = bool((box == robot).any())
    return near


def _longest_run(flags: np.ndarray) -> int:
    best = run = 0
    for f in flags:
        run = run + 1 if f else 0
        best = max(best, run)
    return best


Score = tuple[float | None, np.ndarray | None]  # (clip score, per-frame scores); (None, None): no input


def _permanence(clip: Clip, stats: dict[str, dict]) -> dict[str, Score]:
    """Mask area a tracked object loses or gains between frames, beyond what a nearer surface explains."""
    m, t_count = stats["mask"], clip.frames
    per_frame = np.zeros(t_count)
    for o in clip.objects:
        i = o.instance
        for t in range(1, t_count):
            a0, a1 = int(m["area"][t - 1, i]), int(m["area"][t, i])
            if m["border"][t - 1, i] or m["border"][t, i] or max(a0, a1) < MIN_PIXELS:
                continue
            loss = max(0, a0 - a1 - int(m["lost_to_nearer"][t, i])) / max(a0, MIN_PIXELS)
            gain = max(0, a1 - a0 - int(m["gained_from_nearer"][t, i])) / max(a1, MIN_PIXELS)
            per_frame[t] = max(per_frame[t], loss, gain)
    return {"permanence": (float(per_frame.max(initial=0.0)), per_frame)}


def _motion(clip: Clip, stats: dict[str, dict]) -> dict[str, Score]:
    """From each object's back-projected centroid and top: speed (teleport), acceleration while clear of
    the support, how far its base sinks below the support (penetration), and hovering (floating)."""
    p, t_count = stats["points"], clip.frames
    speed, accel, sink, floating = (np.zeros(t_count) for _ in range(4))
    for o in clip.objects:
        i = o.instance
        valid = p["counts"][:, i] >= MIN_PIXELS
        c = p["sums"][:, i] / np.maximum(p["counts"][:, i], 1)[:, None]
        top = p["z_max"][:, i].astype(float)
        bottom = top - min(o.size)  # where the object's base is if it rests on its smallest extent
        height = bottom - o.support_top
        v = np.zeros((t_count, 3))
        both = valid[1:] & valid[:-1]
        v[1:][both] = (c[1:] - c[:-1])[both] * clip.fps
        speed[1:] = np.maximum(speed[1:], np.where(both, np.linalg.norm(v[1:], axis=1), 0.0))
        three = valid[2:] & valid[1:-1] & valid[:-2]
        a = np.linalg.norm(c[2:] - 2 * c[1:-1] + c[:-2], axis=1) * clip.fps**2
        clear = (height[2:] > FLOAT_HEIGHT) & (height[1:-1] > FLOAT_HEIGHT) & (height[:-2] > FLOAT_HEIGHT)
        accel[1:-1] = np.maximum(accel[1:-1], np.where(three & clear, a, 0.0))
        sink = np.maximum(sink, np.where(valid, -height, -np.inf))
        near = _robot_near(clip.seg, i, clip.robot_id)
        falling = v[:, 2] < -FALLING_SPEED
        floating_now = valid & (height > FLOAT_HEIGHT) & ~near & ~falling
        floating = np.maximum(floating, floating_now.astype(float))
    finite = np.where(np.isfinite(sink), sink, 0.0)
    return {
        "teleport": (float(speed.max(initial=0.0)), speed),
        "acceleration": (float(accel.max(initial=0.0)), accel),
        "penetration": (float(max(finite.max(initial=0.0), 0.0)), np.maximum(finite, 0.0)),
        "floating": (float(_longest_run(floating > 0)), floating),
    }


def _flicker(clip: Clip, stats: dict[str, dict]) -> dict[str, Score]:
    """Share of the image whose colour jumps while depth and segmentation stay put."""
    h, w = clip.rgb.shape[1:3]
    per_frame = stats["flicker"]["counts"] / float(h * w)
    return {"flicker": (float(per_frame.max(initial=0.0)), per_frame)}


def _depth(clip: Clip, stats: dict[str, dict]) -> dict[str, Score]:
    """Static background depth that changes, plus object boundaries that lose their depth edge."""
    # Two parts in units of their nominal bounds, so one threshold serves both.
    sd = stats["static_depth"]
    per_frame = (
        np.where(sd["total"] >= 100, sd["changed"] / np.maximum(sd["total"], 1), 0.0) / STATIC_UNSTABLE
    )
    e = stats["edges"]
    for o in clip.objects:
        enough = e["boundary"][:, o.instance] >= 8
        if enough.sum() < 3:
            continue
        ratio = e["edged"][:, o.instance] / np.maximum(e["boundary"][:, o.instance], 1)
        drop = np.where(enough, np.median(ratio[enough]) - ratio, 0.0)
        per_frame = np.maximum(per_frame, drop / EDGE_DROP)
    return {"depth": (float(per_frame.max(initial=0.0)), per_frame)}


# One scorer per group of checks, with the statistic it reads and whether it needs tracked objects.
SCORERS = (
    ("mask", True, _permanence),
    ("points", True, _motion),
    ("flicker", False, _flicker),
    ("static_depth", False, _depth),
)


def clip_scores(clip: Clip, stats: dict[str, dict]) -> dict[str, Score]:
    """Per check: (score, per-frame scores) or (None, None) when the inputs are missing."""
    out: dict[str, Score] = {name: (None, None) for name in CHECK_NAMES}
    for statistic, needs_objects, scorer in SCORERS:
        if statistic in stats and (clip.objects or not needs_objects):
            out.update(scorer(clip, stats))
    return out


def run_checks(
    clip: Clip,
    thresholds: dict[str, float] | None = None,
    enabled: tuple[str, ...] | list[str] = CHECK_NAMES,
    backend: str = "warp",
    device: str = "cpu",
) -> dict[str, CheckResult]:
    """Score a clip and give a verdict per enabled check."""
    thresholds = {**PHYSICAL_BOUNDS, **(thresholds or {})}
    scores = clip_scores(clip, clip_statistics(clip, backend=backend, device=device))
    results = {}
    for name in enabled:
        score, per_frame = scores[name]
        if score is None:
            missing = "segmentation and depth" if name != "flicker" else "RGB"
            if name in ("teleport", "acceleration", "penetration", "floating"):
                missing += " from a fixed camera with a known pose"
            results[name] = CheckResult("skipped", reason=f"needs {missing}")
            continue
        limit = float(thresholds[name])
        failed = score > limit
        # floating's threshold is a run length; its per-frame values mark the floating frames themselves.
        flagged = per_frame > (0.0 if name == "floating" else limit)
        bad = [int(t) for t in np.nonzero(flagged)[0]] if failed else []
        results[name] = CheckResult("failed" if failed else "passed", float(score), limit, bad)
    return results


def thresholds_from_scores(
    scores: dict[str, list[float]], margin: float = CALIBRATION_MARGIN
) -> dict[str, float]:
    """max(physical bound, margin x 99.9th percentile of the scores seen on simulator clips)."""
    out = {}
    for name in CHECK_NAMES:
        seen = [s for s in scores.get(name, []) if s is not None]
        calibrated = margin * float(np.percentile(seen, 99.9)) if seen else 0.0
        out[name] = max(PHYSICAL_BOUNDS[name], calibrated)
    return out
