"""Scripted demonstrators for the shipped task kinds.

An expert plans tool-centre-point (TCP) waypoints from the object poses (grasp, lift, place; or a push
along the line from the block to the goal), with per-seed variation drawn once at reset from its own
random stream, and turns the gap between the controller's commanded pose and the current waypoint into
normalised ``ee_delta`` actions. It reads only the commanded TCP pose and the task objects' poses, so it
acts the same on simulator state and on a world model's predicted state (DAgger in imagination).

Experts survive perturbation, so that they can label recovery data and serve as the ceiling of a
recovery recipe: a waypoint counts as reached within :data:`POSITION_TOLERANCE` /
:data:`ROTATION_TOLERANCE` (an exact test never passes once an action is perturbed, and the expert
hovered at its first waypoint for ever), or once the command has stopped closing in on it; the segments
that lead to the object are re-planned from its current pose when they begin.
The success predicate lives with the environment (:class:`worldgen.envs.SuccessTracker`), so experts
and policies are judged the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .envs import OBJECT_FEATURES, WorldgenEnv
from .geometry import axis_angle_from_rotation, matrix_from_quat, rot_z, xyzw_to_wxyz
from .manifest import Manifest, rng_for

DOWN = np.diag([1.0, -1.0, -1.0])  # the TCP orientation at yaw 0: fingers pointing at the table
OPEN, CLOSED, HALF = -1.0, 1.0, 0.0
# 3 mm / 0.03 rad: Gaussian noise of 0.1 on the translation actions (1.5 mm per step at the shipped
# max_translation) then still lets the push expert succeed 39/40 (FIELD-NOTES, DART in the simulator).
POSITION_TOLERANCE = 3e-3
ROTATION_TOLERANCE = 3e-2
# A waypoint within STALL_RADIUS that the command has not closed in on for STALL_STEPS steps is passed.
STALL_RADIUS = 1e-2
STALL_STEPS = 8

ObjectPoses = dict[str, tuple[np.ndarray, np.ndarray]]  # name -> (position, quaternion w, x, y, z)


@dataclass
class Waypoint:
    position: np.ndarray  # TCP, world frame
    yaw: float
    gripper: float
    wait: int = 0  # control steps to stay after reaching it
    speed: float = 1.0  # fraction of max_translation per step


def yaw_of(quat_wxyz: np.ndarray) -> float:
    r = matrix_from_quat(quat_wxyz)
    return math.atan2(r[1, 0], r[0, 0])


def _grasp_yaw(object_yaw: float, symmetry: float) -> float:
    """Hand yaw that closes the fingers along the object's x axis, folded by the object's symmetry
    into the range nearest the home yaw (0), which keeps joint 7 well inside its limits."""
    yaw = object_yaw + math.pi / 2
    return (yaw + symmetry / 2) % symmetry - symmetry / 2


def object_poses(env: WorldgenEnv) -> ObjectPoses:
    """The dynamic task objects' poses in the simulator."""
    return {o.name: env.backend.body_pose(o.name) for o in env.manifest.task.objects if not o.static}


def poses_from_object_obs(manifest: Manifest, features: np.ndarray) -> ObjectPoses:
    """The dynamic objects' poses from an ``object`` observation (simulated or predicted)."""
    poses, dynamic = {}, [o.name for o in manifest.task.objects if not o.static]
    for i, name in enumerate(dynamic):
        f = np.asarray(features[i * OBJECT_FEATURES : (i + 1) * OBJECT_FEATURES], dtype=np.float64)
        quat = xyzw_to_wxyz(f[3:7])
        poses[name] = (f[:3], quat / max(float(np.linalg.norm(quat)), 1e-9))
    return poses


class WaypointExpert:
    """Follows a list of waypoints with the ``ee_delta`` action space.

    ``reset(seed, poses)`` draws the seed's variation and plans; ``act(commanded_tcp, poses)`` gives the
    next action. Subclasses define :meth:`draw` (random choices, once per seed), :meth:`plan` (waypoints
    from the object poses and those choices) and :attr:`replan_until` (waypoints up to this index are
    re-planned from the current poses when they begin: those before contact with the object).
    """

    replan_until = -1

    def __init__(self, manifest: Manifest):
        if manifest.embodiment.action_space != "ee_delta":
            raise ValueError("the scripted experts act in the ee_delta action space")
        self.manifest = manifest
        self.waypoints: list[Waypoint] = []
        self.index = 0
        self.waited = 0

    def reset(self, seed: int, poses: ObjectPoses) -> None:
        self.choices = self.draw(rng_for(seed, "expert"))
        self.waypoints = self.plan(poses)
        self.index, self.waited = 0, 0
        self.best, self.stalled = math.inf, 0

    def draw(self, rng: np.random.Generator) -> dict[str, float]:
        raise NotImplementedError

    def plan(self, poses: ObjectPoses) -> list[Waypoint]:
        raise NotImplementedError

    def act(self, commanded_tcp: np.ndarray, poses: ObjectPoses) -> np.ndarray:
        """The action toward the current waypoint from the commanded 4x4 TCP pose (world frame)."""
        emb = self.manifest.embodiment
        wp = self.waypoints[self.index]
        delta = wp.position - commanded_tcp[:3, 3]
        dist = float(np.linalg.norm(delta))
        step = min(dist, emb.max_translation * wp.speed)
        a_pos = delta / dist * step / emb.max_translation if dist > 1e-9 else np.zeros(3)
        rot_err = axis_angle_from_rotation(rot_z(wp.yaw) @ DOWN @ commanded_tcp[:3, :3].T)
        a_rot = np.clip(rot_err / emb.max_rotation, -1.0, 1.0)
        action = np.concatenate([a_pos, a_rot, [wp.gripper]]).astype(np.float32)
        if dist < self.best - 5e-4:
            self.best, self.stalled = dist, 0
        else:
            self.stalled += 1
        reached = dist < POSITION_TOLERANCE and float(np.linalg.norm(rot_err)) < ROTATION_TOLERANCE
        reached = reached or (dist < STALL_RADIUS and self.stalled >= STALL_STEPS)
        if reached and self.index < len(self.waypoints) - 1:
            self.waited += 1
            if self.waited > wp.wait:
                self.index, self.waited = self.index + 1, 0
                self.best, self.stalled = math.inf, 0
                if self.index <= self.replan_until:
                    self.waypoints[self.index :] = self.plan(poses)[self.index :]
        return action


