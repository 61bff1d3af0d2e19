"""Does the gain hold across sets of seed demos? ``worldgen run`` (quick profile) on one scenario once per
set of seed demos (``seeds.base_seed``), each with its own world model and generation draw, plus each
recipe's simulator twin; figures in bench/results/seed_sets[_<tag>].json / .md.

Per seed set, each row is ``policy_replicates`` policy seeds on their own panels (the run's eval stage);
across seed sets, a row's replicate is the seed set (a world model, a generation draw and 3 policies), and
its replicate-level 95 % interval (:func:`policies.evaluate.replicate_interval`) is what "gain shown" uses.
Every run resumes from its folder under ``--out`` and reuses only the stages whose inputs are unchanged.

    python bench/seed_sets.py --base-seeds 0 100 200 --out data/experiments/seed_sets
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from stages import RESULTS, pooled, say  # bench/stages.py, beside this script
from worldgen.apps.compare import Cell, cell_inputs, changed_fields, run_cell
from worldgen.apps.run import PROFILES, Profile, run_pipeline, verdict
from worldgen.dataset import demo_names, open_dataset
from worldgen.files import write_atomically
from worldgen.manifest import load_manifest

ROOT = Path(__file__).resolve().parents[1]


def cells_row(folder: Path, row: str, dataset: Path, demos: list[str], manifest, profile: Profile) -> dict:
    """A row beside the run's: ``demos`` of ``dataset`` trained and evaluated like the run's rows (policy
    seed r on panel r, ``manifest``'s policy section). Each cell is reused only when what made it matches
    (``worldgen.apps.compare.cell_inputs``); otherwise it is made again and the change named."""
    slug = row.replace(" ", "_").replace("+", "_").replace("(", "").replace(")", "")
    cells = []
    for replicate in range(profile.policy_replicates):
        cell = Cell(
            row=row,
            replicate=replicate,
            dataset=str(dataset),
            demos=demos,
            folder=str(folder / "extra" / f"{slug}_r{replicate}"),
            manifest=manifest,
            episodes=manifest.evaluation.episodes,
            envs=profile.envs,
            one_thread=False,
        )
        cached = folder / "extra" / f"{slug}_r{replicate}.json"
        result = json.loads(cached.read_text()) if cached.exists() else None
        changed = changed_fields(result.get("inputs"), cell_inputs(cell)) if result else ["not made"]
        if changed:
            say(f"{folder.name}: {row}, policy seed {replicate} ({', '.join(changed)})")
            result = run_cell(cell)
            write_atomically(cached, (json.dumps(result, indent=2) + "\n").encode())
        cells.append(result)
    return {"demos": len(demos), "samples": cells[0]["samples"], **pooled(cells)}


def extra_rows(folder: Path, profile: Profile) -> dict[str, dict]:
    """Beside the run's rows: its accepted attempts at uniform sampling (when the manifest sets a generated
    share), and the recover attempts executed in the simulator (same starts, expert, noise seeds and
    stopping rule): the recipe's ceiling."""
    from world_models.recipes import accepted_demos, generate_in_simulator, recipe_spec

    manifest = load_manifest(folder / "manifest.yaml")
    checked, seeds = folder / "checks" / "checked.hdf5", folder / "seeds" / "seeds.hdf5"
    twin = folder / "extra" / "recover_sim.hdf5"
    rows = {}
    with open_dataset(checked) as f:
        train, recorded = demo_names(f, "train"), set(demo_names(f, "seed"))
    if manifest.policy.generated_share is not None:
        uniform = manifest.model_copy(
            update={"policy": manifest.policy.model_copy(update={"generated_share": None})}
        )
        accepted = [n for n in accepted_demos(checked) if n not in recorded]
        rows["seeds+recover, uniform"] = cells_row(
            folder, "seeds+recover, uniform", checked, train + accepted, uniform, profile
        )
    say(f"{folder.name}: recover attempts in the simulator")
    generate_in_simulator("recover", seeds, twin, recipe_spec("recover", manifest))
    accepted = [n for n in accepted_demos(twin) if n not in recorded]
    rows["seeds+recover (sim)"] = cells_row(
        folder, "seeds+recover (sim)", twin, train + accepted, manifest, profile
    )
    return rows


