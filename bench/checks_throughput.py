"""Physics-check throughput and quality on real seed clips of every shipped scenario, in one run:

- clips/s of the Warp kernels against their numpy references on the same clips, and the checks' cost
  as a fraction of the time it took to generate those clips (seed trajectories: world-model branch
  generation is not in the project yet);
- false positives: thresholds calibrated on the first half of each scenario's seeds, flagged fraction
  on the held-out second half;
- recall of the corruption suite per defect class and strength on the held-out clips.

Writes bench/results/checks_throughput.json.   python bench/checks_throughput.py [--seeds 20]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from worldgen.dataset import depth_ranges, open_dataset

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "checks_throughput.json"


def main() -> None:
    from worldgen.checks import (
        CHECK_NAMES,
        clip_from_demo,
        clip_scores,
        clip_statistics,
        run_checks,
        thresholds_from_scores,
    )
    from worldgen.checks.corrupt import DEFECTS, STRENGTHS, corrupt
    from worldgen.manifest import load_manifest
    from worldgen.pipeline import run_seed_stage

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2, help="corruptions per clip, defect and strength")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    result = {
        "benchmark": "checks_throughput",
        "seeds_per_scenario": args.seeds,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "device": "cpu",
        "scenarios": {},
    }
    timing = defaultdict(float)
    recall = defaultdict(lambda: [0, 0])
    caught_by = defaultdict(lambda: defaultdict(int))
    with tempfile.TemporaryDirectory() as tmp:
        for path in sorted((ROOT / "scenarios").glob("*.yaml")):
            manifest = load_manifest(path)
            dataset = Path(tmp) / f"{path.stem}.hdf5"
            t0 = time.perf_counter()
            run_seed_stage(path, dataset, n=args.seeds)
            generate_s = time.perf_counter() - t0
            cam = manifest.world_model_camera
            with open_dataset(dataset) as f:
                ranges = depth_ranges(f)
                clips = [
                    clip_from_demo(f["data"][n], manifest, cam, ranges[cam])
                    for n in sorted(f["data"], key=lambda n: int(n.split("_")[1]))
                ]
            clip_statistics(clips[0], "warp")  # compile once, outside the timing
            for backend in ("warp", "numpy"):
                t0 = time.perf_counter()
                stats = [clip_statistics(clip, backend) for clip in clips]  # the kernels / references
                t1 = time.perf_counter()
                for clip, st in zip(clips, stats, strict=True):  # host-side scoring, shared by both
                    clip_scores(clip, st)
                timing[backend] += t1 - t0
                timing[f"{backend}_with_scoring"] += time.perf_counter() - t0
            timing["generate"] += generate_s
            timing["clips"] += len(clips)
            half = len(clips) // 2
            scores = defaultdict(list)
            for clip in clips[:half]:
                for name, (score, _) in clip_scores(clip, clip_statistics(clip)).items():
                    if score is not None:
                        scores[name].append(score)
            thresholds = thresholds_from_scores(scores)
            held_out = clips[half:]
            flagged = sum(
                any(r.verdict == "failed" for r in run_checks(c, thresholds).values()) for c in held_out
            )
            result["scenarios"][path.stem] = {
                "camera": cam,
                "thresholds": thresholds,
                "held_out_clips": len(held_out),
                "held_out_flagged": flagged,
                "false_positive_rate": flagged / len(held_out),
            }
            for clip in held_out:
                for defect in DEFECTS:
                    for strength in STRENGTHS:
                        for _ in range(args.repeats):
                            try:
                                bad, _ = corrupt(clip, defect, strength, rng)
                            except ValueError:
                                continue
                            failed = [
                                k for k, r in run_checks(bad, thresholds).items() if r.verdict == "failed"
                            ]
                            recall[(defect, strength)][0] += bool(failed)
                            recall[(defect, strength)][1] += 1
                            for k in failed:
                                caught_by[(defect, strength)][k] += 1
    clips = timing["clips"]
    result["warp_clips_per_s"] = clips / timing["warp"]
    result["numpy_clips_per_s"] = clips / timing["numpy"]
    result["warp_vs_numpy_speedup"] = timing["numpy"] / timing["warp"]
    result["with_host_scoring"] = {
        "warp_clips_per_s": clips / timing["warp_with_scoring"],
        "numpy_clips_per_s": clips / timing["numpy_with_scoring"],
        "speedup": timing["numpy_with_scoring"] / timing["warp_with_scoring"],
    }
    result["checks_cost_fraction_of_seed_generation"] = timing["warp_with_scoring"] / timing["generate"]
    result["recall"] = {
        f"{d}/{s}": {
            "caught": recall[(d, s)][0],
            "total": recall[(d, s)][1],
            "recall": recall[(d, s)][0] / max(recall[(d, s)][1], 1),
            "caught_by": dict(caught_by[(d, s)]),
        }
        for d in DEFECTS
        for s in STRENGTHS
    }
    result["check_names"] = list(CHECK_NAMES)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"warp {result['warp_clips_per_s']:.1f} clips/s, numpy {result['numpy_clips_per_s']:.1f} clips/s "
        f"(x{result['warp_vs_numpy_speedup']:.2f}); checks cost "
        f"{result['checks_cost_fraction_of_seed_generation']:.2%} of generation"
    )
    for name, s in result["scenarios"].items():
        print(f"{name}: false positives {s['held_out_flagged']}/{s['held_out_clips']}")
    print(f"{'defect':<12}" + "".join(f"{s:>10}" for s in STRENGTHS))
    for d in DEFECTS:
        print(f"{d:<12}" + "".join(f"{result['recall'][f'{d}/{s}']['recall']:>10.0%}" for s in STRENGTHS))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
