"""What the experiments in bench/ share, re-exported here: stages made once and remade when their inputs
change (worldgen.apps.cache), pooled replicates, the seeds -> play rollouts -> world model preparation and
a timestamped line (worldgen.apps.experiment); of their own, their figures in bench/results/ and the
preparation's flags."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from worldgen.apps.cache import Stages  # noqa: F401
from worldgen.apps.experiment import pooled, prepare_world_model, say  # noqa: F401

RESULTS = Path(__file__).resolve().parent / "results"


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


def add_preparation_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of :func:`prepare_world_model`, the same in every experiment that calls it."""
    parser.add_argument("--scenario", default="push_to_target")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tag", default="", help="suffix of the results files")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--play", type=int, default=2, help="play rollouts per seed demo (0-2)")
    parser.add_argument("--wm-steps", type=int, help="world-model steps (default: the manifest's)")
    parser.add_argument("--wm-time-limit", type=float, default=60.0, help="minutes per call")
