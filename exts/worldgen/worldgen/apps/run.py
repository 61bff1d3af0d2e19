"""``worldgen run``: the main job end to end, one folder a stage, cached by what each stage reads.

A run folder holds ``manifest.yaml`` (the manifest the run used: the given one with the profile's
budgets laid over it), ``run.json`` (lineage: input hashes, parameters, code version, timings, machine,
each stage's summary and the verdict) and one folder a stage:

    scene/        the USD stage of the first seed
    seeds/        scripted-expert demos with cameras (seeds.hdf5), contact sheets
    world_model/  its training data (seeds + play rollouts), checkpoint, open-loop fidelity vs copy-last
    synthetic/    the attempts of the manifest's ``generation.recipe`` generated in the world model
    checks/       the attempts checked (thresholds calibrated through the world model) and replayed in
                  the simulator (a diagnostic: the precision of the model's predicted success)
    policies/     one policy a row: seeds alone, seeds + the attempts the world model judged successful
    eval/         each row closed-loop on the held-out panel, success with its 95 % interval
    report/       index.html, self-contained

Each stage's key is a hash of the manifest fields and profile parameters it reads, of the library's
sources (:func:`worldgen.apps.cache.code_hash`) and of the keys of the stages it reads from, so a changed
field reruns exactly the stages that depend on it and other code reruns them all. A stage folder with
``stage.json`` marked done under the current key is skipped; one marked running under it resumes (every
stage appends or checkpoints as it goes); one under another key is cleared and run again
(``--rerun STAGE`` redoes one regardless).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

from ..dataset import DatasetReader, dataset_manifest, demo_names, open_dataset, restamp_dataset
from ..errors import ArgumentError, CheckpointDamaged, OutputError
from ..files import write_atomically
from ..keys import RGB, image_key
from ..manifest import Manifest, manifest_text, parse_manifest
from ..training_log import TrainingLog
from .cache import changed_fields, code_hash, code_version, content_key

STAGES = ("scene", "seeds", "world_model", "synthetic", "checks", "policies", "eval", "report")


def policy_rows(manifest: Manifest) -> tuple[str, str]:
    """The policy rows: the seed demos alone, and with the attempts the run's recipe kept
    (``seeds+recover`` for the default recipe)."""
    return ("seeds", f"seeds+{manifest.generation.recipe}")


@dataclass(frozen=True)
class Profile:
    """Budgets laid over the manifest (``overlay``, nested like it) and the run's own parameters."""

    name: str
    overlay: dict[str, Any] = field(default_factory=dict)
    play_noise: tuple[float, ...] = (0.3,)  # play rollouts per seed demo for the world model's training
    checkpoint_every: int = 500
    check_samples: int = 3  # samples per attempt for the agreement check
    envs: int = 8  # scenes stepped together for replay and low-dimensional evaluation
    # Policies trained per row (training seeds 0..n-1), each evaluated on its own panel of
    # evaluation.episodes; the verdict judges the rows by their replicate-level intervals.
    policy_replicates: int = 3


PROFILES = {
    # The manifest's own settings.
    "full": Profile("full"),
    # make demo: the whole loop in minutes on 2 CPU cores. The world model works at 32 x 32 with half the
    # U-Net's channels, where it learns enough in 1500 steps to beat copy-last-frame (run_quick.json: the
    # latest run); it trains 2.05x the samples/s of the full width (bench/results/wm_training_speed.json).
    "quick": Profile(
        "quick",
        overlay={
            "seeds": {"count": 10},
            "world_model": {
                "resolution": [32, 32],
                "channels": [32, 64, 64],
                "train_steps": 1500,
                "batch_size": 16,
            },
            "generation": {"recover": {"per_seed": 4, "at_steps": [0]}},
            "policy": {"train_steps": 1500},
            # 3 policy seeds x 50 episodes: 150 held-out episodes a row.
            "evaluation": {"episodes": 50},
        },
        checkpoint_every=250,
        check_samples=2,
        envs=25,  # a 50-episode panel in two batches of scenes stepped together
    ),
    # Tests: every stage runs for real on the smallest budgets that still exercise it.
    "tiny": Profile(
        "tiny",
        overlay={
            "seeds": {"count": 3},
            "world_model": {"resolution": [16, 16], "train_steps": 4, "batch_size": 4},
            "generation": {"recover": {"per_seed": 1, "at_steps": [0]}},
            "policy": {"train_steps": 20},
            "evaluation": {"episodes": 4},
        },
        checkpoint_every=2,
        check_samples=2,
        envs=4,
        policy_replicates=2,
    ),
}


