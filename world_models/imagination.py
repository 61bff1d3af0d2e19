"""Attempts acted out in the world model: the loop every recipe that acts in imagination shares.

Each attempt has an actor (its recipe's labeler, or its plan) that picks the executed action and the
label from the commanded TCP and the object poses the world model predicts; all attempts take one
model call per step together. The robot's own pose is known (the controller integrates the executed
actions exactly), so the end effector is the commanded TCP plus the seed demos' mean tracking offset;
the world model predicts the world.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from worldgen.control import ArmController
from worldgen.dataset import Demo
from worldgen.envs import OBJECT_FEATURES, predicate_steps, success_step
from worldgen.experts import ObjectPoses, poses_from_object_obs
from worldgen.keys import EEF_POS, EXECUTED_ACTIONS, GRIPPER_QPOS
from worldgen.manifest import Manifest

from .sampler import WorldModelSampler, predicted_obs, state_obs


def tracking_offset(manifest: Manifest, demos: list[Demo]) -> np.ndarray:
    """Mean of (measured end effector - commanded TCP) over ``demos`` (the seed demos): the joint drives'
    static tracking error (about 6 mm on push_to_target; 1.4 mm is left once it is removed)."""
    gaps = [
        d.obs[EEF_POS][t] - ArmController.from_env_state(manifest, s).commanded_tcp_world()[:3, 3]
        for d in demos
        for t, s in enumerate(d.states)
    ]
    return np.mean(gaps, axis=0)


def with_end_effector(states: np.ndarray, eef: np.ndarray, layout: dict[str, int]) -> np.ndarray:
    """(N, S) raw states with the end effector replaced by ``eef`` (N, 3) and each object's position
    relative to it recomputed."""
    out = states.copy()
    out[:, : layout[EEF_POS]] = eef
    start = layout[EEF_POS] + layout[GRIPPER_QPOS]
    for o in range(start, states.shape[1], OBJECT_FEATURES):
        out[:, o + 7 : o + 10] = out[:, o : o + 3] - eef
    return out


def perturbed(label: np.ndarray, rng: np.random.Generator, sigma: float, on: bool) -> np.ndarray:
    """The executed action: the label with Gaussian noise on its translation channels."""
    action = np.array(label, dtype=np.float32)
    if on and sigma > 0:
        action[:3] += rng.normal(0.0, sigma, 3).astype(np.float32)
    return np.clip(action, -1.0, 1.0)


@dataclass
class Imagined:
    """Attempts acted out in the world model together: pixel frames after each step (n, T, C, h, w), raw
    states (n, T+1, S), labels and executed actions (n, T, A), and whether the success predicate held
    on the predicted state after each step (n, T)."""

    frames: torch.Tensor
    states: np.ndarray
    labels: np.ndarray
    executed: np.ndarray
    held: np.ndarray

    def demo(
        self,
        i: int,
        first_frame: torch.Tensor,
        attrs: dict,
        manifest: Manifest,
        sampler: WorldModelSampler,
        layout: dict[str, int],
        cam_hw: tuple[int, int],
    ) -> Demo:
        """Attempt ``i`` as a demo, cut where the predicate has held for ``hold_steps`` (then its
        ``success`` is the world model's verdict, the only one used), from the model frame it started
        at (1, C, h, w); executed actions beside the labels only where they differ."""
        end = success_step(self.held[i], manifest.task.success.hold_steps)
        t = end if end >= 0 else self.held.shape[1]
        dones = np.zeros(t, np.uint8)
        dones[-1] = end >= 0
        seq = torch.cat([first_frame, self.frames[i, :t]])
        labels, executed = self.labels[i, :t], self.executed[i, :t]
        meta = sampler.meta
        return Demo(
            actions=labels,
            states=np.zeros((t, 0)),
            obs=predicted_obs(meta.camera, meta.instances, seq, self.states[i, : t + 1], layout, cam_hw),
            rewards=self.held[i, :t].astype(np.float32),
            dones=dones,
            attrs={**attrs, "success": end >= 0, "source": "world_model"},
            extras={} if np.array_equal(labels, executed) else {EXECUTED_ACTIONS: executed},
        )


Actor = Callable[[np.ndarray, ObjectPoses, int], tuple[np.ndarray, np.ndarray]]


@torch.no_grad()
def imagine(
    sampler: WorldModelSampler,
    manifest: Manifest,
    context: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    actors: list[Actor],
    controllers: list[ArmController],
    layout: dict[str, int],
    start_z: np.ndarray,
    steps: int,
    tracking_offset: np.ndarray | None,
    generators: list[torch.Generator],
    success_margin: float = 0.0,
) -> Imagined:
    """Attempts acted out in the world model, one model call per step for all of them.

    ``context``: model frames (n, K, C, h, w), the actions before them (n, K, A) and raw states (n, S);
    ``actors[i](commanded_tcp, poses, j)`` gives attempt i's (executed action, label) at step j from its
    controller's commanded TCP and the predicted object poses; ``start_z`` (n,) is the success object's
    height when its episode began. Runs ``steps`` steps or until every attempt's predicate, with
    ``success_margin`` to spare, has held for ``hold_steps``. ``tracking_offset``: the end effector is
    the commanded TCP plus this offset (the robot's pose is known), not the model's state head."""
    n, hold = len(actors), manifest.task.success.hold_steps
    window, actions, state = context
    norm_state = sampler.norm.normalize(state)
    raw = [state.numpy()]  # (n, S) per step, raw units
    frames, labels, executed, holds = [], [], [], []
    for j in range(steps):
        objects = state_obs(raw[-1], layout)["object"]
        acted = [
            actors[i](controllers[i].commanded_tcp_world(), poses_from_object_obs(manifest, objects[i]), j)
            for i in range(n)
        ]
        act = np.stack([a for a, _ in acted]).astype(np.float32)
        for i in range(n):
            controllers[i].apply(act[i].astype(np.float64))
        actions = torch.cat([actions[:, 1:], torch.from_numpy(act)[:, None]], 1)
        nxt, norm_state = sampler.step(window, actions, norm_state, generators)
        window = torch.cat([window[:, 1:], nxt[:, None]], 1)
        predicted = sampler.norm.denormalize(norm_state).numpy()
        if tracking_offset is not None:
            commanded = np.stack([c.commanded_tcp_world()[:3, 3] for c in controllers])
            predicted = with_end_effector(predicted, commanded + tracking_offset, layout)
            norm_state = sampler.norm.normalize(torch.from_numpy(predicted))
        raw.append(predicted)
        frames.append(nxt)
        labels.append(np.stack([label for _, label in acted]))
        executed.append(act)
        obs = state_obs(raw[-1], layout)
        objects, fingers = obs["object"], obs[GRIPPER_QPOS]
        holds.append(
            [
                predicate_steps(manifest, objects[i : i + 1], fingers[i : i + 1], start_z[i], success_margin)[
                    0
                ]
                for i in range(n)
            ]
        )
        ends = [success_step(np.asarray(holds)[:, i], hold) for i in range(n)]
        if min(ends) >= 0:
            break
    return Imagined(
        frames=sampler.decode(torch.stack(frames, 1)),
        states=np.stack(raw, 1),
        labels=np.stack(labels, 1).astype(np.float32),
        executed=np.stack(executed, 1).astype(np.float32),
        held=np.asarray(holds).T,
    )
