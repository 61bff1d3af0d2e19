"""``worldgen`` command line: small entry points over library functions.

Exit codes: 0 success; 2 bad input, the :class:`worldgen.errors.WorldgenError` family (one line on
stderr, ``worldgen COMMAND: what: why``, or ``file:line: field: message`` per manifest problem; nothing
written); 1 anything else, a bug, with its traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from .. import __version__
from ..dataset import MASKS, dataset_manifest, open_dataset
from ..errors import ArgumentError, OutputError, WorldgenError, disk_fault
from ..export import FORMATS as EXPORT_FORMATS
from ..files import write_atomically
from ..keys import image_kind
from ..manifest import BC_ALGORITHMS, DOMAINS, POLICY_ALGORITHMS, ManifestError, load_manifest
from .run import PROFILES as RUN_PROFILES
from .run import STAGES as RUN_STAGES

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


class ProgressBar:
    """A tqdm bar that appears at the first progress report, so a run refused for its input prints its
    one error line and nothing else."""

    def __init__(self, **kwargs):
        object.__setattr__(self, "_kwargs", kwargs)
        object.__setattr__(self, "_bar", None)

    def _get(self):
        if self._bar is None:
            from tqdm import tqdm

            object.__setattr__(self, "_bar", tqdm(**self._kwargs))
        return self._bar

    def __getattr__(self, name: str):
        return getattr(self._get(), name)

    def __setattr__(self, name: str, value) -> None:
        setattr(self._get(), name, value)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _cmd_validate(args: argparse.Namespace) -> int:
    failed = False
    for path in args.paths:
        try:
            manifest = load_manifest(path)
        except ManifestError as exc:
            print(exc, file=sys.stderr)
            failed = True
            continue
        print(f"{path}: ok  name={manifest.name} hash={manifest.content_hash()[:12]}")
    return EXIT_BAD_INPUT if failed else EXIT_OK


def _cmd_compile(args: argparse.Namespace) -> int:
    from ..stage import compile_stage

    manifest = load_manifest(args.manifest)
    output = _output_path(args.output, Path(f"{manifest.name}_seed{args.seed}.usda"))
    if output.suffix != ".usda":
        raise ArgumentError(f"{output}: -o must name a .usda file")
    path, scene = compile_stage(manifest, args.seed, output)
    objects = ", ".join(f"{o.name}@({o.position[0]:.3f},{o.position[1]:.3f})" for o in scene.objects)
    print(f"wrote {path}  manifest={manifest.name} seed={args.seed} hash={manifest.content_hash()[:12]}")
    print(f"  objects: {objects}")
    print(f"  cameras: {', '.join(c.name for c in manifest.cameras)}")
    return EXIT_OK


def _cmd_preview(args: argparse.Namespace) -> int:
    from ..preview import preview_cameras, render_variants, variant_grid
    from ..report import save_png

    manifest = load_manifest(args.manifest)
    cameras = preview_cameras(manifest, args.camera)  # refused before the engine starts
    output = Path(args.output)
    if output.suffix.lower() != ".png":
        raise ArgumentError(f"{output}: -o must name a .png file")
    started = time.perf_counter()
    grid = variant_grid(render_variants(manifest, args.seeds, cameras), scale=args.scale)
    save_png(grid, output)
    print(
        f"wrote {output}  {len(args.seeds)} seed(s) x {len(cameras)} camera(s) ({', '.join(cameras)}), "
        f"{grid.width}x{grid.height} px, {time.perf_counter() - started:.1f} s"
    )
    return EXIT_OK


ISAAC_SIM_NEEDED = (
    "--backend isaac needs Isaac Sim (the isaacsim package is not importable here); run the same command "
    "with Isaac Sim's Python: <isaac-sim>/python.sh -m worldgen.apps.cli seed MANIFEST -o DATASET "
    "--backend isaac"
)


def _start_isaac_sim():
    """A headless SimulationApp. It must run before any Kit module (omni, isaacsim.core, Kit's pxr) is
    imported, so this comes before the pipeline's imports."""
    try:
        from isaacsim import SimulationApp
    except ImportError:
        raise ArgumentError(ISAAC_SIM_NEEDED) from None
    return SimulationApp({"headless": True})


def _cmd_seed(args: argparse.Namespace) -> int:
    manifest = load_manifest(args.manifest)  # parsed once, here; problems reported before any work
    manifest.in_domain(args.domain)  # a domain the manifest lacks is refused before Isaac Sim starts
    if args.no_actions and args.no_cameras:
        raise ArgumentError("--no-actions records camera images alone: drop --no-cameras")
    if args.backend == "isaac" and (args.envs > 1 or args.workers > 1 or args.ray_address):
        raise ArgumentError(
            "--backend isaac: one Isaac Sim app records one scene at a time (no --envs/--workers)"
        )
    simulation_app = _start_isaac_sim() if args.backend == "isaac" else None
    try:
        return _record_seeds(args, manifest)
    finally:
        if simulation_app is not None:
            simulation_app.close()


def _record_seeds(args: argparse.Namespace, manifest) -> int:
    from ..pipeline import run_seed_stage

    bar = ProgressBar(total=None, unit="demo", desc="seed", dynamic_ncols=True, disable=args.quiet)
    stats = {"frames": 0, "seconds": 0.0, "ok": 0, "done": 0}

    def progress(result, done, total):
        bar.total = total
        stats["done"] += 1
        if result.demo is not None:
            stats["frames"] += result.demo.num_samples + 1
            stats["ok"] += int(bool(result.demo.attrs["success"]))
        stats["seconds"] += result.seconds
        bar.set_postfix(
            frames_per_s=f"{stats['frames'] / max(stats['seconds'], 1e-9):.1f}",
            success=f"{stats['ok']}/{stats['done']}",
        )
        bar.update(1)

    started = time.perf_counter()
    try:
        writer = run_seed_stage(
            manifest,
            args.output,
            n=args.n,
            workers=args.workers,
            ray_address=args.ray_address,
            cameras=not args.no_cameras,
            progress=progress,
            envs=args.envs,
            backend=args.backend,
            domain=args.domain,
            labels=not args.no_actions,
        )
    finally:
        bar.close()
    successes = sum(r.success for r in writer.records())
    discarded = f"{len(writer.discarded)} discarded"
    summary = (
        f"{len(writer)} unlabelled clips ({discarded})"
        if args.no_actions
        else f"{len(writer)} demos ({successes} successful, {discarded})"
    )
    domain = f" in the {args.domain} domain" if args.domain != "source" else ""
    print(f"wrote {args.output}: {summary}{domain} in {time.perf_counter() - started:.1f} s")
    return EXIT_OK


def _cmd_export(args: argparse.Namespace) -> int:
    from ..export import export

    count = export(args.dataset, args.output, args.format, args.mask, args.videos)
    which = f"the {args.mask} demos" if args.mask else "every demo"
    print(f"wrote {args.output}: {count} demos ({which} of {args.dataset}), {args.format} layout")
    return EXIT_OK


def _cmd_inspect(args: argparse.Namespace) -> int:
    from ..dataset import DatasetReader
    from ..report import contact_sheet, demo_gif

    out = _output_path(args.output, Path(str(args.dataset) + ".inspect"), folder=True)
    reader = DatasetReader(args.dataset)
    with reader:
        summary = reader.summary()
        print(
            f"{summary['file']}: {summary['demos']} demos, {summary['samples']} samples, "
            f"success {summary['success_rate']:.0%}, sources {summary['sources']}, "
            f"manifest {summary['manifest_hash'][:12]}"
        )
        print(f"  masks: {summary['masks']}")
        print(
            f"  actions: {summary['action_dim']}-D; obs: "
            + ", ".join(f"{k} {tuple(v)}" for k, v in sorted(summary["obs"].items()))
        )
        if summary["discarded"]:
            print(f"  discarded: {summary['discarded']}")
        written = 0
        for name, group in reader.iter_demos(args.mask):
            if written >= args.max_demos:
                break
            if not any(image_kind(k) is not None for k in group["obs"]):
                continue
            out.mkdir(parents=True, exist_ok=True)
            contact_sheet(group).save(out / f"{name}.png")
            demo_gif(group, out / f"{name}.gif")
            written += 1
        if written:
            print(f"  wrote contact sheets and GIFs of {written} demos to {out}/")
    return EXIT_OK


def _cmd_check(args: argparse.Namespace) -> int:
    from .. import plots
    from ..checks.gate import gate_dataset

    if args.against_replay and not args.world_model:
        raise ArgumentError("--against-replay judges world-model demos: give --world-model CKPT")
    options = {"mask": args.mask, "calibrate_mask": args.calibrate_mask, "camera": args.camera}
    heatmap_out = _output_path(args.heatmap, Path(str(args.dataset) + ".violations.png"))
    replay_out = (
        _output_path(args.report, Path(str(args.dataset) + ".replay.json")) if args.against_replay else None
    )
    if args.world_model:
        from world_models.checking import gate_with_world_model

        source = args.calibrate_with or args.dataset
        print(f"calibrating on {source} (mask {args.wm_calibrate_mask}) through {args.world_model} ...")
        report = gate_with_world_model(
            args.dataset,
            args.world_model,
            held_out=source,
            held_out_mask=args.wm_calibrate_mask,
            samples=args.samples,
            device=args.device,
            backend=args.backend,
            **options,
        )
        print(f"  {report.calibrations['world_model'].about}")
    else:
        report = gate_dataset(args.dataset, backend=args.backend, **options)
    print(
        f"{args.dataset}: checked {report.checked} demos on camera {report.camera}: "
        f"{report.passed} passed, {report.checked - report.passed} flagged"
    )
    print(report.table())
    if report.heatmap is not None:
        out = heatmap_out
        plots.violation_heatmap(report.heatmap, out, f"{Path(args.dataset).name}: camera {report.camera}")
        print(f"violation heat map: {out}")
    if args.against_replay:
        from world_models.checking import judge_against_replay

        result = judge_against_replay(args.dataset, envs=args.envs, tolerance=args.tolerance)
        out = replay_out
        write_atomically(out, (json.dumps(result, indent=2) + "\n").encode())
        print(replay_summary(result))
        print(f"report: {out}")
    return EXIT_OK


def replay_summary(result: dict) -> str:
    """The gate against simulator replay, in a few lines."""

    def pct(x):
        return "n/a" if x is None else f"{100 * x:.0f} %"

    def area(x):
        return "n/a" if x is None else f"{x:.3f}"

    r = result
    lines = [
        f"replayed {r['demos']} world-model demos: {r['faithful']} faithful (within "
        f"{100 * r['tolerance_m']:.0f} cm), {r['unfaithful']} not; the gate passed {r['passed']}",
        f"  rejected {pct(r['rejected_of_unfaithful'])} of the unfaithful, passed "
        f"{pct(r['passed_of_faithful'])} of the faithful; precision of passed "
        f"{pct(r['precision_of_passed'])}; AUROC {area(r['auroc'])}",
        f"  {'check':<13} {'fails unfaithful':>16} {'fails faithful':>14} {'alone':>6} {'AUROC':>6}",
    ]
    for name, c in r["checks"].items():
        lines.append(
            f"  {name:<13} {c['failed_unfaithful']:>16} {c['failed_faithful']:>14} {c['decides_alone']:>6} "
            f"{area(c['auroc']):>6}"
        )
    return "\n".join(lines)


def _cmd_train_transfer(args: argparse.Namespace) -> int:
    from world_models.transfer import TransferConfig, train_transfer

    bar = ProgressBar(
        total=args.steps, unit="step", desc="train-transfer", dynamic_ncols=True, disable=args.quiet
    )

    def progress(step, loss):
        bar.n = step
        bar.set_postfix(l1=f"{loss:.4f}")
        bar.refresh()

    started = time.perf_counter()
    try:
        _, meta = train_transfer(
            args.clips,
            args.output,
            TransferConfig(steps=args.steps, batch_size=args.batch_size, seed=args.seed),
            progress,
        )
    finally:
        bar.close()
    print(
        f"transfer model {args.output}: {meta.clips} clips, cameras {', '.join(meta.cameras)}, "
        f"{meta.step} steps in {time.perf_counter() - started:.0f} s"
    )
    return EXIT_OK


def _cmd_transfer(args: argparse.Namespace) -> int:
    from world_models.transfer import transfer_dataset

    bar = ProgressBar(total=None, unit="demo", desc="transfer", dynamic_ncols=True, disable=args.quiet)

    def progress(name, done, total):
        bar.total = total
        bar.n = done
        bar.set_postfix(demo=name)
        bar.refresh()

    try:
        writer = transfer_dataset(args.dataset, args.checkpoint, args.output, progress, cameras=args.cameras)
    finally:
        bar.close()
    print(f"wrote {args.output}: {len(writer)} demos with target-domain RGB")
    return EXIT_OK


def _cmd_train_wm(args: argparse.Namespace) -> int:
    from world_models.train import train_world_model

    bar = ProgressBar(total=args.steps, unit="step", desc="train-wm", dynamic_ncols=True, disable=args.quiet)

    def progress(step, frame_loss, state_loss, rate):
        bar.n = step
        bar.set_postfix(loss=f"{frame_loss:.4f}", state=f"{state_loss:.4f}", samples_per_s=f"{rate:.1f}")
        bar.refresh()

    try:
        result = train_world_model(
            args.dataset,
            args.output,
            steps=args.steps,
            pretrained=args.from_pretrained,
            batch_size=args.batch_size,
            seed=args.seed,
            progress=progress,
            lora_rank=args.lora_rank,
            mixed_precision=args.mixed_precision,
            gradient_checkpointing=args.gradient_checkpointing,
            device=args.device,
            vae=args.vae,
            time_limit=args.time_limit * 60 if args.time_limit else None,
            checkpoint_every=args.checkpoint_every,
            log_dir=args.log_dir,
        )
    finally:
        bar.close()
    last = result["validation"][-1] if result["validation"] else {}
    print(f"checkpoint {args.output} at step {result['step']}; validation {last}")
    if result["stopped_early"]:
        print("time limit reached: the same command again resumes from this checkpoint")
    return EXIT_OK


# The command line's generation options and the spec fields they set; a recipe takes those its spec has.
GENERATION_OPTIONS = {
    "per_seed": "--per-seed",
    "start_steps": "--starts",
    "count": "--count",
    "scene_base_seed": "--scene-seed",
    "action_noise": "--action-noise",
    "perturb_steps": "--perturb-steps",
    "horizon": "--horizon",
    "success_margin": "--success-margin",
    "base_seed": "--seed",
}


def _cmd_generate(args: argparse.Namespace) -> int:
    from world_models.recipes import generate_in_simulator, generate_in_world_model, get_recipe, recipe_spec

    with open_dataset(args.dataset) as f:
        manifest = dataset_manifest(f)
    # Checked here, not by the parser: the registry imports the recipes (torch, the simulator), which
    # every other command's start-up would pay for.
    where = "--recipe" if args.recipe else f"{args.dataset}: generation.recipe"
    args.recipe = args.recipe or manifest.generation.recipe
    try:
        recipe = get_recipe(args.recipe)
    except KeyError as exc:  # not registered (a typo, or a manifest from an installation with more)
        raise ArgumentError(f"{where}: {exc.args[0]}") from None
    if args.in_simulator and not recipe.simulator_twin:
        raise ArgumentError(f"--in-simulator: recipe {args.recipe} has no simulator twin")
    if args.checkpoint is None and not args.in_simulator:
        raise ArgumentError("a world-model CKPT is needed (or --in-simulator for the recipe's ceiling)")
    given = {field: getattr(args, field) for field in GENERATION_OPTIONS}
    if given["start_steps"] is not None:
        given["start_steps"] = tuple(given["start_steps"])
    fields = {f.name for f in dataclasses.fields(recipe.spec_class)}
    foreign = [GENERATION_OPTIONS[k] for k, v in given.items() if v is not None and k not in fields]
    if foreign:
        raise ArgumentError(f"{', '.join(foreign)}: not an option of recipe {args.recipe}")
    spec = recipe_spec(args.recipe, manifest, **given)
    try:
        recipe.check(manifest, spec)
    except ValueError as exc:
        raise ArgumentError(f"{args.recipe}: {exc}") from None

    def progress(label: str, kept: int, attempts: int) -> None:
        if not args.quiet:
            print(f"  {label}: {kept}/{attempts} attempts kept", flush=True)

    if args.in_simulator:
        counts = generate_in_simulator(args.recipe, args.dataset, args.output, spec, progress=progress)
    else:
        counts = generate_in_world_model(
            args.recipe,
            args.dataset,
            args.checkpoint,
            args.output,
            spec,
            device=args.device,
            progress=progress,
        )
    where = "simulator" if args.in_simulator else "world model"
    print(
        f"wrote {args.output}: {counts['accepted']}/{counts['attempts']} {args.recipe} attempts in the "
        f"{where} kept (only those are for training: world_models.recipes.accepted_demos)"
    )
    return EXIT_OK


def _cmd_eval_wm(args: argparse.Namespace) -> int:
    from world_models.metrics import evaluate_branches, evaluate_open_loop

    out = _output_path(args.output, Path(str(args.dataset) + ".eval-wm.json"))
    gap = "action-sensitivity PSNR gap {:.2f} dB"
    if args.open_loop and args.checkpoint is None:
        raise ArgumentError("--open-loop needs CKPT")
    if args.open_loop:
        report = evaluate_open_loop(
            args.dataset, args.checkpoint, mask=args.mask, device=args.device, out=out
        )
    else:
        report = evaluate_branches(args.dataset, args.checkpoint, out)
    if args.open_loop:
        print(
            f"{report['windows']} windows of the {report['mask']} demos rolled out under their recorded "
            f"actions on camera {report['camera']}; " + gap.format(report["action_sensitivity_psnr_gap"])
        )
    else:
        print(
            f"{report['branches']} branches replayed in simulation on camera {report['camera']}; "
            + gap.format(report.get("action_sensitivity_psnr_gap", float("nan")))
        )
    steps = report["per_step"]
    print(f"{'ahead':>5} {'psnr':>7} {'copy-last':>9} {'ssim':>6} {'depth m':>8} {'iou':>6}")
    for j in sorted(steps["psnr"]):
        print(
            f"{j:>5} {steps['psnr'][j]:>7.2f} {steps['copy_last_psnr'][j]:>9.2f} {steps['ssim'][j]:>6.3f} "
            f"{steps['depth_abs_m'][j]:>8.4f} {steps.get('mask_iou', {}).get(j, float('nan')):>6.3f}"
        )
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return EXIT_OK


def _cmd_train_policy(args: argparse.Namespace) -> int:
    bar = ProgressBar(
        total=args.steps, unit="step", desc=f"train {args.algo}", dynamic_ncols=True, disable=args.quiet
    )

    def progress(step, total, value):
        bar.total = total
        bar.n = step
        bar.set_postfix(loss=f"{value:.4f}") if args.algo != "ppo" else bar.set_postfix(ret=f"{value:.2f}")
        bar.refresh()

    try:
        if args.algo == "ppo":
            from policies.ppo import PPOConfig
            from policies.ppo.training import train_ppo

            manifest = load_manifest(args.manifest) if args.manifest else _dataset_manifest(args.dataset)
            config = PPOConfig.from_manifest(
                manifest,
                obs_keys=args.obs_keys,
                steps=args.steps,
                seed=args.seed,
                batch_size=args.batch_size,
                image_keys=args.image_keys,  # refused by PPOConfig: low-dimensional only
            )
            meta = train_ppo(
                manifest,
                args.output,
                config,
                args.world_model,
                args.dataset,
                progress,
                envs=args.envs,
            )
            print(
                f"PPO ({meta['trained_in']}) {meta['episodes']} episodes: return {meta['first_returns']:.2f} "
                f"-> {meta['last_returns']:.2f}; policy in {args.output}"
            )
        else:
            from policies.train import train_bc

            overrides = {"steps": args.steps, "batch_size": args.batch_size, "seed": args.seed}
            if args.obs_keys:
                overrides["obs_keys"] = args.obs_keys
            if args.image_keys:
                overrides["image_keys"] = args.image_keys
            meta = train_bc(
                args.dataset, args.output, args.algo, mask=args.mask, progress=progress, **overrides
            )
            valid = f", valid loss {meta['valid_loss']:.4f}" if "valid_loss" in meta else ""
            print(
                f"{args.algo} on {meta['demos']} demos ({meta['samples']} samples, mask {args.mask}): "
                f"train loss {meta['train_loss']:.4f}{valid} in {meta['seconds']} s; policy in {args.output}"
            )
    finally:
        bar.close()
    return EXIT_OK


def _dataset_manifest(path: str | None):

    if path is None:
        raise ArgumentError("PPO needs --manifest (or a dataset to read the manifest from)")
    with open_dataset(path) as f:
        return dataset_manifest(f)


def _cmd_eval(args: argparse.Namespace) -> int:
    from policies.evaluate import evaluate_policy

    bar = ProgressBar(
        total=args.episodes, unit="episode", desc="eval", dynamic_ncols=True, disable=args.quiet
    )
    wins = 0

    def progress(episode, done, total):
        nonlocal wins
        wins += episode.success
        bar.total = total
        bar.n = done
        bar.set_postfix(success=f"{wins}/{done}")
        bar.refresh()

    default = "eval" if args.domain == "source" else f"eval_{args.domain}"
    out = _output_path(args.output, Path(args.policy) / default, folder=True)
    manifest = load_manifest(args.manifest)
    manifest = manifest.in_domain(args.domain)
    try:
        report = evaluate_policy(
            args.policy,
            manifest,
            args.episodes,
            out,
            gifs=not args.no_gifs,
            progress=progress,
            envs=args.envs,
        )
    finally:
        bar.close()
    low, high = report["ci95"]
    print(
        f"{report['successes']}/{report['episodes']} successes on {report['manifest']} "
        f"(seeds {report['panel']['base_seed']}..): success rate {report['success_rate']:.2f} "
        f"[95% CI {low:.2f}, {high:.2f}], mean return {report['mean_return']:.2f}"
    )
    print(f"wrote {out / 'eval.json'}" + "".join(f", {p}" for p in report.get("gifs", {}).values()))
    return EXIT_OK


def _cmd_compare(args: argparse.Namespace) -> int:
    from .compare import CompareConfig, compare, table
    from .experiment import TimeLimitReached

    config = CompareConfig(
        seeds=args.seeds,
        play=args.play,
        wm_steps=args.wm_steps,
        wm_minutes=args.wm_minutes,
        algo=args.algo,
        policy_steps=args.policy_steps,
        policy_batch=args.policy_batch,
        replicates=args.replicates,
        episodes=args.episodes,
        **({} if args.rows is None else {"rows": tuple(args.rows)}),
        workers=args.workers,
        envs=args.envs,
        ray_address=args.ray_address,
    )
    try:
        result = compare(
            load_manifest(args.manifest),
            args.output,
            config,
            progress=None if args.quiet else lambda text: print(f"compare: {text}", flush=True),
        )
    except TimeLimitReached as exc:
        print(f"compare: {exc}")
        return EXIT_OK
    print(table(result))
    print(f"wrote {Path(args.output) / 'compare.json'}, compare.md and compare.png")
    return EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    from .run import run_pipeline

    manifest = load_manifest(args.manifest)
    if args.wandb is not None and importlib.util.find_spec("wandb") is None:
        raise ArgumentError("--wandb: the wandb package is not installed (pip install wandb)")
    started = time.perf_counter()

    def say(text: str) -> None:
        if not args.quiet:
            print(f"{time.perf_counter() - started:6.0f} s  {text}", flush=True)

    record = run_pipeline(
        manifest,
        args.output,
        profile=args.profile,
        workers=args.workers,
        ray_address=args.ray_address,
        rerun=tuple(args.rerun or ()),
        until=args.until,
        say=say,
        wandb_project=args.wandb,
    )
    ran = [name for name, stage in record["stages"].items() if stage["ran"]]
    print(f"\nworldgen run {manifest.name} ({args.profile} profile) in {record['seconds']:.0f} s")
    print(
        f"stages run: {', '.join(ran) or 'none'}; cached: "
        + (", ".join(n for n in record["stages"] if n not in ran) or "none")
    )
    if "verdict" in record:
        print(f"verdict: {record['verdict']}")
    if "report" in record["stages"]:
        print(f"report: {Path(args.output) / record['stages']['report']['summary']['report']}")
    print(f"lineage: {Path(args.output) / 'run.json'}")
    return EXIT_OK


def _number_arg(name: str, convert: Callable[[str], float], ok: Callable[[float], bool], expected: str):
    """An argparse type: ``convert`` the text, then refuse it unless ``ok``."""

    def parse(text: str):
        value = convert(text)
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text}")
        return value

    parse.__name__ = name  # argparse names it in "invalid <name> value"
    return parse


