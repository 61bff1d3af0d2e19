"""Do the checks tell faithful world-model demos from unfaithful ones? Measured against the simulator.

On a trained world model of ``--scenario`` (the folder ``bench/synthetic_demos.py`` prepares: 10 seed
demos, 20 play rollouts, the world model), ``recover`` attempts are generated from every seed at several
start steps (``--per-seed`` x ``--starts`` x seeds attempts, all of them judged, accepted or not). Every
attempt is replayed in the simulator from its start state: "faithful" when the replay keeps the end
effector and every object within ``--tolerance`` of the prediction over the whole attempt (the label).
The gate is then run twice on the same attempts and scored against that label:

    simulator calibration    thresholds from camera-resolution simulator clips (what `worldgen check`
                             did before)
    world-model calibration  thresholds from held-out seed clips passed through the model's frame
                             pipeline and teacher-forced, plus the agreement of ``--samples`` samples

The held-out clips are ``--calibration`` more seed demos on seeds after the training seeds. Reported per
gate: rejected share of the unfaithful, passed share of the faithful, precision, AUROC of the worst
score / threshold, per check how often it fails either class and alone decides; and what acceptance
(the world model's predicted success, then the gate) keeps against replay success.

Resumes stage by stage from ``--out``. Figures: bench/results/wm_checks.json and .md.

    python bench/wm_checks.py --out data/experiments/push --envs 16
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import sys
from pathlib import Path

from stages import Stages, add_preparation_arguments, prepare_world_model, say
from worldgen.apps.experiment import TimeLimitReached

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def calibration_seeds(manifest_path: Path, out: Path, first: int, count: int) -> dict:
    """``count`` more expert demos with cameras on seeds ``base + first ...``: never trained on."""
    from worldgen.manifest import load_manifest
    from worldgen.pipeline import run_seed_stage

    manifest = load_manifest(manifest_path)
    seeds = manifest.seeds.model_copy(update={"base_seed": manifest.seeds.base_seed + first, "count": count})
    run_seed_stage(manifest.model_copy(update={"seeds": seeds}), out / "calibration.hdf5", n=count)
    return {"demos": count, "first_seed": manifest.seeds.base_seed + first}


def gated_copy(out: Path, name: str, world_model=None) -> dict:
    """Gate a copy of the replay-labelled attempts and score it against the labels."""
    from worldgen.checks.gate import gate_dataset

    from world_models.checking import gate_against_replay

    path = out / f"{name}.hdf5"
    shutil.copy(out / "labelled.hdf5", path)
    gate_dataset(path, mask="synthetic", world_model=world_model)
    return gate_against_replay(path)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_preparation_arguments(parser)
    parser.add_argument("--per-seed", type=int, default=4)
    parser.add_argument("--starts", type=int, nargs="+", default=[0, 15, 30, 45, 60])
    parser.add_argument("--noise", type=float, default=0.1)
    parser.add_argument(
        "--robot-state",
        choices=["controller", "model"],
        default="model",
        help="end effector in imagination (the best recipe of bench/synthetic_demos.py: model)",
    )
    parser.add_argument("--calibration", type=int, default=10, help="held-out seed demos to calibrate on")
    parser.add_argument("--samples", type=int, default=3, help="samples per attempt for agreement")
    parser.add_argument("--tolerance", type=float, default=0.02)
    parser.add_argument("--envs", type=int, default=16, help="replay: scenes stepped together")
    args = parser.parse_args()

    from worldgen.dataset import demo_names, demo_record, open_dataset
    from worldgen.manifest import load_manifest

    from world_models.checking import calibrate_world_model, judge_against_replay, sample_spreads
    from world_models.recipes import generate_in_world_model, recipe_spec

    manifest_path = ROOT / "scenarios" / f"{args.scenario}.yaml"
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    stage = Stages(out, say)
    try:
        prepare_world_model(
            stage, manifest_path, out, args.seeds, args.play, args.wm_steps, args.wm_time_limit
        )
    except TimeLimitReached as exc:
        sys.exit(str(exc))
    seeds, ckpt = out / "seeds.hdf5", out / "wm"
    manifest = load_manifest(manifest_path)
    stage(
        "calibration_seeds",
        lambda: calibration_seeds(manifest_path, out, 100_000, args.calibration),
        {"scene": manifest.scene_hash(), "first": 100_000, "count": args.calibration},
        [out / "calibration.hdf5"],
    )
    spec = recipe_spec(
        "recover",
        manifest,
        per_seed=args.per_seed,
        start_steps=tuple(args.starts),
        action_noise=args.noise,
        robot_state=args.robot_state,
    )
    attempts = out / "attempts.hdf5"

    def generate():
        generate_in_world_model("recover", seeds, ckpt, attempts, spec)
        with open_dataset(attempts) as f:  # counted from the file: a resumed stage made only the rest
            made = [demo_record(f, n) for n in demo_names(f, "synthetic")]
        return {"attempts": len(made), "accepted": sum(r.success for r in made)}

    reads = {"world_model": stage.key("world_model"), "spec": dataclasses.asdict(spec)}
    stage("attempts", generate, reads, [attempts])

    def label():
        # The labels do not depend on the gate; the simulator-calibrated gate marks every demo as checked.
        labelled = out / "labelled.hdf5"
        shutil.copy(attempts, labelled)
        from worldgen.checks.gate import gate_dataset

        gate_dataset(labelled, mask="synthetic")
        result = judge_against_replay(labelled, envs=args.envs, tolerance=args.tolerance)
        return {"demos": result["demos"], "faithful": result["faithful"]}

    labels = {"attempts": stage.key("attempts"), "envs": args.envs, "tolerance": args.tolerance}
    stage("replay", label, labels, [out / "labelled.hdf5"])
    # The gate as it was: simulator thresholds, before any sample agreement is written.
    labelled = {"labelled": stage.key("replay")}
    simulator_gate = stage(
        "gate_simulator", lambda: gated_copy(out, "gated_simulator"), labelled, [out / "gated_simulator.hdf5"]
    )
    stage(
        "wm_calibration",
        lambda: calibrate_world_model(out / "calibration.hdf5", ckpt, "seed", args.samples).to_dict(),
        {
            "calibration": stage.key("calibration_seeds"),
            "world_model": stage.key("world_model"),
            "samples": args.samples,
        },
    )

    def spreads():
        values = sample_spreads(out / "labelled.hdf5", ckpt, args.samples)
        return {"demos": len(values)}

    sampled = {**labelled, "world_model": stage.key("world_model"), "samples": args.samples}
    stage("agreement", spreads, sampled)
    from worldgen.checks.gate import Calibration

    world_model = Calibration.from_dict("world_model", stage.stats["wm_calibration"])
    gates = {
        "simulator calibration": simulator_gate,
        "world-model calibration": stage(
            "gate_world_model",
            lambda: gated_copy(out, "gated_world_model", world_model),
            {"agreement": stage.key("agreement"), "calibration": stage.key("wm_calibration")},
            [out / "gated_world_model.hdf5"],
        ),
    }
    write_results(args, stage.stats, gates)


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.0f} %"


def write_results(args, stats: dict, gates: dict) -> None:
    tag = ("" if args.scenario == "push_to_target" else f"_{args.scenario}") + (
        f"_{args.tag}" if args.tag else ""
    )
    result = {
        "benchmark": "wm_checks",
        "scenario": args.scenario,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "gpu": None},
        "world_model": stats["world_model"],
        "attempts": {k: v for k, v in stats["attempts"].items()},
        "recover": {
            "per_seed": args.per_seed,
            "starts": args.starts,
            "action_noise": args.noise,
            "robot_state": args.robot_state,
        },
        "tolerance_m": args.tolerance,
        "samples": args.samples,
        "calibration": stats["wm_calibration"],
        "gates": {name: {k: v for k, v in g.items() if k != "seconds"} for name, g in gates.items()},
        "seconds": {k: v["seconds"] for k, v in stats.items()},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"wm_checks{tag}.json").write_text(json.dumps(result, indent=2) + "\n")
    first = next(iter(gates.values()))
    lines = [
        f"{args.scenario}: {first['demos']} recover attempts of a world model trained "
        f"{stats['world_model']['steps']} steps; {first['faithful']} faithful (replay within "
        f"{100 * args.tolerance:.0f} cm over the attempt), {first['unfaithful']} not",
        "",
        "| gate | passed | rejected of unfaithful | passed of faithful | precision of passed | AUROC |"
        " accepted (predicted success + passed) | replay success of accepted |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, g in gates.items():
        a = g["acceptance"]
        auroc = "n/a" if g["auroc"] is None else f"{g['auroc']:.3f}"
        lines.append(
            f"| {name} | {g['passed']}/{g['demos']} | {_pct(g['rejected_of_unfaithful'])} | "
            f"{_pct(g['passed_of_faithful'])} | {_pct(g['precision_of_passed'])} | {auroc} | "
            f"{a['accepted']} | {_pct(a['precision_accepted'])} |"
        )
    lines += [
        "",
        f"Predicted success alone: {first['acceptance']['predicted_success']} attempts, replay success "
        f"{_pct(first['acceptance']['precision_predicted'])} of them.",
        "",
        "Per check (world-model calibration): fails on unfaithful / on faithful, decides alone, AUROC",
        "",
        "| check | fails unfaithful | fails faithful | alone | AUROC |",
        "|---|---:|---:|---:|---:|",
    ]
    for check, c in gates["world-model calibration"]["checks"].items():
        auroc = "n/a" if c["auroc"] is None else f"{c['auroc']:.3f}"
        lines.append(
            f"| {check} | {c['failed_unfaithful']} | {c['failed_faithful']} | {c['decides_alone']} "
            f"| {auroc} |"
        )
    (RESULTS / f"wm_checks{tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    say(f"wrote {RESULTS / f'wm_checks{tag}.json'}")


if __name__ == "__main__":
    main()