def _merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overlay.items():
        out[key] = _merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return out


def run_manifest(manifest: Manifest, profile: Profile) -> Manifest:
    """The manifest a run uses: ``manifest`` with the profile's overlay; validated like any manifest."""
    if not profile.overlay:
        return manifest
    merged = _merge(manifest.model_dump(mode="json"), profile.overlay)
    text = yaml.safe_dump(merged, sort_keys=False)
    return parse_manifest(text, file=f"{manifest.name} + profile {profile.name}", base_dir=manifest.base_dir)


def machine() -> dict[str, Any]:
    import torch

    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def _write_json(path: Path, data: Any) -> None:
    write_atomically(path, (json.dumps(data, indent=2, sort_keys=False, default=str) + "\n").encode())


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------------------------------
# The stages


@dataclass
class Run:
    """What every stage reads: the run's manifest and profile, its folder, where to say what it does."""

    manifest: Manifest
    profile: Profile
    folder: Path
    say: Callable[[str], None]
    workers: int = 1
    ray_address: str | None = None
    wandb_project: str | None = None  # training curves mirrored to Weights & Biases too
    summaries: dict[str, dict[str, Any]] = field(default_factory=dict)

    def path(self, stage: str, name: str = "") -> Path:
        return self.folder / stage / name if name else self.folder / stage

    @property
    def seeds(self) -> Path:
        return self.path("seeds", "seeds.hdf5")

    @property
    def checkpoint(self) -> Path:
        return self.path("world_model", "checkpoint")

    @property
    def checked(self) -> Path:
        return self.path("checks", "checked.hdf5")


def _eta(done: int, total: int, started: float) -> str:
    elapsed = time.perf_counter() - started
    if done <= 0:
        return f"{elapsed:.0f} s"
    left = elapsed / done * (total - done)
    return f"{elapsed:.0f} s, about {left:.0f} s left"


VARIANT_SEEDS = 4  # seeds in the scene stage's variant grid (the report shows it)


def scene_stage(run: Run) -> dict[str, Any]:
    from pxr import Usd, UsdGeom, UsdPhysics

    from ..preview import render_variants, variant_grid
    from ..report import save_png
    from ..stage import compile_stage

    seed = run.manifest.seeds.base_seed
    path, _ = compile_stage(run.manifest, seed, run.path("scene", f"{run.manifest.name}_seed{seed}.usda"))
    stage = Usd.Stage.Open(str(path))
    prims = list(stage.Traverse())
    run.say(f"variants: the first frame of seeds {seed}-{seed + VARIANT_SEEDS - 1} from every camera")
    grid = variant_grid(render_variants(run.manifest, range(seed, seed + VARIANT_SEEDS)), scale=2)
    variants = save_png(grid, run.path("scene", "variants.png"))
    return {
        "usd": str(path.relative_to(run.folder)),
        "variants": str(variants.relative_to(run.folder)),
        "rigid_bodies": sum(p.HasAPI(UsdPhysics.RigidBodyAPI) for p in prims),
        "joints": sum(p.IsA(UsdPhysics.Joint) for p in prims),
        "cameras": sum(p.IsA(UsdGeom.Camera) for p in prims),
    }


