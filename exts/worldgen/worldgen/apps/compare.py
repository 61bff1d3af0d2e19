"""``compare``: does seed + synthetic data make a better policy than seed data alone, and by how much?

One policy recipe (``algo``, the same gradient steps and batch in every row) is trained on each row's
dataset with ``replicates`` training seeds; replicate r is evaluated closed loop on its own ``episodes``
held-out seeds (``evaluation.held_out_base_seed + r * episodes + i``), and the replicates are pooled
(Wilson 95 % intervals on the pooled episodes):

    seeds                  the S seed demos (simulator, scripted expert)
    +NAME (WM)             + the attempts of recipe (or variant) NAME in the world model, those it keeps
                           (``world_models.recipes``: every registered recipe has its rows; a negative
                           control keeps every attempt)
    +NAME (sim)            + the same attempts (same starts, plans and noise) executed in the simulator:
                           the recipe's ceiling, where it has a simulator twin
    sim oracle             + as many new-scene expert demos as the new-scene recipes kept in the world model

The world model trains on the seed demos plus ``play`` non-expert play rollouts per seed (the seed's
actions replayed with noise; a column of the table). Gain recovered = (recipe WM - seeds) /
(recipe sim - seeds), given where the ceiling's interval lies above the seeds. Every world-model attempt of
a judged recipe is replayed in the simulator (a diagnostic, never a filter): the precision and recall of
predicted success. Seeds duplicated to the same sample count is not a row: at matched gradient steps
behaviour cloning samples uniformly, so duplicated demos train on exactly the seeds' distribution (the
negative control adds samples without information).

Layout of ``out/``: ``seeds.hdf5``, ``wm_train.hdf5``, ``wm/``, one ``NAME_wm.hdf5`` / ``NAME_sim.hdf5``
per generated row (``*_cameras.hdf5``: simulator rows recorded with cameras for an image policy),
``stages.json``, ``cells[_ALGO]/<row>_r<k>.json`` (one per row and replicate, written as it finishes),
``policies[_ALGO]/<row>_r<k>/``, and ``compare.json``, ``compare.md`` and ``compare.png``. Every stage and
cell resumes from what ``out`` holds.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..dataset import demo_names, demo_record, open_dataset
from ..errors import ArgumentError
from ..files import write_atomically
from ..manifest import BC_ALGORITHMS, Manifest, as_manifest
from .cache import Stages, changed_fields, code_hash
from .experiment import pooled, prepare_world_model

SEEDS, ORACLE = "seeds", "sim oracle"


@dataclass(frozen=True)
class GeneratedRow:
    """A row whose data a recipe (or one of its variants) made: in the world model, or its simulator twin."""

    row: str
    recipe: str  # the recipe's or the variant's name
    in_simulator: bool

    @property
    def dataset(self) -> str:
        """Its dataset in out/ (without .hdf5), which is also its stage's name."""
        return f"{self.recipe.replace('-', '_')}_{'sim' if self.in_simulator else 'wm'}"

    def file(self, cameras: bool) -> str:
        """Simulator rows for an image policy keep their images, in a dataset of their own."""
        return f"{self.dataset}_cameras" if cameras and self.in_simulator else self.dataset


def generated_rows() -> dict[str, GeneratedRow]:
    """Every registered recipe's rows (``world_models.recipes``): ``+NAME (WM)``, and ``+NAME (sim)`` where
    it has a simulator twin, for its own name and each variant's."""
    from world_models.recipes import recipes

    rows = {}
    for recipe in recipes():
        for name in recipe.rows():
            rows[f"+{name} (WM)"] = GeneratedRow(f"+{name} (WM)", name, False)
            if recipe.simulator_twin:
                rows[f"+{name} (sim)"] = GeneratedRow(f"+{name} (sim)", name, True)
    return rows


def experiment_rows() -> tuple[str, ...]:
    """The rows the experiment can run, in table order: the seeds, every recipe's, the oracle."""
    return (SEEDS, *generated_rows(), ORACLE)


def control_rows() -> tuple[str, ...]:
    """Rows of negative controls (recipes that keep every attempt)."""
    from world_models.recipes import get_recipe

    return tuple(r.row for r in generated_rows().values() if get_recipe(r.recipe).keeps_every_attempt)


