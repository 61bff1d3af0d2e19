"""Why does one set of seed demos turn the world model's demos into a loss? Ablations over one finished
``worldgen run`` folder (its seeds, world model and accepted ``recover`` attempts), written to
bench/results/seed_set_cause[_<tag>].json / .md.

Per accepted attempt: its executed actions replayed in the simulator from the same start (the referee,
never a filter), the predicted block against the simulated one, and whether other samples of the world
model under the same actions agree that it succeeds. Then BC rows, each ``--replicates`` policy seeds on
their own panels of ``--episodes`` held-out scenes (replicate r on panel r, the same in every row):

    seeds                   the run's training seed demos
    +accepted               + the attempts the world model judged successful (what the run trains on)
    +accepted, replay-true  + only those that also succeed in the simulator: a perfect gate
    +accepted, sim obs      + the same attempts and labels, observations replaced by the simulator's
                            under the same executed actions: what the predicted state's error costs
    +accepted, no valid     + without the attempts started from the validation demo
    +sim twin               + the same attempts run in the simulator (same starts, expert, noise seeds,
                            stopping rule), those that succeed: the recipe's ceiling
    +accepted @ share s     + accepted, with a share s of each batch from generated demos (co-training)

    python bench/seed_set_cause.py data/experiments/seed_sets/base_seed_100 --tag base_seed_100
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from stages import RESULTS, pooled, say  # bench/stages.py, beside this script
from worldgen.control import ArmController
from worldgen.dataset import (
    DatasetWriter,
    Demo,
    dataset_manifest,
    demo_names,
    demo_record,
    open_dataset,
    read_demo,
    read_header,
)
from worldgen.envs import WorldgenEnv, object_slice, success_step
from worldgen.files import write_atomically
from worldgen.keys import EEF_POS, GRIPPER_QPOS
from worldgen.manifest import load_manifest

from policies.evaluate import evaluate_policy
from policies.train import train_bc
from world_models.data import Episode
from world_models.imagination import imagine
from world_models.recipes import Parent, generate_in_simulator, recipe_spec
from world_models.recipes.recover import WorldModelAttempts

LOW_DIM = (EEF_POS, GRIPPER_QPOS, "object")


def replay_attempts(checked: Path, out: Path) -> list[dict]:
    """Each accepted attempt replayed in the simulator: the predicted and simulated block at its end, and
    a copy of it with the simulator's observations (labels kept) in ``out``."""
    rows = []
    with open_dataset(checked) as f:
        manifest = dataset_manifest(f)
        sl = object_slice(manifest, manifest.task.success.object)
        valid = set(demo_names(f, "valid"))
        writer = DatasetWriter(out, read_header(f))
        for name in demo_names(f, "seed"):
            if name not in writer.demos:
                d = read_demo(f["data"][name], LOW_DIM)
                writer.append(Demo(d.actions, d.states, d.obs, d.rewards, d.dones, d.attrs), name)
        env = WorldgenEnv(manifest, cameras=False)
        for name in demo_names(f, "synthetic"):
            record = demo_record(f, name)
            if not record.success:
                continue
            demo = read_demo(f["data"][name], LOW_DIM)
            executed = demo.executed_actions
            env.reset(seed=record.seed)
            env.set_state(f["data"][record.parent]["states"][record.branch_step])
            seen, success = [env.observe()], False
            for action in executed:
                obs, _, _, _, info = env.step(action)
                seen.append(obs)
                success = success or bool(info["success"])
            true_obs = {k: np.stack([o[k] for o in seen]).astype(demo.obs[k].dtype) for k in LOW_DIM}
            if name not in writer.demos:
                writer.append(
                    Demo(demo.actions, demo.states, true_obs, demo.rewards, demo.dones, demo.attrs), name
                )
            predicted, true = demo.obs["object"][:, sl][:, :3], true_obs["object"][:, sl][:, :3]
            error = np.linalg.norm(predicted - true, axis=1)
            rows.append(
                {
                    "name": name,
                    "parent": record.parent,
                    "valid_parent": record.parent in valid,
                    "steps": len(executed),
                    "replay_success": success,
                    "block_error_end_m": round(float(error[-1]), 4),
                    "block_error_max_m": round(float(error.max()), 4),
                    "predicted_end": [round(float(x), 3) for x in predicted[-1]],
                    "simulated_end": [round(float(x), 3) for x in true[-1]],
                }
            )
            say(
                f"{name} from {record.parent}: replay {'success' if success else 'failure'}, block off by "
                f"{100 * error[-1]:.1f} cm at the end"
            )
        env.close()
        writer.finalize()
    return rows


