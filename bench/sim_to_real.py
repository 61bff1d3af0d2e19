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
import json
import multiprocessing
import time
from pathlib import Path

import numpy as np
from stages import pooled, say, write_figures  # bench/stages.py, beside this script
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
    """The manifest with its seed range starting at ``base`` (clips of scenes nobody trains or tests on)."""
    return manifest.model_copy(update={"seeds": manifest.seeds.model_copy(update={"base_seed": base})})


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


def record(manifest: Manifest, path: Path, n: int, domain: str, labels: bool = True) -> None:
    from worldgen.pipeline import run_seed_stage

    if path.with_suffix(".done").exists():
        return
    started = time.perf_counter()
    run_seed_stage(manifest, path, n=n, domain=domain, labels=labels)
    write_atomically(path.with_suffix(".done"), f"{time.perf_counter() - started:.1f}\n".encode())
    say(f"recorded {path.name}: {n} {'demos' if labels else 'clips'} in the {domain} domain")


def prepare(args, manifest: Manifest) -> dict:
    """Datasets and transfer models, each made once (a stage that finished leaves a .done file)."""
    from world_models.transfer import TransferConfig, train_transfer, transfer_dataset

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    record(manifest, work / "seeds_source.hdf5", args.seeds, "source")
    record(manifest, work / "seeds_target.hdf5", args.seeds, "target")
    if "randomized seeds" in args.rows:
        record(randomized(manifest), work / "seeds_randomized.hdf5", args.seeds, "source")
    record(with_base_seed(manifest, CLIP_BASE), work / "clips_target.hdf5", args.clips, "target", False)
    record(with_base_seed(manifest, CLIP_BASE), work / "clips_source.hdf5", args.clips, "source", False)
    held_out = with_base_seed(manifest, FIDELITY_BASE)
    record(held_out, work / "fidelity_target.hdf5", args.fidelity_clips, "target", False)
    record(held_out, work / "fidelity_source.hdf5", args.fidelity_clips, "source", False)
    timings = {}
    for clips, ckpt, out in (
        ("clips_target.hdf5", "transfer_target", "seeds_transferred.hdf5"),
        ("clips_source.hdf5", "transfer_source", "seeds_control.hdf5"),
    ):
        if ckpt == "transfer_source" and "generator control" not in args.rows:
            continue
        if not (work / f"{ckpt}.done").exists():
            started = time.perf_counter()
            config = TransferConfig(steps=args.transfer_steps, batch_size=args.transfer_batch)
            train_transfer(work / clips, work / ckpt, config)
            write_atomically(work / f"{ckpt}.done", f"{time.perf_counter() - started:.1f}\n".encode())
            say(f"trained {ckpt} on {clips} in {time.perf_counter() - started:.0f} s")
        if not (work / out).with_suffix(".done").exists():
            started = time.perf_counter()
            transfer_dataset(work / "seeds_source.hdf5", work / ckpt, work / out)
            write_atomically(
                (work / out).with_suffix(".done"), f"{time.perf_counter() - started:.1f}\n".encode()
            )
            say(f"wrote {out}")
        timings[ckpt] = float((work / f"{ckpt}.done").read_text())
    sampled = work / "seeds_transferred_sampled.hdf5"
    if "transferred seeds, sampled" in args.rows and not sampled.with_suffix(".done").exists():
        from world_models.transfer import load_transfer_model, residual_std

        noise = residual_std(load_transfer_model(work / "transfer_target")[0], work / "clips_target.hdf5")
        transfer_dataset(work / "seeds_source.hdf5", work / "transfer_target", sampled, noise_std=noise)
        write_atomically(
            sampled.with_suffix(".done"), (json.dumps([float(v) for v in noise]) + "\n").encode()
        )
        say(f"wrote {sampled.name}: frames sampled around the painted mean, std {noise.round(2)} levels")
    if set(ATTEMPT_ROWS) & set(args.rows):
        timings |= generated(args, manifest)
    return timings


