"""Does seed + synthetic data make a better policy than seed data alone? The experiment, row by row.

One policy recipe (``--algo``, ``--policy-steps`` gradient steps, the same in every row) is trained on
each dataset below with ``--replicates`` training seeds; replicate r is evaluated closed loop on its own
``--episodes`` held-out seeds (``evaluation.held_out_base_seed + r * episodes + i``), and the replicates
are pooled (Wilson 95 % intervals on the pooled episodes):

    seeds              the S seed demos (simulator, scripted expert)
    +perturb (WM)      + world-model branches under the parent's noisy actions, labelled with them:
                       the negative control (today's branches)
    +recover (WM)      + recovery attempts in the world model: the expert acts on the predicted state
                       under executed-action noise, its clean actions are the labels, kept when the
                       predicted state meets the success predicate (world_models.generate)
    +recover (sim)     + the same attempts executed in the simulator: the ceiling of the recipe
    +retarget (WM)     + MimicGen in the world model: one attempt per new scene (only its first frame
                       rendered), a nearby seed demo's segments moved to the object, the executed
                       actions as labels, kept when the predicted state meets the success predicate
                       (world_models.retarget)
    +retarget (sim)    + the same plans in the same new scenes executed in the simulator: its ceiling
    sim oracle         + as many new-scene expert demos as +retarget (WM) accepted

The world model trains on the seed demos plus ``--play`` non-expert play rollouts per seed (the seed's
actions replayed with noise; a column of the table). Gain recovered = (recover WM - seeds) /
(recover sim - seeds). Every accepted world-model demo is replayed in the simulator (a diagnostic,
never a filter): the predicted-success precision.

Every stage resumes from what ``--out`` holds; each (row, replicate) result is written as it finishes.
Figures: bench/results/synthetic_demos[_<tag>].json / .md / .png.

    python bench/synthetic_demos.py --scenario push_to_target --out data/experiments/push
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import time
from pathlib import Path

import numpy as np
from stages import (  # bench/stages.py, beside this script
    Stages,
    add_preparation_arguments,
    pooled,
    prepare_world_model,
    say,
    write_figures,
)
from worldgen.dataset import demo_record, open_dataset

ROOT = Path(__file__).resolve().parents[1]
ROWS = (
    "seeds",
    "+perturb (WM)",
    "+recover (WM)",
    "+recover (sim)",
    "+recover-parent (WM)",
    "+recover-parent (sim)",
    "+retarget (WM)",
    "+retarget (sim)",
    "sim oracle",
)


# Generated rows: their file in --out, which is also their stage's name.
GENERATED = {
    "+recover (WM)": "recover_wm.hdf5",
    "+recover (sim)": "recover_sim.hdf5",
    "+recover-parent (WM)": "recover_parent_wm.hdf5",
    "+recover-parent (sim)": "recover_parent_sim.hdf5",
    "+retarget (WM)": "retarget_wm.hdf5",
    "+retarget (sim)": "retarget_sim.hdf5",
}


def _cells(out: Path, algo: str) -> Path:
    """Where a policy recipe's (row, replicate) results go: cells/ for bc-mlp, cells_<algo>/ otherwise."""
    return out / ("cells" if algo == "bc-mlp" else f"cells_{algo}")


def _slug(row: str) -> str:
    return row.replace("+", "plus_").replace(" (", "_").replace(")", "").replace(" ", "_").lower()


