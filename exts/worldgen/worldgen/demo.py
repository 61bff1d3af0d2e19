"""`make demo`: the main job on the shipped scenarios, with a short summary of what it did.

Each capability joins here as it lands. Outputs go under data/demo/ (git-ignored).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from pxr import Usd, UsdGeom, UsdPhysics

from .manifest import load_manifest
from .stage import compile_stage

SCENARIOS = Path(__file__).resolve().parents[3] / "scenarios"


def _stage_summary(path: Path) -> str:
    stage = Usd.Stage.Open(str(path))
    bodies = sum(1 for p in stage.Traverse() if p.HasAPI(UsdPhysics.RigidBodyAPI))
    joints = sum(1 for p in stage.Traverse() if p.IsA(UsdPhysics.Joint))
    cameras = sum(1 for p in stage.Traverse() if p.IsA(UsdGeom.Camera))
    return f"{bodies} rigid bodies, {joints} joints, {cameras} cameras"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="data/demo", help="output folder (default data/demo)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = Path(args.out)
    started = time.perf_counter()
    lines = []
    for path in sorted(SCENARIOS.glob("*.yaml")):
        manifest = load_manifest(path)
        stage_path, _ = compile_stage(
            manifest, args.seed, out / "stages" / f"{manifest.name}_seed{args.seed}.usda"
        )
        lines.append(
            f"  {manifest.name:<20} hash {manifest.content_hash()[:12]}  "
            f"{_stage_summary(stage_path)}  -> {stage_path}"
        )
    print("worldgen demo")
    print(f"1. validated and compiled {len(lines)} shipped scenarios to USD (seed {args.seed}):")
    print("\n".join(lines))
    print(f"done in {time.perf_counter() - started:.1f} s; outputs under {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
