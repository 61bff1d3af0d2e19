"""Which world-model attempts should a policy train on? The acceptance rule, measured by the policy.

``bench/wm_checks.py`` leaves a folder whose ``gated_world_model.hdf5`` holds S seed demos and many
``recover`` attempts generated in the world model, each with the world model's verdict (the manifest's
success predicate on the predicted state), the checks' verdict (thresholds calibrated through the world
model, sample agreement) and, as a diagnostic never used for acceptance here, the simulator replay's
verdict. One policy recipe (the same gradient steps in every row) is trained on the seeds plus the
attempts each rule accepts, with ``--replicates`` training seeds, each evaluated closed loop on its own
``--episodes`` held-out seeds; the replicates are pooled (Wilson 95 % intervals):

    seeds                         the S seed demos alone
    +all attempts (WM)            every attempt, succeeded or not: no acceptance (a control)
    +predicted success (WM)       the attempts the world model predicts succeed
    +predicted success + checks   those that also pass the physics and consistency checks
    +replay success (oracle)      the attempts that succeed when replayed in the simulator: what a perfect
                                  acceptance rule would keep (uses the simulator; a ceiling, not a recipe)

Each row also reports the precision of its accepted attempts against replay. Cells resume from
``--out``; figures go to bench/results/acceptance_rows[_<tag>].json / .md / .png.

    python bench/acceptance_rows.py --folder data/experiments/push_controller \
        --out data/experiments/acceptance
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from pathlib import Path

from stages import pooled, say, write_figures  # bench/stages.py, beside this script
from worldgen.apps.compare import Cell, machine_line, run_cell
from worldgen.dataset import demo_names, demo_record, open_dataset
from worldgen.manifest import load_manifest

ROOT = Path(__file__).resolve().parents[1]
ROWS = (
    "seeds",
    "+all attempts (WM)",
    "+predicted success (WM)",
    "+predicted success + checks (WM)",
    "+replay success (oracle)",
)


def _slug(row: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in row).strip("_").lower()


def row_demos(path: Path, starts: list[int] | None = None) -> tuple[dict[str, list[str]], dict[str, dict]]:
    """Each row's demo names (seeds first) and, per row, how many attempts it accepts and their replay
    precision; ``starts``: only the attempts that start at those steps of their parent."""
    with open_dataset(path) as f:
        seeds = demo_names(f, "seed")
        attempts = [demo_record(f, n) for n in demo_names(f, "synthetic")]
        attempts = [a for a in attempts if starts is None or a.branch_step in starts]
        replayed = {
            n: bool(f["data"][n].attrs.get("replay_success", False)) for n in (a.name for a in attempts)
        }
    rules = {
        "seeds": lambda r: False,
        "+all attempts (WM)": lambda r: True,
        "+predicted success (WM)": lambda r: bool(r.success),
        "+predicted success + checks (WM)": lambda r: bool(r.success) and bool(r.check_passed),
        "+replay success (oracle)": lambda r: replayed[r.name],
    }
    demos, acceptance = {}, {}
    for row, rule in rules.items():
        accepted = [a.name for a in attempts if rule(a)]
        demos[row] = seeds + accepted
        if row != "seeds":
            hits = sum(replayed[n] for n in accepted)
            acceptance[row] = {
                "accepted": f"{len(accepted)}/{len(attempts)}",
                "replay_precision": hits / len(accepted) if accepted else None,
            }
    return demos, acceptance


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--folder", type=Path, required=True, help="a bench/wm_checks.py folder")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--scenario", default="push_to_target")
    parser.add_argument("--algo", default="bc-mlp")
    parser.add_argument("--policy-steps", type=int, default=2000)
    parser.add_argument("--replicates", type=int, default=2)
    parser.add_argument("--episodes", type=int, default=50, help="held-out episodes per replicate")
    parser.add_argument("--envs", type=int, default=10, help="evaluation: scenes stepped together")
    parser.add_argument("--workers", type=int, default=2, help="cells trained and evaluated at once")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
    parser.add_argument("--tag", default="")
    parser.add_argument("--starts", type=int, nargs="+", help="only attempts starting at these steps")
    args = parser.parse_args()

    manifest_path = ROOT / "scenarios" / f"{args.scenario}.yaml"
    dataset = args.folder / "gated_world_model.hdf5"
    demos, acceptance = row_demos(dataset, args.starts)
    cells = args.out / "cells"
    cells.mkdir(parents=True, exist_ok=True)
    manifest = load_manifest(manifest_path)
    tasks = [
        Cell(
            row=row,
            replicate=rep,
            dataset=str(dataset),
            demos=demos[row],
            folder=str(args.out / "policies" / f"{_slug(row)}_r{rep}"),
            manifest=manifest,
            algo=args.algo,
            steps=args.policy_steps,
            episodes=args.episodes,
            envs=args.envs,
            one_thread=args.workers > 1,
        )
        for row in args.rows
        for rep in range(args.replicates)
        if not (cells / f"{_slug(row)}_r{rep}.json").exists()
    ]
    say(f"{len(tasks)} (row, replicate) cells to train and evaluate on {args.workers} processes")
    started = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
        for result in pool.imap_unordered(run_cell, tasks):
            (cells / f"{_slug(result['row'])}_r{result['replicate']}.json").write_text(
                json.dumps(result) + "\n"
            )
            say(f"{result['row']} r{result['replicate']}: {result['successes']}/{result['episodes']}")
    write_results(args, acceptance, time.perf_counter() - started)


def write_results(args, acceptance: dict, seconds: float) -> None:
    rows = {}
    for row in args.rows:
        cells = [
            json.loads((args.out / "cells" / f"{_slug(row)}_r{r}.json").read_text())
            for r in range(args.replicates)
        ]
        rows[row] = {
            **pooled(cells),
            "demos": cells[0]["demos"],
            "samples": cells[0]["samples"],
            "seconds": round(sum(c["seconds"] for c in cells), 1),
            **acceptance.get(row, {}),
        }
    result = {
        "scenario": args.scenario,
        "attempts_from": str(args.folder),
        "attempt_starts": args.starts or "all",
        "algo": args.algo,
        "policy_steps": args.policy_steps,
        "replicates": args.replicates,
        "episodes_per_replicate": args.episodes,
        "evaluation_envs": args.envs,
        "rows": rows,
        "seconds_this_call": round(seconds, 1),
        "machine": machine_line(),
    }
    tag = f"_{args.tag}" if args.tag else ""
    write_figures(
        f"acceptance_rows{tag}",
        result,
        table(result),
        f"{args.scenario}, {args.algo}: {next(iter(rows.values()))['episodes']} episodes per row, 95 % CI",
        baseline="seeds",
        controls=[r for r in rows if "all attempts" in r],
    )


def table(result: dict) -> str:
    lines = [
        f"{result['scenario']}, {result['algo']} ({result['policy_steps']} steps), attempts from "
        f"{result['attempts_from']} (starts: {result.get('attempt_starts', 'all')}); "
        f"{result['replicates']} replicates x {result['episodes_per_replicate']} "
        f"held-out episodes pooled (evaluated {result['evaluation_envs']} scenes together)",
        "",
        "| row | demos | samples | accepted | replay precision | success | 95 % CI | per replicate |",
        "|---|---:|---:|---:|---:|---|---|---|",
    ]
    for row, r in result["rows"].items():
        lo, hi = r["ci95"]
        precision = r.get("replay_precision")
        lines.append(
            f"| {row} | {r['demos']} | {r['samples']} | {r.get('accepted', '')} | "
            f"{'' if precision is None else f'{100 * precision:.0f} %'} | {r['successes']}/{r['episodes']} "
            f"= {100 * r['success_rate']:.0f} % | [{lo:.2f}, {hi:.2f}] | {', '.join(r['per_replicate'])} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