def prepare(args, manifest_path: Path, out: Path) -> dict:
    """Seeds, play rollouts, world model and the generated datasets; returns their counts."""
    from worldgen.dataset import demo_names
    from worldgen.manifest import load_manifest
    from worldgen.pipeline import run_seed_stage

    from world_models.branch import branch_dataset
    from world_models.generate import RecoverSpec, recover_in_simulator, recover_in_world_model
    from world_models.retarget import RetargetSpec, retarget_in_simulator, retarget_in_world_model

    manifest = load_manifest(manifest_path)
    stage = Stages(out)
    prepare_world_model(stage, manifest_path, out, args.seeds, args.play, args.wm_steps, args.wm_time_limit)
    seeds, ckpt = out / "seeds.hdf5", out / "wm"
    spec = RecoverSpec(
        per_seed=args.recover_per_seed,
        start_steps=tuple(args.recover_starts),
        action_noise=args.recover_noise,
        base_seed=manifest.seeds.base_seed,
        robot_state=args.robot_state,
    )

    def perturb():  # the manifest's branching, world_model.horizon steps per branch
        branch_dataset(seeds, ckpt, out / "perturb.hdf5", base_seed=manifest.seeds.base_seed)
        with open_dataset(out / "perturb.hdf5") as f:
            return {"attempts": len(demo_names(f, "synthetic")), "accepted": len(demo_names(f, "synthetic"))}

    stage("perturb", perturb)
    stage("recover_wm", lambda: recover_in_world_model(seeds, ckpt, out / "recover_wm.hdf5", spec))
    stage("recover_sim", lambda: recover_in_simulator(seeds, out / "recover_sim.hdf5", spec))
    if any("recover-parent" in row for row in args.rows):
        parent_spec = dataclasses.replace(spec, labeler="parent")
        stage(
            "recover_parent_wm",
            lambda: recover_in_world_model(seeds, ckpt, out / "recover_parent_wm.hdf5", parent_spec),
        )
        stage(
            "recover_parent_sim",
            lambda: recover_in_simulator(seeds, out / "recover_parent_sim.hdf5", parent_spec),
        )
    retarget = RetargetSpec(
        count=args.retarget_count, action_noise=args.retarget_noise, base_seed=manifest.seeds.base_seed
    )
    stage("retarget_wm", lambda: retarget_in_world_model(seeds, ckpt, out / "retarget_wm.hdf5", retarget))
    stage("retarget_sim", lambda: retarget_in_simulator(seeds, out / "retarget_sim.hdf5", retarget))
    extra = stage.stats["retarget_wm"]["accepted"]
    if "sim oracle" in args.rows:  # an image policy needs the oracle's cameras
        cameras = args.algo == "bc-image"
        name = "oracle_cameras" if cameras else "oracle"
        stage(
            name,
            lambda: {
                "demos": len(
                    run_seed_stage(manifest_path, out / f"{name}.hdf5", n=args.seeds + extra, cameras=cameras)
                )
            },
        )
    stage("replay", lambda: replay_all(out / "recover_wm.hdf5", args.envs))
    stage("replay_retarget", lambda: replay_all(out / "retarget_wm.hdf5", args.envs))
    return stage.stats


def replay_all(synth: Path, envs: int = 1) -> dict:
    """Replay every world-model demo in the simulator from its parent's state (``envs`` > 1: that many
    scenes stepped together); the generated file holds the parents too."""
    from worldgen.dataset import demo_names

    from world_models.generate import replay_generated

    with open_dataset(synth) as f:
        demos = [demo_record(f, name) for name in demo_names(f, "synthetic")]
        results = replay_generated(f, [r.name for r in demos], envs)
        records = [
            {"demo": r.name, "predicted_success": r.success, **rec}
            for r, rec in zip(demos, results, strict=True)
        ]
    predicted = [r for r in records if r["predicted_success"]]
    real = [r for r in records if r["replay_success"]]
    both = sum(r["replay_success"] for r in predicted)
    return {
        "replayed": len(records),
        "predicted_successes": len(predicted),
        "replay_successes": len(real),
        "precision": both / max(len(predicted), 1),
        "recall": both / max(len(real), 1),
        "object_error_end_median_m": float(np.median([r["object_error_end"] for r in predicted] or [0])),
        "per_demo": records,
    }


def row_dataset(out: Path, row: str, algo: str) -> tuple[Path, str | None, list[str] | None]:
    """A row's dataset, mask and demo names (generated attempts: only those that succeeded)."""
    from world_models.generate import accepted_demos

    fixed = {
        "seeds": ("seeds.hdf5", "seed"),
        "+perturb (WM)": ("perturb.hdf5", None),
        "sim oracle": ("oracle_cameras.hdf5" if algo == "bc-image" else "oracle.hdf5", "seed"),
    }
    if row in fixed:
        name, mask = fixed[row]
        return out / name, mask, None
    path = out / GENERATED[row]
    return path, None, accepted_demos(path)


