"""The Isaac Sim backend: PhysX steps the same compiled stage and Replicator annotators render it.

Written against the documented Isaac Sim 5.1 API (``isaacsim.core.api``: World, SingleArticulation,
SingleRigidPrim, ArticulationAction; ``omni.replicator.core`` annotators ``rgb``,
``distance_to_image_plane`` and ``instance_segmentation``). Isaac Sim cannot be installed on the
development machines, so this file has never been run; it is imported only inside Kit and fails with
a clear message anywhere else. It shares the controller, the environment, the experts and the dataset
with the Newton backend: only stepping, state and rendering live here.

State vector (float64): ``[time, arm+finger joint positions (9), velocities (9), targets (9), then per
dynamic object position (3), quaternion wxyz (4), linear (3) and angular (3) velocity]``. PhysX keeps
no warm start that the API exposes, so replay from a state is close but not guaranteed bit-identical.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pxr import Usd

from ..assets import panda
from ..geometry import matrix_from_quat
from ..manifest import CameraSpec, Manifest
from ..scene import SceneSample, sample_scene
from ..stage import HAND_PATH, OBJECTS_PATH, ROBOT_PATH, build_stage, camera_prim_path
from .base import CameraFrame, instance_id_for_prim, instance_table, normalize_depth

KIT_ONLY = (
    "worldgen.sim.isaac runs inside Isaac Sim only (isaacsim.core.api and omni.replicator.core are not "
    "importable here); use worldgen.sim.newton.NewtonBackend headlessly"
)


def replicator_frame(spec: CameraSpec, data: dict[str, Any], instances: list[dict]) -> CameraFrame:
    """A :class:`CameraFrame` from Replicator annotator outputs, keyed by worldgen output name:
    ``rgb`` (H, W, 4) uint8; ``depth`` from ``distance_to_image_plane`` (H, W) float32 metres (inf where
    nothing is hit); ``segmentation`` from ``instance_segmentation`` with ``colorize=False``: a dict of
    ``data`` (H, W) uint32 ids and ``info.idToLabels`` (id -> prim path). Replicator's ids become
    worldgen instance ids through the prim paths; unknown ids read as background. Plain numpy: shared by
    :class:`IsaacBackend` and the Replicator writer, tested without Kit."""
    frame = CameraFrame()
    if "rgb" in data:
        frame.rgb = np.asarray(data["rgb"])[..., :3].astype(np.uint8)
    if "depth" in data:
        z = np.nan_to_num(np.asarray(data["depth"], dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        frame.depth = normalize_depth(z, spec.near, spec.far)[..., None]
    if "segmentation" in data:
        seg = data["segmentation"]
        ids = np.asarray(seg["data"], dtype=np.int64)
        labels = seg["info"]["idToLabels"] if "info" in seg else seg["idToLabels"]  # legacy / flattened
        mapping = {int(k): instance_id_for_prim(instances, str(v)) for k, v in labels.items()}
        lut = np.zeros(max(mapping, default=0) + 2, dtype=np.uint8)
        for replicator_id, instance in mapping.items():
            lut[replicator_id] = instance
        frame.seg = lut[np.clip(ids, 0, len(lut) - 1)][..., None]
    return frame


def _require_kit():
    try:
        import omni.replicator.core as rep
        import omni.usd
        from isaacsim.core.api import World
        from isaacsim.core.prims import SingleArticulation, SingleRigidPrim
        from isaacsim.core.utils.types import ArticulationAction
    except ImportError as exc:
        raise RuntimeError(KIT_ONLY) from exc
    return rep, omni.usd, World, SingleArticulation, SingleRigidPrim, ArticulationAction


class IsaacBackend:
    """PhysX + Replicator over a worldgen stage, behind :class:`worldgen.sim.base.SimBackend`."""

    def __init__(self, manifest: Manifest, render: bool = True):
        (
            self._rep,
            self._omni_usd,
            self._World,
            self._Articulation,
            self._RigidPrim,
            self._ArticulationAction,
        ) = _require_kit()
        self.manifest = manifest
        self.render_enabled = render
        self.instances = instance_table(manifest)
        self.world = None
        self.scene: SceneSample | None = None

    def reset(self, seed: int) -> np.ndarray:
        scene = sample_scene(self.manifest, seed)
        return self.load(build_stage(self.manifest, scene), scene)

    def load(self, stage: Usd.Stage, scene: SceneSample) -> np.ndarray:
        # Kit opens stages from files: export the in-memory stage first.
        path = Path(tempfile.mkdtemp(prefix="worldgen_")) / f"{self.manifest.name}_seed{scene.seed}.usda"
        stage.GetRootLayer().Export(str(path))
        self._omni_usd.get_context().open_stage(str(path))
        if self.world is not None:
            self.world.clear_instance()
        self.world = self._World(
            physics_dt=1.0 / self.manifest.physics_hz,
            rendering_dt=1.0 / self.manifest.control_hz,
            stage_units_in_meters=1.0,
        )
        self.robot = self._Articulation(prim_path=ROBOT_PATH, name="robot")
        self.objects = {
            o.name: self._RigidPrim(prim_path=f"{OBJECTS_PATH}/{o.name}", name=o.name)
            for o in self.manifest.task.objects
            if not o.static
        }
        self.hand = self._RigidPrim(prim_path=HAND_PATH, name="hand")
        self.world.reset()
        names = [*panda.JOINT_NAMES, *panda.FINGER_JOINT_NAMES]
        self._dof = np.array([self.robot.get_dof_index(n) for n in names])
        home = np.concatenate([panda.HOME_Q, [panda.FINGER_MAX, panda.FINGER_MAX]])
        self.robot.set_joint_positions(home, joint_indices=self._dof)
        self._targets = home.copy()
        self.scene = scene
        self.time = 0.0
        self._annotators = self._make_annotators() if self.render_enabled else {}
        return self.get_state()

    def _make_annotators(self) -> dict:
        rep = self._rep
        annotators = {}
        for spec in self.manifest.cameras:
            product = rep.create.render_product(
                camera_prim_path(self.manifest, spec.name), tuple(spec.resolution)
            )
            per_output = {}
            for output, name in (
                ("rgb", "rgb"),
                ("depth", "distance_to_image_plane"),
                ("segmentation", "instance_segmentation"),
            ):
                if output in spec.outputs:
                    ann = rep.AnnotatorRegistry.get_annotator(name)
                    ann.attach([product])
                    per_output[output] = ann
            annotators[spec.name] = (spec, per_output)
        return annotators

    def step(self, joint_targets: np.ndarray) -> np.ndarray:
        self._targets = np.asarray(joint_targets, dtype=float).copy()
        self.robot.apply_action(
            self._ArticulationAction(joint_positions=self._targets, joint_indices=self._dof)
        )
        for _ in range(self.manifest.substeps):
            self.world.step(render=False)
        self.time += self.manifest.substeps / self.manifest.physics_hz
        return self.get_state()

    def get_state(self) -> np.ndarray:
        parts = [
            [self.time],
            self.robot.get_joint_positions(joint_indices=self._dof),
            self.robot.get_joint_velocities(joint_indices=self._dof),
            self._targets,
        ]
        for prim in self.objects.values():
            pos, quat = prim.get_world_pose()
            parts += [pos, quat, prim.get_linear_velocity(), prim.get_angular_velocity()]
        return np.concatenate([np.asarray(p, dtype=np.float64).reshape(-1) for p in parts])

    def set_state(self, state: np.ndarray) -> None:
        state = np.asarray(state, dtype=np.float64)
        self.time = float(state[0])
        self.robot.set_joint_positions(state[1:10], joint_indices=self._dof)
        self.robot.set_joint_velocities(state[10:19], joint_indices=self._dof)
        self._targets = state[19:28].copy()
        offset = 28
        for prim in self.objects.values():
            chunk = state[offset : offset + 13]
            prim.set_world_pose(chunk[:3], chunk[3:7])
            prim.set_linear_velocity(chunk[7:10])
            prim.set_angular_velocity(chunk[10:13])
            offset += 13

    def robot_q(self) -> np.ndarray:
        return np.asarray(self.robot.get_joint_positions(joint_indices=self._dof), dtype=np.float64)

    def body_pose(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        prim = self.hand if name in ("hand", "tcp") else self.objects[name]
        pos, quat = (np.asarray(v, dtype=np.float64) for v in prim.get_world_pose())  # quat is wxyz
        if name == "tcp":
            pos = pos + matrix_from_quat(quat)[:, 2] * panda.HAND_TO_TCP
        return pos, quat

    def render(self, cameras: Sequence[str] | None = None) -> dict[str, CameraFrame]:
        self.world.render()
        frames = {}
        for name in cameras or list(self._annotators):
            spec, per_output = self._annotators[name]
            data = {output: annotator.get_data() for output, annotator in per_output.items()}
            frames[name] = replicator_frame(spec, data, self.instances)
        return frames

    def close(self) -> None:
        if self.world is not None:
            self.world.clear_instance()
        self.world = None
