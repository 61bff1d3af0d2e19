"""Many scenes of one manifest stepped together: N independent scenes (each its own seed: placements,
masses, friction, distractors) side by side in one Newton model, so the fixed cost of every physics
step (Warp kernel launches and argument packing in Newton's MuJoCo bridge, most of a single scene's
step on a CPU) is paid once for all of them.

On a CPU, MuJoCo simulates a multi-world Newton model's first world only, so the scenes are one world
whose parts sit :data:`SPACING` metres apart on a grid and never touch; MuJoCo solves their contacts
together, so a scene's trajectory is not bit-identical to the same scene simulated alone (its success
rate agrees within sampling error: ``bench/vector_throughput.py``). For a fixed layout (which seed in
which slot) every run gives the same bytes.

Each world's state vector has the single-scene layout of :class:`~worldgen.sim.newton.NewtonBackend`
(``[time, joint_q, joint_qd, joint targets (9), MuJoCo qacc_warmstart]``, the scene's own entries),
so a world's state can be restored into it and vice versa. Positions and poses are in each scene's own
frame (its origin subtracted). Cameras are not rendered here (every scene would see its neighbours).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..assets import panda
from ..geometry import matrix_from_quat, xyzw_to_wxyz
from ..manifest import Manifest
from ..scene import SceneSample, sample_scene
from ..stage import HAND_PATH, OBJECTS_PATH, ROBOT_PATH, build_stage
from .newton import MAX_JOINT_SPEED, WORKSPACE_EXTENT, default_device, scene_builder

# What differs between two scenes of one manifest, per body and per shape (shape_transform first).
_BODY_ARRAYS = ("body_mass", "body_inv_mass", "body_inertia", "body_inv_inertia", "body_com")
_SHAPE_ARRAYS = ("shape_transform", "shape_material_mu", "shape_material_restitution")
_MJC_GEOM_ARRAYS = ("geom_friction", "geom_pos", "geom_quat", "geom_size", "geom_aabb", "geom_rbound")
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

    def __init__(self, manifest: Manifest, device: str | None = None):
        from ..warp_setup import quiet_warp

        quiet_warp()
        self.manifest = manifest
        self.device = device or default_device()
        self.dt = 1.0 / manifest.physics_hz
        self.worlds: list[_World] = []
        self.model = None

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
        """Worlds where ``mask`` holds start ``seeds[i]``'s scene; the others continue exactly where they
        were (the model is rebuilt and their states restored)."""
        mask = np.asarray(mask, dtype=bool)
        kept = {i: self.get_state(i) for i in np.flatnonzero(~mask)}
        scenes = [
            sample_scene(self.manifest, int(seeds[i])) if mask[i] else w.scene
            for i, w in enumerate(self.worlds)
        ]
        self._build(scenes)
        for i, state in kept.items():
            self.set_state(i, state)

    def _build(self, scenes: list[SceneSample]) -> None:
        import newton
        import warp as wp

        combined = newton.ModelBuilder()
        combined.begin_world()
        spans = []
        for slot, scene in enumerate(scenes):
            builder, distractors = scene_builder(
                self.manifest, build_stage(self.manifest, scene), scene, ground=slot == 0
            )
            start = (combined.joint_count, combined.body_count, combined.shape_count)
            origin = scene_origin(slot)
            combined.add_builder(builder, xform=wp.transform(wp.vec3(*origin), wp.quat_identity()))
            end = (combined.joint_count, combined.body_count, combined.shape_count)
            spans.append((start, end, distractors, origin, scene))
        combined.end_world()
        self.model = combined.finalize(device=self.device)
        self.solver = newton.solvers.SolverMuJoCo(
            self.model, use_mujoco_cpu=self.device == "cpu", kinematic_switchable_roots=False
        )
        self.state_a, self.state_b = self.model.state(), self.model.state()
        self.control = self.model.control()
        newton.eval_fk(self.model, self.model.joint_q, self.model.joint_qd, self.state_a)
        self._index_worlds(spans)
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

    def _mjc_dof_to_newton_dof(self) -> np.ndarray:
        mapping = self.solver.mjc_dof_to_newton_dof
        return np.asarray(mapping.numpy() if hasattr(mapping, "numpy") else mapping).reshape(-1)

    # -- stepping ---------------------------------------------------------------------------------

    def _write_targets(self) -> None:
        for w, targets in zip(self.worlds, self._targets, strict=True):
            self._target_q[w.robot_q] = targets
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
        (non-finite state, a joint faster than MAX_JOINT_SPEED, a body out of the workspace)."""
        targets = np.asarray(joint_targets, dtype=float)
        if targets.shape != (self.num_worlds, 9):
            raise ValueError(f"expected ({self.num_worlds}, 9) joint targets, got {targets.shape}")
        self._targets = targets.copy()
        self._write_targets()
        for _ in range(self.manifest.substeps):
            self.state_a.clear_forces()
            self.solver.step(self.state_a, self.state_b, self.control, None, self.dt)
            self.state_a, self.state_b = self.state_b, self.state_a
        self.time += self.manifest.substeps * self.dt
        self._place_distractors()
        return self.diverged()

    def diverged(self) -> np.ndarray:
        q, qd = self.state_a.joint_q.numpy(), self.state_a.joint_qd.numpy()
        body_q = self.state_a.body_q.numpy()
        out = np.zeros(self.num_worlds, dtype=bool)
        for i, w in enumerate(self.worlds):
            wq, wqd = q[w.q], qd[w.qd]
            positions = body_q[w.bodies, :3] - w.origin
            out[i] = not (np.all(np.isfinite(wq)) and np.all(np.isfinite(wqd)))
            out[i] |= bool(np.abs(wqd).max(initial=0.0) > MAX_JOINT_SPEED)
            out[i] |= bool(np.abs(positions).max(initial=0.0) > WORKSPACE_EXTENT)
        return out

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
        q = self.state_a.joint_q.numpy()
        return np.stack([q[w.robot_q] for w in self.worlds]).astype(np.float64)

    def body_pose(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(N, 3) positions in each scene's frame and (N, 4) quaternions (w, x, y, z) of a task object,
        ``hand`` or ``tcp`` in every world."""
        body_q = self.state_a.body_q.numpy()
        index = [w.hand if name in ("hand", "tcp") else w.objects[name] for w in self.worlds]
        rows = body_q[index].astype(np.float64)
        pos = rows[:, :3] - np.stack([w.origin for w in self.worlds])
        quat = xyzw_to_wxyz(rows[:, 3:])
        if name == "tcp":
            pos = pos + np.stack([matrix_from_quat(q)[:, 2] for q in quat]) * panda.HAND_TO_TCP
        return pos, quat

    def close(self) -> None:
        self.model = self.solver = None
        self.worlds = []
