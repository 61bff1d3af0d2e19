"""Is it which attempts the world model keeps, or what it imagines of them? A control row for compare.

A ``worldgen compare`` folder holds each recipe's attempts twice: imagined in the world model
(``<recipe>_wm.hdf5``, kept when predicted successful) and executed in the simulator from the same
starts with the same noise (``<recipe>_sim.hdf5``). This row trains on the seeds + the *simulator*
versions of exactly the attempts the world model kept, with the experiment's policy budget, replicates
and panels, and writes bench/results/accepted_in_simulator_<tag>.json. Against the experiment's
``+<recipe> (WM)`` row it separates the selection from the imagined observations and labels.

    python bench/accepted_in_simulator.py --folder data/experiments/pick --scenario pick_cube --tag pick_cube
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from stages import RESULTS, pooled, say
from worldgen.apps.compare import Cell, cells_folder, run_cell
from worldgen.dataset import demo_names, demo_record, open_dataset
from worldgen.files import write_atomically
from worldgen.manifest import load_manifest

from world_models.recipes import accepted_demos

ROOT = Path(__file__).resolve().parents[1]


def same_attempts(folder: Path, recipe: str) -> tuple[list[str], list[str]]:
    """The simulator file's seed demos, and its attempts matching (parent or scene, noise seed) those
    the world model accepted."""
    kept = set(accepted_demos(folder / f"{recipe}_wm.hdf5"))

    def key(record) -> tuple:
        return (record.parent, record.seed, record.branch_step, record.noise_seed)

    with open_dataset(folder / f"{recipe}_wm.hdf5") as f:
        wanted = {key(demo_record(f, n)) for n in demo_names(f, "synthetic") if n in kept}
    with open_dataset(folder / f"{recipe}_sim.hdf5") as f:
        seeds = demo_names(f, "seed")
        records = [demo_record(f, n) for n in demo_names(f) if n not in seeds]
        matched = [r.name for r in records if key(r) in wanted]
    if len(matched) != len(wanted):
        raise SystemExit(f"{len(wanted)} accepted attempts, {len(matched)} found in the simulator file")
    return seeds, matched


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--folder", type=Path, required=True, help="a worldgen compare folder")
    parser.add_argument("--scenario", default="push_to_target")
    parser.add_argument("--recipe", default="recover", choices=["recover", "retarget"])
    parser.add_argument("--policy-steps", type=int, default=2000)
    parser.add_argument("--replicates", type=int, default=2)
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--tag", default="")
    args = parser.parse_args()

    manifest = load_manifest(ROOT / "scenarios" / f"{args.scenario}.yaml")
    seeds, matched = same_attempts(args.folder, args.recipe)
    say(f"{len(matched)} attempts the world model kept, as the simulator executed them")
    cells = []
    for rep in range(args.replicates):
        cell = Cell(
            row=f"+{args.recipe} (sim), only the attempts the world model kept",
            replicate=rep,
            dataset=str(args.folder / f"{args.recipe}_sim.hdf5"),
            demos=seeds + matched,
            folder=str(args.folder / "policies_accepted_in_simulator" / f"{args.recipe}_r{rep}"),
            manifest=manifest,
            steps=args.policy_steps,
            episodes=args.episodes,
        )
        cells.append(run_cell(cell))
        say(f"r{rep}: {cells[-1]['successes']}/{cells[-1]['episodes']}")
    experiment = cells_folder(args.folder, "bc-mlp")
    names = [experiment / f"plus_{args.recipe}_wm_r{r}.json" for r in range(args.replicates)]
    wm = [json.loads(name.read_text()) for name in names]
    result = {
        "folder": str(args.folder),
        "recipe": args.recipe,
        "attempts": len(matched),
        "policy_steps": args.policy_steps,
        "rows": {
            f"+{args.recipe} (WM)": {**pooled(wm), "demos": wm[0]["demos"], "samples": wm[0]["samples"]},
            f"+{args.recipe} (sim), the same attempts": {
                **pooled(cells),
                "demos": cells[0]["demos"],
                "samples": cells[0]["samples"],
                "seconds": round(sum(c["seconds"] for c in cells), 1),
            },
        },
    }
    tag = f"_{args.tag}" if args.tag else ""
    text = json.dumps(result, indent=2) + "\n"
    write_atomically(RESULTS / f"accepted_in_simulator{tag}.json", text.encode())
    print(json.dumps(result["rows"], indent=2))


if __name__ == "__main__":
    main()