_count_arg = _number_arg("count", int, lambda v: 1 <= v <= 1_000_000, "a whole number from 1 to 1000000")
_minutes_arg = _number_arg("minutes", float, lambda v: 0 < v <= 1e6, "minutes above 0")
_seed_arg = _number_arg("seed", int, lambda v: 0 <= v < 2**31, "a seed in [0, 2**31)")
_noise_arg = _number_arg(
    "noise", float, lambda v: 0.0 <= v <= 1.0, "a std in [0, 1] (actions are in [-1, 1])"
)
_margin_arg = _number_arg("margin", float, lambda v: 0.0 <= v <= 0.1, "metres in [0, 0.1]")


def _device_arg(text: str) -> str:
    import torch

    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"expected a torch device (cpu, cuda), got {text!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: no CUDA device on this machine")
    return text


def _int_list_arg(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, e.g. 0,20, got {text!r}"
        ) from None
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected one or more steps >= 0, got {text!r}")
    return values


def _seed_list_arg(text: str) -> list[int]:
    from ..preview import parse_seeds

    try:
        return parse_seeds(text)
    except ArgumentError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _names_arg(text: str) -> list[str]:
    names = [x.strip() for x in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"expected comma-separated names, e.g. a,b, got {text!r}")
    return names


def _checked_by(read: Callable[[str], object]):
    """An argparse type that runs a library reader on the path before any work starts; its user error
    (a WorldgenError naming the file) becomes argparse's one-line refusal."""

    def check(text: str) -> str:
        try:
            read(text)
        except WorldgenError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return text

    return check


