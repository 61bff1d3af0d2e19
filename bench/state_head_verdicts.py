"""How far the world model's state head drifts over a whole attempt, and how often the success verdict
read from it is right, for several checkpoints side by side on the same simulator episodes.

The episodes are the world-model attempts of an experiment folder (``worldgen compare``'s
``recover_wm.hdf5`` / ``retarget_wm.hdf5``) replayed in the simulator, their true states kept: about a
third of them fail there, so the verdicts can be wrong both ways. Each checkpoint's state head rolls
out over the replayed actions from the true start state, fed its own predictions, the end effector
taken from the replay (as generation takes it from the arm controller). Reported per checkpoint: the
median horizontal error of the success object's position at the end, and the precision and recall of
"the predicate held for ``hold_steps``" on the predicted states against the simulator's success.

    python bench/state_head_verdicts.py --episodes data/experiments/push \\
        --checkpoint one_step=data/experiments/push/wm \\
        --checkpoint rollout_64=data/experiments/push_rollout/wm
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from stages import RESULTS, say  # bench/stages.py, beside this script
from worldgen.dataset import dataset_manifest, demo_names, demo_record, open_dataset, read_demo
from worldgen.envs import WorldgenEnv, object_slice, predicate_steps, success_step
from worldgen.files import write_atomically
from worldgen.keys import EEF_POS, GRIPPER_QPOS
from worldgen.manifest import Manifest

from world_models.data import STATE_KEYS, state_layout
from world_models.replay import replay_executed, replay_start
from world_models.sampler import WorldModelSampler


def replayed_episodes(path: Path) -> tuple[Manifest, list[dict]]:
    """Each world-model attempt of a generated dataset replayed in the simulator: its executed actions
    (T, A), the true states (T+1, S) in the world model's layout and whether the simulator succeeded."""
    episodes = []
    with open_dataset(path) as f:
        manifest = dataset_manifest(f)
        env = WorldgenEnv(manifest, cameras=False)
        for name in demo_names(f):
            record = demo_record(f, name)
            if record.source != "world_model":
                continue
            demo = read_demo(f["data"][name])
            actions = demo.executed_actions
            seen, success = replay_executed(env, replay_start(f, record), demo, record.seed)
            states = [np.concatenate([obs[k] for k in STATE_KEYS]) for obs in seen]
            episodes.append(
                {
                    "actions": torch.from_numpy(np.asarray(actions[: len(states) - 1], np.float32)),
                    "states": torch.from_numpy(np.asarray(states, np.float32)),
                    "success": success,
                }
            )
        env.close()
    return manifest, episodes


@torch.no_grad()
def state_head_rollout(model, norm, context: int, actions: torch.Tensor, states: torch.Tensor, known: int):
    """The state head over ``actions`` (T, A) from ``states[0]``, fed its own predictions but for the
    first ``known`` columns, read from ``states`` each step: raw predicted states (T+1, S)."""
    padded = torch.cat([actions.new_zeros(context - 1, actions.shape[1]), actions])
    windows = norm.normalize_actions(torch.stack([padded[t : t + context] for t in range(len(actions))]))
    truth = norm.normalize(states)
    state, out = truth[:1], [truth[:1]]
    for t in range(len(actions)):
        state = state + model.predict_state_delta(windows[t : t + 1], state)
        state = torch.cat([truth[t + 1 : t + 2, :known], state[:, known:]], 1)
        out.append(state)
    return norm.denormalize(torch.cat(out))


def verdict(manifest: Manifest, states: np.ndarray, layout: dict[str, int]) -> bool:
    """Whether the success predicate holds for ``hold_steps`` on (T+1, S) states."""
    eef, fingers = layout[EEF_POS], layout[GRIPPER_QPOS]
    objects, gripper = states[1:, eef + fingers :], states[1:, eef : eef + fingers]
    # The success object's height at the start, as the library reads it (not the first object's).
    start_z = float(states[0, eef + fingers :][object_slice(manifest, manifest.task.success.object)][2])
    holds = predicate_steps(manifest, objects, gripper, start_z)
    return success_step(holds, manifest.task.success.hold_steps) >= 0


def score(manifest: Manifest, model, meta, episodes: list[dict], layout: dict[str, int]) -> dict:
    errors, predicted, truth = [], [], []
    eef, fingers = layout[EEF_POS], layout[GRIPPER_QPOS]
    xy = slice(eef + fingers, eef + fingers + 2)
    for e in episodes:
        p = state_head_rollout(model, meta.normalization, meta.context_frames, e["actions"], e["states"], eef)
        errors.append(float((p[-1, xy] - e["states"][-1, xy]).norm()))
        predicted.append(verdict(manifest, p.numpy(), layout))
        truth.append(e["success"])
    predicted, truth = np.asarray(predicted), np.asarray(truth)
    hits = int((predicted & truth).sum())
    return {
        "episodes": len(episodes),
        "simulator_successes": int(truth.sum()),
        "predicted_successes": int(predicted.sum()),
        "precision": hits / max(int(predicted.sum()), 1),
        "recall": hits / max(int(truth.sum()), 1),
        "object_error_end_median_m": float(np.median(errors)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--episodes", type=Path, required=True, help="experiment folder with *_wm.hdf5")
    parser.add_argument("--recipes", nargs="+", default=["retarget", "recover"])
    parser.add_argument("--checkpoint", action="append", required=True, help="NAME=FOLDER")
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    checkpoints = dict(c.split("=", 1) for c in args.checkpoint)
    result: dict = {"episodes_from": str(args.episodes), "recipes": {}}
    for recipe in args.recipes:
        path = args.episodes / f"{recipe}_wm.hdf5"
        say(f"replaying {path} ...")
        manifest, episodes = replayed_episodes(path)
        with open_dataset(path) as f:
            layout = state_layout(f["data"][demo_names(f)[0]])
        rows = {}
        for name, folder in checkpoints.items():
            sampler = WorldModelSampler(folder)
            scores = score(manifest, sampler.model, sampler.meta, episodes, layout)
            rows[name] = {"state_horizon": sampler.meta.state_horizon, **scores}
            say(f"{recipe} {name}: {rows[name]}")
        result["recipes"][recipe] = rows
    stem = "state_head_verdicts" + (f"_{args.tag}" if args.tag else "")
    write_atomically(RESULTS / f"{stem}.json", (json.dumps(result, indent=2) + "\n").encode())
    write_atomically(RESULTS / f"{stem}.md", table(result).encode())
    print(table(result))


def table(result: dict) -> str:
    lines = []
    for recipe, rows in result["recipes"].items():
        lines += [
            f"{recipe} attempts of {result['episodes_from']} replayed in the simulator",
            "",
            "| checkpoint | state horizon | object error at end | predicted | precision | recall |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name, r in rows.items():
            lines.append(
                f"| {name} | {r['state_horizon']} | {100 * r['object_error_end_median_m']:.1f} cm "
                f"| {r['predicted_successes']}/{r['episodes']} | {r['precision']:.0%} | {r['recall']:.0%} |"
            )
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
