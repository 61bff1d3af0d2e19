"""The sim-to-real gap of an image policy, and how much appearance transfer closes it (issue 21).

The manifest's ``target_domain`` stands in for the real robot: other colours, other light, a camera that
tints, vignettes, blurs, adds noise and compresses. One image-policy recipe (bc-image on the front
camera's RGB and proprioception, the same gradient steps in every row) is trained on S seed demos in
several forms and evaluated closed loop on held-out episodes, each replicate on its own panel:

    source seeds            the S demos as the simulator renders them (row a); evaluated in both domains,
                            so the gap (source - target success) is measured on one policy
    randomized seeds        the same S scenes recorded with broad appearance randomisation (row b)
    transferred seeds       the same demos with RGB repainted by the transfer model (row c), which was
                            trained on C unlabelled target-domain clips of other scenes (counted below)
    transferred, sampled    the same, each pixel drawn around the painted mean with the spread the
                            generator leaves unexplained on the clips (a sampled rather than mean frame)
    transferred seeds + retarget (WM)
                            the seeds and the retarget attempts a world model (--world-model, trained on
                            source-domain seed demos) accepted in new scenes, all transferred; the
                            attempts hold the world model's camera alone, repainted from its predicted
                            depth and segmentation (row d)
    seeds + retarget (WM), not transferred
                            the same seeds and attempts in the source appearance (control: what the
                            generated scenes give without the transfer)
    generator control       the same demos through a generator trained on source-domain clips
                            (negative control: the generator's own artefacts, no target appearance)
    target demos (oracle)   S expert demos recorded in the target domain (row e; a ceiling a real team
                            does not have)

Transfer fidelity is measured on held-out target clips (scenes in neither set): PSNR / SSIM of the
transferred frames against the target frames from the same depth and segmentation, beside the
no-transfer baseline (the source render of the same scene and step). Every stage resumes from
``--work``; figures go to bench/results/sim_to_real[_<tag>].json / .md / .png.

    python bench/sim_to_real.py --work data/experiments/sim_to_real
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import shutil
import time
from pathlib import Path

import numpy as np
from stages import pooled, say, write_figures  # bench/stages.py, beside this script
from worldgen.apps.cache import Stages, changed_fields, code_hash
from worldgen.apps.compare import machine_line
from worldgen.files import write_atomically
from worldgen.manifest import Manifest, load_manifest

ROOT = Path(__file__).resolve().parents[1]
CLIP_BASE = 500_000  # unlabelled target clips: scenes outside the seed and evaluation ranges
FIDELITY_BASE = 600_000  # held-out clips for the fidelity figures
ROWS = {  # row -> (training dataset, domains it is evaluated in)
    "source seeds": ("seeds_source.hdf5", ("source", "target")),
    "randomized seeds": ("seeds_randomized.hdf5", ("target",)),
    "transferred seeds": ("seeds_transferred.hdf5", ("target",)),
    "transferred seeds, sampled": ("seeds_transferred_sampled.hdf5", ("target",)),
    "generator control": ("seeds_control.hdf5", ("target",)),
    "transferred seeds + retarget (WM)": ("generated_transferred.hdf5", ("target",)),
    "seeds + retarget (WM), not transferred": ("generated_wm.hdf5", ("target",)),
    "target demos (oracle)": ("seeds_target.hdf5", ("target",)),
}
GENERATED_ROW = "transferred seeds + retarget (WM)"
# Rows that train on the train seeds and the accepted attempts generated from them.
ATTEMPT_ROWS = (GENERATED_ROW, "seeds + retarget (WM), not transferred")
GENERATED_BASE = 700_000  # its new scenes: outside the seed, evaluation and clip ranges


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text).strip("_").lower()


def with_base_seed(manifest: Manifest, base: int) -> Manifest:
    """The manifest with its seed range starting at ``base`` (clips of scenes nobody trains or tests on),
    and its retarget scenes moved out of that range (it records clips, it generates nothing; a manifest
    whose seed and retarget ranges overlap does not validate)."""
    generation = manifest.generation.model_copy(
        update={
            "retarget": manifest.generation.retarget.model_copy(update={"scene_base_seed": GENERATED_BASE})
        }
    )
    seeds = manifest.seeds.model_copy(update={"base_seed": base})
    return manifest.model_copy(update={"seeds": seeds, "generation": generation})


def randomized(manifest: Manifest) -> Manifest:
    """The manifest with broad appearance randomisation (row b), chosen without looking at the target:
    six table colours, object colours jittered, light from any side at 3500-8000 K and a wide range of
    intensities. Placements and physics are unchanged, so seed s is the same episode."""
    content = manifest.model_dump(mode="python")
    content["stressors"]["textures"] = {
        "table_colors": [
            (0.55, 0.45, 0.35), (0.85, 0.85, 0.82), (0.25, 0.25, 0.27),
            (0.35, 0.5, 0.35), (0.45, 0.5, 0.6), (0.75, 0.65, 0.5),
        ],
        "object_color_jitter": 0.15,
    }  # fmt: skip
    content["stressors"]["lighting"] = {
        "intensity": {"type": "uniform", "low": 1500.0, "high": 4500.0},
        "color_temperature": {"type": "uniform", "low": 3500.0, "high": 8000.0},
        "elevation": {"type": "uniform", "low": 0.6, "high": 1.3},
        "azimuth": {"type": "uniform", "low": -3.14, "high": 3.14},
        "ambient": {"type": "uniform", "low": 0.2, "high": 0.5},
    }
    return type(manifest).model_validate(content)


def record(stage: Stages, manifest: Manifest, path: Path, n: int, domain: str, labels: bool = True) -> None:
    from worldgen.pipeline import run_seed_stage

    stage(
        path.stem,
        lambda: {"demos": len(run_seed_stage(manifest, path, n=n, domain=domain, labels=labels))},
        {"manifest": manifest.content_hash(), "n": n, "domain": domain, "labels": labels},
        [path],
    )


def prepare(args, manifest: Manifest, stage: Stages) -> dict:
    """Datasets and transfer models, each made once and made again only when what it reads changed
    (``worldgen.apps.cache.Stages``: ``stages.json`` in the work folder)."""
    from world_models.transfer import TransferConfig, train_transfer, transfer_dataset

    work = args.work
    record(stage, manifest, work / "seeds_source.hdf5", args.seeds, "source")
    record(stage, manifest, work / "seeds_target.hdf5", args.seeds, "target")
    if "randomized seeds" in args.rows:
        record(stage, randomized(manifest), work / "seeds_randomized.hdf5", args.seeds, "source")
    clips = with_base_seed(manifest, CLIP_BASE)
    record(stage, clips, work / "clips_target.hdf5", args.clips, "target", False)
    record(stage, clips, work / "clips_source.hdf5", args.clips, "source", False)
    held_out = with_base_seed(manifest, FIDELITY_BASE)
    record(stage, held_out, work / "fidelity_target.hdf5", args.fidelity_clips, "target", False)
    record(stage, held_out, work / "fidelity_source.hdf5", args.fidelity_clips, "source", False)
    timings = {}
    for clips_file, ckpt, out in (
        ("clips_target.hdf5", "transfer_target", "seeds_transferred.hdf5"),
        ("clips_source.hdf5", "transfer_source", "seeds_control.hdf5"),
    ):
        if ckpt == "transfer_source" and "generator control" not in args.rows:
            continue
        config = TransferConfig(steps=args.transfer_steps, batch_size=args.transfer_batch)
        stage(
            ckpt,
            lambda c=clips_file, k=ckpt, cfg=config: train_transfer(work / c, work / k, cfg) and None,
            {
                "clips": stage.key(Path(clips_file).stem),
                "steps": args.transfer_steps,
                "batch": args.transfer_batch,
            },
            [work / ckpt],
        )
        stage(
            Path(out).stem,
            lambda k=ckpt, o=out: transfer_dataset(work / "seeds_source.hdf5", work / k, work / o) and None,
            {"seeds": stage.key("seeds_source"), "model": stage.key(ckpt)},
            [work / out],
        )
        timings[ckpt] = stage.stats[ckpt]["seconds"]
    if "transferred seeds, sampled" in args.rows:

        def sampled() -> dict:
            from world_models.transfer import load_transfer_model, residual_std

            model = load_transfer_model(work / "transfer_target")[0]
            noise = residual_std(model, work / "clips_target.hdf5")
            transfer_dataset(
                work / "seeds_source.hdf5",
                work / "transfer_target",
                work / "seeds_transferred_sampled.hdf5",
                noise_std=noise,
            )
            return {"noise_std": [float(v) for v in noise]}

        stage(
            "seeds_transferred_sampled",
            sampled,
            {"seeds": stage.key("seeds_source"), "model": stage.key("transfer_target")},
            [work / "seeds_transferred_sampled.hdf5"],
        )
    if set(ATTEMPT_ROWS) & set(args.rows):
        timings |= generated(args, manifest, stage)
    return timings


def generated(args, manifest: Manifest, stage: Stages) -> dict:
    """Row d's data: ``retarget`` attempts in the world model from the source seeds, then every demo of
    that file (seeds and attempts) through the target generator on the world model's camera."""
    from world_models.checkpoint import checkpoint_hash
    from world_models.recipes import generate_in_world_model, recipe_spec
    from world_models.transfer import transfer_dataset

    work = args.work
    if args.world_model is None:
        raise SystemExit(f"row {GENERATED_ROW!r} needs --world-model")
    attempts = work / "generated_wm.hdf5"
    spec = recipe_spec("retarget", manifest, count=args.generated, scene_base_seed=GENERATED_BASE)
    made = stage(
        "generated_wm",
        lambda: generate_in_world_model(
            "retarget", work / "seeds_source.hdf5", args.world_model, attempts, spec
        ),
        {
            "seeds": stage.key("seeds_source"),
            "world_model": checkpoint_hash(args.world_model),
            "spec": dataclasses.asdict(spec),
        },
        [attempts],
    )
    out = work / ROWS[GENERATED_ROW][0]
    camera = manifest.world_model_camera
    stage(
        out.stem,
        lambda: transfer_dataset(attempts, work / "transfer_target", out, cameras=[camera]) and None,
        {"attempts": stage.key("generated_wm"), "model": stage.key("transfer_target"), "camera": camera},
        [out],
    )
    return {"retarget_wm": {k: made[k] for k in ("attempts", "accepted", "seconds")}}