@dataclass(frozen=True)
class CompareConfig:
    """The experiment's own settings; the recipes' parameters are the manifest's ``generation`` block."""

    seeds: int = 10  # seed demos S
    play: int = 2  # play rollouts per seed demo for the world model (0-2)
    wm_steps: int | None = None  # world-model training steps (None: the manifest's)
    wm_minutes: float | None = None  # stop the world model's training there (run again to go on)
    algo: str = "bc-mlp"
    policy_steps: int | None = None  # gradient steps in every row (None: the manifest's)
    policy_batch: int | None = None  # None: the recipe's own
    replicates: int = 2
    episodes: int = 50  # held-out episodes per replicate
    rows: tuple[str, ...] = dataclasses.field(default_factory=experiment_rows)
    workers: int = 2  # (row, replicate) cells side by side; with ray_address, also generation and replay
    envs: int = 10  # evaluation: held-out scenes stepped together
    replay_envs: int = 1  # replay: scenes stepped together
    ray_address: str | None = None  # generation, replay and evaluation on this Ray cluster's actors

    def __post_init__(self) -> None:
        known = experiment_rows()
        unknown = [r for r in self.rows if r not in known]
        if unknown:
            raise ArgumentError(f"rows {unknown} are not among {list(known)}")
        if SEEDS not in self.rows:
            raise ArgumentError("rows must include 'seeds': every other row is measured against it")
        if self.algo not in BC_ALGORITHMS:
            raise ArgumentError(f"algo must be one of {list(BC_ALGORITHMS)}, got {self.algo!r}")
        if not 0 <= self.play <= 2:
            raise ArgumentError(f"play rollouts per seed must be 0, 1 or 2, got {self.play}")

    @property
    def cameras(self) -> bool:
        """Simulator rows need images for an image policy."""
        return self.algo == "bc-image"


def cells_folder(out: Path, algo: str) -> Path:
    """Where a policy recipe's (row, replicate) results go: cells/ for bc-mlp, cells_<algo>/ otherwise."""
    return out / ("cells" if algo == "bc-mlp" else f"cells_{algo}")


def row_slug(row: str) -> str:
    return row.replace("+", "plus_").replace(" (", "_").replace(")", "").replace(" ", "_").lower()


def generate(manifest: Manifest, out: Path, config: CompareConfig, stage: Stages) -> None:
    """The rows' datasets: each generated once (resumed), only those the rows need, then every world-model
    attempt of a judged recipe replayed in the simulator (a diagnostic)."""
    from world_models.recipes import (
        generate_in_simulator,
        generate_in_world_model,
        get_recipe,
        recipe_spec,
        recipes,
    )

    from ..pipeline import run_seed_stage

    seeds, ckpt = out / "seeds.hdf5", out / "wm"
    everything = generated_rows()
    needed = [everything[row] for row in config.rows if row in everything]
    # The oracle adds as many new-scene expert demos as the new-scene recipes kept in the world model.
    new_scenes = [f"+{r.name} (WM)" for r in recipes() if r.new_scenes]
    if ORACLE in config.rows:
        needed += [everything[row] for row in new_scenes if everything[row] not in needed]
    # Generation and replay go to Ray actors only on a cluster that was given; locally they run here.
    remote = config.workers if config.ray_address else 1
    workers = {"workers": remote, "ray_address": config.ray_address}
    after = {"world_model": stage.key("world_model")}, {"seeds": stage.key("seeds")}
    for g in needed:
        spec, path = recipe_spec(g.recipe, manifest), out / f"{g.file(config.cameras)}.hdf5"
        reads = {"recipe": g.recipe, "spec": dataclasses.asdict(spec)}
        if g.in_simulator:
            stage(
                g.file(config.cameras),
                lambda g=g, s=spec, p=path: generate_in_simulator(
                    g.recipe, seeds, p, s, cameras=config.cameras
                ),
                {**after[1], **reads, "cameras": config.cameras},
                [path],
            )
        else:
            stage(
                g.dataset,
                lambda g=g, s=spec, p=path: generate_in_world_model(g.recipe, seeds, ckpt, p, s, **workers),
                {**after[0], **reads},
                [path],
            )
    if ORACLE in config.rows:
        extra = sum(stage.stats[everything[row].dataset]["accepted"] for row in new_scenes)
        name = "oracle_cameras" if config.cameras else "oracle"
        path = out / f"{name}.hdf5"
        n = config.seeds + extra
        stage(
            name,
            lambda: {"demos": len(run_seed_stage(manifest, path, n=n, cameras=config.cameras))},
            {"scene": manifest.scene_hash(), "base_seed": manifest.seeds.base_seed, "seeds": n},
            [path],
        )
    for g in needed:
        if g.row in config.rows and not g.in_simulator and not get_recipe(g.recipe).keeps_every_attempt:
            path = out / f"{g.dataset}.hdf5"
            stage(
                f"replay_{g.dataset}",
                lambda p=path: replay_all(p, config.replay_envs, remote, config.ray_address),
                {"attempts": stage.key(g.dataset), "envs": config.replay_envs},
            )


