"""What the checks look at: one camera's frames of one demo, with the camera model and the tracked
objects' physical facts (size, support height) from the manifest and the demo's sampled scene."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..dataset import executed_actions, read_scene
from ..envs import object_slice
from ..geometry import look_at_matrix
from ..keys import DEPTH, EEF_POS, OBJECT, RGB, SEG, image_key
from ..manifest import Manifest
from ..scene import ObjectSample, support_top
from ..sim.base import ROBOT, instance_table


@dataclass(frozen=True)
class PinholeCamera:
    """A fixed pinhole camera: looks down its -Z, +Y up; pixel (u, v) has its centre at (u+.5, v+.5)
    and v grows downwards. ``depth`` is the distance along the optical axis."""

    width: int
    height: int
    fx: float
    fy: float
    rotation: np.ndarray  # camera-to-world 3x3
    position: np.ndarray  # world

    @classmethod
    def from_spec(cls, spec, position, look_at) -> PinholeCamera:
        w, h = spec.resolution
        fy = (h / 2) / math.tan(math.radians(spec.fov) / 2)
        return cls(w, h, fy, fy, look_at_matrix(position, look_at), np.asarray(position, dtype=float))

    def unproject(self, depth: np.ndarray) -> np.ndarray:
        """World points (..., H, W, 3) of a metric depth image (..., H, W)."""
        v, u = np.meshgrid(np.arange(self.height), np.arange(self.width), indexing="ij")
        x = (u + 0.5 - self.width / 2) / self.fx * depth
        y = -(v + 0.5 - self.height / 2) / self.fy * depth
        cam = np.stack([x, y, -depth], axis=-1)
        return cam @ self.rotation.T + self.position

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pixel columns, rows (float) and depth of world points (..., 3)."""
        cam = (np.asarray(points) - self.position) @ self.rotation
        depth = -cam[..., 2]
        u = cam[..., 0] / np.maximum(depth, 1e-9) * self.fx + self.width / 2 - 0.5
        v = -cam[..., 1] / np.maximum(depth, 1e-9) * self.fy + self.height / 2 - 0.5
        return u, v, depth


@dataclass(frozen=True)
class TrackedObject:
    instance: int  # segmentation id
    name: str
    size: tuple[float, float, float]
    support_top: float  # z of the surface it rests on (metres)


@dataclass
class Clip:
    """(T, H, W) frames of one camera. Missing inputs are None; the checks that need them skip."""

    fps: float
    rgb: np.ndarray | None = None  # (T, H, W, 3) uint8
    depth: np.ndarray | None = None  # (T, H, W) float32 metres along the optical axis; 0 = no surface
    seg: np.ndarray | None = None  # (T, H, W) uint8 instance ids
    camera: PinholeCamera | None = None  # None for a moving (wrist) camera: no 3-D checks
    objects: list[TrackedObject] = field(default_factory=list)
    static_ids: tuple[int, ...] = ()  # instances that never move (ground, table, bins, regions)
    robot_id: int = ROBOT
    # What the state says, for the consistency checks (a world model predicts it beside the frames).
    eef: np.ndarray | None = None  # (T, 3) end-effector (TCP) position, world
    object_positions: np.ndarray | None = None  # (T, K, 3) position of each of ``objects``, world
    actions: np.ndarray | None = None  # (T-1, A) the actions executed between consecutive frames
    max_translation: float = 0.0  # metres per step at |a| = 1 of actions[:, :3]; 0: not end-effector deltas
    sample_spread: float | None = None  # m: how far samples of the same attempt disagree (agreement)

    @property
    def frames(self) -> int:
        for a in (self.rgb, self.depth, self.seg):
            if a is not None:
                return int(a.shape[0])
        return 0


def tracked_objects(manifest: Manifest, scene: dict) -> list[TrackedObject]:
    """The dynamic task objects of a demo, from its recorded scene (``SceneSample.to_dict()``)."""
    ids = {row["name"]: row["id"] for row in instance_table(manifest)}
    placed = {o["name"]: ObjectSample(**o) for o in scene["objects"]}
    return [
        TrackedObject(ids[obj.name], obj.name, tuple(obj.size), support_top(manifest, obj, placed))
        for obj in manifest.task.objects
        if not obj.static
    ]


def static_instances(manifest: Manifest) -> tuple[int, ...]:
    rows = instance_table(manifest)
    static_names = {"ground", "table"} | {o.name for o in manifest.task.objects if o.static}
    static_names |= {r.name for r in manifest.task.regions}
    return tuple(r["id"] for r in rows if r["name"] in static_names)


def clip_from_demo(group, manifest: Manifest, camera: str | None = None, depth_range=None) -> Clip:
    """A :class:`Clip` of a dataset demo (an h5py group) for ``camera`` (default: the world-model camera)."""
    camera = camera or manifest.world_model_camera
    keys = [image_key(camera, kind) for kind in (RGB, DEPTH, SEG)] + [EEF_POS, OBJECT]
    obs = {key: group["obs"][key][()] for key in keys if key in group["obs"]}
    actions = executed_actions(group)[()] if "actions" in group else None  # a clip has none
    clip = clip_from_arrays(manifest, obs, actions, read_scene(group), camera, depth_range)
    spread = group.attrs.get("sample_spread")
    clip.sample_spread = None if spread is None else float(spread)
    return clip


def clip_from_arrays(
    manifest: Manifest,
    obs: dict[str, np.ndarray],
    actions: np.ndarray | None,
    scene: dict | None,
    camera: str | None = None,
    depth_range=None,
) -> Clip:
    """A :class:`Clip` of observations as a dataset stores them (T frames: depth normalised (T, H, W, 1),
    segmentation (T, H, W, 1); ``robot0_eef_pos`` and ``object`` where present), the actions executed
    after each (at least T - 1 rows) and the scene they were recorded in (``SceneSample.to_dict()``)."""
    camera = camera or manifest.world_model_camera
    spec = next(c for c in manifest.cameras if c.name == camera)
    rgb, depth, seg = (obs.get(image_key(camera, kind)) for kind in (RGB, DEPTH, SEG))
    near, far = depth_range or (spec.near, spec.far)
    if depth is not None:
        d = depth[..., 0].astype(np.float32)
        depth = np.where(d >= 1.0, 0.0, near + d * (far - near)).astype(np.float32)
    objects = tracked_objects(manifest, scene) if scene is not None else []
    model = None
    if spec.mount == "world" and scene is not None:
        sample = next(c for c in scene["cameras"] if c["name"] == camera)
        model = PinholeCamera.from_spec(spec, sample["position"], sample["look_at"])
    clip = Clip(
        fps=float(manifest.control_hz),
        rgb=rgb,
        depth=depth,
        seg=None if seg is None else seg[..., 0],
        camera=model,
        objects=objects,
        static_ids=static_instances(manifest),
    )
    t = clip.frames
    if EEF_POS in obs:
        clip.eef = obs[EEF_POS][:t].astype(np.float64)
    if OBJECT in obs and objects:
        flat = obs[OBJECT][:t].astype(np.float64)
        clip.object_positions = np.stack(
            [flat[:, object_slice(manifest, o.name)][:, :3] for o in objects], axis=1
        )
    if actions is not None:
        clip.actions = np.asarray(actions)[: t - 1].astype(np.float64)
        if manifest.embodiment.action_space == "ee_delta":
            clip.max_translation = float(manifest.embodiment.max_translation)
    return clip