def fidelity(work: Path) -> dict:
    """PSNR / SSIM against the held-out target frames: transferred from the target clip's own depth and
    segmentation, transferred from the simulator's, and the source render itself (no transfer)."""
    from worldgen.dataset import demo_names, open_dataset, read_obs

    from world_models.metrics import psnr, ssim
    from world_models.transfer import load_transfer_model, transfer_frames

    model, meta = load_transfer_model(work / "transfer_target")
    scores: dict[str, dict[str, list[float]]] = {}
    with open_dataset(work / "fidelity_target.hdf5") as ft, open_dataset(work / "fidelity_source.hdf5") as fs:
        for name in demo_names(ft):
            for camera in meta.cameras:
                keys = [f"{camera}_rgb", f"{camera}_depth", f"{camera}_seg"]
                target, source = read_obs(ft["data"][name], keys), read_obs(fs["data"][name], keys)
                candidates = {
                    "no transfer (source render)": source[keys[0]],
                    "transferred (target depth + seg)": transfer_frames(
                        model, target[keys[1]], target[keys[2]]
                    ),
                    "transferred (simulator depth + seg)": transfer_frames(
                        model, source[keys[1]], source[keys[2]]
                    ),
                }
                for label, frames in candidates.items():
                    cell = scores.setdefault(label, {"psnr": [], "ssim": []})
                    for a, b in zip(frames, target[keys[0]], strict=True):
                        cell["psnr"].append(psnr(a, b))
                        cell["ssim"].append(ssim(a, b))
    return {label: {k: float(np.mean(v)) for k, v in cell.items()} for label, cell in scores.items()}