def seeds_stage(run: Run) -> dict[str, Any]:
    from ..pipeline import run_seed_stage
    from ..report import contact_sheet, save_png

    started = time.perf_counter()

    def progress(result, done: int, total: int) -> None:
        ok = "success" if result.demo is not None and result.demo.attrs.get("success") else "failure"
        run.say(f"seed {result.seed}: {ok} ({done}/{total}; {_eta(done, total, started)})")

    run_seed_stage(
        run.manifest,
        run.seeds,
        workers=run.workers,
        ray_address=run.ray_address,
        progress=progress,
    )
    with DatasetReader(run.seeds) as reader:
        summary = reader.summary()
        for name, group in list(reader.iter_demos())[:3]:
            save_png(contact_sheet(group), run.path("seeds", f"{name}.png"))
    return {
        "dataset": str(run.seeds.relative_to(run.folder)),
        "demos": summary["demos"],
        "samples": summary["samples"],
        "success_rate": summary["success_rate"],
    }


def world_model_stage(run: Run) -> dict[str, Any]:
    from world_models.metrics import evaluate_open_loop
    from world_models.train import train_world_model

    from ..pipeline import run_play_stage

    train_data = run.path("world_model", "train.hdf5")
    run.say(f"play rollouts (the seeds' actions with noise {list(run.profile.play_noise)}) for training")
    run_play_stage(run.manifest, run.seeds, train_data, list(run.profile.play_noise))
    spec = run.manifest.world_model
    started = time.perf_counter()

    def progress(step: int, frame_loss: float, state_loss: float, rate: float) -> None:
        if step % max(spec.train_steps // 20, 1) and step != spec.train_steps:
            return  # about twenty lines a run
        run.say(
            f"step {step}/{spec.train_steps}: frame loss {frame_loss:.4f}, state loss {state_loss:.4f}, "
            f"{rate:.0f} samples/s ({_eta(step, spec.train_steps, started)})"
        )

    def train() -> dict[str, Any]:
        return train_world_model(
            train_data,
            run.checkpoint,
            checkpoint_every=run.profile.checkpoint_every,
            progress=progress,
            log_dir=str(run.path("world_model", "logs")),
            wandb_project=run.wandb_project,
        )

    try:
        result = train()
    except CheckpointDamaged as exc:  # the run's own checkpoint, damaged by a crash: start it over
        run.say(f"the interrupted run's checkpoint does not read back ({exc}): training starts over")
        shutil.rmtree(run.checkpoint)
        result = train()
    run.say("open-loop fidelity on the held-out seed demo against copy-last-frame")
    strip = run.path("world_model", "rollout.png")
    fidelity = evaluate_open_loop(
        run.seeds, run.checkpoint, mask="valid", out=run.path("world_model", "fidelity.json"), strip=strip
    )
    with TrainingLog(run.path("world_model", "logs")) as log:
        caption = "valid/rollout (top: recorded, bottom: world model, one column a step)"
        log.image(result["step"], caption, np.asarray(Image.open(strip).convert("RGB")))
    per_step = fidelity["per_step"]
    last = max(per_step["psnr"], key=int)
    return {
        "checkpoint": str(run.checkpoint.relative_to(run.folder)),
        "steps": result["step"],
        "resolution": list(spec.resolution),
        "psnr_last": per_step["psnr"][last],
        "copy_last_psnr_last": per_step["copy_last_psnr"][last],
        "psnr_gain_last": per_step["psnr"][last] - per_step["copy_last_psnr"][last],
        "steps_ahead": int(last),
        "action_sensitivity_psnr_gap": fidelity["action_sensitivity_psnr_gap"],
        "fidelity": "world_model/fidelity.json",
        "rollout": "world_model/rollout.png",
    }


def synthetic_spec(manifest: Manifest):
    """The spec of the recipe the run generates with (``generation.recipe``) under the run's manifest."""
    from world_models.recipes import recipe_spec

    return recipe_spec(manifest.generation.recipe, manifest)


def synthetic_stage(run: Run) -> dict[str, Any]:
    from world_models.recipes import generate_in_world_model

    def progress(label: str, kept: int, attempts: int) -> None:
        run.say(f"{label}: {kept} of {attempts} attempts kept in the world model")

    recipe = run.manifest.generation.recipe
    counts = generate_in_world_model(
        recipe,
        run.seeds,
        run.checkpoint,
        run.path("synthetic", "synthetic.hdf5"),
        synthetic_spec(run.manifest),
        progress=progress,
        workers=run.workers,
        ray_address=run.ray_address,
    )
    return {"dataset": "synthetic/synthetic.hdf5", "recipe": recipe, **counts}


def checks_stage(run: Run) -> dict[str, Any]:
    from world_models.checking import gate_with_world_model, judge_against_replay

    from .. import plots

    # The checks write their verdicts into the dataset: into a copy (under the run's manifest, whose
    # checks section they read), so the synthetic stage stays as it was made.
    restamp_dataset(run.path("synthetic", "synthetic.hdf5"), run.checked, run.manifest)
    samples = run.profile.check_samples
    run.say(f"checking every attempt (thresholds calibrated through the world model, {samples} samples)")
    shards = {"workers": run.workers, "ray_address": run.ray_address}
    started = time.perf_counter()

    def progress(done: int, total: int) -> None:
        run.say(f"agreement samples: {done}/{total} attempts ({_eta(done, total, started)})")

    report = gate_with_world_model(run.checked, run.checkpoint, samples=samples, progress=progress, **shards)
    heatmap = None
    if report.heatmap is not None:
        with open_dataset(run.seeds) as f:
            background = f["data"][demo_names(f)[0]]["obs"][image_key(report.camera, RGB)][0]
        heatmap = plots.violation_heatmap(
            report.heatmap,
            run.path("checks", "violations.png"),
            f"where the checks failed ({report.camera} camera)",
            background=background,
        )
    run.say("replaying every attempt in the simulator (a diagnostic, never used for acceptance)")
    replay = judge_against_replay(run.checked, envs=run.profile.envs, **shards)
    acceptance = replay["acceptance"]
    return {
        "dataset": str(run.checked.relative_to(run.folder)),
        "checked": report.checked,
        "passed": report.passed,
        "counts": report.counts,
        "thresholds": {name: c.thresholds for name, c in report.calibrations.items()},
        "heatmap": None if heatmap is None else str(heatmap.relative_to(run.folder)),
        "predicted_success": acceptance["predicted_success"],
        "replay_success": acceptance["replay_success"],
        "precision_predicted": acceptance["precision_predicted"],
        "precision_accepted": acceptance["precision_accepted"],
        "auroc": replay.get("auroc"),
    }


def _row_demos(run: Run) -> dict[str, list[str]]:
    from world_models.recipes import accepted_demos

    with open_dataset(run.checked) as f:
        seeds, generated = demo_names(f, "train"), set(demo_names(f, "synthetic"))
    accepted = [n for n in accepted_demos(run.checked) if n in generated]
    return dict(zip(policy_rows(run.manifest), (seeds, seeds + accepted), strict=True))


def _cell_name(row: str, replicate: int) -> str:
    """A (row, replicate) policy's folder name: ``seeds_recover_r2``."""
    return f"{row.replace('+', '_')}_r{replicate}"


def policies_stage(run: Run) -> dict[str, Any]:
    from policies.train import train_bc

    algo, replicates = run.manifest.policy.algorithm, run.profile.policy_replicates
    rows: dict[str, list[dict[str, Any]]] = {}
    for row, demos in _row_demos(run).items():
        rows[row] = []
        for replicate in range(replicates):
            name = _cell_name(row, replicate)
            done = _read_json(run.path("policies", f"{name}.json"))
            if done is not None:  # trained before the run was interrupted
                rows[row].append(done)
                continue
            run.say(f"{row}: training {algo} (seed {replicate} of {replicates}) on {len(demos)} demos")

            def progress(step: int, steps: int, loss: float, row: str = row) -> None:
                if step % 500 == 0 or step == steps:
                    run.say(f"{row}: step {step}/{steps}, loss {loss:.4f}")

            meta = train_bc(
                run.checked,
                run.path("policies", name),
                algo,
                mask=None,
                demos=demos,
                progress=progress,
                manifest=run.manifest,
                log_dir=run.path("policies", f"logs/{name}"),
                wandb_project=run.wandb_project,
                seed=replicate,
            )
            summary = {
                "folder": f"policies/{name}",
                "replicate": replicate,
                "demos": meta["demos"],
                "samples": meta["samples"],
                "seconds": meta["seconds"],
            }
            _write_json(run.path("policies", f"{name}.json"), summary)
            rows[row].append(summary)
    return {"algo": algo, "replicates": replicates, "rows": rows}


def eval_stage(run: Run) -> dict[str, Any]:
    from policies.evaluate import evaluate_policy

    from .experiment import pooled

    rows = {}
    episodes = run.manifest.evaluation.episodes
    for row, trained in run.summaries["policies"]["rows"].items():
        cells = []
        for policy in trained:
            replicate = policy["replicate"]
            out = run.path("eval", _cell_name(row, replicate))
            report = _read_json(out / "eval.json")
            if report is None:
                started = time.perf_counter()

                def progress(
                    episode, done: int, total: int, row: str = row, started: float = started
                ) -> None:
                    if done % max(total // 2, 1) == 0 or done == total:
                        run.say(f"{row}: {done}/{total} episodes ({_eta(done, total, started)})")

                # An image policy needs cameras, which scenes stepped together do not render.
                envs = 1 if run.manifest.policy.algorithm == "bc-image" else run.profile.envs
                # Replicate r on its own panel (held_out_base_seed + r * episodes + i), the same in every row.
                report = evaluate_policy(
                    run.folder / policy["folder"],
                    run.manifest,
                    episodes,
                    out=out,
                    progress=progress,
                    panel_offset=replicate * episodes,
                    envs=envs,
                    workers=run.workers,
                    ray_address=run.ray_address,
                    gifs=replicate == 0,
                )
            cells.append(report)
        rows[row] = {"demos": trained[0]["demos"], "samples": trained[0]["samples"], **pooled(cells)}
    return {"rows": rows, "verdict": verdict(*rows.values())}


def verdict(base: dict[str, Any], synth: dict[str, Any]) -> str:
    """The run's answer in one sentence: does seed + synthetic data beat seed data alone, and by how much
    (``base``: the seeds row, ``synth``: seeds + synthetic).
    Judged by the replicate-level 95 % intervals (:func:`policies.evaluate.replicate_interval`): "yes"
    only when they are disjoint with seeds + synthetic above."""
    gain = 100 * (synth["success_rate"] - base["success_rate"])
    (b_lo, b_hi), (s_lo, s_hi) = base["replicate_ci95"], synth["replicate_ci95"]
    if s_lo > b_hi:
        answer = "yes"
    elif s_hi < b_lo:
        answer = "no: worse"
    else:
        answer = "not shown (the replicate-level 95 % intervals overlap)"
    replicates = len(synth.get("per_replicate", [])) or 1
    return (
        f"seeds + world-model demos {synth['successes']}/{synth['episodes']} "
        f"[{s_lo:.2f}, {s_hi:.2f}] vs seeds alone {base['successes']}/{base['episodes']} "
        f"[{b_lo:.2f}, {b_hi:.2f}] ({replicates} policy seeds, {gain:+.0f} points): {answer}"
    )


def report_stage(run: Run) -> dict[str, Any]:
    from .run_report import write_report

    path = write_report(run.folder, run.manifest)
    return {"report": str(path.relative_to(run.folder))}


STAGE_FUNCTIONS: dict[str, Callable[[Run], dict[str, Any]]] = {
    "scene": scene_stage,
    "seeds": seeds_stage,
    "world_model": world_model_stage,
    "synthetic": synthetic_stage,
    "checks": checks_stage,
    "policies": policies_stage,
    "eval": eval_stage,
    "report": report_stage,
}


# The stages each stage reads the outputs of; its key includes theirs.
UPSTREAM: dict[str, tuple[str, ...]] = {
    "scene": (),
    "seeds": (),
    "world_model": ("seeds",),
    "synthetic": ("world_model",),
    "checks": ("synthetic",),
    "policies": ("checks",),
    "eval": ("policies",),
    "report": ("scene", "eval"),
}


def stage_inputs(run: Run) -> dict[str, dict[str, Any]]:
    """What each stage reads besides the stages before it: the manifest fields (a section where the stage
    reads all of it; the recipe's spec where it reads part of one), profile parameters and the library's
    code (:func:`~worldgen.apps.cache.code_hash`)."""
    m, p = run.manifest, run.profile
    inputs = {
        "scene": {"scene": m.scene_hash(), "seed": m.seeds.base_seed},
        "seeds": {"scene": m.scene_hash(), "seeds": [m.seeds.base_seed, m.seeds.count]},
        "world_model": {
            "world_model": m.section_hash("world_model"),
            "play_noise": list(p.play_noise),
            "checkpoint_every": p.checkpoint_every,
        },
        # The recipe's spec (the fields it reads), not the whole section: other recipes' fields do not count.
        "synthetic": {"recipe": m.generation.recipe, "spec": dataclasses.asdict(synthetic_spec(m))},
        "checks": {"checks": m.section_hash("checks"), "samples": p.check_samples, "envs": p.envs},
        "policies": {"policy": m.section_hash("policy"), "replicates": p.policy_replicates},
        "eval": {"evaluation": m.section_hash("evaluation"), "envs": p.envs},
        "report": {},
    }
    code = code_hash()
    return {name: {**fields, "code": code} for name, fields in inputs.items()}


# --------------------------------------------------------------------------------------------------
# Running


def _stage_keys(inputs: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Each stage's key: a hash of its own inputs and of the keys of the stages it reads."""
    keys: dict[str, str] = {}
    for name in STAGES:
        keys[name] = content_key(
            {"stage": name, "inputs": inputs[name], "upstream": [keys[u] for u in UPSTREAM[name]]}
        )
    return keys


def _downstream(stages: tuple[str, ...]) -> tuple[str, ...]:
    """The stages and every stage that reads their outputs, directly or not."""
    chosen = set(stages)
    for name in STAGES:
        if chosen & set(UPSTREAM[name]):
            chosen.add(name)
    return tuple(n for n in STAGES if n in chosen)


def _changed(before: dict[str, Any] | None, now: dict[str, Any]) -> str:
    if before is None:
        return "no earlier output"
    fields = changed_fields(before, now)
    return "changed: " + ", ".join(fields) if fields else "a stage it reads changed"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """One ``worldgen run`` a folder at a time: ``folder/.lock`` holds the running process's host and pid.
    A second run refuses in one line while that process lives; a lock left by a killed run is taken over.
    (A lock from another host cannot be checked: the message names the file to remove.)"""
    lock, me = folder / ".lock", f"{socket.gethostname()}:{os.getpid()}"
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                holder = lock.read_text().strip()
                age = time.time() - lock.stat().st_mtime
            except OSError:
                continue  # removed meanwhile: try again
            host, _, pid = holder.rpartition(":")
            if not holder and age < 10:  # being written by a run starting this moment
                raise OutputError(f"{folder}: another worldgen run is starting in this folder") from None
            if holder and host != socket.gethostname():
                raise OutputError(
                    f"{folder}: another worldgen run on {host} (process {pid}) is using this folder; "
                    f"remove {lock} if it is not running"
                ) from None
            if holder and pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
                raise OutputError(
                    f"{folder}: another worldgen run (process {pid}) is using this folder"
                ) from None
            lock.unlink(missing_ok=True)  # left by a run that was killed
            continue
        with os.fdopen(fd, "w") as handle:
            handle.write(me)
        break
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def run_pipeline(
    manifest: Manifest,
    folder: str | Path,
    profile: str | Profile = "quick",
    workers: int = 1,
    ray_address: str | None = None,
    rerun: tuple[str, ...] = (),
    until: str | None = None,
    say: Callable[[str], None] | None = None,
    wandb_project: str | None = None,
) -> dict[str, Any]:
    """Run (or resume) every stage into ``folder``; returns what ``run.json`` holds."""
    profile = PROFILES[profile] if isinstance(profile, str) else profile
    unknown = [s for s in (*rerun, *([until] if until else [])) if s not in STAGES]
    if unknown:
        raise ArgumentError(f"unknown stage {unknown[0]!r}: expected one of {', '.join(STAGES)}")
    rerun = _downstream(rerun)
    folder = Path(folder)
    manifest = run_manifest(manifest, profile)
    folder.mkdir(parents=True, exist_ok=True)
    with folder_lock(folder):
        _remove_temporaries(folder)
        return _run_stages(manifest, folder, profile, workers, ray_address, rerun, until, say, wandb_project)


def _remove_temporaries(folder: Path) -> None:
    """The temporary files a killed run left half-written (:func:`worldgen.files.temporary_beside` names
    them ``.NAME.*.tmp``); under the folder's lock nothing else is writing them."""
    for path in folder.rglob(".*.tmp"):
        if path.is_file():
            path.unlink(missing_ok=True)


def _run_stages(
    manifest: Manifest,
    folder: Path,
    profile: Profile,
    workers: int,
    ray_address: str | None,
    rerun: tuple[str, ...],
    until: str | None,
    say: Callable[[str], None] | None,
    wandb_project: str | None,
) -> dict[str, Any]:
    write_atomically(folder / "manifest.yaml", manifest_text(manifest).encode())
    started = time.perf_counter()
    version = code_version()
    record: dict[str, Any] = {
        "manifest": {
            "name": manifest.name,
            "hash": manifest.content_hash(),
            "scene_hash": manifest.scene_hash(),
            "file": "manifest.yaml",
        },
        "profile": dataclasses.asdict(profile),
        "code_version": version,
        "machine": machine(),
        "stages": {},
    }
    current_stage = [""]

    def stage_say(text: str) -> None:
        if say is not None:
            say(f"[{current_stage[0]}] {text}")

    run = Run(manifest, profile, folder, stage_say, workers, ray_address, wandb_project)
    inputs = stage_inputs(run)
    keys = _stage_keys(inputs)
    last = STAGES.index(until) if until else len(STAGES) - 1
    for index, name in enumerate(STAGES[: last + 1], start=1):
        current_stage[0] = f"{index}/{last + 1} {name}"
        stage_folder = folder / name
        marker = _read_json(stage_folder / "stage.json")
        t0 = time.perf_counter()
        if (
            marker
            and marker.get("key") == keys[name]
            and marker.get("status") == "done"
            and name not in rerun
        ):
            stage_say("unchanged inputs: skipped")
            ran, seconds, made_in, summary = False, 0.0, marker.get("seconds"), marker["summary"]
        else:
            if marker and (marker.get("key") != keys[name] or name in rerun):
                why = "asked to rerun" if name in rerun else _changed(marker.get("inputs"), inputs[name])
                stage_say(f"{why}: clearing its earlier outputs")
                shutil.rmtree(stage_folder)
            elif marker:
                stage_say("resuming an interrupted run")
            stage_folder.mkdir(parents=True, exist_ok=True)
            _write_json(
                stage_folder / "stage.json",
                {"key": keys[name], "status": "running", "inputs": inputs[name], "code_version": version},
            )
            summary = STAGE_FUNCTIONS[name](run)
            ran, seconds = True, time.perf_counter() - t0
            made_in = round(seconds, 1)
            _write_json(
                stage_folder / "stage.json",
                {
                    "key": keys[name],
                    "status": "done",
                    "inputs": inputs[name],
                    "code_version": version,
                    "seconds": made_in,
                    "summary": summary,
                },
            )
            stage_say(f"done in {seconds:.0f} s")
        run.summaries[name] = summary
        if name == "seeds":
            _restamp_seeds(run)
        record["stages"][name] = {
            "key": keys[name],
            "ran": ran,
            "seconds": round(seconds, 1),
            "made_in_seconds": made_in,
            "inputs": inputs[name],
            "summary": summary,
        }
        record["seconds"] = round(time.perf_counter() - started, 1)
        _write_json(folder / "run.json", record)
    if "eval" in run.summaries:
        record["verdict"] = run.summaries["eval"]["verdict"]
        _write_json(folder / "run.json", record)
    return record


def _restamp_seeds(run: Run) -> None:
    """The recorded seed demos under the run's manifest when only later sections changed since."""
    with open_dataset(run.seeds) as f:
        recorded = dataset_manifest(f).content_hash()
    if recorded != run.manifest.content_hash():
        run.say("the manifest changed after the seed sections: the recorded demos now carry it")
        restamp_dataset(run.seeds, run.seeds, run.manifest)
