"""World-model training speed by U-Net width, side by side in one run.

The same play data (push_to_target: ``--seeds`` seed demos and their play rollouts, as ``worldgen run``
makes them, recorded once) trains a U-Net world model of each ``--channels`` width at each resolution,
for ``--steps`` steps at the manifest's batch size. Runs alternate between the widths, ``--rounds``
times each, each in a process of its own. A run's speed is its training samples/s from its first
progress report (every ``PROGRESS_EVERY`` steps) to its last, start-up excluded; a cell's figure is the
median over its rounds. Ratios are against the first width (the manifest's default) at the same
resolution.

Writes bench/results/wm_training_speed.json.

    python bench/wm_training_speed.py [--steps 60] [--rounds 3] [--resolutions 32 64]
        [--channels 64,128,128 32,64,64]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
SCENARIO = ROOT / "scenarios" / "push_to_target.yaml"

# Run in a fresh interpreter: train, and print the rate between the first and the last progress report.
TIMER = """
import json, sys, time
from world_models.train import train_world_model
data, out, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
marks = []
def progress(done, frame_loss, state_loss, rate):
    marks.append((done, time.perf_counter()))
train_world_model(data, out, steps=steps, checkpoint_every=10**6, progress=progress)
batch = json.loads(open(out + "/training_state.json").read())["batch_size"]
(s0, t0), (s1, t1) = marks[0], marks[-1]
print(json.dumps({"samples_per_s": (s1 - s0) * batch / (t1 - t0)}))
"""


def _train_rate(data: Path, out: Path, steps: int) -> float:
    done = subprocess.run(
        [sys.executable, "-c", TIMER, str(data), str(out), str(steps)], capture_output=True, text=True
    )
    if done.returncode:
        raise RuntimeError(f"training run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["samples_per_s"]


def main() -> None:
    from worldgen.apps.cache import code_version
    from worldgen.dataset import restamp_dataset
    from worldgen.files import write_atomically
    from worldgen.manifest import load_manifest
    from worldgen.pipeline import run_play_stage, run_seed_stage

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--resolutions", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--channels", nargs="+", default=["64,128,128", "32,64,64"])
    args = parser.parse_args()
    if args.steps < 30:
        parser.error("--steps: at least 30 (the rate is read from the first progress report on)")
    widths = [tuple(int(c) for c in w.split(",")) for w in args.channels]
    manifest = load_manifest(SCENARIO)
    cells = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        seeds = tmp / "seeds.hdf5"
        print(f"recording {args.seeds} seed demos", flush=True)
        run_seed_stage(SCENARIO, seeds, n=args.seeds)
        play = tmp / "play.hdf5"
        run_play_stage(manifest, seeds, play, [0.3])
        for res in args.resolutions:
            data = {}
            for width in widths:  # the manifest rides in the dataset: the play data restamped per width
                spec = manifest.world_model.model_copy(update={"resolution": (res, res), "channels": width})
                data[width] = tmp / f"train_{res}_{'_'.join(map(str, width))}.hdf5"
                restamp_dataset(play, data[width], manifest.model_copy(update={"world_model": spec}))
            rates: dict[tuple, list[float]] = {w: [] for w in widths}
            for r in range(args.rounds):
                for width in widths:
                    out = tmp / f"ckpt_{res}_{'_'.join(map(str, width))}_{r}"
                    rates[width].append(_train_rate(data[width], out, args.steps))
                    print(f"{res}x{res} channels {list(width)}: {rates[width][-1]:.1f} samples/s", flush=True)
            base = statistics.median(rates[widths[0]])
            for width in widths:
                median = statistics.median(rates[width])
                cells.append(
                    {
                        "resolution": res,
                        "channels": list(width),
                        "samples_per_s": median,
                        "ratio": median / base,
                        "rounds": rates[width],
                    }
                )
                print(f"{res}x{res} channels {list(width)}: {median:.1f} samples/s, x{median / base:.2f}")
    result = {
        "benchmark": "wm_training_speed",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "code_version": code_version(),
        "scenario": SCENARIO.stem,
        "seeds": args.seeds,
        "steps": args.steps,
        "batch_size": manifest.world_model.batch_size,
        "rounds": args.rounds,
        "baseline": {"channels": list(widths[0])},
        "cells": cells,
    }
    out = RESULTS / "wm_training_speed.json"
    write_atomically(out, (json.dumps(result, indent=2) + "\n").encode())
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