def _read_checkpoint_meta(path: str):
    from world_models.checkpoint import read_checkpoint_meta  # torch and diffusers: only when asked

    return read_checkpoint_meta(path)


def _read_transfer_meta(path: str):
    from world_models.transfer import read_transfer_meta

    return read_transfer_meta(path)


_dataset_arg = _checked_by(lambda path: open_dataset(path).close())
_transfer_arg = _checked_by(_read_transfer_meta)
_world_model_arg = _checked_by(_read_checkpoint_meta)


def _output(text: str, folder: bool) -> str:
    """An output path that can be written, checked by writing: a probe file is created in the nearest
    existing folder on its way and removed, so a path the writer could not use (a read-only or virtual
    file system such as /proc, where permission bits say yes) is refused before any work, leaving nothing."""
    path = Path(text)
    if path.exists() and path.is_dir() != folder:
        kind = "a file" if folder else "a folder"
        raise argparse.ArgumentTypeError(f"{text}: is {kind}; expected {'a folder' if folder else 'a file'}")
    parent = path if path.is_dir() else next(p for p in path.absolute().parents if p.exists())
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: cannot be created ({parent} is a file, not a folder)")
    try:
        handle, probe = tempfile.mkstemp(prefix=".worldgen-probe-", dir=parent)
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"{text}: cannot be written ({parent}: {exc.strerror})") from None
    return text


