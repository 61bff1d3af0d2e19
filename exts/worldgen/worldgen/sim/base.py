"""The simulation backend protocol: what the environment, the experts and the dataset writer need from
a physics engine + renderer. Newton implements it headlessly (``newton.py``); Isaac Sim under Kit
(``isaac.py``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
from pxr import Usd

from ..manifest import Manifest
from ..scene import SceneSample

BACKGROUND, GROUND, TABLE, ROBOT = 0, 1, 2, 3


class SimDiverged(RuntimeError):
    """The simulation produced NaNs or a blow-up; the trajectory is discarded with this reason."""


@dataclass
class CameraFrame:
    """One camera's outputs for one step; outputs the manifest does not ask for are None."""

    rgb: np.ndarray | None = None  # (H, W, 3) uint8
    depth: np.ndarray | None = None  # (H, W, 1) float32, (z - near) / (far - near) clipped to [0, 1]
    seg: np.ndarray | None = None  # (H, W, 1) uint8 instance ids, see instance_table()


def instance_table(manifest: Manifest) -> list[dict]:
    """Segmentation ids: 0 background, 1 ground, 2 table, 3 robot, then objects, regions, distractors.

    The same for every seed of a manifest, so ids mean the same thing across a dataset.
    """
    rows = [
        {"id": BACKGROUND, "name": "background", "class": "background", "prim": ""},
        {"id": GROUND, "name": "ground", "class": "ground", "prim": "/World/Ground"},
        {"id": TABLE, "name": "table", "class": "table", "prim": "/World/Table"},
        {"id": ROBOT, "name": "robot", "class": "robot", "prim": "/World/Robot"},
    ]
    for obj in manifest.task.objects:
        rows.append({"name": obj.name, "class": obj.semantic_label, "prim": f"/World/Objects/{obj.name}"})
    for region in manifest.task.regions:
        rows.append({"name": region.name, "class": "region", "prim": f"/World/Regions/{region.name}"})
    for d in manifest.stressors.distractors:
        rows.append({"name": d.name, "class": "distractor", "prim": f"/World/Distractors/{d.name}"})
    for i, row in enumerate(rows):
        row["id"] = i
    return rows


def instance_id_for_prim(table: list[dict], prim_path: str) -> int:
    """The id of the longest table prim that is a prefix of ``prim_path`` (0 when none is)."""
    best, best_len = BACKGROUND, -1
    for row in table:
        prefix = row["prim"]
        if prefix and (prim_path == prefix or prim_path.startswith(prefix + "/")) and len(prefix) > best_len:
            best, best_len = row["id"], len(prefix)
    return best


def normalize_depth(z: np.ndarray, near: float, far: float) -> np.ndarray:
    """Metric depth to [0, 1]; misses (z <= 0) read as far."""
    out = np.where(z > 0.0, (z - near) / (far - near), 1.0)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


@runtime_checkable
class SimBackend(Protocol):
    """A physics engine + renderer over a compiled worldgen stage.

    ``step`` takes the 9 joint position targets (7 arm joints, 2 fingers) that
    :class:`worldgen.control.ArmController` produces and advances one control step
    (``manifest.substeps`` physics steps). States are flat float64 vectors that restore exactly.
    """

    manifest: Manifest

    def load(self, stage: Usd.Stage, scene: SceneSample) -> np.ndarray: ...

    def reset(self, seed: int) -> np.ndarray: ...

    def step(self, joint_targets: np.ndarray) -> np.ndarray: ...

    def render(self, cameras: Sequence[str] | None = None) -> dict[str, CameraFrame]: ...

    def get_state(self) -> np.ndarray: ...

    def set_state(self, state: np.ndarray) -> None: ...

    def robot_q(self) -> np.ndarray: ...

    def body_pose(self, name: str) -> tuple[np.ndarray, np.ndarray]: ...

    def close(self) -> None: ...
