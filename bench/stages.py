"""What the experiments in bench/ share: stages that run once and resume from what their folder holds,
and the seeds -> play rollouts -> world model preparation both the synthetic-demos and the world-model
checks experiments stand on (the same files, so one prepared folder serves both)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def pooled(cells: list[dict]) -> dict:
    """One row's replicate cells (each with successes and episodes) pooled: the rate, its Wilson 95 %
    interval and what each replicate scored."""
    from policies.evaluate import wilson_interval

    k, n = sum(c["successes"] for c in cells), sum(c["episodes"] for c in cells)
    return {
        "successes": k,
        "episodes": n,
        "success_rate": k / n,
        "ci95": list(wilson_interval(k, n)),
        "per_replicate": [f"{c['successes']}/{c['episodes']}" for c in cells],
    }


def write_figures(
    stem: str,
    result: dict,
    table: str,
    title: str,
    baseline: str,
    controls: list[str],
    rows_key: str = "rows",
) -> None:
    """An experiment's figures: bench/results/<stem>.json (the result), .md (its table) and .png (its rows'
    success rates with intervals, against ``baseline``, ``controls`` greyed); each file written whole."""
    from worldgen import plots
    from worldgen.files import write_atomically

    RESULTS.mkdir(parents=True, exist_ok=True)
    write_atomically(RESULTS / f"{stem}.json", (json.dumps(result, indent=2) + "\n").encode())
    write_atomically(RESULTS / f"{stem}.md", (table + "\n").encode())
    plots.success_rates(
        result[rows_key], RESULTS / f"{stem}.png", title, baseline=baseline, controls=controls
    )
    print(table)


class Stages:
    """Each named stage runs once; its result (a dict, plus its seconds) is kept in ``stages.json``."""

    def __init__(self, out: Path):
        self.path = out / "stages.json"
        self.stats: dict = json.loads(self.path.read_text()) if self.path.exists() else {}

    def __call__(self, name: str, fn: Callable[[], dict | None]) -> dict:
        if name in self.stats:
            return self.stats[name]
        started = time.perf_counter()
        say(f"{name} ...")
        value = fn() or {}
        self.stats[name] = {**value, "seconds": round(time.perf_counter() - started, 1)}
        self.path.write_text(json.dumps(self.stats, indent=2) + "\n")
        say(f"{name}: { {k: v for k, v in self.stats[name].items() if k != 'per_demo'} }")
        return self.stats[name]


def add_preparation_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of :func:`prepare_world_model`, the same in every experiment that calls it."""
    parser.add_argument("--scenario", default="push_to_target")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tag", default="", help="suffix of the results files")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--play", type=int, default=2, help="play rollouts per seed demo (0-2)")
    parser.add_argument("--wm-steps", type=int, help="world-model steps (default: the manifest's)")
    parser.add_argument("--wm-time-limit", type=float, default=60.0, help="minutes per call")


def prepare_world_model(
    stage: Stages, manifest_path: Path, out: Path, seeds: int, play: int, wm_steps: int | None, minutes: float
) -> None:
    """``seeds.hdf5`` (expert demos with cameras), ``wm_train.hdf5`` (+ ``play`` noisy replays per seed)
    and the world model ``wm/`` trained on them (exits when its time limit stops it: run again to go on)."""
    from worldgen.manifest import load_manifest
    from worldgen.pipeline import run_play_stage, run_seed_stage

    from world_models.train import train_world_model

    seeds_path, train_path = out / "seeds.hdf5", out / "wm_train.hdf5"
    stage("seeds", lambda: {"demos": len(run_seed_stage(manifest_path, seeds_path, n=seeds))})
    noise = [0.15, 0.3][:play]
    manifest = load_manifest(manifest_path)
    stage("play", lambda: {"rollouts": len(run_play_stage(manifest, seeds_path, train_path, noise)) - seeds})

    def train():
        result = train_world_model(train_path, out / "wm", steps=wm_steps, time_limit=minutes * 60)
        if result.get("stopped_early"):
            sys.exit("world model stopped at its time limit: run again to resume")
        last = result["validation"][-1] if result.get("validation") else None
        return {"steps": result["step"], "last_validation": last}

    stage("world_model", train)
