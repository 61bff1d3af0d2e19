"""Does seed + synthetic data make a better policy than seed data alone? ``worldgen compare`` on a shipped
scenario, with its figures written to bench/results/synthetic_demos[_<tag>].json / .md / .png.

The rows, the pooling and the layout of ``--out`` are worldgen.apps.compare's; the flags below set the
experiment's budgets and override the manifest's ``generation`` block where given. Every stage and every
(row, replicate) cell resumes from what ``--out`` holds.

    python bench/synthetic_demos.py --scenario push_to_target --out data/experiments/push
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from stages import add_preparation_arguments, say, write_figures  # bench/stages.py, beside this script
from worldgen.apps.compare import CONTROLS, ROWS, CompareConfig, compare, table, title
from worldgen.apps.experiment import TimeLimitReached
from worldgen.manifest import load_manifest

ROOT = Path(__file__).resolve().parents[1]


def with_generation(manifest, args: argparse.Namespace):
    """The manifest with the recipe flags that were given laid over its ``generation`` block."""
    generation = manifest.generation
    recover = {
        "per_seed": args.recover_per_seed,
        "at_steps": args.recover_starts,
        "action_noise": args.recover_noise,
        "robot_state": args.robot_state,
    }
    retarget = {"count": args.retarget_count, "action_noise": args.retarget_noise}
    given = {
        name: getattr(generation, name).model_copy(update={k: v for k, v in flags.items() if v is not None})
        for name, flags in (("recover", recover), ("retarget", retarget))
    }
    if args.success_margin is not None:
        given["success_margin"] = args.success_margin
    generation = generation.model_copy(update=given)
    return manifest.model_copy(update={"generation": generation})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_preparation_arguments(parser)
    parser.add_argument("--recover-per-seed", type=int)
    parser.add_argument("--recover-starts", type=int, nargs="+")
    parser.add_argument("--recover-noise", type=float)
    parser.add_argument(
        "--robot-state",
        choices=["controller", "model"],
        help="end effector in imagination: commanded TCP + tracking offset, or the world model's state head",
    )
    parser.add_argument("--retarget-count", type=int, help="new scenes, one attempt each")
    parser.add_argument("--retarget-noise", type=float)
    parser.add_argument("--success-margin", type=float, help="m (default: generation.success_margin)")
    parser.add_argument("--algo", default="bc-mlp")
    parser.add_argument("--policy-steps", type=int, default=2000)
    parser.add_argument("--policy-batch", type=int, help="default: the policy recipe's own")
    parser.add_argument("--replicates", type=int, default=2)
    parser.add_argument("--episodes", type=int, default=50, help="held-out episodes per replicate")
    parser.add_argument("--workers", type=int, default=2, help="cells (and generation) side by side")
    parser.add_argument("--rows", nargs="+", default=list(ROWS))
    parser.add_argument("--envs", type=int, default=1, help="replay verification: scenes stepped together")
    args = parser.parse_args()

    manifest = with_generation(load_manifest(ROOT / "scenarios" / f"{args.scenario}.yaml"), args)
    config = CompareConfig(
        seeds=args.seeds,
        play=args.play,
        wm_steps=args.wm_steps,
        wm_minutes=args.wm_time_limit,
        algo=args.algo,
        policy_steps=args.policy_steps,
        policy_batch=args.policy_batch,
        replicates=args.replicates,
        episodes=args.episodes,
        rows=tuple(args.rows),
        workers=args.workers,
        replay_envs=args.envs,
    )
    try:
        result = compare(manifest, args.out, config, progress=say)
    except TimeLimitReached as exc:
        sys.exit(str(exc))
    tag = f"_{args.tag}" if args.tag else ""
    controls = [row for row in result["rows"] if row in CONTROLS]
    write_figures(f"synthetic_demos{tag}", result, table(result), title(result), "seeds", controls)


if __name__ == "__main__":
    main()
