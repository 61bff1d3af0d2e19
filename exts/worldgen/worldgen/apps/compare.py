"""``compare``: does seed + synthetic data make a better policy than seed data alone, and by how much?

One policy recipe is trained on four datasets and evaluated on the same held-out panel:

(a) ``seeds``           S expert demos from the simulator;
(b) ``seeds+branches``  (a) plus every world-model branch sampled from them;
(c) ``seeds+passed``    (a) plus only the branches that passed the checks (thresholds calibrated
                        through the world model, agreement of 3 samples per branch);
(d) ``sim-oracle``      (a) plus as many extra simulated expert demos as (b) has branches: what the
                        same amount of extra data gives when it comes from the simulator.

Layout of ``out/``: ``seeds.hdf5``, ``world_model/``, ``synthetic.hdf5`` (seeds + branches, with check
verdicts and the ``passed`` mask), ``oracle.hdf5``, ``policies/<row>/`` (policy + ``eval.json`` + GIFs),
``compare.json``, ``compare.md`` and ``compare.png``. Each stage resumes from what is already there.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from policies.evaluate import evaluate_policy
from policies.train import train_bc
from worldgen.dataset import demo_names
from worldgen.files import write_atomically
from worldgen.manifest import Manifest, as_manifest
from worldgen.pipeline import run_seed_stage

from .. import plots
from ..dataset import demo_record, open_dataset

ROWS = ("seeds", "seeds+branches", "seeds+passed", "sim-oracle")


def _say(progress: Callable[[str], None] | None, text: str) -> None:
    if progress is not None:
        progress(text)


def compare(
    manifest: Manifest | str | Path,
    out: str | Path,
    seeds: int = 10,
    branches: int = 4,
    algo: str = "bc-mlp",
    episodes: int | None = None,
    wm_steps: int | None = None,
    policy_steps: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the four-row comparison; returns (and writes) the table."""
    from world_models.branch import branch_dataset
    from world_models.checking import gate_with_world_model
    from world_models.checkpoint import checkpoint_hash
    from world_models.train import train_world_model

    manifest, out = as_manifest(manifest), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cameras = algo == "bc-image"
    seed_file, synth = out / "seeds.hdf5", out / "synthetic.hdf5"
    oracle = out / ("oracle_cameras.hdf5" if cameras else "oracle.hdf5")

    _say(progress, f"recording {seeds} seed demos")
    run_seed_stage(manifest, seed_file, n=seeds)
    _say(progress, "training the world model")
    ckpt = out / "world_model"
    train_world_model(seed_file, ckpt, steps=wm_steps, checkpoint_every=max((wm_steps or 500) // 2, 1))
    if synth.exists() and _branch_models(synth) - {checkpoint_hash(ckpt)}:
        synth.unlink()  # branches of an earlier checkpoint: sample them again
    _say(progress, f"branching {branches} futures per seed at steps {manifest.branching.at_steps}")
    branch_dataset(seed_file, ckpt, synth, per_seed=branches, base_seed=manifest.seeds.base_seed)
    _say(progress, "checking the branches (thresholds calibrated through the world model)")
    gate = gate_with_world_model(synth, ckpt, held_out=seed_file)
    with open_dataset(synth) as f:
        seed_names, synthetic = demo_names(f, "seed"), demo_names(f, "synthetic")
        passed = [n for n in demo_names(f, "passed") if n in set(synthetic)]
    extra = len(synthetic)
    _say(progress, f"simulating {extra} extra expert demos for the oracle row")
    run_seed_stage(manifest, oracle, n=seeds + extra, cameras=cameras)

    datasets = {
        "seeds": (seed_file, "seed", None),
        "seeds+branches": (synth, None, None),
        "seeds+passed": (synth, None, seed_names + passed),
        "sim-oracle": (oracle, "seed", None),
    }
    rows: dict[str, Any] = {}
    for row, (path, mask, demos) in datasets.items():
        folder = out / "policies" / row.replace("+", "_")
        _say(progress, f"{row}: training {algo}")
        meta = train_bc(path, folder, algo, mask=mask, demos=demos, steps=policy_steps)
        _say(progress, f"{row}: evaluating")
        report = evaluate_policy(folder, manifest, episodes, out=folder)
        rows[row] = {
            "demos": meta["demos"],
            "samples": meta["samples"],
            "success_rate": report["success_rate"],
            "ci95": report["ci95"],
            "successes": report["successes"],
            "episodes": report["episodes"],
            "mean_return": report["mean_return"],
            "policy": str(folder),
        }
    result = {
        "manifest": manifest.name,
        "manifest_hash": manifest.content_hash(),
        "algo": algo,
        "seeds": seeds,
        "branches_per_seed_and_step": branches,
        "branch_steps": list(manifest.branching.at_steps),
        "synthetic": extra,
        "passed": len(passed),
        "check_thresholds": gate.thresholds,
        "check_calibrations": {name: c.to_dict() for name, c in gate.calibrations.items()},
        "rows": rows,
    }
    _write_text(out / "compare.json", json.dumps(result, indent=2) + "\n")
    _write_text(out / "compare.md", table(result) + "\n")
    plots.success_rates(
        result["rows"],
        out / "compare.png",
        f"{manifest.name}, {algo}: success rate on one held-out panel, 95 % CI",
        baseline=ROWS[0],
    )
    return result


def _branch_models(path: Path) -> set[str]:
    with open_dataset(path) as f:
        return {demo_record(f, n).model for n in demo_names(f, "synthetic")}


def _write_text(path: Path, text: str) -> None:
    write_atomically(path, text.encode())


def table(result: dict[str, Any]) -> str:
    lines = [
        f"{result['manifest']}: {result['algo']} on {result['seeds']} seeds, {result['synthetic']} branches "
        f"({result['passed']} passed the checks)",
        "",
        "| row | demos | samples | success | 95% CI |",
        "|---|---:|---:|---:|---|",
    ]
    for name, row in result["rows"].items():
        low, high = row["ci95"]
        lines.append(
            f"| {name} | {row['demos']} | {row['samples']} | {row['successes']}/{row['episodes']} "
            f"({row['success_rate']:.0%}) | [{low:.2f}, {high:.2f}] |"
        )
    return "\n".join(lines)
