"""The heavy stages of ``worldgen run`` in one process against the same on Ray actors, side by side in one
run, on a run folder's own outputs: generation (``recover`` tasks in the world model), the checks'
agreement samples (the gate's heavy part), replay verification of the generated demos (batches of
scenes stepped together) and evaluation of the seeds-only policy (the same). For each: wall-clock both
ways, the ratio, and whether the outputs are identical. Writes bench/results/run_workers.json.

    python bench/run_workers_throughput.py [RUN_DIR] [--workers 2]   (RUN_DIR: a finished worldgen run;
                                                                      default: runs the tiny profile)
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import shutil
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "run_workers.json"


def timed(fn):
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


def same_datasets(a: Path, b: Path) -> bool:
    from worldgen.dataset import hdf5_differences

    return not hdf5_differences(a, b)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", nargs="?", type=Path, help="a finished worldgen run folder")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    from worldgen.apps.run import PROFILES, run_pipeline, synthetic_spec
    from worldgen.dataset import demo_names, open_dataset
    from worldgen.manifest import load_manifest

    from policies.evaluate import evaluate_policy
    from world_models.checking import sample_spreads
    from world_models.recipes import generate_in_world_model
    from world_models.replay import replay_generated

    scratch = Path(tempfile.mkdtemp(prefix="run_workers_"))
    run = args.run
    if run is None:
        run = scratch / "run"
        run_pipeline(load_manifest(ROOT / "scenarios" / "push_to_target.yaml"), run, "tiny")
    manifest = load_manifest(run / "manifest.yaml")
    profile = json.loads((run / "run.json").read_text())["profile"]
    envs = PROFILES[profile["name"]].envs
    seeds, ckpt = run / "seeds" / "seeds.hdf5", run / "world_model" / "checkpoint"
    spec, recipe = synthetic_spec(manifest), manifest.generation.recipe
    stages = {}

    one, many = scratch / "one.hdf5", scratch / "many.hdf5"
    counts, t_one = timed(lambda: generate_in_world_model(recipe, seeds, ckpt, one, spec))
    _, t_many = timed(lambda: generate_in_world_model(recipe, seeds, ckpt, many, spec, workers=args.workers))
    stages["generation"] = {"attempts": counts["attempts"], "identical": same_datasets(one, many)}
    stages["generation"].update(one_process_s=t_one, workers_s=t_many)

    copies = [scratch / f"spread{i}.hdf5" for i in range(2)]
    for path in copies:
        shutil.copyfile(one, path)
    samples = PROFILES[profile["name"]].check_samples
    a, t_one = timed(lambda: sample_spreads(copies[0], ckpt, samples))
    b, t_many = timed(lambda: sample_spreads(copies[1], ckpt, samples, workers=args.workers))
    stages["checks_agreement"] = {"demos": len(a), "samples": samples, "identical": a == b}
    stages["checks_agreement"].update(one_process_s=t_one, workers_s=t_many)

    with open_dataset(one) as f:
        names = demo_names(f, "synthetic")
        a, t_one = timed(lambda: replay_generated(f, names, envs=envs))
        b, t_many = timed(lambda: replay_generated(f, names, envs=envs, workers=args.workers))
    stages["replay"] = {"demos": len(names), "envs": envs, "identical": a == b}
    stages["replay"].update(one_process_s=t_one, workers_s=t_many)

    policy = run / "policies" / "seeds"
    episodes = manifest.evaluation.episodes
    a, t_one = timed(lambda: evaluate_policy(policy, manifest, episodes, gifs=False, envs=envs))
    b, t_many = timed(
        lambda: evaluate_policy(policy, manifest, episodes, gifs=False, envs=envs, workers=args.workers)
    )
    stages["evaluation"] = {
        "episodes": episodes,
        "envs": envs,
        "identical": a["per_episode"] == b["per_episode"],
        "success_rate": a["success_rate"],
    }
    stages["evaluation"].update(one_process_s=t_one, workers_s=t_many)
    for stage in stages.values():
        stage["speedup"] = stage["one_process_s"] / stage["workers_s"]
    result = {
        "benchmark": "run_workers",
        "machine": {"cpus": multiprocessing.cpu_count(), "platform": platform.platform()},
        "run": {"profile": profile["name"], "manifest": manifest.name},
        "workers": args.workers,
        "note": (
            "Ray actor start-up (a process, imports, Warp modules, the world model) is inside workers_s. "
            "Each actor uses the caller's math-thread count so its results are bit-identical to one "
            "process's; on 2 cores, 2 actors of 2 threads each oversubscribe the world-model stages "
            "(generation, agreement samples)."
        ),
        "stages": stages,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    for name, stage in stages.items():
        print(
            f"{name:<11} one process {stage['one_process_s']:6.1f} s, {args.workers} Ray workers "
            f"{stage['workers_s']:6.1f} s: x{stage['speedup']:.2f}, identical outputs: {stage['identical']}"
        )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