def replay_all(synth: Path, envs: int = 1, workers: int = 1, ray_address: str | None = None) -> dict:
    """Replay every world-model attempt in the simulator from its start (``envs`` > 1: that many scenes
    stepped together): the precision and recall of the world model's predicted success."""
    from world_models.replay import replay_generated

    with open_dataset(synth) as f:
        demos = [demo_record(f, name) for name in demo_names(f, "synthetic")]
        results = replay_generated(f, [r.name for r in demos], envs, workers=workers, ray_address=ray_address)
    records = [
        {"demo": r.name, "predicted_success": r.success, **rec} for r, rec in zip(demos, results, strict=True)
    ]
    predicted = [r for r in records if r["predicted_success"]]
    both = sum(r["replay_success"] for r in predicted)
    real = sum(r["replay_success"] for r in records)
    return {
        "replayed": len(records),
        "predicted_successes": len(predicted),
        "replay_successes": real,
        "precision": both / max(len(predicted), 1),
        "recall": both / max(real, 1),
        "object_error_end_median_m": float(np.median([r["object_error_end"] for r in predicted] or [0])),
        "per_demo": records,
    }


def row_dataset(out: Path, row: str, cameras: bool) -> tuple[Path, str | None, list[str] | None]:
    """A row's dataset, mask and demo names (generated rows: the attempts kept and the seed demos)."""
    from world_models.recipes import accepted_demos

    if row == SEEDS:
        return out / "seeds.hdf5", "seed", None
    if row == ORACLE:
        return out / f"{'oracle_cameras' if cameras else 'oracle'}.hdf5", "seed", None
    path = out / f"{generated_rows()[row].file(cameras)}.hdf5"
    return path, None, accepted_demos(path)


@dataclass(frozen=True)
class Cell:
    """One replicate of one row: the policy trained on ``demos`` of ``dataset`` (those of ``mask``) into
    ``folder``, evaluated on its own panel of ``episodes`` held-out seeds."""

    row: str
    replicate: int
    dataset: str
    demos: list[str] | None
    folder: str
    manifest: Manifest
    mask: str | None = None
    algo: str = "bc-mlp"
    steps: int | None = None
    batch_size: int | None = None
    episodes: int = 50
    envs: int = 10
    one_thread: bool = True  # cells side by side, one core each
    ray_address: str | None = None


def run_cell(cell: Cell) -> dict[str, Any]:
    """Train one replicate of one row and evaluate it on its panel (in a worker process)."""
    import torch

    from policies.evaluate import evaluate_policy
    from policies.train import train_bc

    if cell.one_thread:
        torch.set_num_threads(1)
    inputs = cell_inputs(cell)
    started = time.perf_counter()
    meta = train_bc(
        cell.dataset,
        cell.folder,
        cell.algo,
        manifest=cell.manifest,  # its policy section: the budget and the generated share
        mask=cell.mask,
        demos=cell.demos,
        steps=cell.steps,
        batch_size=cell.batch_size,
        seed=cell.replicate,
    )
    trained = time.perf_counter() - started
    report = evaluate_policy(
        cell.folder,
        cell.manifest,
        cell.episodes,
        gifs=False,
        panel_offset=cell.replicate * cell.episodes,
        envs=cell.envs,
        ray_address=cell.ray_address,
    )
    return {
        "row": cell.row,
        "replicate": cell.replicate,
        "inputs": inputs,
        "demos": meta["demos"],
        "samples": meta["samples"],
        "successes": report["successes"],
        "episodes": report["episodes"],
        "panel": report["panel"],
        "train_seconds": round(trained, 1),
        "seconds": round(time.perf_counter() - started, 1),
    }