def run_cell(task: tuple) -> dict:
    """Train one replicate of one row and evaluate it (runs in a worker process)."""
    import torch
    from worldgen.manifest import load_manifest

    from policies.evaluate import evaluate_policy
    from policies.train import train_bc

    torch.set_num_threads(1)  # the cells run side by side, one core each
    row, rep, path, mask, demos, folder, algo, steps, batch_size, episodes, manifest_path = task
    started = time.perf_counter()
    meta = train_bc(path, folder, algo, mask=mask, demos=demos, steps=steps, batch_size=batch_size, seed=rep)
    trained = time.perf_counter() - started
    # Ten held-out scenes stepped together (worldgen.vector_env): the same panel, about twice as fast.
    report = evaluate_policy(
        folder, load_manifest(manifest_path), episodes, gifs=False, panel_offset=rep * episodes, envs=10
    )
    return {
        "row": row,
        "replicate": rep,
        "demos": meta["demos"],
        "samples": meta["samples"],
        "successes": report["successes"],
        "episodes": report["episodes"],
        "panel": report["panel"],
        "train_seconds": round(trained, 1),
        "seconds": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_preparation_arguments(parser)
    parser.add_argument("--recover-per-seed", type=int, default=4)
    parser.add_argument("--recover-starts", type=int, nargs="+", default=[0])
    parser.add_argument("--recover-noise", type=float, default=0.1)
    parser.add_argument(
        "--robot-state",
        choices=["controller", "model"],
        default="controller",
        help="end effector in imagination: commanded TCP + tracking offset, or the world model's state head",
    )
    parser.add_argument("--retarget-count", type=int, default=40, help="new scenes, one attempt each")
    parser.add_argument("--retarget-noise", type=float, default=0.05)
    parser.add_argument("--algo", default="bc-mlp")
    parser.add_argument("--policy-steps", type=int, default=2000)
    parser.add_argument("--policy-batch", type=int, help="default: the policy recipe's own")
    parser.add_argument("--replicates", type=int, default=2)
    parser.add_argument("--episodes", type=int, default=50, help="held-out episodes per replicate")
    parser.add_argument("--workers", type=int, default=2, help="evaluation processes")
    parser.add_argument("--rows", nargs="+", default=list(ROWS))
    parser.add_argument("--envs", type=int, default=1, help="replay verification: scenes stepped together")
    args = parser.parse_args()

    manifest_path = ROOT / "scenarios" / f"{args.scenario}.yaml"
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    stats = prepare(args, manifest_path, out)
    cells_dir = _cells(out, args.algo)
    cells_dir.mkdir(exist_ok=True)
    tasks = []
    for row in args.rows:
        for rep in range(args.replicates):
            cell = cells_dir / f"{_slug(row)}_r{rep}.json"
            if not cell.exists():
                path, mask, demos = row_dataset(out, row, args.algo)
                folder = out / cells_dir.name.replace("cells", "policies") / f"{_slug(row)}_r{rep}"
                tasks.append(
                    (
                        row,
                        rep,
                        str(path),
                        mask,
                        demos,
                        str(folder),
                        args.algo,
                        args.policy_steps,
                        args.policy_batch,
                        args.episodes,
                        str(manifest_path),
                    )
                )
    say(f"{len(tasks)} (row, replicate) cells to train and evaluate on {args.workers} processes")
    with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
        for result in pool.imap_unordered(run_cell, tasks):
            cell = cells_dir / f"{_slug(result['row'])}_r{result['replicate']}.json"
            cell.write_text(json.dumps(result, indent=2) + "\n")
            say(
                f"{result['row']} r{result['replicate']}: {result['successes']}/{result['episodes']} "
                f"({result['seconds']:.0f} s)"
            )
    write_results(args, stats, out)


def write_results(args, stats: dict, out: Path) -> None:
    rows = {}
    for row in args.rows:
        cells = [
            json.loads((_cells(out, args.algo) / f"{_slug(row)}_r{r}.json").read_text())
            for r in range(args.replicates)
        ]
        rows[row] = {
            **pooled(cells),
            "demos": cells[0]["demos"],
            "samples": cells[0]["samples"],
            "seconds": round(sum(c["seconds"] for c in cells), 1),
        }
    gen = {"+perturb (WM)": "perturb", **{row: file.removesuffix(".hdf5") for row, file in GENERATED.items()}}
    for row, key in gen.items():
        if row in rows:
            s = stats[key]
            rows[row]["accepted"] = f"{s['accepted']}/{s['attempts']}"
            rows[row]["generation_seconds"] = s["seconds"]
    seeds_rate = rows["seeds"]["success_rate"]
    gain = {}
    for recipe in ("recover", "recover-parent", "retarget"):
        wm, sim = rows.get(f"+{recipe} (WM)"), rows.get(f"+{recipe} (sim)")
        # Only where the ceiling is above the seeds beyond its own interval: a ratio over noise is noise.
        if wm and sim and sim["ci95"][0] > seeds_rate:
            gain[recipe] = (wm["success_rate"] - seeds_rate) / (sim["success_rate"] - seeds_rate)
        elif wm and sim:
            gain[recipe] = None
    replay = {
        recipe: {k: v for k, v in stats[key].items() if k != "per_demo"}
        for recipe, key in (("recover", "replay"), ("retarget", "replay_retarget"))
        if key in stats
    }
    result = {
        "scenario": args.scenario,
        "algo": args.algo,
        "policy_steps": args.policy_steps,
        "policy_batch": args.policy_batch,
        "seed_demos": args.seeds,
        "play_rollouts": stats["play"]["rollouts"],
        "world_model": stats["world_model"],
        "recover": {
            "robot_state": args.robot_state,
            "per_seed": args.recover_per_seed,
            "starts": args.recover_starts,
            "action_noise": args.recover_noise,
        },
        "retarget": {"new_scenes": args.retarget_count, "action_noise": args.retarget_noise},
        "replicates": args.replicates,
        "episodes_per_replicate": args.episodes,
        "rows": rows,
        "gain_recovered": gain,
        "replay_of_accepted_wm_demos": replay,
        "machine": f"{multiprocessing.cpu_count()} CPU cores, no GPU",
    }
    tag = f"_{args.tag}" if args.tag else ""
    first = next(iter(result["rows"].values()))
    write_figures(
        f"synthetic_demos{tag}",
        result,
        table(result),
        f"{result['scenario']}, {result['algo']}: {first['episodes']} episodes per row, 95 % CI",
        baseline="seeds",
        controls=[n for n in result["rows"] if "perturb" in n],
    )


def table(result: dict) -> str:
    batch = result.get("policy_batch")
    lines = [
        f"{result['scenario']}, {result['algo']} ({result['policy_steps']} steps"
        f"{'' if batch is None else f' at batch {batch}'}), "
        f"{result['seed_demos']} seed demos, "
        f"{result['play_rollouts']} play rollouts for the world model; {result['replicates']} replicates x "
        f"{result['episodes_per_replicate']} held-out episodes pooled",
        "",
        "| row | demos | samples | accepted | success | 95 % CI | per replicate |",
        "|---|---:|---:|---:|---|---|---|",
    ]
    for row, r in result["rows"].items():
        lo, hi = r["ci95"]
        lines.append(
            f"| {row} | {r['demos']} | {r['samples']} | {r.get('accepted', '')} "
            f"| {r['successes']}/{r['episodes']}"
            f" = {100 * r['success_rate']:.0f} % | [{lo:.2f}, {hi:.2f}] | {', '.join(r['per_replicate'])} |"
        )
    gain = ", ".join(
        f"{k} {'n/a (its simulator ceiling is not above the seeds)' if v is None else f'{v:.2f}'}"
        for k, v in result["gain_recovered"].items()
    )
    replays = "; ".join(
        f"{recipe} (WM) attempts replayed in the simulator: predicted-success precision "
        f"{100 * rp['precision']:.0f} % (of {rp['predicted_successes']} predicted), recall "
        f"{100 * rp['recall']:.0f} % (of {rp['replay_successes']} that succeed in replay), "
        f"{rp['replayed']} attempts"
        for recipe, rp in result["replay_of_accepted_wm_demos"].items()
    )
    lines += ["", f"gain recovered (WM - seeds) / (sim - seeds): {gain}; {replays}"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