def run_seed_set(scenario: Path, base_seed: int, out: Path, profile: str) -> dict:
    """One seed set's run: its verdict rows plus the recover recipe's simulator twin row."""
    manifest = load_manifest(scenario)
    manifest = manifest.model_copy(
        update={"seeds": manifest.seeds.model_copy(update={"base_seed": base_seed})}
    )
    folder = out / f"base_seed_{base_seed}"
    started = time.perf_counter()
    record = run_pipeline(manifest, folder, profile=profile, say=say)
    rows = dict(record["stages"]["eval"]["summary"]["rows"])
    rows.update(extra_rows(folder, PROFILES[profile]))
    checks = record["stages"]["checks"]["summary"]
    result = {
        "base_seed": base_seed,
        "folder": str(folder),
        "verdict": record["verdict"],
        "rows": rows,
        "attempts": record["stages"]["synthetic"]["summary"],
        "precision_predicted": checks["precision_predicted"],
        "predicted_success": checks["predicted_success"],
        "replay_success": checks["replay_success"],
        "psnr_gain_last": record["stages"]["world_model"]["summary"]["psnr_gain_last"],
        "code_version": record["code_version"],
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_atomically(folder / "seed_set.json", (json.dumps(result, indent=2) + "\n").encode())
    return result


def repooled(row: dict) -> dict:
    """A row's pooled figures again from its per-replicate counts ("k/n")."""
    counts = [c.split("/") for c in row["per_replicate"]]
    return {**row, **pooled([{"successes": int(k), "episodes": int(n)} for k, n in counts])}


def across(sets: list[dict], row: str) -> dict:
    """A row over seed sets: each seed set one replicate (its pooled policy seeds)."""
    from policies.evaluate import replicate_interval

    k = [s["rows"][row]["successes"] for s in sets]
    n = [s["rows"][row]["episodes"] for s in sets]
    return {
        "successes": sum(k),
        "episodes": sum(n),
        "success_rate": sum(k) / sum(n),
        "replicate_ci95": list(replicate_interval(k, n)),
        "per_seed_set": [f"{a}/{b}" for a, b in zip(k, n, strict=True)],
    }


def table(result: dict) -> str:
    rows = list(result["across"])
    lines = [
        f"{result['scenario']}, {result['algo']}, profile {result['profile']}: "
        f"{len(result['seed_sets'])} sets of seed demos, each its own world model and generation draw",
        "",
        "| seed set | row | success | replicate 95 % CI | pooled Wilson 95 % CI | per policy seed |",
        "|---|---|---|---|---|---|",
    ]
    for s in result["seed_sets"]:
        for row in rows:
            r = s["rows"][row]
            lo, hi = r["replicate_ci95"]
            plo, phi = r["ci95"]
            lines.append(
                f"| {s['base_seed']} | {row} | {r['successes']}/{r['episodes']} "
                f"= {100 * r['success_rate']:.0f} % "
                f"| [{lo:.2f}, {hi:.2f}] | [{plo:.2f}, {phi:.2f}] | {', '.join(r['per_replicate'])} |"
            )
    lines += ["", "| row, over seed sets | success | replicate 95 % CI (unit: seed set) | per seed set |"]
    lines += ["|---|---|---|---|"]
    for row, r in result["across"].items():
        lo, hi = r["replicate_ci95"]
        lines.append(
            f"| {row} | {100 * r['success_rate']:.0f} % | [{lo:.2f}, {hi:.2f}] "
            f"| {', '.join(r['per_seed_set'])} |"
        )
    lines += ["", f"gain shown over seed sets: {result['gain_shown']}"]
    lines += [f"- seed set {s['base_seed']}: {s['verdict']}" for s in result["seed_sets"]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenario", default="push_to_target")
    parser.add_argument("--base-seeds", type=int, nargs="+", default=[0, 100, 200])
    parser.add_argument("--profile", default="quick", choices=sorted(PROFILES))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tag", default="", help="suffix of the results files")
    parser.add_argument(
        "--collect",
        action="store_true",
        help="run nothing: gather each seed set's seed_set.json, written when its run finished",
    )
    args = parser.parse_args()

    scenario = ROOT / "scenarios" / f"{args.scenario}.yaml"
    if args.collect:
        sets = [
            json.loads((args.out / f"base_seed_{b}" / "seed_set.json").read_text()) for b in args.base_seeds
        ]
        for seed_set in sets:  # intervals and verdict from the counts, by today's replicate_interval
            seed_set["rows"] = {row: repooled(r) for row, r in seed_set["rows"].items()}
            seed_set["verdict"] = verdict(seed_set["rows"]["seeds"], seed_set["rows"]["seeds+recover"])
    else:
        sets = [run_seed_set(scenario, base, args.out, args.profile) for base in args.base_seeds]
    rows = [row for row in sets[0]["rows"] if all(row in s["rows"] for s in sets)]
    summary = {row: across(sets, row) for row in rows}
    seeds_hi = summary["seeds"]["replicate_ci95"][1]
    shown = summary["seeds+recover"]["replicate_ci95"][0] > seeds_hi
    result = {
        "scenario": args.scenario,
        "algo": load_manifest(scenario).policy.algorithm,
        "profile": args.profile,
        "seed_sets": sets,
        "across": summary,
        "gain_shown": "yes" if shown else "not shown (the replicate-level intervals over seed sets overlap)",
    }
    stem = f"seed_sets{'_' + args.tag if args.tag else ''}"
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_atomically(RESULTS / f"{stem}.json", (json.dumps(result, indent=2) + "\n").encode())
    write_atomically(RESULTS / f"{stem}.md", (table(result) + "\n").encode())
    print(table(result))


if __name__ == "__main__":
    main()
