"""Many scenes of one manifest stepped together: N independent scenes (each its own seed: placements,
masses, friction, distractors) side by side in one Newton model, so the fixed cost of every physics
step (Warp kernel launches and argument packing in Newton's MuJoCo bridge, most of a single scene's
step on a CPU) is paid once for all of them.

On a CPU the scenes are parts of one Newton world, :data:`SPACING` metres apart on a grid so they
never touch (Newton's MuJoCo CPU solver simulates only the first world of a multi-world model); MuJoCo
solves their contacts together, so a scene's trajectory is not bit-identical to the same scene simulated
alone (its success rate agrees within sampling error: ``bench/vector_throughput.py``). On a GPU each
scene is a Newton world of its own at the origin (``separate_worlds``: MuJoCo Warp steps one world per
thread block, which is what makes thousands of scenes cheap); scenes of one manifest have the same
bodies and joints, which is what MuJoCo Warp asks of its worlds. For a fixed layout (which seed in
which slot) every run gives the same bytes.

Each world's state vector has the single-scene layout of :class:`~worldgen.sim.newton.NewtonBackend`
(``[time, joint_q, joint_qd, joint targets (9), MuJoCo qacc_warmstart]``, the scene's own entries),
so a world's state can be restored into it and vice versa. Positions and poses are in each scene's own
frame (its origin subtracted).

Cameras (``render=True``): rendering the combined model would let every camera see the neighbouring
scenes and light them all alike, so each world is rendered through a *view*: a render-only
:class:`~worldgen.sim.newton.NewtonBackend` of that world's scene (its own light, textures and
camera jitter), into which the world's body poses are written before each render. A world's frames
are therefore what the single-scene backend renders for the same poses (the same pixels and labels,
depth to float32 rounding of the offset world; tested); rendering costs what it costs one scene at a
time, only the physics is shared. On a GPU the worlds are apart, so one ``SensorCamera`` renders every
world's cameras in one launch (view i shows world i, from world i's camera pose); it has one light,
world 0's sample, so lighting is the one stressor such frames do not vary per world.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..assets import panda
from ..geometry import xyzw_to_wxyz
from ..manifest import Manifest
from ..scene import SceneSample, sample_scene
from ..stage import HAND_PATH, OBJECTS_PATH, ROBOT_PATH, build_stage
from .base import CameraFrame, instance_table
from .newton import (
    MAX_JOINT_SPEED,
    WORKSPACE_EXTENT,
    NewtonBackend,
    camera_buffers,
    camera_frame,
    camera_local_pose,
    camera_world_pose,
    clear_mujoco_instability_warnings,
    default_device,
    lit_camera_sensor,
    mujoco_instability_warnings,
    scene_builder,
    shape_instance_lut,
)

# What differs between two scenes of one manifest, per body and per shape (shape_transform first).
_BODY_ARRAYS = ("body_mass", "body_inv_mass", "body_inertia", "body_inv_inertia", "body_com")
_SHAPE_ARRAYS = ("shape_transform", "shape_material_mu", "shape_material_restitution")
SPACING = 4.0  # metres between scene origins: a table and an arm's reach fit well inside
GRID_COLUMNS = 16


@dataclass
class _World:
    """Where one scene's entries sit in the combined model."""

    scene: SceneSample
    origin: np.ndarray  # (3,) world position of the scene's frame
    q: slice  # its joint_q entries
    qd: slice  # its joint_qd entries
    mjc_dofs: np.ndarray  # its MuJoCo dofs, in MuJoCo's order (its part of qacc_warmstart)
    robot_q: np.ndarray  # (9,) joint_q indices of the arm and fingers
    hand: int  # body index of the hand
    objects: dict[str, int]  # dynamic task object -> body index
    distractors: list[int]  # joint indices of its distractors
    bodies: slice  # its body indices
    shapes: slice  # its shape indices
    free_xyz: np.ndarray  # (F, 3) positions within its joint_q entries of its free joints' translations

    def to_local(self, q: np.ndarray) -> np.ndarray:
        """Its joint_q entries in its own frame (free joints' translations less its origin)."""
        q = np.array(q, dtype=np.float64)
        q[self.free_xyz] -= self.origin
        return q

    def to_combined(self, q: np.ndarray) -> np.ndarray:
        q = np.array(q, dtype=np.float64)
        q[self.free_xyz] += self.origin
        return q