class PickPlaceExpert(WaypointExpert):
    """Grasp the success object, lift it, carry it over the goal region, lower and release it."""

    replan_until = 1  # above the object, then down to the grasp

    def draw(self, rng: np.random.Generator) -> dict[str, float]:
        spec = self.manifest.task.success
        # Drawn in the order the recorded datasets drew them, so their scenes keep their plans.
        choices = {
            "above": rng.uniform(0.10, 0.14),
            "lift": max(rng.uniform(0.12, 0.16), spec.min_height + rng.uniform(0.03, 0.06)),
            "grasp_dz": rng.uniform(0.0, 0.008),
            "approach_speed": rng.uniform(0.85, 1.0),
            "close_wait": int(rng.integers(6, 9)),
        }
        if spec.predicate == "object_in_region":
            region = next(r for r in self.manifest.task.regions if r.name == spec.region)
            margin = np.asarray(region.half_extents) * 0.3
            goal_x, goal_y = np.asarray(region.center) + rng.uniform(-margin, margin)
            choices |= {
                "goal_x": goal_x,
                "goal_y": goal_y,
                "carry_speed": rng.uniform(0.8, 1.0),
                "release_wait": int(rng.integers(4, 7)),
            }
        return choices

    def plan(self, poses: ObjectPoses) -> list[Waypoint]:
        c, spec = self.choices, self.manifest.task.success
        obj = self.manifest.task.object(spec.object)
        pos, quat = poses[obj.name]
        symmetry = math.pi / 2 if abs(obj.size[0] - obj.size[1]) < 1e-6 else math.pi
        yaw = _grasp_yaw(yaw_of(quat), symmetry)
        lift = c["lift"]
        grasp = pos + np.array([0.0, 0.0, c["grasp_dz"]])
        waypoints = [
            Waypoint(pos + [0.0, 0.0, c["above"]], yaw, OPEN, speed=c["approach_speed"]),
            Waypoint(grasp, yaw, OPEN, wait=1, speed=0.6),
            Waypoint(grasp, yaw, CLOSED, wait=c["close_wait"]),
            Waypoint(grasp + [0.0, 0.0, lift], yaw, CLOSED, speed=0.7),
        ]
        if spec.predicate == "object_in_region":
            goal_xy = np.array([c["goal_x"], c["goal_y"]])
            place_z = self.manifest.task.table.height + obj.size[2] / 2 + 0.012
            over = np.array([*goal_xy, place_z + lift])
            waypoints += [
                Waypoint(over, yaw, CLOSED, speed=c["carry_speed"]),
                Waypoint(np.array([*goal_xy, place_z]), yaw, CLOSED, wait=1, speed=0.6),
                Waypoint(np.array([*goal_xy, place_z]), yaw, OPEN, wait=c["release_wait"]),
                Waypoint(np.array([*goal_xy, place_z + 0.1]), yaw, OPEN),
            ]
        return waypoints


class PushExpert(WaypointExpert):
    """Half-open fingers behind the block, then push it along the line to the goal region's centre."""

    replan_until = 2  # above the start, down to it, and the push line: all from the block's pose

    def draw(self, rng: np.random.Generator) -> dict[str, float]:
        goal_dx, goal_dy = rng.uniform(-0.01, 0.01, 2)
        return {
            "goal_dx": goal_dx,
            "goal_dy": goal_dy,
            "z": self.manifest.task.table.height + rng.uniform(0.03, 0.034),
            "approach_speed": rng.uniform(0.85, 1.0),
            "push_speed": rng.uniform(0.4, 0.5),
        }

    def plan(self, poses: ObjectPoses) -> list[Waypoint]:
        c, spec = self.choices, self.manifest.task.success
        obj = self.manifest.task.object(spec.object)
        region = next(r for r in self.manifest.task.regions if r.name == spec.region)
        pos, _ = poses[obj.name]
        goal = np.asarray(region.center) + np.array([c["goal_dx"], c["goal_dy"]])
        line = goal - pos[:2]
        u = line / np.linalg.norm(line)
        # Fingers spread across the push direction so both pads meet the block's rear face.
        yaw = math.atan2(u[1], u[0])
        reach = 0.5 * max(obj.size[:2]) + 0.012
        # Pads reach 2 cm below the TCP (z): keep them clear of the table, which would brake the push.
        start = np.array([*(pos[:2] - u * (reach + 0.04)), c["z"]])
        end = np.array([*(goal - u * reach), c["z"]])
        return [
            Waypoint(start + [0.0, 0.0, 0.12], yaw, HALF, speed=c["approach_speed"]),
            Waypoint(start, yaw, HALF, wait=1, speed=0.6),
            Waypoint(end, yaw, HALF, wait=2, speed=c["push_speed"]),
            Waypoint(end - np.array([*(u * 0.05), -0.1]), yaw, HALF),
        ]


EXPERTS = {"pick_place": PickPlaceExpert, "bin_pick": PickPlaceExpert, "push": PushExpert}


def make_expert(manifest: Manifest) -> WaypointExpert:
    return EXPERTS[manifest.task.kind](manifest)