def sample_agreement(checked: Path, ckpt: Path, samples: int) -> dict[str, list[bool]]:
    """Whether ``samples`` other world-model samples under an accepted attempt's executed actions also
    meet the success predicate (with the run's margin) within its length + 5 steps."""
    spec = recipe_spec("recover", dataset_manifest_of(checked))
    attempts = WorldModelAttempts(checked, ckpt, spec)
    meta, hold = attempts.sampler.meta, attempts.manifest.task.success.hold_steps
    with open_dataset(checked) as f:
        records = [r for r in (demo_record(f, n) for n in demo_names(f, "synthetic")) if r.success]
        demos = {r.name: read_demo(f["data"][r.name]) for r in records}
        for name in {r.parent for r in records} - set(attempts.parents):  # a validation parent
            parent = read_demo(f["data"][name])
            attempts.parents[name] = Parent(name, demo_record(f, name).seed, parent)
            attempts.episodes[name] = Episode.load(
                f["data"][name], meta.camera, meta.instances, meta.resolution
            )
    agree: dict[str, list[bool]] = {}
    for parent_name in sorted({r.parent for r in records}):
        jobs = [(r, s) for r in records if r.parent == parent_name for s in range(samples)]
        parent, episode = attempts.parents[parent_name], attempts.episodes[parent_name]
        context, past, state = episode.history(0, meta.context_frames)

        def actor(record):
            executed = demos[record.name].executed_actions
            labels = demos[record.name].actions
            return lambda tcp, poses, j: (
                executed[min(j, len(executed) - 1)],
                labels[min(j, len(labels) - 1)],
            )

        n = len(jobs)
        start_z = float(
            parent.object_obs[0][object_slice(attempts.manifest, attempts.manifest.task.success.object)][2]
        )
        steps = max(len(demos[r.name].actions) for r, _ in jobs) + 5
        imagined = imagine(
            attempts.sampler,
            attempts.manifest,
            (
                attempts.sampler.encode(context)[None].repeat(n, 1, 1, 1, 1),
                past[None].repeat(n, 1, 1),
                state[None].repeat(n, 1),
            ),
            [actor(r) for r, _ in jobs],
            [ArmController.from_env_state(attempts.manifest, parent.demo.states[0]) for _ in jobs],
            attempts.layout,
            np.full(n, start_z),
            steps,
            attempts.offset,
            [
                torch.Generator().manual_seed(10_000 + 7919 * i + r.noise_seed % 1000)
                for i, (r, _) in enumerate(jobs)
            ],
            spec.success_margin,
        )
        for i, (r, _) in enumerate(jobs):
            length = len(demos[r.name].actions) + 5
            agree.setdefault(r.name, []).append(bool(success_step(imagined.held[i, :length], hold) >= 0))
    return agree