def cell_inputs(cell: Cell) -> dict[str, Any]:
    """What a cell's result depends on: its training data (the dataset's record and the chosen demos),
    the policy recipe and budget, the evaluation panel, the manifest fields training and evaluation read
    and the library's code (:func:`worldgen.apps.cache.code_hash`). A cached cell is reused only when all
    of it matches."""
    from ..dataset import dataset_digest, demo_names

    with open_dataset(cell.dataset) as f:
        names = cell.demos if cell.demos is not None else demo_names(f, cell.mask)
        data = dataset_digest(f, list(names))
    m = cell.manifest
    return {
        "row": cell.row,
        "replicate": cell.replicate,
        "data": data,
        "algo": cell.algo,
        "steps": cell.steps,
        "batch_size": cell.batch_size,
        "episodes": cell.episodes,
        "envs": cell.envs,
        "scene": m.scene_hash(),
        "policy": m.section_hash("policy"),
        "evaluation": m.section_hash("evaluation"),
        "code": code_hash(),
    }


def _cells_to_run(
    manifest: Manifest, out: Path, config: CompareConfig, say: Callable[[str], None] = lambda text: None
) -> list[Cell]:
    folder = cells_folder(out, config.algo)
    cells = []
    for row in config.rows:
        for rep in range(config.replicates):
            dataset, mask, demos = row_dataset(out, row, config.cameras)
            cell = Cell(
                row=row,
                replicate=rep,
                dataset=str(dataset),
                demos=demos,
                folder=str(out / folder.name.replace("cells", "policies") / f"{row_slug(row)}_r{rep}"),
                manifest=manifest,
                mask=mask,
                algo=config.algo,
                steps=config.policy_steps,
                batch_size=config.policy_batch,
                episodes=config.episodes,
                envs=config.envs,
                one_thread=config.workers > 1,
                ray_address=config.ray_address,
            )
            cached = folder / f"{row_slug(row)}_r{rep}.json"
            if cached.exists():
                changed = changed_fields(json.loads(cached.read_text()).get("inputs"), cell_inputs(cell))
                if not changed:
                    continue
                say(f"{row} r{rep}: recomputed, made before from other inputs ({', '.join(changed)})")
            cells.append(cell)
    return cells


def _map(fn: Callable[[Cell], dict], tasks: list[Cell], workers: int) -> Iterable[dict]:
    if workers <= 1 or len(tasks) <= 1:
        yield from map(fn, tasks)
        return
    with multiprocessing.get_context("spawn").Pool(min(workers, len(tasks))) as pool:
        yield from pool.imap_unordered(fn, tasks)


