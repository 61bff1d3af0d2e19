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
robot_image    seg, depth, camera,   farthest the state's end effector lies from the robot surface the
               state                 frames show, m (frames where it is in view and not hidden; 1 m
                                     where no robot is shown; skipped if no frame ever shows it)
robot_motion   seg, depth, camera,   farthest the state's end effector moves over ACTION_WINDOW frames
               state                 that show the robot still (< STILL_SHARE of its pixels change), m
robot_action   state, actions        largest gap between the end effector's motion and the motion the
                                     executed actions command over ACTION_WINDOW steps, m
object_image   seg, depth, camera,   largest fraction of an object's visible points farther from the
               state                 state's position than the object's half-diagonal + STATE_TOL
contact        seg, depth, camera,   largest displacement of an object in the state while nothing can
               state                 move it: no robot surface or end effector near, no moving object
                                     beside it, not falling, not sliding on after contact, m
agreement      samples of the same   largest distance of an object's position (and of the end
               attempt               effector, where the model predicts it) in one of several samples
                                     of an attempt from their mean (scored by
                                     ``world_models.checking``, judged by the gate), m
=============  ====================  =================================================================

The last four judge consistency between what a world model predicts side by side (frames, state) and
what it was told (actions); on simulator clips they hold by construction, so their calibration on
simulator clips measures only the rendering and the controller's lag.
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
    "robot_image": 0.04,  # m: the TCP sits between the fingers, a few cm from the nearest finger surface
    "robot_motion": 0.02,  # m the end effector may move while the frames show the robot still
    "robot_action": 0.03,  # m over ACTION_WINDOW steps: about the controller's lag at full speed
    "object_image": 0.2,  # fraction of visible points
    "contact": 0.02,  # m
    "agreement": 0.03,  # m from the samples' mean position of an object (or a predicted end effector)
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
ACTION_WINDOW = 4  # steps over which commanded and predicted end-effector motion are compared
STATE_TOL = 0.01  # m beyond an object's half-diagonal before a surface point contradicts its state pose
HIDDEN_TOL = 0.03  # m: a non-robot surface this much nearer than the end effector hides it
CONTACT_NEAR = 0.03  # m between the robot (or a moving object) and an object's extent that may move it
SLIDE_FRAMES = 5  # frames an object may keep moving after the last contact
MOVING = 0.002  # m per frame: an object moving at least this much can push its neighbour
STILL_SHARE = 0.02  # of the robot's pixels: fewer changed over ACTION_WINDOW frames is a still robot
ROBOT_MISSING = 1.0  # m: robot_image's score of a frame whose end effector is in view but no robot is shown
# How loose a world-model calibration may make each check: its own one-step errors may loosen a threshold
# up to here, no further (a calibration records which thresholds it capped).
WORLD_MODEL_CEILINGS = {
    "permanence": 0.9,
    "teleport": 3.0,
    "acceleration": 60.0,
    "penetration": 0.05,
    "floating": 10.0,
    "flicker": 0.05,
    "depth": 3.0,
    "robot_image": 0.25,
    "robot_motion": 0.1,
    "robot_action": 0.1,
    "object_image": 0.9,
    "contact": 0.1,
    "agreement": 0.1,
}
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


def backend_module(name: str):
    """The reductions of ``backend``: the Warp kernels (``warp``) or their numpy references (``numpy``),
    the same functions with the same signatures."""
    if name == "warp":
        from . import kernels

        return kernels
    from . import reference

    return reference


def clip_statistics(clip: Clip, backend: str = "warp", device: str = "cpu") -> dict[str, dict]:
    """Run the reductions the available inputs allow (``backend`` ``warp`` or ``numpy``)."""
    k = backend_module(backend)
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
        if clip.camera is not None and clip.eef is not None and clip.object_positions is not None:
            slot = np.full(256, -1, np.int32)
            slot[[o.instance for o in clip.objects]] = np.arange(len(clip.objects))
            stats["state"] = k.state_distances(
                seg,
                depth,
                clip.robot_id,
                slot,
                clip.camera,
                clip.eef,
                clip.object_positions,
                _radius(clip) + STATE_TOL,
                ACTION_WINDOW,
                STATIC_DEPTH_TOL,
                device=device,
            )
    if rgb is not None:
        stats["flicker"] = {"counts": k.flicker_counts(rgb, FLICKER_TAU, device=device)}
    return stats