def checks(work: Path) -> dict:
    """The physics and consistency checks on the original and the transferred seed demos: thresholds
    calibrated on the originals' second half (simulator clips, as ``worldgen check`` calibrates), verdicts
    on the first half of both files (the same scenes), per check and for all checks together."""
    from collections import defaultdict

    from worldgen.checks import run_checks
    from worldgen.checks.clip import clip_from_demo
    from worldgen.checks.gate import add_scores, calibration_from_scores
    from worldgen.dataset import dataset_manifest, demo_names, depth_ranges, open_dataset

    with open_dataset(work / "seeds_source.hdf5") as f:
        manifest, ranges = dataset_manifest(f), depth_ranges(f)
        camera = manifest.world_model_camera
        names = demo_names(f, "seed")
        judged, calibrating = names[: len(names) // 2], names[len(names) // 2 :]
        scores: dict[str, list[float]] = defaultdict(list)
        for name in calibrating:
            add_scores(scores, clip_from_demo(f["data"][name], manifest, camera, ranges.get(camera)))
        thresholds = calibration_from_scores("simulator", scores, len(calibrating), "", manifest).thresholds
    out = {"calibrated_on": len(calibrating), "judged": len(judged), "camera": camera}
    for label, path in (("original", "seeds_source.hdf5"), ("transferred", "seeds_transferred.hdf5")):
        passed: dict[str, int] = defaultdict(int)
        with open_dataset(work / path) as f:
            for name in judged:
                clip = clip_from_demo(f["data"][name], manifest, camera, ranges.get(camera))
                results = run_checks(clip, thresholds)
                for check, result in results.items():
                    passed[check] += result.verdict != "failed"
                passed["all"] += all(r.verdict != "failed" for r in results.values())
        out[label] = dict(passed)
    return out


def train_cell(task: tuple) -> None:
    """Train one replicate of one row, once (in a worker process)."""
    import torch

    from policies.train import train_bc

    torch.set_num_threads(1)  # the cells run side by side, one core each
    dataset, folder, steps, batch_size, rep, accepted_only, inputs = task
    folder = Path(folder)
    trained = folder / "trained.json"
    if trained.exists():
        if json.loads(trained.read_text()).get("inputs") == inputs:
            return
        shutil.rmtree(folder)  # trained from other inputs: not resumed, trained again
    started = time.perf_counter()
    demos = None
    if accepted_only:  # the train seeds and the accepted attempts generated from them
        from worldgen.dataset import demo_names, demo_record, open_dataset

        from world_models.recipes import accepted_demos

        with open_dataset(Path(dataset).parent / "seeds_source.hdf5") as f:
            train = set(demo_names(f, "train"))
        with open_dataset(dataset) as f:
            demos = [n for n in accepted_demos(dataset) if n in train or demo_record(f, n).parent in train]
    mask = None if accepted_only else "train"
    meta = train_bc(
        dataset, folder, "bc-image", mask=mask, demos=demos, steps=steps, batch_size=batch_size, seed=rep
    )
    done = {
        "demos": meta["demos"],
        "samples": meta["samples"],
        "seconds": time.perf_counter() - started,
        "inputs": inputs,
    }
    write_atomically(folder / "trained.json", (json.dumps(done) + "\n").encode())


def evaluate_cell(task: tuple) -> dict:
    """Evaluate one trained replicate of one row in one domain (in a worker process)."""
    import torch

    from policies.evaluate import evaluate_policy

    torch.set_num_threads(1)
    row, rep, domain, folder, episodes, manifest_path, envs, inputs = task
    trained = json.loads((Path(folder) / "trained.json").read_text())
    started = time.perf_counter()
    report = evaluate_policy(
        folder,
        load_manifest(manifest_path).in_domain(domain),
        episodes,
        gifs=False,
        panel_offset=rep * episodes,
        envs=envs,
    )
    return {
        "row": row,
        "replicate": rep,
        "domain": domain,
        "inputs": inputs,
        "demos": trained["demos"],
        "samples": trained["samples"],
        "successes": report["successes"],
        "episodes": report["episodes"],
        "panel": report["panel"],
        "train_seconds": round(trained["seconds"], 1),
        "eval_seconds": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="datasets, models and cells (resumed)")
    parser.add_argument("--scenario", default="push_to_target")
    parser.add_argument("--seeds", type=int, default=20, help="seed demos S")
    parser.add_argument("--clips", type=int, default=10, help="unlabelled target clips C")
    parser.add_argument("--fidelity-clips", type=int, default=4)
    parser.add_argument("--transfer-steps", type=int, default=1500)
    parser.add_argument("--transfer-batch", type=int, default=16)
    parser.add_argument("--policy-steps", type=int, default=1500)
    parser.add_argument("--policy-batch", type=int, default=64)
    parser.add_argument("--replicates", type=int, default=2)
    parser.add_argument("--episodes", type=int, default=50, help="held-out episodes per replicate")
    parser.add_argument("--envs", type=int, default=10, help="evaluation: scenes stepped together")
    parser.add_argument("--workers", type=int, default=2, help="cells trained and evaluated at once")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument(
        "--world-model", type=Path, help=f"row {GENERATED_ROW!r}: a checkpoint on source seeds"
    )
    parser.add_argument(
        "--generated", type=int, default=40, help="retarget attempts (new scenes) for that row"
    )
    parser.add_argument("--prepare-only", action="store_true")
    parser.add_argument("--tag", default="")
    args = parser.parse_args()

    manifest_path = ROOT / "scenarios" / f"{args.scenario}.yaml"
    manifest = load_manifest(manifest_path)
    started = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    stage = Stages(args.work, say)
    timings = prepare(args, manifest, stage)
    stage(
        "fidelity",
        lambda: {"scores": fidelity(args.work)},
        {
            "model": stage.key("transfer_target"),
            "clips": [stage.key("fidelity_target"), stage.key("fidelity_source")],
        },
    )
    stage(
        "checks",
        lambda: {"passed": checks(args.work)},
        {"seeds": stage.key("seeds_source"), "transferred": stage.key("seeds_transferred")},
    )
    if args.prepare_only:
        return
    cells = args.work / "cells"
    cells.mkdir(exist_ok=True)
    folder = {(row, rep): args.work / "policies" / f"{_slug(row)}_r{rep}" for row in args.rows
              for rep in range(args.replicates)}  # fmt: skip
    # What a policy and a cell are made from: reused only when it matches (the data's stage key, the
    # budget, the replicate, the panel, the manifest's evaluation section, the library's code).
    trains = {
        (row, rep): {
            "data": stage.key(Path(ROWS[row][0]).stem),
            "steps": args.policy_steps,
            "batch": args.policy_batch,
            "replicate": rep,
            "accepted_only": row in ATTEMPT_ROWS,
            "code": code_hash(),
        }
        for (row, rep) in folder
    }
    training = [
        (
            str(args.work / ROWS[row][0]),
            str(folder[row, rep]),
            args.policy_steps,
            args.policy_batch,
            rep,
            row in ATTEMPT_ROWS,
            trains[row, rep],
        )
        for (row, rep) in folder
    ]

    def made(row: str, rep: int, domain: str, inputs: dict) -> bool:
        path = cells / f"{_slug(row)}_r{rep}_{domain}.json"
        if not path.exists():
            return False
        changed = changed_fields(json.loads(path.read_text()).get("inputs"), inputs)
        if changed:
            say(f"{row} r{rep} in {domain}: recomputed, made before from other inputs ({', '.join(changed)})")
        return not changed

    panel = {"episodes": args.episodes, "envs": args.envs, "evaluation": manifest.section_hash("evaluation")}
    evaluations = [
        (row, rep, domain, str(folder[row, rep]), args.episodes, str(manifest_path), args.envs, inputs)
        for rep in range(args.replicates)
        for row in args.rows
        for domain in ROWS[row][1]
        for inputs in [{**trains[row, rep], **panel, "domain": domain}]
        if not made(row, rep, domain, inputs)
    ]
    say(f"{len(training)} policies to train, {len(evaluations)} (row, replicate, domain) cells to evaluate")
    with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
        for _ in pool.imap_unordered(train_cell, training):
            pass
        say("policies trained")
        for result in pool.imap_unordered(evaluate_cell, evaluations):
            name = f"{_slug(result['row'])}_r{result['replicate']}_{result['domain']}"
            write_atomically(cells / f"{name}.json", (json.dumps(result) + "\n").encode())
            say(f"{result['row']} r{result['replicate']} in {result['domain']}: "
                f"{result['successes']}/{result['episodes']}")  # fmt: skip
    write_results(args, timings, time.perf_counter() - started)


def write_results(args, timings: dict, seconds: float) -> None:
    stages = json.loads((args.work / "stages.json").read_text())
    rows = {}
    for row in args.rows:
        for domain in ROWS[row][1]:
            cells = [
                json.loads((args.work / "cells" / f"{_slug(row)}_r{r}_{domain}.json").read_text())
                for r in range(args.replicates)
            ]
            rows[f"{row} (in {domain})"] = {
                **pooled(cells),
                "demos": cells[0]["demos"],
                "samples": cells[0]["samples"],
                "train_seconds": round(sum(c["train_seconds"] for c in cells), 1),
                "eval_seconds": round(sum(c["eval_seconds"] for c in cells), 1),
            }
    rate = {key: value["success_rate"] for key, value in rows.items()}
    source, target = rate["source seeds (in source)"], rate["source seeds (in target)"]
    gap = source - target
    closed = {
        row: (rate[f"{row} (in target)"] - target) / gap if gap > 0 else None
        for row in ROWS
        if row != "source seeds"
        if f"{row} (in target)" in rate
    }
    result = {
        "scenario": args.scenario,
        "policy": "bc-image (front_rgb + proprioception)",
        "policy_steps": args.policy_steps,
        "policy_batch": args.policy_batch,
        "seed_demos": args.seeds,
        "unlabelled_target_clips": args.clips,
        "transfer_steps": args.transfer_steps,
        "replicates": args.replicates,
        "episodes_per_replicate": args.episodes,
        "gap": gap,
        "gap_closed": closed,
        "fidelity": stages["fidelity"]["scores"],
        "checks_passed": stages["checks"]["passed"],
        "rows": rows,
        "transfer_training_seconds": timings,
        "seconds_this_call": round(seconds, 1),
        "machine": machine_line(),
    }
    tag = f"_{args.tag}" if args.tag else ""
    write_figures(
        f"sim_to_real{tag}",
        result,
        table(result),
        f"{args.scenario}, bc-image: {next(iter(rows.values()))['episodes']} episodes per row, 95 % CI",
        baseline="source seeds (in target)",
        controls=[r for r in rows if "control" in r],
    )


def table(result: dict) -> str:
    lines = [
        f"{result['scenario']}, {result['policy']}, {result['policy_steps']} steps; {result['seed_demos']} "
        f"seed demos, {result['unlabelled_target_clips']} unlabelled target clips; "
        f"{result['replicates']} replicates x {result['episodes_per_replicate']} held-out episodes",
        "",
        f"gap (source seeds in source - in target): {result['gap']:+.2f}; closed: "
        + ", ".join(f"{k} {v:.2f}" if v is not None else f"{k} n/a" for k, v in result["gap_closed"].items()),
        "",
        "| row | demos | samples | successes | rate | 95 % CI | per replicate |",
        "| --- | ---: | ---: | --- | --- | --- | --- |",
    ]
    for row, r in result["rows"].items():
        lo, hi = r["ci95"]
        lines.append(
            f"| {row} | {r['demos']} | {r['samples']} | {r['successes']}/{r['episodes']} "
            f"| {r['success_rate']:.2f} | [{lo:.2f}, {hi:.2f}] "
            f"| {', '.join(r['per_replicate'])} |"
        )
    lines += ["", "| fidelity on held-out target clips | PSNR (dB) | SSIM |", "| --- | --- | --- |"]
    for label, f in result["fidelity"].items():
        lines.append(f"| {label} | {f['psnr']:.2f} | {f['ssim']:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