def compare(
    manifest: Manifest | str | Path,
    out: str | Path,
    config: CompareConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the experiment (resuming from what ``out`` holds); returns the result and writes
    ``compare.json``, ``compare.md`` and ``compare.png`` in ``out``."""
    manifest, out, config = as_manifest(manifest), Path(out), config or CompareConfig()
    say = progress or (lambda text: None)
    out.mkdir(parents=True, exist_ok=True)
    stage = Stages(out, say)
    prepare_world_model(stage, manifest, out, config.seeds, config.play, config.wm_steps, config.wm_minutes)
    generate(manifest, out, config, stage)
    cells = _cells_to_run(manifest, out, config, say)
    folder = cells_folder(out, config.algo)
    folder.mkdir(exist_ok=True)
    say(f"{len(cells)} (row, replicate) cells to train and evaluate on {config.workers} processes")
    for result in _map(run_cell, cells, config.workers):
        name = f"{row_slug(result['row'])}_r{result['replicate']}.json"
        write_atomically(folder / name, (json.dumps(result, indent=2) + "\n").encode())
        say(
            f"{result['row']} r{result['replicate']}: {result['successes']}/{result['episodes']} "
            f"({result['seconds']:.0f} s)"
        )
    from .. import plots

    result = summarise(manifest, out, config, stage.stats)
    write_atomically(out / "compare.json", (json.dumps(result, indent=2) + "\n").encode())
    write_atomically(out / "compare.md", (table(result) + "\n").encode())
    plots.success_rates(
        result["rows"], out / "compare.png", title(result), baseline=SEEDS, controls=control_rows()
    )
    return result


def summarise(manifest: Manifest, out: Path, config: CompareConfig, stats: dict) -> dict[str, Any]:
    """The pooled rows, gain recovered and the replays' precision, from the cells and stages in ``out``."""
    from world_models.recipes import get_recipe

    rows: dict[str, dict[str, Any]] = {}
    made = generated_rows()
    for row in config.rows:
        cells = [
            json.loads((cells_folder(out, config.algo) / f"{row_slug(row)}_r{r}.json").read_text())
            for r in range(config.replicates)
        ]
        rows[row] = {
            **pooled(cells),
            "demos": cells[0]["demos"],
            "samples": cells[0]["samples"],
            "seconds": round(sum(c["seconds"] for c in cells), 1),
        }
        if row in made:  # a generated row: its stage's counts
            key = made[row].file(config.cameras)
            rows[row]["accepted"] = f"{stats[key]['accepted']}/{stats[key]['attempts']}"
            rows[row]["generation_seconds"] = stats[key]["seconds"]
    seeds_rate = rows[SEEDS]["success_rate"]
    gain: dict[str, float | None] = {}
    replay: dict[str, dict] = {}
    for g in made.values():
        if g.in_simulator or g.row not in rows or get_recipe(g.recipe).keeps_every_attempt:
            continue
        sim = rows.get(f"+{g.recipe} (sim)")
        if sim:
            # Only where the ceiling is above the seeds beyond its own interval: a ratio over noise is noise.
            ceiling = sim["success_rate"] - seeds_rate
            above = sim["ci95"][0] > seeds_rate
            gain[g.recipe] = (rows[g.row]["success_rate"] - seeds_rate) / ceiling if above else None
        if f"replay_{g.dataset}" in stats:
            replay[g.recipe] = {k: v for k, v in stats[f"replay_{g.dataset}"].items() if k != "per_demo"}
    generation = manifest.generation.model_dump(mode="json")
    return {
        "scenario": manifest.name,
        "manifest_hash": manifest.content_hash(),
        "algo": config.algo,
        "policy_steps": config.policy_steps,
        "policy_batch": config.policy_batch,
        "seed_demos": config.seeds,
        "play_rollouts": stats["play"]["rollouts"],
        "world_model": stats["world_model"],
        "generation": generation,
        "replicates": config.replicates,
        "episodes_per_replicate": config.episodes,
        "rows": rows,
        "gain_recovered": gain,
        "replay_of_accepted_wm_demos": replay,
        "machine": machine_line(),
    }


def machine_line() -> str:
    """The machine in a few words: its CPU cores and its GPU, where it has one."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{multiprocessing.cpu_count()} CPU cores, {gpu}"


def title(result: dict[str, Any]) -> str:
    first = next(iter(result["rows"].values()))
    return f"{result['scenario']}, {result['algo']}: {first['episodes']} episodes per row, 95 % CI"


def table(result: dict[str, Any]) -> str:
    batch = result.get("policy_batch")
    steps = result["policy_steps"] or "the manifest's"
    lines = [
        f"{result['scenario']}, {result['algo']} ({steps} steps"
        f"{'' if batch is None else f' at batch {batch}'}), "
        f"{result['seed_demos']} seed demos, "
        f"{result['play_rollouts']} play rollouts for the world model; {result['replicates']} replicates x "
        f"{result['episodes_per_replicate']} held-out episodes pooled",
        "",
        "| row | demos | samples | accepted | success | 95 % CI | per replicate |",
        "|---|---:|---:|---:|---|---|---|",
    ]
    for row, r in result["rows"].items():
        lo, hi = r["ci95"]
        lines.append(
            f"| {row} | {r['demos']} | {r['samples']} | {r.get('accepted', '')} "
            f"| {r['successes']}/{r['episodes']}"
            f" = {100 * r['success_rate']:.0f} % | [{lo:.2f}, {hi:.2f}] | {', '.join(r['per_replicate'])} |"
        )
    gain = ", ".join(
        f"{k} {'n/a (its simulator ceiling is not above the seeds)' if v is None else f'{v:.2f}'}"
        for k, v in result["gain_recovered"].items()
    )
    replays = "; ".join(
        f"{recipe} (WM) attempts replayed in the simulator: predicted-success precision "
        f"{100 * rp['precision']:.0f} % (of {rp['predicted_successes']} predicted), recall "
        f"{100 * rp['recall']:.0f} % (of {rp['replay_successes']} that succeed in replay), "
        f"{rp['replayed']} attempts"
        for recipe, rp in result["replay_of_accepted_wm_demos"].items()
    )
    gain = gain or "no recipe with both rows"
    lines += [
        "",
        "; ".join(part for part in (f"gain recovered (WM - seeds) / (sim - seeds): {gain}", replays) if part),
    ]
    return "\n".join(lines)
