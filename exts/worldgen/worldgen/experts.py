"""Scripted demonstrators for the shipped task kinds.

An expert plans tool-centre-point (TCP) waypoints from the scene at reset (grasp, lift, place; or a
push along the line from the block to the goal), with per-seed variation drawn from its own random
stream, and turns the gap between the controller's commanded pose and the current waypoint into
normalised ``ee_delta`` actions. The success predicate lives with the environment
(:class:`worldgen.envs.SuccessTracker`), so experts and policies are judged the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .envs import WorldgenEnv
from .geometry import axis_angle_from_rotation, matrix_from_quat, rot_z
from .manifest import rng_for

DOWN = np.diag([1.0, -1.0, -1.0])  # the TCP orientation at yaw 0: fingers pointing at the table
OPEN, CLOSED, HALF = -1.0, 1.0, 0.0


@dataclass
class Waypoint:
    position: np.ndarray  # TCP, world frame
    yaw: float
    gripper: float
    wait: int = 0  # control steps to stay after reaching it
    speed: float = 1.0  # fraction of max_translation per step


def _yaw_of(quat_wxyz: np.ndarray) -> float:
    r = matrix_from_quat(quat_wxyz)
    return math.atan2(r[1, 0], r[0, 0])


def _grasp_yaw(object_yaw: float, symmetry: float) -> float:
    """Hand yaw that closes the fingers along the object's x axis, folded by the object's symmetry
    into the range nearest the home yaw (0), which keeps joint 7 well inside its limits."""
    yaw = object_yaw + math.pi / 2
    return (yaw + symmetry / 2) % symmetry - symmetry / 2


class WaypointExpert:
    """Follows a list of waypoints with the ``ee_delta`` action space."""

    def __init__(self, env: WorldgenEnv):
        if env.manifest.embodiment.action_space != "ee_delta":
            raise ValueError("the scripted experts act in the ee_delta action space")
        self.env = env
        self.waypoints: list[Waypoint] = []
        self.index = 0
        self.waited = 0

    def reset(self, seed: int) -> None:
        self.rng = rng_for(seed, "expert")
        self.waypoints = self.plan()
        self.index = 0
        self.waited = 0

    def plan(self) -> list[Waypoint]:
        raise NotImplementedError

    def act(self) -> np.ndarray:
        emb = self.env.manifest.embodiment
        cmd = self.env.controller.commanded_tcp_world()
        wp = self.waypoints[self.index]
        delta = wp.position - cmd[:3, 3]
        dist = float(np.linalg.norm(delta))
        step = min(dist, emb.max_translation * wp.speed)
        a_pos = delta / dist * step / emb.max_translation if dist > 1e-9 else np.zeros(3)
        rot_err = axis_angle_from_rotation(rot_z(wp.yaw) @ DOWN @ cmd[:3, :3].T)
        a_rot = np.clip(rot_err / emb.max_rotation, -1.0, 1.0)
        reached = dist < 1e-4 and np.linalg.norm(rot_err) < 1e-3
        if reached and self.index < len(self.waypoints) - 1:
            self.waited += 1
            if self.waited > wp.wait:
                self.index, self.waited = self.index + 1, 0
        return np.concatenate([a_pos, a_rot, [wp.gripper]]).astype(np.float32)


class PickPlaceExpert(WaypointExpert):
    """Grasp the success object, lift it, carry it over the goal region, lower and release it."""

    def plan(self) -> list[Waypoint]:
        env, rng = self.env, self.rng
        spec = env.manifest.task.success
        obj = env.manifest.task.object(spec.object)
        pos, quat = env.backend.body_pose(obj.name)
        symmetry = math.pi / 2 if abs(obj.size[0] - obj.size[1]) < 1e-6 else math.pi
        yaw = _grasp_yaw(_yaw_of(quat), symmetry)
        above = rng.uniform(0.10, 0.14)
        lift = max(rng.uniform(0.12, 0.16), spec.min_height + rng.uniform(0.03, 0.06))
        grasp = pos + np.array([0.0, 0.0, rng.uniform(0.0, 0.008)])
        waypoints = [
            Waypoint(pos + [0.0, 0.0, above], yaw, OPEN, speed=rng.uniform(0.85, 1.0)),
            Waypoint(grasp, yaw, OPEN, wait=1, speed=0.6),
            Waypoint(grasp, yaw, CLOSED, wait=int(rng.integers(6, 9))),
            Waypoint(grasp + [0.0, 0.0, lift], yaw, CLOSED, speed=0.7),
        ]
        if spec.predicate == "object_in_region":
            region = next(r for r in env.manifest.task.regions if r.name == spec.region)
            margin = np.asarray(region.half_extents) * 0.3
            goal_xy = np.asarray(region.center) + rng.uniform(-margin, margin)
            place_z = env.manifest.task.table.height + obj.size[2] / 2 + 0.012
            over = np.array([*goal_xy, place_z + lift])
            waypoints += [
                Waypoint(over, yaw, CLOSED, speed=rng.uniform(0.8, 1.0)),
                Waypoint(np.array([*goal_xy, place_z]), yaw, CLOSED, wait=1, speed=0.6),
                Waypoint(np.array([*goal_xy, place_z]), yaw, OPEN, wait=int(rng.integers(4, 7))),
                Waypoint(np.array([*goal_xy, place_z + 0.1]), yaw, OPEN),
            ]
        return waypoints


class PushExpert(WaypointExpert):
    """Half-open fingers behind the block, then push it along the line to the goal region's centre."""

    def plan(self) -> list[Waypoint]:
        env, rng = self.env, self.rng
        spec = env.manifest.task.success
        obj = env.manifest.task.object(spec.object)
        region = next(r for r in env.manifest.task.regions if r.name == spec.region)
        pos, _ = env.backend.body_pose(obj.name)
        goal = np.asarray(region.center) + rng.uniform(-0.01, 0.01, 2)
        line = goal - pos[:2]
        u = line / np.linalg.norm(line)
        # Fingers spread across the push direction so both pads meet the block's rear face.
        yaw = math.atan2(u[1], u[0])
        reach = 0.5 * max(obj.size[:2]) + 0.012
        # Pads reach 2 cm below the TCP: keep them clear of the table, which would brake the push.
        z = env.manifest.task.table.height + rng.uniform(0.03, 0.034)
        start = np.array([*(pos[:2] - u * (reach + 0.04)), z])
        end = np.array([*(goal - u * reach), z])
        return [
            Waypoint(start + [0.0, 0.0, 0.12], yaw, HALF, speed=rng.uniform(0.85, 1.0)),
            Waypoint(start, yaw, HALF, wait=1, speed=0.6),
            Waypoint(end, yaw, HALF, wait=2, speed=rng.uniform(0.4, 0.5)),
            Waypoint(end - np.array([*(u * 0.05), -0.1]), yaw, HALF),
        ]


EXPERTS = {"pick_place": PickPlaceExpert, "bin_pick": PickPlaceExpert, "push": PushExpert}


def make_expert(env: WorldgenEnv) -> WaypointExpert:
    return EXPERTS[env.manifest.task.kind](env)