def generated(args, manifest: Manifest) -> dict:
    """Row d's data: ``retarget`` attempts in the world model from the source seeds, then every demo of
    that file (seeds and attempts) through the target generator on the world model's camera."""
    from world_models.recipes import generate_in_world_model, recipe_spec
    from world_models.transfer import transfer_dataset

    work, timings = args.work, {}
    if args.world_model is None:
        raise SystemExit(f"row {GENERATED_ROW!r} needs --world-model")
    attempts = work / "generated_wm.hdf5"
    if not attempts.with_suffix(".done").exists():
        started = time.perf_counter()
        spec = recipe_spec("retarget", manifest, count=args.generated, scene_base_seed=GENERATED_BASE)
        counts = generate_in_world_model(
            "retarget", work / "seeds_source.hdf5", args.world_model, attempts, spec
        )
        counts["seconds"] = round(time.perf_counter() - started, 1)
        write_atomically(attempts.with_suffix(".done"), (json.dumps(counts) + "\n").encode())
        say(f"wrote {attempts.name}: {counts}")
    timings["retarget_wm"] = json.loads(attempts.with_suffix(".done").read_text())
    out = work / ROWS[GENERATED_ROW][0]
    if not out.with_suffix(".done").exists():
        started = time.perf_counter()
        transfer_dataset(attempts, work / "transfer_target", out, cameras=[manifest.world_model_camera])
        write_atomically(out.with_suffix(".done"), f"{time.perf_counter() - started:.1f}\n".encode())
        say(f"wrote {out.name}")
    return timings


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
    dataset, folder, steps, batch_size, rep, accepted_only = task
    folder = Path(folder)
    if (folder / "trained.json").exists():
        return
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
    done = {"demos": meta["demos"], "samples": meta["samples"], "seconds": time.perf_counter() - started}
    write_atomically(folder / "trained.json", (json.dumps(done) + "\n").encode())


def evaluate_cell(task: tuple) -> dict:
    """Evaluate one trained replicate of one row in one domain (in a worker process)."""
    import torch

    from policies.evaluate import evaluate_policy

    torch.set_num_threads(1)
    row, rep, domain, folder, episodes, manifest_path, envs = task
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
    timings = prepare(args, manifest)
    fidelity_path = args.work / "fidelity.json"
    if not fidelity_path.exists():
        write_atomically(fidelity_path, (json.dumps(fidelity(args.work), indent=2) + "\n").encode())
    say(f"fidelity: {fidelity_path.read_text()}")
    checks_path = args.work / "checks.json"
    if not checks_path.exists():
        write_atomically(checks_path, (json.dumps(checks(args.work), indent=2) + "\n").encode())
    say(f"checks: {checks_path.read_text()}")
    if args.prepare_only:
        return
    cells = args.work / "cells"
    cells.mkdir(exist_ok=True)
    folder = {(row, rep): args.work / "policies" / f"{_slug(row)}_r{rep}" for row in args.rows
              for rep in range(args.replicates)}  # fmt: skip
    training = [
        (
            str(args.work / ROWS[row][0]),
            str(folder[row, rep]),
            args.policy_steps,
            args.policy_batch,
            rep,
            row in ATTEMPT_ROWS,
        )
        for (row, rep) in folder
    ]
    evaluations = [
        (row, rep, domain, str(folder[row, rep]), args.episodes, str(manifest_path), args.envs)
        for rep in range(args.replicates)
        for row in args.rows
        for domain in ROWS[row][1]
        if not (cells / f"{_slug(row)}_r{rep}_{domain}.json").exists()
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
        "fidelity": json.loads((args.work / "fidelity.json").read_text()),
        "checks_passed": json.loads((args.work / "checks.json").read_text()),
        "rows": rows,
        "transfer_training_seconds": timings,
        "seconds_this_call": round(seconds, 1),
        "machine": f"{multiprocessing.cpu_count()} CPU cores, no GPU",
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