def scene_origin(slot: int) -> np.ndarray:
    return np.array([SPACING * (slot % GRID_COLUMNS), SPACING * (slot // GRID_COLUMNS), 0.0])


class VectorNewtonBackend:
    """N scenes in one Newton model on the CPU (MuJoCo) or a GPU (MuJoCo Warp). ``reset(seeds)`` builds
    the model for those seeds (slot i holds ``seeds[i]``); ``reset_worlds`` gives some slots new seeds
    and keeps the others' states."""

    def __init__(
        self,
        manifest: Manifest,
        device: str | None = None,
        render: bool = False,
        separate_worlds: bool | None = None,
    ):
        """``separate_worlds`` (default: on a GPU) builds each scene as a Newton world of its own; on a CPU
        such a model renders (every world, one sensor) but does not step, as MuJoCo's CPU solver would
        simulate world 0 alone."""
        from ..warp_setup import quiet_warp

        quiet_warp()
        self.manifest = manifest
        self.device = device or default_device()
        self.separate_worlds = self.device != "cpu" if separate_worlds is None else separate_worlds
        self.render_enabled = render
        self.dt = 1.0 / manifest.physics_hz
        self.worlds: list[_World] = []
        self.views: list[NewtonBackend] = []  # one render-only scene per world when rendering on a CPU
        self._world_cameras: dict[str, dict] = {}  # one sensor's views of every world on a GPU
        self.model = self.sensor = None

    @property
    def num_worlds(self) -> int:
        return len(self.worlds)

    # -- building ---------------------------------------------------------------------------------

    def reset(self, seeds: Sequence[int]) -> None:
        """Every world at the start of its seed's scene (slot i holds ``seeds[i]``); the model is built
        once for a number of worlds and reused."""
        if self.model is not None and len(seeds) == self.num_worlds:
            self.reset_worlds(np.ones(len(seeds), dtype=bool), seeds)
        else:
            self._build([sample_scene(self.manifest, int(s)) for s in seeds])

    def reset_worlds(self, mask: np.ndarray, seeds: Sequence[int]) -> None:
        """Worlds where ``mask`` holds start ``seeds[i]``'s scene, the others continue undisturbed. The
        model is not rebuilt (building MuJoCo's model is most of a build): each new scene's builder gives
        the values that differ between scenes (joint coordinates, body masses and inertias, shape
        frictions and poses), written over its world's entries, which leaves the world as a fresh build of
        that scene would: the same state, masses, inertias and frictions; MuJoCo's compiled offset of a
        geom in its body may differ in the last bit (~1e-16 m), as MuJoCo derives it from the pose the
        body had when the model was built."""
        import newton

        mask = np.asarray(mask, dtype=bool)
        if not mask.any():
            return
        q, qd = self.state_a.joint_q.numpy(), self.state_a.joint_qd.numpy()
        body = {k: getattr(self.model, k).numpy() for k in _BODY_ARRAYS}
        shape = {k: getattr(self.model, k).numpy() for k in _SHAPE_ARRAYS}
        placed_before = shape["shape_transform"].copy()
        # Separate worlds on a CPU only render: MuJoCo's CPU data holds world 0 alone.
        steps = not (self.separate_worlds and self.device == "cpu")
        ws = self._warmstart().reshape(-1) if steps else None
        for i in np.flatnonzero(mask):
            w = self.worlds[i]
            scene = sample_scene(self.manifest, int(seeds[i]))
            stage = build_stage(self.manifest, scene)
            builder, _ = scene_builder(self.manifest, stage, scene, ground=self.separate_worlds or i == 0)
            if self.views:
                self.views[i].load(stage, scene)
            q[w.q] = w.to_combined(np.asarray(builder.joint_q, dtype=np.float64))
            qd[w.qd] = 0.0
            for key in _BODY_ARRAYS:  # Warp's matrices come out of a builder flat: shape them as the model's
                rows = body[key][w.bodies]
                rows[...] = np.asarray(getattr(builder, key), dtype=rows.dtype).reshape(rows.shape)
            transforms = np.asarray(builder.shape_transform, dtype=np.float32)
            static = np.asarray(builder.shape_body) < 0  # attached to the world: placed with the scene
            transforms[static, :3] += w.origin
            shape["shape_transform"][w.shapes] = transforms
            for key in _SHAPE_ARRAYS[1:]:
                rows = shape[key][w.shapes]
                rows[...] = np.asarray(getattr(builder, key), dtype=rows.dtype).reshape(rows.shape)
            if ws is not None:
                ws[w.mjc_dofs] = 0.0
            w.scene = scene
            self.time[i] = 0.0
            self._targets[i] = np.concatenate([panda.HOME_Q, [panda.FINGER_MAX] * 2])
        for key, values in {**body, **shape}.items():
            getattr(self.model, key).assign(values)
        self.state_a.joint_q.assign(q)
        self.state_a.joint_qd.assign(qd)
        if ws is not None:
            self._set_warmstart(ws)
        self.solver.notify_model_changed(
            newton.ModelFlags.BODY_INERTIAL_PROPERTIES | newton.ModelFlags.SHAPE_PROPERTIES
        )
        if self.device == "cpu" and steps:
            # Newton 1.8 publishes changed shape properties to MuJoCo Warp's model only; the CPU model
            # takes them from there (as Newton itself does for the inertial ones): frictions, and the
            # poses of world-fixed geoms that moved (static objects placed with their scene, to float32
            # rounding); every other geom keeps its compiled values.
            cpu, warp_model = self.solver.mj_model, self.solver.mjw_model
            cpu.geom_friction[:] = warp_model.geom_friction.numpy()[0].reshape(cpu.geom_friction.shape)
            moved_shapes = np.any(shape["shape_transform"] != placed_before, axis=1)
            geom_shape = np.asarray(self.solver.mjc_geom_to_newton_shape.numpy()[0])
            moved = (cpu.geom_bodyid == 0) & moved_shapes[np.maximum(geom_shape, 0)] & (geom_shape >= 0)
            for key in ("geom_pos", "geom_quat"):
                values = getattr(warp_model, key).numpy()[0].reshape(getattr(cpu, key).shape)
                getattr(cpu, key)[moved] = values[moved]
        self._write_targets()
        newton.eval_fk(self.model, self.state_a.joint_q, self.state_a.joint_qd, self.state_a)
        self._place_distractors()
        for cam in self._world_cameras.values():
            cam["local"] = self._camera_locals(cam["spec"].name)
            cam["transforms"] = None

    def _build(self, scenes: list[SceneSample]) -> None:
        import newton
        import warp as wp

        # A CPU steps one Newton world (scenes spaced apart in it); a GPU steps separate worlds.
        separate = self.separate_worlds
        combined = newton.ModelBuilder()
        if not separate:
            combined.begin_world()
        spans = []
        self.views = []
        for slot, scene in enumerate(scenes):
            stage = build_stage(self.manifest, scene)
            builder, distractors = scene_builder(self.manifest, stage, scene, ground=separate or slot == 0)
            if self.render_enabled and not separate:
                view = NewtonBackend(self.manifest, device=self.device, render=True, simulate=False)
                view.load(stage, scene)
                self.views.append(view)
            start = (combined.joint_count, combined.body_count, combined.shape_count)
            origin = np.zeros(3) if separate else scene_origin(slot)
            if separate:
                combined.begin_world()
            combined.add_builder(builder, xform=wp.transform(wp.vec3(*origin), wp.quat_identity()))
            if separate:
                combined.end_world()
            end = (combined.joint_count, combined.body_count, combined.shape_count)
            spans.append((start, end, distractors, origin, scene))
        if not separate:
            combined.end_world()
        self.model = combined.finalize(device=self.device)
        self.solver = newton.solvers.SolverMuJoCo(
            self.model,
            use_mujoco_cpu=self.device == "cpu",
            separate_worlds=separate,
            kinematic_switchable_roots=False,
        )
        self.state_a, self.state_b = self.model.state(), self.model.state()
        self.control = self.model.control()
        newton.eval_fk(self.model, self.model.joint_q, self.model.joint_qd, self.state_a)
        self._index_worlds(spans)
        self._world_cameras = self._make_world_cameras() if self.render_enabled and separate else {}
        self.time = np.zeros(len(scenes))
        self._targets = np.tile(np.concatenate([panda.HOME_Q, [panda.FINGER_MAX] * 2]), (len(scenes), 1))
        self._target_q = self.control.joint_target_q.numpy().astype(np.float32)
        self._write_targets()
        self._place_distractors()

    def _index_worlds(self, spans) -> None:
        q_start, qd_start = self.model.joint_q_start.numpy(), self.model.joint_qd_start.numpy()
        q_end = np.append(q_start[1:], self.model.joint_coord_count)
        qd_end = np.append(qd_start[1:], self.model.joint_dof_count)
        labels, joint_labels = list(self.model.body_label), list(self.model.joint_label)
        import newton

        mjc_to_newton = self._mjc_dof_to_newton_dof()
        free = self.model.joint_type.numpy() == int(newton.JointType.FREE)
        names = [*panda.JOINT_NAMES, *panda.FINGER_JOINT_NAMES]
        dynamic = [o.name for o in self.manifest.task.objects if not o.static]
        self.worlds = []
        for (j0, b0, s0), (j1, b1, s1), distractors, origin, scene in spans:
            # Labels repeat in every scene: look each one up within this scene's own range.
            body = {labels[b]: b for b in range(b0, b1)}
            joint = {joint_labels[j]: j for j in range(j0, j1)}
            qd = slice(int(qd_start[j0]), int(qd_end[j1 - 1]))
            self.worlds.append(
                _World(
                    scene=scene,
                    origin=origin,
                    q=slice(int(q_start[j0]), int(q_end[j1 - 1])),
                    qd=qd,
                    mjc_dofs=np.flatnonzero((mjc_to_newton >= qd.start) & (mjc_to_newton < qd.stop)),
                    robot_q=np.array([q_start[joint[f"{ROBOT_PATH}/joints/{n}"]] for n in names]),
                    hand=body[HAND_PATH],
                    objects={n: body[f"{OBJECTS_PATH}/{n}"] for n in dynamic},
                    distractors=[j0 + d for d in distractors],
                    bodies=slice(b0, b1),
                    shapes=slice(s0, s1),
                    free_xyz=np.array(
                        [q_start[j] - q_start[j0] + np.arange(3) for j in range(j0, j1) if free[j]], dtype=int
                    ).reshape(-1, 3),
                )
            )

        # Whole-model index arrays, so the per-step queries below are array operations, not loops.
        self._robot_q = np.stack([w.robot_q for w in self.worlds])
        self._origins = np.stack([w.origin for w in self.worlds])
        self._hands = np.array([w.hand for w in self.worlds])
        self._objects = {n: np.array([w.objects[n] for w in self.worlds]) for n in dynamic}
        self._starts = {
            "q": np.array([w.q.start for w in self.worlds]),
            "qd": np.array([w.qd.start for w in self.worlds]),
            "body": np.array([w.bodies.start for w in self.worlds]),
        }
        body_world = np.repeat(
            np.arange(len(self.worlds)), [w.bodies.stop - w.bodies.start for w in self.worlds]
        )
        assert (
            len(body_world) == self.model.body_count
            and self.worlds[-1].q.stop == self.model.joint_coord_count
        )
        self._body_origins = self._origins[body_world]

    def _mjc_dof_to_newton_dof(self) -> np.ndarray:
        mapping = self.solver.mjc_dof_to_newton_dof
        return np.asarray(mapping.numpy() if hasattr(mapping, "numpy") else mapping).reshape(-1)

    # -- stepping ---------------------------------------------------------------------------------

    def _write_targets(self) -> None:
        self._target_q[self._robot_q] = self._targets
        self.control.joint_target_q.assign(self._target_q)

    def _place_distractors(self) -> None:
        if not any(w.distractors for w in self.worlds):
            return
        import newton

        q_start, qd_start = self.model.joint_q_start.numpy(), self.model.joint_qd_start.numpy()
        q, qd = self.state_a.joint_q.numpy(), self.state_a.joint_qd.numpy()
        for i, w in enumerate(self.worlds):
            for joint, d in zip(w.distractors, w.scene.distractors, strict=True):
                q[q_start[joint] : q_start[joint] + 7] = [*(d.position(self.time[i]) + w.origin), 0, 0, 0, 1]
                qd[qd_start[joint] : qd_start[joint] + 6] = 0.0
        self.state_a.joint_q.assign(q)
        self.state_a.joint_qd.assign(qd)
        newton.eval_fk(self.model, self.state_a.joint_q, self.state_a.joint_qd, self.state_a)

    def step(self, joint_targets: np.ndarray) -> np.ndarray:
        """One control step of every world from (N, 9) joint targets; returns which worlds diverged
        (non-finite state, a joint faster than MAX_JOINT_SPEED, a body out of the workspace; every world
        when MuJoCo's CPU solver met a bad state and reset its data, which it does for all at once)."""
        if self.separate_worlds and self.device == "cpu":  # see reset_worlds
            raise RuntimeError("separate worlds step on a GPU only (MuJoCo's CPU solver steps world 0 alone)")
        targets = np.asarray(joint_targets, dtype=float)
        if targets.shape != (self.num_worlds, 9):
            raise ValueError(f"expected ({self.num_worlds}, 9) joint targets, got {targets.shape}")
        self._targets = targets.copy()
        self._write_targets()
        clear_mujoco_instability_warnings(self.solver, self.device)
        for _ in range(self.manifest.substeps):
            self.state_a.clear_forces()
            self.solver.step(self.state_a, self.state_b, self.control, None, self.dt)
            self.state_a, self.state_b = self.state_b, self.state_a
        self.time += self.manifest.substeps * self.dt
        self._place_distractors()
        if mujoco_instability_warnings(self.solver, self.device) > 0:
            # MuJoCo reset the data of every world at once: none of them carries on from its state.
            return np.ones(self.num_worlds, dtype=bool)
        return self.diverged()

    def diverged(self) -> np.ndarray:
        q, qd = self.state_a.joint_q.numpy(), self.state_a.joint_qd.numpy()
        offsets = np.abs(self.state_a.body_q.numpy()[:, :3] - self._body_origins).max(axis=1)
        finite = np.logical_and.reduceat(np.isfinite(q), self._starts["q"])
        finite &= np.logical_and.reduceat(np.isfinite(qd), self._starts["qd"])
        # NaN compares False: a non-finite world is caught by ``finite``.
        fast = np.maximum.reduceat(np.abs(qd), self._starts["qd"]) > MAX_JOINT_SPEED
        away = np.maximum.reduceat(offsets, self._starts["body"]) > WORKSPACE_EXTENT
        return ~finite | fast | away

    # -- state ------------------------------------------------------------------------------------

    def _warmstart(self) -> np.ndarray:
        ws = (
            self.solver.mj_data.qacc_warmstart
            if self.device == "cpu"
            else self.solver.mjw_data.qacc_warmstart
        )
        return ws if isinstance(ws, np.ndarray) else ws.numpy()

    def _set_warmstart(self, values: np.ndarray) -> None:
        if self.device == "cpu":
            self.solver.mj_data.qacc_warmstart[:] = values
        else:
            ws = self.solver.mjw_data.qacc_warmstart
            ws.assign(values.reshape(ws.shape).astype(np.float32))

    def get_state(self, i: int) -> np.ndarray:
        """World i's state vector (the single-scene layout)."""
        w = self.worlds[i]
        ws = self._warmstart().reshape(-1)[w.mjc_dofs]
        return np.concatenate(
            [
                [self.time[i]],
                w.to_local(self.state_a.joint_q.numpy()[w.q]),
                self.state_a.joint_qd.numpy()[w.qd],
                self._targets[i],
                ws,
            ]
        ).astype(np.float64)

    def set_state(self, i: int, state: np.ndarray) -> None:
        import newton

        w = self.worlds[i]
        state = np.asarray(state, dtype=np.float64)
        nq, nqd = w.q.stop - w.q.start, w.qd.stop - w.qd.start
        expected = 1 + nq + nqd + 9 + len(w.mjc_dofs)
        if state.shape != (expected,):
            raise ValueError(f"state has shape {state.shape}, world {i} expects ({expected},)")
        self.time[i] = state[0]
        q, qd = self.state_a.joint_q.numpy(), self.state_a.joint_qd.numpy()
        q[w.q] = w.to_combined(state[1 : 1 + nq])
        qd[w.qd] = state[1 + nq : 1 + nq + nqd]
        self.state_a.joint_q.assign(q)
        self.state_a.joint_qd.assign(qd)
        self._targets[i] = state[1 + nq + nqd : 10 + nq + nqd]
        self._write_targets()
        ws = (
            self.solver.mj_data.qacc_warmstart
            if self.device == "cpu"
            else self.solver.mjw_data.qacc_warmstart
        )
        if isinstance(ws, np.ndarray):
            flat = ws.reshape(-1)
            flat[w.mjc_dofs] = state[10 + nq + nqd :]
        else:
            flat = ws.numpy().reshape(-1)
            flat[w.mjc_dofs] = state[10 + nq + nqd :]
            ws.assign(flat.reshape(ws.shape).astype(flat.dtype))
        newton.eval_fk(self.model, self.state_a.joint_q, self.state_a.joint_qd, self.state_a)

    # -- queries ----------------------------------------------------------------------------------

    def robot_q(self) -> np.ndarray:
        """(N, 9): the 7 arm joints and the 2 fingers of every world."""
        return self.state_a.joint_q.numpy()[self._robot_q].astype(np.float64)

    def body_pose(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(N, 3) positions in each scene's frame and (N, 4) quaternions (w, x, y, z) of a task object,
        ``hand`` or ``tcp`` in every world."""
        index = self._hands if name in ("hand", "tcp") else self._objects[name]
        rows = self.state_a.body_q.numpy()[index].astype(np.float64)
        pos = rows[:, :3] - self._origins
        quat = xyzw_to_wxyz(rows[:, 3:])
        if name == "tcp":  # the hand's z axis, as matrix_from_quat's third column
            w, x, y, z = (quat / np.linalg.norm(quat, axis=1, keepdims=True)).T
            axis = np.stack([2 * (x * z + w * y), 2 * (y * z - w * x), 1 - 2 * (x * x + y * y)], axis=1)
            pos = pos + axis * panda.HAND_TO_TCP
        return pos, quat

    def render(self, cameras: Sequence[str] | None = None) -> list[dict[str, CameraFrame]]:
        """Every world's camera frames (as :meth:`NewtonBackend.render` gives one scene's), through its
        view of its scene with the world's current body poses."""
        if not self.render_enabled:
            raise RuntimeError("this vector backend was created with render=False")
        if self._world_cameras:
            return self._render_worlds(cameras)
        body_q = self.state_a.body_q.numpy().astype(np.float64)
        frames = []
        for w, view in zip(self.worlds, self.views, strict=True):
            poses = body_q[w.bodies].copy()
            poses[:, :3] -= w.origin
            frames.append(view.render_poses(poses, cameras))
        return frames

    # -- cameras of separate worlds (a GPU) ---------------------------------------------------------

    def _camera_locals(self, name: str) -> np.ndarray:
        """(N, 4, 4) local poses of one camera, each world's own sample (its jitter)."""
        return np.stack(
            [camera_local_pose(next(c for c in w.scene.cameras if c.name == name)) for w in self.worlds]
        )

    def _make_world_cameras(self) -> dict[str, dict]:
        """One sensor over the whole model; for each camera, N views (view i shows world i)."""
        self.sensor = lit_camera_sensor(self.model, self.worlds[0].scene.light)
        self._shape_lut = shape_instance_lut(instance_table(self.manifest), self.model.shape_label)
        cameras = {}
        for spec in self.manifest.cameras:
            rays, color, depth, shape_index = camera_buffers(self.sensor, spec, self.num_worlds, self.device)
            cameras[spec.name] = {
                "spec": spec,
                "rays": rays,
                "color": color,
                "depth": depth,
                "shape_index": shape_index,
                "local": self._camera_locals(spec.name),
                "transforms": None,  # cached for world-mounted cameras until a reset
            }
        return cameras

    def _camera_transforms(self, cam: dict):
        import warp as wp

        if cam["transforms"] is not None:
            return cam["transforms"]
        wrist = cam["spec"].mount == "wrist"
        hands = self.state_a.body_q.numpy()[self._hands].astype(np.float64) if wrist else None
        rows = []
        for i, local in enumerate(cam["local"]):
            position, q = camera_world_pose(local, hands[i] if wrist else None)
            rows.append([*position, *q])
        transforms = wp.array(np.asarray(rows, dtype=np.float32), dtype=wp.transformf, device=self.device)
        if not wrist:
            cam["transforms"] = transforms
        return transforms

    def render_images(self, cameras: Sequence[str] | None = None) -> None:
        """Render every world's cameras into the sensor's images on the device (no copy to the host):
        what a GPU consumer of the frames would read. Separate worlds only (one world's views are
        scenes of their own: :meth:`render`)."""
        if not self._world_cameras:
            raise RuntimeError("render_images needs separate worlds with render=True")
        self.model.bvh_refit_shapes(self.state_a)
        for name in cameras or list(self._world_cameras):
            cam = self._world_cameras[name]
            outputs = cam["spec"].outputs
            self.sensor.update(
                self.state_a,
                self._camera_transforms(cam),
                cam["rays"],
                color_image=cam["color"] if "rgb" in outputs else None,
                forward_depth_image=cam["depth"] if "depth" in outputs else None,
                shape_index_image=cam["shape_index"] if "segmentation" in outputs else None,
            )

    def _render_worlds(self, cameras: Sequence[str] | None) -> list[dict[str, CameraFrame]]:
        names = list(cameras or self._world_cameras)
        self.render_images(names)
        frames = [{} for _ in self.worlds]
        for name in names:
            cam = self._world_cameras[name]
            for i in range(self.num_worlds):
                frames[i][name] = camera_frame(
                    cam["spec"], cam["color"], cam["depth"], cam["shape_index"], i, self._shape_lut
                )
        return frames

    def close(self) -> None:
        for view in self.views:
            view.close()
        self.model = self.solver = self.sensor = None
        self._world_cameras = {}
        self.worlds, self.views = [], []