def _radius(clip: Clip) -> np.ndarray:
    """Each tracked object's half-diagonal: no point of it lies farther from its centre."""
    return np.array([0.5 * float(np.linalg.norm(o.size)) for o in clip.objects])


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


def _eef_in_view(clip: Clip) -> np.ndarray:
    """Per frame: the state's end effector projects into the image and no surface other than the robot
    lies in front of it."""
    u, v, d = clip.camera.project(clip.eef)
    col, row = np.round(u).astype(int), np.round(v).astype(int)
    inside = (col >= 0) & (row >= 0) & (col < clip.camera.width) & (row < clip.camera.height) & (d > 0)
    view = np.zeros(clip.frames, dtype=bool)
    for t in np.flatnonzero(inside):
        seen_depth, seen_id = clip.depth[t, row[t], col[t]], clip.seg[t, row[t], col[t]]
        view[t] = seen_id == clip.robot_id or not 0 < seen_depth < d[t] - HIDDEN_TOL
    return view


def _robot_image(clip: Clip, stats: dict[str, dict], view: np.ndarray) -> dict[str, Score]:
    """Distance from the state's end effector to the nearest robot surface point the frame shows, where
    the end effector is in view; a frame that shows no robot there scores ROBOT_MISSING."""
    s = stats["state"]
    distance = np.where(
        s["robot_pixels"] >= MIN_PIXELS, np.minimum(s["robot_to_eef"], ROBOT_MISSING), ROBOT_MISSING
    )
    per_frame = np.where(view, distance, 0.0)
    return {"robot_image": (float(per_frame.max(initial=0.0)), per_frame)}


def _robot_motion(clip: Clip, stats: dict[str, dict], view: np.ndarray) -> dict[str, Score]:
    """How far the state's end effector moved over ACTION_WINDOW frames, in view at both ends, in which
    the frames show the robot (nearly) still: fewer than STILL_SHARE of its pixels changed."""
    s, w = stats["state"], ACTION_WINDOW
    per_frame = np.zeros(clip.frames)
    if clip.frames > w:
        moved = np.linalg.norm(clip.eef[w:] - clip.eef[:-w], axis=1)
        still = s["robot_changed"][w:] < STILL_SHARE * np.maximum(s["robot_pixels"][w:], MIN_PIXELS)
        per_frame[w:] = np.where(still & view[w:] & view[:-w], moved, 0.0)
    return {"robot_motion": (float(per_frame.max(initial=0.0)), per_frame)}


def _robot_action(clip: Clip) -> dict[str, Score]:
    """How far the end effector's motion over ACTION_WINDOW steps strays from what the actions command."""
    per_frame = np.zeros(clip.frames)
    w = ACTION_WINDOW
    if clip.frames > w:
        commanded = np.cumsum(np.vstack([np.zeros(3), clip.actions[:, :3]]), axis=0) * clip.max_translation
        moved = clip.eef[w:] - clip.eef[:-w]
        ordered = commanded[w:] - commanded[:-w]
        per_frame[w:] = np.linalg.norm(moved - ordered, axis=1)
    return {"robot_action": (float(per_frame.max(initial=0.0)), per_frame)}


def _object_image(clip: Clip, stats: dict[str, dict]) -> dict[str, Score]:
    """Share of each object's visible points that its state pose cannot explain."""
    s = stats["state"]
    enough = s["object_pixels"] >= MIN_PIXELS
    share = np.where(enough, s["object_outside"] / np.maximum(s["object_pixels"], 1), 0.0)
    per_frame = share.max(axis=1, initial=0.0)
    return {"object_image": (float(per_frame.max(initial=0.0)), per_frame)}


