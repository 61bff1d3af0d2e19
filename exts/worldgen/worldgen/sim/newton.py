"""The headless backend: Newton reads the compiled UsdPhysics stage, MuJoCo (CPU, or MuJoCo Warp on
CUDA) steps it, and Newton's ray-traced ``SensorCamera`` renders RGB, depth and instance segmentation.

State vector (float64): ``[time, joint_q, joint_qd, joint targets (9), MuJoCo qacc_warmstart]``.
The warm start is part of the state because MuJoCo's solver starts each step from it: restoring it
is what makes a replay from a recorded state bit-identical.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pxr import Usd

from ..assets import panda
from ..geometry import look_at_matrix, matrix_from_quat, quat_from_matrix, wxyz_to_xyzw, xyzw_to_wxyz
from ..manifest import CameraSpec, Manifest
from ..scene import SceneSample, sample_scene
from ..stage import HAND_PATH, OBJECTS_PATH, ROBOT_PATH, build_stage
from .base import CameraFrame, SimDiverged, instance_id_for_prim, instance_table, normalize_depth

MAX_JOINT_SPEED = 100.0  # rad/s or m/s; beyond this the simulation has blown up
WORKSPACE_EXTENT = 5.0  # metres from the origin; a body beyond it has escaped
DEFAULT_INTENSITY = 3000.0  # the manifest's lighting intensity that maps to unit radiance


def default_device() -> str:
    import warp as wp

    return "cuda:0" if wp.get_cuda_device_count() > 0 else "cpu"


@dataclass(frozen=True)
class StateLayout:
    """Where the robot's and the task objects' coordinates sit in a state vector (module docstring) of
    one manifest's scenes: indices into ``joint_q`` / ``joint_qd``, which follow the state's time entry."""

    nq: int
    nqd: int
    robot_q: np.ndarray  # (9,) the 7 arm joints and the 2 fingers, in panda.JOINT_NAMES order
    robot_qd: np.ndarray  # (9,)
    robot_root: np.ndarray  # (7,) the fixed base's world pose: position, quaternion (w, x, y, z)
    objects: dict[str, tuple[int, int]]  # dynamic object -> first joint_q, first joint_qd of its free joint

    def robot(self, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Joint positions and velocities (9 each) of the robot in a state vector."""
        q, qd = state[1 : 1 + self.nq], state[1 + self.nq : 1 + self.nq + self.nqd]
        return q[self.robot_q], qd[self.robot_qd]

    def free_body(self, state: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
        """An object's pose (position, quaternion x, y, z, w, as Newton stores it) and velocity (linear
        velocity of its centre of mass, angular velocity; both in the world frame) in a state vector."""
        q_start, qd_start = self.objects[name]
        q, qd = state[1 : 1 + self.nq], state[1 + self.nq : 1 + self.nq + self.nqd]
        return q[q_start : q_start + 7], qd[qd_start : qd_start + 6]


@dataclass
class _Camera:
    spec: CameraSpec
    rays: object  # wp.array4d of camera-space rays
    local: np.ndarray  # 4x4 pose in the world (world mount) or hand frame (wrist mount)
    color: object
    depth: object
    shape_index: object
    transform: object = None  # cached world pose of a fixed camera


def scene_builder(manifest: Manifest, stage: Usd.Stage, scene: SceneSample, ground: bool = True):
    """A Newton ``ModelBuilder`` holding one scene (the compiled stage and its distractors), and the
    distractors' joint indices in it. ``ground=False`` leaves the ground plane out (a scene added beside
    others that already have one)."""
    import newton
    import newton.usd

    builder = newton.ModelBuilder()
    builder.add_usd(
        stage,
        # The stage carries PhysX attributes (armature) the way Isaac Sim authors them.
        schema_resolvers=[newton.usd.SchemaResolverNewton(), newton.usd.SchemaResolverPhysx()],
        enable_self_collisions=False,
        ignore_paths=["/World/Distractors"] + ([] if ground else ["/World/Ground"]),
    )
    return builder, add_distractors(builder, manifest, scene)


def add_distractors(builder, manifest: Manifest, scene: SceneSample) -> list[int]:
    """Kinematic, collision-free bodies whose free-joint pose is scripted every control step."""
    import warp as wp

    cfg = builder.ShapeConfig(has_shape_collision=False, has_particle_collision=False, density=100.0)
    specs = {d.name: d for d in manifest.stressors.distractors}
    joints = []
    for d in scene.distractors:
        spec = specs[d.name]
        path = f"/World/Distractors/{d.name}"
        body = builder.add_body(
            xform=wp.transform(d.position(0.0), wp.quat_identity()), label=path, is_kinematic=True
        )
        hx, hy, hz = (s / 2 for s in spec.size)
        label, color = f"{path}/geom", tuple(spec.color)
        if spec.shape == "box":
            builder.add_shape_box(body, hx=hx, hy=hy, hz=hz, cfg=cfg, color=color, label=label)
        elif spec.shape == "sphere":
            builder.add_shape_sphere(body, radius=hx, cfg=cfg, color=color, label=label)
        else:
            builder.add_shape_cylinder(body, radius=hx, half_height=hz, cfg=cfg, color=color, label=label)
        joints.append(builder.joint_count - 1)  # add_body gave it a free joint to the world
    return joints


def lit_camera_sensor(model, light):
    """Newton's ``SensorCamera`` over ``model``, lit as the scene's light sample says (shadows on)."""
    import warp as wp
    from newton.sensors import SensorCamera

    sensor = SensorCamera(model)
    radiance = np.asarray(light.color) * light.intensity / DEFAULT_INTENSITY
    sensor.create_default_light(
        enable_shadows=True, direction=wp.vec3f(*light.direction), color=wp.vec3f(*radiance)
    )
    # Newton's default hemisphere ambient corresponds to the manifest's default ambient of 0.3.
    scale = light.ambient / 0.3
    sensor.set_ambient_light(
        (0.2 * scale, 0.2 * scale, 0.225 * scale), (0.05 * scale, 0.05 * scale, 0.06 * scale)
    )
    sensor.default_render_config.enable_shadows = True
    return sensor


def shape_instance_lut(instances: list[dict], shape_labels) -> np.ndarray:
    """Instance id of each model shape, and 0 as a last entry for rays that hit nothing (0xFFFFFFFF)."""
    return np.array([*(instance_id_for_prim(instances, label) for label in shape_labels), 0], dtype=np.uint8)


def camera_local_pose(sample) -> np.ndarray:
    """4x4 pose of a camera sample in the world (world mount) or in the hand's frame (wrist mount)."""
    local = np.eye(4)
    local[:3, :3] = look_at_matrix(sample.position, sample.look_at)
    local[:3, 3] = sample.position
    return local


def camera_world_pose(local: np.ndarray, hand: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Position and xyzw quaternion of a camera in the world: its local pose, carried by the hand's body
    pose ``hand`` (position and xyzw quaternion) for a wrist camera."""
    pose = local
    if hand is not None:
        world_hand = np.eye(4)
        world_hand[:3, :3] = matrix_from_quat(xyzw_to_wxyz(hand[3:]))
        world_hand[:3, 3] = hand[:3]
        pose = world_hand @ local
    return pose[:3, 3], wxyz_to_xyzw(quat_from_matrix(pose))


def camera_buffers(sensor, spec: CameraSpec, views: int, device: str):
    """Rays and the colour, forward-depth and shape-index images of ``views`` views of one camera."""
    from newton.sensors import SensorCamera

    w, h = spec.resolution
    rays = SensorCamera.compute_camera_rays_pinhole(w, h, camera_fov=math.radians(spec.fov), device=device)
    return (
        rays,
        sensor.allocate_image_color(views, w, h),
        sensor.allocate_image_depth_forward(views, w, h),
        sensor.allocate_image_shape_index(views, w, h),
    )


def camera_frame(
    spec: CameraSpec, color, depth, shape_index, view: int, shape_lut: np.ndarray
) -> CameraFrame:
    """View ``view`` of a camera's rendered images as a :class:`CameraFrame` (the outputs it declares)."""
    h, w = spec.resolution[1], spec.resolution[0]
    frame = CameraFrame()
    if "rgb" in spec.outputs:
        frame.rgb = color.numpy()[view].view(np.uint8).reshape(h, w, 4)[..., :3].copy()
    if "depth" in spec.outputs:
        frame.depth = normalize_depth(depth.numpy()[view], spec.near, spec.far)[..., None]
    if "segmentation" in spec.outputs:
        index = np.minimum(shape_index.numpy()[view], len(shape_lut) - 1)  # no hit: the last entry
        frame.seg = shape_lut[index][..., None]
    return frame


def mujoco_instability_warnings(solver, device: str) -> int:
    """MuJoCo's CPU solver resets its data when it meets a bad qpos/qvel/qacc (and warns), which would
    hide a blow-up behind a clean state: the number of those warnings so far."""
    if device != "cpu":
        return 0
    return sum(int(solver.mj_data.warning[k].number) for k in _instability_kinds())


def clear_mujoco_instability_warnings(solver, device: str) -> None:
    """Zero those counts. MuJoCo's reset clears them and then counts itself once, so a running count
    stays at 1 through any later reset: clear before a step and test after it."""
    if device == "cpu":
        for k in _instability_kinds():
            solver.mj_data.warning[k].number = 0


def _instability_kinds() -> list[int]:
    import mujoco

    warning = mujoco.mjtWarning
    return [int(k) for k in (warning.mjWARN_BADQPOS, warning.mjWARN_BADQVEL, warning.mjWARN_BADQACC)]


class NewtonBackend:
    """One scene at a time; ``reset(seed)`` rebuilds the model from that seed's stage (~0.1 s warm)."""

    def __init__(
        self, manifest: Manifest, device: str | None = None, render: bool = True, simulate: bool = True
    ):
        from ..warp_setup import quiet_warp

        quiet_warp()
        self.manifest = manifest
        self.device = device or default_device()
        self.render_enabled = render
        # simulate=False: a view that only renders poses written into it (no solver is built)
        self.simulate = simulate
        self.instances = instance_table(manifest)
        self.scene: SceneSample | None = None
        self.model = None

    # -- building -------------------------------------------------------------------------------

    def reset(self, seed: int) -> np.ndarray:
        scene = sample_scene(self.manifest, seed)
        return self.load(build_stage(self.manifest, scene), scene)

    def load(self, stage: Usd.Stage, scene: SceneSample) -> np.ndarray:
        import newton

        builder, self._distractor_joints = scene_builder(self.manifest, stage, scene)
        self.model = builder.finalize(device=self.device)
        self.scene = scene
        self.solver = (
            newton.solvers.SolverMuJoCo(
                self.model, use_mujoco_cpu=self.device == "cpu", kinematic_switchable_roots=False
            )
            if self.simulate
            else None
        )
        self.state_a, self.state_b = self.model.state(), self.model.state()
        self.control = self.model.control()
        self.contacts = None
        newton.eval_fk(self.model, self.model.joint_q, self.model.joint_qd, self.state_a)
        self.time = 0.0
        self.dt = 1.0 / self.manifest.physics_hz

        labels = list(self.model.body_label)
        self._body = {path.rsplit("/", 1)[-1]: i for i, path in enumerate(labels)}
        self._objects = {
            o.name: labels.index(f"{OBJECTS_PATH}/{o.name}")
            for o in self.manifest.task.objects
            if not o.static
        }
        self._hand = labels.index(HAND_PATH)
        joint_labels = list(self.model.joint_label)
        q_start = self.model.joint_q_start.numpy()
        names = [*panda.JOINT_NAMES, *panda.FINGER_JOINT_NAMES]
        robot_joints = [joint_labels.index(f"{ROBOT_PATH}/joints/{n}") for n in names]
        self._robot_q_index = q_start[robot_joints]
        self.layout = self._state_layout(robot_joints)
        self._targets = np.concatenate([panda.HOME_Q, [panda.FINGER_MAX, panda.FINGER_MAX]])
        # Every joint coordinate's target; only the robot's drives read theirs.
        self._target_q = self.control.joint_target_q.numpy().astype(np.float32)
        self._write_targets(self._targets)
        self._place_distractors()
        self._cameras = self._make_cameras() if self.render_enabled else {}
        return self.get_state() if self.simulate else np.zeros(0)

    def _state_layout(self, robot_joints: list[int]) -> StateLayout:
        q_start, qd_start = self.model.joint_q_start.numpy(), self.model.joint_qd_start.numpy()
        child = list(self.model.joint_child.numpy())
        base = self.model.joint_parent.numpy()[robot_joints[0]]  # the link the first arm joint hangs on
        root = self.state_a.body_q.numpy()[base].astype(np.float64)
        return StateLayout(
            nq=self.model.joint_coord_count,
            nqd=self.model.joint_dof_count,
            robot_q=q_start[robot_joints],
            robot_qd=qd_start[robot_joints],
            robot_root=np.concatenate([root[:3], xyzw_to_wxyz(root[3:])]),
            objects={
                name: (int(q_start[child.index(body)]), int(qd_start[child.index(body)]))
                for name, body in self._objects.items()
            },
        )

    def _make_cameras(self) -> dict[str, _Camera]:
        self.sensor = lit_camera_sensor(self.model, self.scene.light)
        self._shape_lut = shape_instance_lut(self.instances, self.model.shape_label)
        cameras = {}
        samples = {c.name: c for c in self.scene.cameras}
        for spec in self.manifest.cameras:
            rays, color, depth, shape_index = camera_buffers(self.sensor, spec, 1, self.device)
            cameras[spec.name] = _Camera(
                spec=spec,
                rays=rays,
                local=camera_local_pose(samples[spec.name]),
                color=color,
                depth=depth,
                shape_index=shape_index,
            )
        return cameras

    # -- stepping ---------------------------------------------------------------------------------

    def _write_targets(self, targets: np.ndarray) -> None:
        self._target_q[self._robot_q_index] = targets
        self.control.joint_target_q.assign(self._target_q)

    def _place_distractors(self) -> None:
        if not self._distractor_joints:
            return
        q_start = self.model.joint_q_start.numpy()
        qd_start = self.model.joint_qd_start.numpy()
        q, qd = self.state_a.joint_q.numpy(), self.state_a.joint_qd.numpy()
        for joint, d in zip(self._distractor_joints, self.scene.distractors, strict=True):
            q[q_start[joint] : q_start[joint] + 7] = [*d.position(self.time), 0.0, 0.0, 0.0, 1.0]
            qd[qd_start[joint] : qd_start[joint] + 6] = 0.0
        self.state_a.joint_q.assign(q)
        self.state_a.joint_qd.assign(qd)
        import newton

        newton.eval_fk(self.model, self.state_a.joint_q, self.state_a.joint_qd, self.state_a)

    def step(self, joint_targets: np.ndarray) -> np.ndarray:
        targets = np.asarray(joint_targets, dtype=float)
        if targets.shape != (9,):
            raise ValueError(f"expected 9 joint targets (7 arm + 2 fingers), got shape {targets.shape}")
        self._targets = targets.copy()
        self._write_targets(targets)
        for _ in range(self.manifest.substeps):
            self.state_a.clear_forces()
            self.solver.step(self.state_a, self.state_b, self.control, self.contacts, self.dt)
            self.state_a, self.state_b = self.state_b, self.state_a
        self.time += self.manifest.substeps * self.dt
        self._place_distractors()
        self._check_diverged()
        return self.get_state()

    def _check_diverged(self) -> None:
        if mujoco_instability_warnings(self.solver, self.device) > 0:
            raise SimDiverged(f"MuJoCo reported non-finite or huge qpos/qvel/qacc at t={self.time:.3f}s")
        q, qd = self.state_a.joint_q.numpy(), self.state_a.joint_qd.numpy()
        if not (np.all(np.isfinite(q)) and np.all(np.isfinite(qd))):
            raise SimDiverged(f"non-finite joint state at t={self.time:.3f}s")
        if np.abs(qd).max(initial=0.0) > MAX_JOINT_SPEED:
            raise SimDiverged(
                f"joint speed {np.abs(qd).max():.1f} exceeds {MAX_JOINT_SPEED} at t={self.time:.3f}s"
            )
        positions = self.state_a.body_q.numpy()[:, :3]
        if np.abs(positions).max(initial=0.0) > WORKSPACE_EXTENT:
            raise SimDiverged(f"a body left the {WORKSPACE_EXTENT} m workspace at t={self.time:.3f}s")

    # -- state ------------------------------------------------------------------------------------

    def _warmstart(self):
        return (
            self.solver.mj_data.qacc_warmstart
            if self.device == "cpu"
            else self.solver.mjw_data.qacc_warmstart
        )

    def get_state(self) -> np.ndarray:
        ws = self._warmstart()
        ws = np.asarray(ws if isinstance(ws, np.ndarray) else ws.numpy()).reshape(-1)
        return np.concatenate(
            [[self.time], self.state_a.joint_q.numpy(), self.state_a.joint_qd.numpy(), self._targets, ws]
        ).astype(np.float64)

    def set_state(self, state: np.ndarray) -> None:
        import newton

        state = np.asarray(state, dtype=np.float64)
        nq, nqd = self.model.joint_coord_count, self.model.joint_dof_count
        ws = self._warmstart()
        expected = 1 + nq + nqd + 9 + int(np.prod(ws.shape))
        if state.shape != (expected,):
            raise ValueError(f"state has shape {state.shape}, this scene expects ({expected},)")
        self.time = float(state[0])
        self.state_a.joint_q.assign(state[1 : 1 + nq].astype(np.float32))
        self.state_a.joint_qd.assign(state[1 + nq : 1 + nq + nqd].astype(np.float32))
        self._targets = state[1 + nq + nqd : 10 + nq + nqd].copy()
        self._write_targets(self._targets)
        warm = state[10 + nq + nqd :]
        if isinstance(ws, np.ndarray):
            ws[...] = warm.reshape(ws.shape)
        else:
            ws.assign(warm.reshape(ws.shape).astype(ws.dtype))
        newton.eval_fk(self.model, self.state_a.joint_q, self.state_a.joint_qd, self.state_a)

    # -- queries ----------------------------------------------------------------------------------

    def robot_q(self) -> np.ndarray:
        """Joint positions of the 7 arm joints and the 2 fingers."""
        return self.state_a.joint_q.numpy()[self._robot_q_index].astype(np.float64)

    def body_pose(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """World position and (w, x, y, z) quaternion of a task object, ``hand`` or ``tcp``."""
        body_q = self.state_a.body_q.numpy()
        index = self._hand if name in ("hand", "tcp") else self._objects[name]
        pos, quat = body_q[index, :3].astype(np.float64), xyzw_to_wxyz(body_q[index, 3:].astype(np.float64))
        if name == "tcp":
            pos = pos + matrix_from_quat(quat)[:, 2] * panda.HAND_TO_TCP
        return pos, quat

    # -- rendering --------------------------------------------------------------------------------

    def _camera_transform(self, cam: _Camera):
        """World pose of the camera as a one-element Warp array; fixed cameras reuse theirs."""
        import warp as wp

        if cam.spec.mount == "world" and cam.transform is not None:
            return cam.transform
        hand = self.state_a.body_q.numpy()[self._hand] if cam.spec.mount == "wrist" else None
        position, q = camera_world_pose(cam.local, hand)
        transform = wp.array(
            [wp.transformf(wp.vec3f(*position), wp.quatf(*q))], dtype=wp.transformf, device=self.device
        )
        if cam.spec.mount == "world":
            cam.transform = transform
        return transform

    def render(self, cameras: Sequence[str] | None = None) -> dict[str, CameraFrame]:
        if not self.render_enabled:
            raise RuntimeError("this backend was created with render=False")
        self.model.bvh_refit_shapes(self.state_a)
        frames = {}
        for name in cameras or list(self._cameras):
            cam = self._cameras[name]
            outputs = cam.spec.outputs
            self.sensor.update(
                self.state_a,
                self._camera_transform(cam),
                cam.rays,
                color_image=cam.color if "rgb" in outputs else None,
                forward_depth_image=cam.depth if "depth" in outputs else None,
                shape_index_image=cam.shape_index if "segmentation" in outputs else None,
            )
            frames[name] = camera_frame(cam.spec, cam.color, cam.depth, cam.shape_index, 0, self._shape_lut)
        return frames

    def render_poses(
        self, body_q: np.ndarray, cameras: Sequence[str] | None = None
    ) -> dict[str, CameraFrame]:
        """Render this scene with its bodies at ``body_q`` ((B, 7) positions and xyzw quaternions in the
        scene's frame): how a vector backend shows one of its worlds through a view of that scene."""
        self.state_a.body_q.assign(np.asarray(body_q, dtype=np.float32))
        return self.render(cameras)

    def close(self) -> None:
        self.model = self.solver = self.sensor = None
        self._cameras = {}