def _output_path(given: str | None, default: Path, folder: bool = False) -> Path:
    """``given`` (checked when the arguments were parsed), else ``default``, checked the same way now,
    before any work."""
    if given:
        return Path(given)
    try:
        _output(str(default), folder)
    except argparse.ArgumentTypeError as exc:
        raise OutputError(f"{exc} (the default output: choose another with -o)") from None
    return default


def _output_file(text: str) -> str:
    return _output(text, folder=False)


def _output_folder(text: str) -> str:
    return _output(text, folder=True)


def _new_output(text: str) -> str:
    """A file or folder that does not exist yet (an export never writes over anything)."""
    if Path(text).exists():
        raise argparse.ArgumentTypeError(f"{text}: already exists; an export never overwrites")
    return _output(text, folder=False)


class _ArgumentsRefused(Exception):
    """argparse refused the command line; the message is ``worldgen COMMAND: argument X: problem``."""


class _Parser(argparse.ArgumentParser):
    """argparse whose error is one line (no usage block) that :func:`main` prints before returning 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise _ArgumentsRefused(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="worldgen",
        description="Scenario manifests to USD stages, seed trajectories, world-model branches, "
        "physics checks and policies.",
    )
    parser.add_argument("--version", action="version", version=f"worldgen {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("validate", help="check manifests; print one line per problem")
    p.add_argument("paths", nargs="+", metavar="PATH", help="scenario manifest YAML files")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("compile", help="compile a manifest and a seed into a USD stage (.usda)")
    p.add_argument("manifest", metavar="MANIFEST", help="scenario manifest YAML file")
    p.add_argument(
        "--seed", type=_seed_arg, default=0, help="which draw of the randomised values (default 0)"
    )
    p.add_argument(
        "-o", "--output", type=_output_file, metavar="STAGE", help="output .usda (default NAME_seedN.usda)"
    )
    p.set_defaults(func=_cmd_compile)

    p = sub.add_parser(
        "preview", help="first frames of several seeds, seed by camera, as one PNG: what the stressors do"
    )
    p.add_argument("manifest", metavar="MANIFEST", help="scenario manifest YAML file")
    p.add_argument("--seeds", type=_seed_list_arg, default=list(range(8)), help="e.g. 0-7 (default) or 0,3,9")
    p.add_argument(
        "--camera", type=_names_arg, help="camera name(s), comma-separated (default: every RGB one)"
    )
    p.add_argument("--scale", type=_count_arg, default=1, help="pixels per rendered pixel (default 1)")
    p.add_argument("-o", "--output", type=_output_file, required=True, metavar="PNG", help="grid image")
    p.set_defaults(func=_cmd_preview)

    p = sub.add_parser("seed", help="record scripted-expert seed trajectories into an HDF5 dataset")
    p.add_argument("manifest", metavar="MANIFEST", help="scenario manifest YAML file")
    p.add_argument(
        "-o",
        "--output",
        type=_output_file,
        required=True,
        metavar="DATASET",
        help="HDF5 file (resumed if it exists)",
    )
    p.add_argument("--n", type=_count_arg, help="number of seeds (default: the manifest's seeds.count)")
    p.add_argument("--workers", type=_count_arg, default=1, help="Ray worker processes (default 1: no Ray)")
    p.add_argument("--ray-address", help="connect to a Ray cluster instead of starting a local one")
    p.add_argument("--no-cameras", action="store_true", help="low-dimensional observations only")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--envs",
        type=_count_arg,
        default=1,
        help="scenes stepped together in one process (not bit-identical to one at a time)",
    )
    p.add_argument(
        "--backend",
        choices=["newton", "isaac"],
        default="newton",
        help="newton (default, headless anywhere) or isaac (PhysX + Replicator; with Isaac Sim's python.sh)",
    )
    p.add_argument(
        "--domain",
        choices=DOMAINS,
        default="source",
        help="target: render in the manifest's target_domain (its colours, lighting and camera model)",
    )
    p.add_argument(
        "--no-actions",
        action="store_true",
        help="unlabelled clips: camera images only (no actions, states or success), as real footage",
    )
    p.set_defaults(func=_cmd_seed)

    p = sub.add_parser("inspect", help="summarise a dataset; write a contact sheet PNG and a GIF per demo")
    p.add_argument("dataset", type=_dataset_arg, metavar="DATASET", help="HDF5 dataset")
    p.add_argument(
        "-o", "--output", type=_output_folder, metavar="DIR", help="picture folder (default DATASET.inspect)"
    )
    p.add_argument("--mask", choices=MASKS, help="only demos in this mask")
    p.add_argument("--max-demos", type=_count_arg, default=8, help="pictures for at most this many demos")
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser("export", help="hand a dataset (or one mask of it) to another stack as it reads it")
    p.add_argument("dataset", type=_dataset_arg, metavar="DATASET", help="HDF5 dataset")
    p.add_argument(
        "--format",
        required=True,
        choices=EXPORT_FORMATS,
        help="robomimic: one self-contained file; isaaclab: the same with Isaac Lab Mimic's nested states "
        "and datagen_info; lerobot: a LeRobot v3.0 dataset folder",
    )
    p.add_argument(
        "-o", "--output", type=_new_output, required=True, metavar="OUT", help="a new file (lerobot: folder)"
    )
    p.add_argument("--mask", choices=MASKS, help="only the demos of this mask, e.g. passed (default: all)")
    p.add_argument("--videos", action="store_true", help="lerobot: camera images as mp4 videos, not PNG")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser(
        "check", help="physics-consistency checks: score, gate and write verdicts into a dataset"
    )
    p.add_argument(
        "dataset", type=_dataset_arg, metavar="DATASET", help="HDF5 dataset (updated in place, atomically)"
    )
    p.add_argument("--mask", choices=MASKS, help="check only this mask, e.g. synthetic (default: every demo)")
    p.add_argument(
        "--calibrate-mask",
        choices=MASKS,
        default="seed",
        help="simulator clips that set thresholds (default seed)",
    )
    p.add_argument("--camera", help="camera to check (default: the manifest's world-model camera)")
    p.add_argument("--backend", choices=["warp", "numpy"], default="warp", help="kernels or numpy references")
    p.add_argument(
        "--heatmap", type=_output_file, metavar="PNG", help="where to write the violation heat map"
    )
    p.add_argument(
        "--world-model",
        type=_world_model_arg,
        metavar="CKPT",
        help="judge world-model demos with thresholds calibrated through this model, and their agreement",
    )
    p.add_argument(
        "--calibrate-with",
        type=_dataset_arg,
        metavar="DATASET",
        help="--world-model: held-out seed clips to calibrate on (default: DATASET)",
    )
    p.add_argument(
        "--wm-calibrate-mask",
        choices=MASKS,
        default="valid",
        help="--world-model: the mask of those clips, held out from the model's training (default valid)",
    )
    p.add_argument(
        "--samples",
        type=_count_arg,
        default=3,
        help="--world-model: samples per attempt for the agreement check (default 3; 1: take none)",
    )
    p.add_argument(
        "--against-replay",
        action="store_true",
        help="replay every world-model demo in the simulator and measure the gate against it",
    )
    p.add_argument("--envs", type=_count_arg, default=1, help="--against-replay: scenes stepped together")
    p.add_argument(
        "--tolerance",
        type=_number_arg("tolerance", float, lambda v: 0 < v <= 1, "metres in (0, 1]"),
        default=0.02,
        help="--against-replay: largest replay error of a faithful demo, m (default 0.02)",
    )
    p.add_argument("--report", type=_output_file, metavar="JSON", help="--against-replay: where to write it")
    p.add_argument("--device", type=_device_arg, default="cpu", help="--world-model: torch device")
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser(
        "train-transfer", help="train the appearance-transfer model on unlabelled target-domain clips"
    )
    p.add_argument(
        "clips", type=_dataset_arg, metavar="CLIPS", help="worldgen seed --domain target --no-actions"
    )
    p.add_argument("-o", "--output", type=_output_folder, required=True, metavar="CKPT")
    p.add_argument("--steps", type=_count_arg, default=1500, help="gradient steps (default 1500)")
    p.add_argument("--batch-size", type=_count_arg, default=16)
    p.add_argument(
        "--seed", type=_seed_arg, default=0, help="seed of the initialisation and batch order (default 0)"
    )
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=_cmd_train_transfer)

    p = sub.add_parser(
        "transfer", help="a copy of a dataset with its RGB repainted in the target domain (all else kept)"
    )
    p.add_argument("dataset", type=_dataset_arg, metavar="DATASET")
    p.add_argument("checkpoint", type=_transfer_arg, metavar="CKPT", help="worldgen train-transfer")
    p.add_argument(
        "-o", "--output", type=_output_file, required=True, metavar="OUT", help="resumed if present"
    )
    p.add_argument(
        "--cameras", type=_names_arg, help="comma-separated cameras to repaint (default: all CKPT paints)"
    )
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=_cmd_transfer)

    p = sub.add_parser("train-wm", help="post-train the action-conditioned world model on a dataset")
    p.add_argument(
        "dataset", type=_dataset_arg, metavar="DATASET", help="HDF5 dataset with train and valid masks"
    )
    p.add_argument(
        "-o",
        "--output",
        type=_output_folder,
        required=True,
        metavar="CKPT",
        help="checkpoint folder (resumed if present)",
    )
    p.add_argument(
        "--from",
        dest="from_pretrained",
        metavar="LOCAL_PRETRAINED",
        help="local folder: a model, a diffusers pipeline (its transformer/ and vae/) or a checkpoint",
    )
    p.add_argument(
        "--vae", metavar="LOCAL_WAN_VAE", help="train in the latent space of this local AutoencoderKLWan"
    )
    p.add_argument("--steps", type=_count_arg, help="training steps (default: the manifest's)")
    p.add_argument("--batch-size", type=_count_arg, help="default: the manifest's (the global batch)")
    p.add_argument(
        "--seed", type=_seed_arg, default=0, help="seed of the initialisation, batches and noise (default 0)"
    )
    p.add_argument("--checkpoint-every", type=_count_arg, help="steps between checkpoints (default 500)")
    p.add_argument("--log-dir", metavar="DIR", help="TensorBoard event files of the run")
    p.add_argument(
        "--time-limit",
        type=_minutes_arg,
        metavar="MINUTES",
        help="stop with a checkpoint after this much training; the next run resumes from it",
    )
    p.add_argument(
        "--lora-rank", type=_count_arg, help="train LoRA adapters of this rank (peft) on a frozen U-Net"
    )
    p.add_argument("--mixed-precision", choices=["no", "bf16"], default="no", help="bf16 autocast")
    p.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations in backward")
    p.add_argument("--device", type=_device_arg, default="cpu", help="torch device to train on (cpu, cuda)")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=_cmd_train_wm)

    p = sub.add_parser(
        "generate", help="synthetic demos by a generation recipe: in the world model, or its simulator twin"
    )
    p.add_argument(
        "dataset",
        type=_dataset_arg,
        metavar="DATASET",
        help="seed dataset (its successful seed demos are parents)",
    )
    p.add_argument(
        "checkpoint",
        type=_world_model_arg,
        nargs="?",
        metavar="CKPT",
        help="world model (not with --in-simulator)",
    )
    p.add_argument(
        "-o",
        "--output",
        type=_output_file,
        required=True,
        metavar="SYNTH",
        help="seed demos + attempts (resumed)",
    )
    p.add_argument(
        "--recipe",
        metavar="NAME",
        help="a registered recipe or variant (world_models.recipes; an unknown name is refused with the "
        "list); default: the manifest's generation.recipe",
    )
    p.add_argument("--per-seed", type=_count_arg, help="attempts per seed demo and start step")
    p.add_argument("--starts", dest="start_steps", type=_int_list_arg, help="comma-separated start steps")
    p.add_argument("--count", type=_count_arg, help="new scenes, one attempt each")
    p.add_argument(
        "--scene-seed",
        dest="scene_base_seed",
        type=_seed_arg,
        help="seed of the first new scene, outside the seed and evaluation ranges",
    )
    p.add_argument("--action-noise", type=_noise_arg, help="std of the noise on the executed actions")
    p.add_argument("--perturb-steps", type=_count_arg, help="noise on the first N steps only")
    p.add_argument("--horizon", type=_count_arg, help="steps per branch")
    p.add_argument(
        "--success-margin",
        type=_margin_arg,
        help="m to spare before a world-model attempt counts as a success",
    )
    p.add_argument("--in-simulator", action="store_true", help="the same attempts in the simulator (ceiling)")
    p.add_argument(
        "--seed",
        dest="base_seed",
        type=_seed_arg,
        help="base seed of the attempts' noise (default: seeds.base_seed)",
    )
    p.add_argument("--device", type=_device_arg, default="cpu", help="torch device to sample on (cpu, cuda)")
    p.add_argument("-q", "--quiet", action="store_true")
    p.epilog = (
        "Options a recipe does not take are refused; each defaults to the manifest's generation.<recipe>."
    )
    p.set_defaults(func=_cmd_generate)

    p = sub.add_parser("eval-wm", help="replay world-model branches in simulation and score them")
    p.add_argument(
        "dataset",
        type=_dataset_arg,
        metavar="SYNTH",
        help="dataset with synthetic branches (worldgen branch)",
    )
    p.add_argument(
        "checkpoint", type=_world_model_arg, nargs="?", metavar="CKPT", help="adds the action-sensitivity gap"
    )
    p.add_argument(
        "-o", "--output", type=_output_file, metavar="JSON", help="default SYNTH.eval-wm.json (+ .png plot)"
    )
    p.add_argument(
        "--open-loop",
        action="store_true",
        help="no simulator: SYNTH is a seed dataset; roll CKPT out under its demos' recorded actions "
        "and score against their recorded frames",
    )
    p.add_argument(
        "--mask", choices=MASKS, default="valid", help="demos scored by --open-loop (default: valid)"
    )
    p.add_argument("--device", type=_device_arg, default="cpu", help="torch device for --open-loop")
    p.set_defaults(func=_cmd_eval_wm)

    p = sub.add_parser("train-policy", help="train a BC, diffusion or PPO policy")
    p.add_argument(
        "dataset",
        type=_dataset_arg,
        nargs="?",
        metavar="DATASET",
        help="HDF5 dataset (BC; PPO in the world model)",
    )
    p.add_argument("--algo", required=True, choices=POLICY_ALGORITHMS)
    p.add_argument(
        "-o", "--output", type=_output_folder, required=True, metavar="POLICY", help="policy folder"
    )
    p.add_argument("--mask", choices=MASKS, default="train", help="BC: the dataset mask to train on")
    p.add_argument("--steps", type=_count_arg, help="gradient steps (BC) or environment steps (PPO)")
    p.add_argument("--batch-size", type=_count_arg)
    p.add_argument(
        "--obs-keys", type=_names_arg, help="comma-separated low-dimensional keys (default: the manifest's)"
    )
    p.add_argument("--image-keys", type=_names_arg, help="comma-separated camera keys, e.g. front_rgb")
    p.add_argument("--manifest", metavar="MANIFEST", help="PPO: the scenario to train in")
    p.add_argument(
        "--envs", type=_count_arg, default=1, help="PPO in the simulator: scenes stepped together (default 1)"
    )
    p.add_argument(
        "--world-model", type=_world_model_arg, metavar="CKPT", help="PPO: train inside this world model"
    )
    p.add_argument(
        "--seed", type=_seed_arg, default=0, help="seed of the initialisation and batch order (default 0)"
    )
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=_cmd_train_policy)

    p = sub.add_parser("eval", help="closed-loop evaluation of a policy on held-out seeds in simulation")
    p.add_argument("policy", metavar="POLICY", help="policy folder (worldgen train-policy)")
    p.add_argument("manifest", metavar="MANIFEST", help="scenario manifest")
    p.add_argument("--episodes", type=_count_arg, help="default: the manifest's evaluation.episodes")
    p.add_argument(
        "-o", "--output", type=_output_folder, metavar="DIR", help="default POLICY/eval (eval_target)"
    )
    p.add_argument("--envs", type=_count_arg, default=1, help="scenes stepped together (default 1)")
    p.add_argument(
        "--domain", choices=DOMAINS, default="source", help="target: in the manifest's target_domain"
    )
    p.add_argument("--no-gifs", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser(
        "run", help="the whole loop into one run folder: cached by stage, resumable, with a report"
    )
    p.add_argument("manifest", metavar="MANIFEST")
    p.add_argument("-o", "--output", type=_output_folder, required=True, metavar="RUN_DIR")
    p.add_argument(
        "--profile",
        choices=list(RUN_PROFILES),
        default="quick",
        help="quick: minutes on 2 CPU cores (make demo); full: the manifest's own budgets",
    )
    p.add_argument("--workers", type=_count_arg, default=1, help="Ray workers for seed recording")
    p.add_argument("--ray-address", metavar="ADDR", help="an existing Ray cluster (ray start --head)")
    p.add_argument("--rerun", type=_names_arg, metavar="STAGES", help="redo these stages (and what follows)")
    p.add_argument("--until", choices=RUN_STAGES, metavar="STAGE", help="stop after this stage")
    p.add_argument(
        "--wandb",
        metavar="PROJECT",
        help="mirror training curves to Weights & Biases (needs wandb installed)",
    )
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("compare", help="seed-only vs seed + synthetic policies on one evaluation panel")
    p.add_argument("manifest", metavar="MANIFEST")
    p.add_argument("-o", "--output", type=_output_folder, required=True, metavar="DIR")
    p.add_argument("--seeds", type=_count_arg, default=10, help="seed demos S")
    p.add_argument(
        "--play", type=int, choices=[0, 1, 2], default=2, help="play rollouts per seed for the world model"
    )
    p.add_argument("--wm-steps", type=_count_arg, help="world-model training steps (default: the manifest's)")
    p.add_argument(
        "--wm-minutes", type=float, help="stop the world model's training there; the same command goes on"
    )
    p.add_argument("--algo", default="bc-mlp", choices=BC_ALGORITHMS)
    p.add_argument(
        "--policy-steps", type=_count_arg, help="gradient steps in every row (default: the manifest's)"
    )
    p.add_argument("--policy-batch", type=_count_arg, help="batch in every row (default: the recipe's)")
    p.add_argument("--replicates", type=_count_arg, default=2, help="training seeds per row, pooled")
    p.add_argument("--episodes", type=_count_arg, default=50, help="held-out episodes per replicate")
    p.add_argument(
        "--rows",
        nargs="+",
        metavar="ROW",
        help="the rows (default: all): seeds, +NAME (WM) and +NAME (sim) for every registered recipe, "
        "sim oracle",
    )
    p.add_argument(
        "--workers", type=_count_arg, default=2, help="cells side by side (and Ray actors with --ray-address)"
    )
    p.add_argument("--envs", type=_count_arg, default=10, help="evaluation: held-out scenes stepped together")
    p.add_argument(
        "--ray-address", metavar="ADDR", help="generation, replay and evaluation on this Ray cluster"
    )
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=_cmd_compare)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _ArgumentsRefused as exc:
        print(exc, file=sys.stderr)
        return EXIT_BAD_INPUT
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except ManifestError as exc:
        print(exc, file=sys.stderr)
        return EXIT_BAD_INPUT
    except WorldgenError as exc:  # bad input; anything else is a bug and keeps its traceback (exit 1)
        print(f"worldgen {args.command}: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        try:
            sys.stdout.flush()
        except BrokenPipeError:  # our own reader went away (``| head``): stop quietly
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - replaces the closed stream until exit
            return EXIT_OK
        raise  # another pipe (a worker's): a failure
    except Exception as exc:
        fault = disk_fault(exc)
        if fault is None:
            raise
        print(
            f"worldgen {args.command}: {fault} (everything written before is kept: free space or make the "
            "output writable, then run the same command again to go on)",
            file=sys.stderr,
        )
        sys.stdout.flush()
        sys.stderr.flush()
        # HDF5 keeps a file it could not flush open and crashes in its own shutdown (h5py 3, measured on a
        # full tmpfs: exit 139), so leave without running the exit handlers.
        os._exit(EXIT_BAD_INPUT)


if __name__ == "__main__":
    sys.exit(main())