def _contact(clip: Clip, stats: dict[str, dict]) -> dict[str, Score]:
    """Displacement of an object, in its state, over a run of frames where nothing could have moved it."""
    s, c, radius = stats["state"], clip.object_positions, _radius(clip)
    t_count, k = c.shape[:2]
    step = np.zeros((t_count, k))
    step[1:] = np.linalg.norm(c[1:] - c[:-1], axis=2)
    eef_gap = np.linalg.norm(clip.eef[:, None] - c, axis=2)
    touched = (np.minimum(s["robot_to_object"], eef_gap) < radius + CONTACT_NEAR).astype(float)
    for j in range(k):  # a moving neighbour within reach pushes too
        for i in range(k):
            if i != j:
                reach = radius[i] + radius[j] + CONTACT_NEAR
                touched[:, j] += (np.linalg.norm(c[:, i] - c[:, j], axis=1) < reach) & (step[:, i] > MOVING)
    per_frame = np.zeros(t_count)
    for j in range(k):
        caused = np.convolve(touched[:, j] > 0, np.ones(SLIDE_FRAMES + 1), mode="full")[:t_count] > 0
        falling = np.zeros(t_count, dtype=bool)
        falling[1:] = (c[1:, j, 2] - c[:-1, j, 2]) * clip.fps < -FALLING_SPEED
        run = 0.0
        for t in range(1, t_count):
            run = 0.0 if caused[t] or caused[t - 1] or falling[t] else run + step[t, j]
            per_frame[t] = max(per_frame[t], run)
    return {"contact": (float(per_frame.max(initial=0.0)), per_frame)}


def _state_checks(clip: Clip, stats: dict[str, dict]) -> dict[str, Score]:
    robot_checks = {}
    if (stats["state"]["robot_pixels"] >= MIN_PIXELS).any():  # frames that never show the robot: skipped
        view = _eef_in_view(clip)
        robot_checks = {**_robot_image(clip, stats, view), **_robot_motion(clip, stats, view)}
    return {
        **robot_checks,
        **_object_image(clip, stats),
        **_contact(clip, stats),
    }


# One scorer per group of checks, with the statistic it reads and whether it needs tracked objects.
SCORERS = (
    ("mask", True, _permanence),
    ("points", True, _motion),
    ("flicker", False, _flicker),
    ("static_depth", False, _depth),
    ("state", True, _state_checks),
)


def clip_scores(clip: Clip, stats: dict[str, dict]) -> dict[str, Score]:
    """Per check: (score, per-frame scores) or (None, None) when the inputs are missing."""
    out: dict[str, Score] = {name: (None, None) for name in CHECK_NAMES}
    for statistic, needs_objects, scorer in SCORERS:
        if statistic in stats and (clip.objects or not needs_objects):
            out.update(scorer(clip, stats))
    if clip.eef is not None and clip.actions is not None and clip.max_translation > 0:
        out.update(_robot_action(clip))  # needs no image: a moving camera's clip has it too
    if clip.sample_spread is not None:  # one number per attempt: no frame of its own to flag
        out["agreement"] = (clip.sample_spread, np.zeros(clip.frames))
    return out


_FIXED = "segmentation and depth from a fixed camera with a known pose"
MISSING = {  # what a check needs, said when it is skipped
    "permanence": "segmentation and depth",
    "depth": "segmentation and depth",
    "flicker": "RGB",
    **{name: _FIXED for name in ("teleport", "acceleration", "penetration", "floating")},
    **{
        name: _FIXED + ", and the end-effector and object positions"
        for name in ("robot_image", "robot_motion", "object_image", "contact")
    },
    "robot_action": "the end-effector positions and end-effector delta actions",
    "agreement": "several samples of the same attempt (worldgen check --world-model CKPT)",
}


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
            results[name] = CheckResult("skipped", reason=f"needs {MISSING[name]}")
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