def dataset_manifest_of(path: Path):
    with open_dataset(path) as f:
        return dataset_manifest(f)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path, help="a finished worldgen run folder")
    parser.add_argument("--tag", default="", help="suffix of the results files")
    parser.add_argument("--replicates", type=int, default=3)
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--samples", type=int, default=3, help="world-model samples for agreement")
    parser.add_argument("--share", type=float, default=0.5, help="generated share of the co-training row")
    parser.add_argument("--rows", nargs="+", help="default: all")
    args = parser.parse_args()

    run, out = args.run, args.run / "diag"
    out.mkdir(exist_ok=True)
    checked, manifest = run / "checks" / "checked.hdf5", load_manifest(run / "manifest.yaml")
    sim_obs, twin = run / "diag_trueobs.hdf5", run / "diag_sim_twin.hdf5"
    attempts_file = out / "attempts.json"
    if not attempts_file.exists():
        write_atomically(attempts_file, json.dumps(replay_attempts(checked, sim_obs), indent=1).encode())
    attempts = json.loads(attempts_file.read_text())
    agreement_file = run / "diag_agree.json"
    if not agreement_file.exists():
        agree = sample_agreement(checked, run / "world_model" / "checkpoint", args.samples)
        write_atomically(agreement_file, json.dumps(agree).encode())
    agree = json.loads(agreement_file.read_text())
    generate_in_simulator("recover", run / "seeds" / "seeds.hdf5", twin, recipe_spec("recover", manifest))

    with open_dataset(checked) as f:
        train, valid = demo_names(f, "train"), set(demo_names(f, "valid"))
        # The run's own referee: its checks stage replayed every attempt (scenes stepped together).
        run_replay = {a["name"]: bool(demo_record(f, a["name"]).replay_success) for a in attempts}
    accepted = [a["name"] for a in attempts]
    replay_true = [a["name"] for a in attempts if run_replay[a["name"]]]
    with open_dataset(twin) as f:
        twin_ok = [r.name for r in (demo_record(f, n) for n in demo_names(f)) if r.recipe and r.success]
    share = f"+accepted @ share {args.share:g}"
    # Row -> (dataset, demos, generated share, the name of its cells in out/).
    no_valid = [a["name"] for a in attempts if not a["valid_parent"]]
    rows = {
        "seeds": (checked, train, None, "seeds"),
        "+accepted": (checked, train + accepted, None, "seeds+wm"),
        "+accepted, replay-true": (checked, train + replay_true, None, "seeds+wm_replaytrue"),
        "+accepted, sim obs": (sim_obs, train + accepted, None, "seeds+wm_trueobs"),
        "+accepted, no valid": (checked, train + no_valid, None, "seeds+wm_novalid"),
        "+sim twin": (twin, train + twin_ok, None, "seeds+sim"),
        share: (checked, train + accepted, args.share, f"seeds+wm@mix{round(100 * args.share)}"),
    }
    results = {}
    for row in args.rows or list(rows):
        dataset, demos, generated_share, slug = rows[row]
        cells = []
        for rep in range(args.replicates):
            cell_file = out / f"{slug}_r{rep}.json"
            if not cell_file.exists():
                folder = out / f"pol_{slug}_r{rep}"
                meta = train_bc(
                    dataset,
                    folder,
                    "bc-mlp",
                    mask=None,
                    demos=demos,
                    seed=rep,
                    manifest=manifest,
                    generated_share=generated_share,
                )
                report = evaluate_policy(
                    folder, manifest, args.episodes, gifs=False, panel_offset=rep * args.episodes, envs=10
                )
                cell = {
                    "row": slug,
                    "rep": rep,
                    "demos": len(demos),
                    "samples": meta["samples"],
                    "successes": report["successes"],
                    "episodes": report["episodes"],
                    "per_episode": [e["success"] for e in report["per_episode"]],
                }
                write_atomically(cell_file, json.dumps(cell).encode())
                say(f"{row} r{rep}: {cell['successes']}/{cell['episodes']}")
            cells.append(json.loads(cell_file.read_text()))
        results[row] = {"demos": cells[0]["demos"], **pooled(cells)}

    failing = [a for a in attempts if not run_replay[a["name"]]]
    for a in attempts:  # files written before the positions were rounded
        a["predicted_end"] = [round(float(x), 3) for x in a["predicted_end"]]
        a["simulated_end"] = [round(float(x), 3) for x in a["simulated_end"]]
    result = {
        "run": str(run),
        "base_seed": manifest.seeds.base_seed,
        "replicates": args.replicates,
        "episodes_per_replicate": args.episodes,
        "rows": results,
        "accepted": len(attempts),
        "accepted_replay_true": len(replay_true),
        "accepted_failing_in_replay": failing,
        "block_error_end_median_m": float(np.median([a["block_error_end_m"] for a in attempts])),
        "sample_agreement": {
            "attempts": len(agree),
            "all_samples_agree": sum(all(v) for v in agree.values()),
            "failing_in_replay_that_all_samples_call_successes": sum(all(agree[a["name"]]) for a in failing),
        },
        "valid_parents_excluded_now": sorted(valid),
    }
    lines = [
        f"push_to_target seed set {result['base_seed']} (run {run.name}): {result['accepted']} accepted "
        f"attempts, {result['accepted_replay_true']} succeed in replay; {args.replicates} policy seeds x "
        f"{args.episodes} held-out episodes a row",
        "",
        "| row | demos | success | replicate 95 % CI | per policy seed |",
        "|---|---:|---|---|---|",
    ]
    for row, r in results.items():
        lo, hi = r["replicate_ci95"]
        lines.append(
            f"| {row} | {r['demos']} | {100 * r['success_rate']:.1f} % | [{lo:.2f}, {hi:.2f}] "
            f"| {', '.join(r['per_replicate'])} |"
        )
    lines += ["", "Accepted attempts that fail in replay:"]
    lines += [
        f"- {a['name']} from {a['parent']}: predicted block at {a['predicted_end']}, simulated at "
        f"{a['simulated_end']} ({100 * a['block_error_end_m']:.1f} cm apart)"
        for a in failing
    ]
    sa = result["sample_agreement"]
    lines += [
        "",
        f"Sample agreement: {sa['all_samples_agree']}/{sa['attempts']} accepted attempts have all "
        f"{args.samples} other samples agreeing; of the {len(failing)} failing in replay, "
        f"{sa['failing_in_replay_that_all_samples_call_successes']} have every sample call them successes.",
    ]
    stem = f"seed_set_cause{'_' + args.tag if args.tag else ''}"
    write_atomically(RESULTS / f"{stem}.json", (json.dumps(result, indent=2) + "\n").encode())
    write_atomically(RESULTS / f"{stem}.md", ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))


if __name__ == "__main__":
    main()
