"""The recipe family: what a generation recipe is, the registry, and the two entry points.

A recipe is a :class:`Recipe` subclass registered under its name (:func:`register`). It says how its spec
is read from the manifest (the spec dataclass has no defaults of its own: the manifest's model holds
them), which tasks its attempts come in (a task is one worker call: a seed demo and start step, or a
batch of new scenes), how it acts them out in the world model and, where it has one, its simulator twin
(the same attempts executed in the simulator: the recipe's ceiling). :func:`generate_in_world_model` and
:func:`generate_in_simulator` run any registered recipe: they copy the seed demos to the output, resume
task by task (a task half written is finished, never written twice), run the tasks on Ray actors when
asked and append their demos in task order, so the output is the same in one process or many.

The names ``worldgen generate --recipe`` takes, ``worldgen run``'s synthetic stage (``generation.recipe``) and
the experiment's rows all come from this registry: a new recipe is one module and its manifest model.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import h5py
import numpy as np
from worldgen.control import ArmController
from worldgen.dataset import (
    DatasetWriter,
    Demo,
    DemoRecord,
    dataset_manifest,
    demo_names,
    demo_record,
    open_dataset,
    read_demo,
    read_header,
)
from worldgen.distributed import map_on_workers
from worldgen.envs import WorldgenEnv
from worldgen.experts import WaypointExpert, make_expert, poses_from_object_obs
from worldgen.manifest import Manifest

Task = Hashable
Progress = Callable[[str, int, int], None]  # (task label, accepted, attempts) after each task


@dataclass
class Parent:
    """A seed demo that attempts start from (or, for a new scene, borrow their path from)."""

    name: str
    seed: int
    demo: Demo

    @property
    def object_obs(self) -> np.ndarray:
        return self.demo.obs["object"]

    def expert_at(self, manifest: Manifest, step: int) -> WaypointExpert:
        """The scripted expert as it was at ``step`` of this demo: planned from the scene's first
        poses, then advanced through the recorded commanded poses."""
        expert = make_expert(manifest)
        expert.reset(self.seed, poses_from_object_obs(manifest, self.object_obs[0]))
        for t in range(step):
            controller = ArmController.from_env_state(manifest, self.demo.states[t])
            expert.act(controller.commanded_tcp_world(), poses_from_object_obs(manifest, self.object_obs[t]))
        return expert


def seed_parents(f: h5py.File) -> list[Parent]:
    """The successful simulator demos of a dataset's ``seed`` mask, less those it holds out for validation
    (``valid``): an attempt never starts from a demo that the seeds-only policy does not train on."""
    held_out = set(demo_names(f, "valid")) if "mask/valid" in f else set()
    parents = []
    for name in demo_names(f, "seed"):
        if name in held_out:
            continue
        record = demo_record(f, name)
        if record.success:
            parents.append(Parent(name, record.seed, read_demo(f["data"][name])))
    return parents


class Recipe:
    """A way of making synthetic demos. Subclasses set the class attributes and the task methods; one
    instance of each is registered (:func:`register`)."""

    name: ClassVar[str]
    spec_class: ClassVar[type]  # a frozen dataclass with ``from_manifest(manifest, **overrides)``
    summary: ClassVar[str]  # one line for the command line's help
    new_scenes: ClassVar[bool] = False  # attempts start at a new scene's reset, not at a parent's state
    # A negative control: it adds samples without information, so it is never judged and every attempt
    # is kept (and it has no simulator twin to be the ceiling of).
    keeps_every_attempt: ClassVar[bool] = False
    # Experiment rows beyond the recipe's own: row name -> spec overrides (e.g. another labeler).
    variants: ClassVar[dict[str, dict[str, Any]]] = {}
    # The Ray actor body of its world-model attempts: ``worker(dataset, ckpt, spec, device)``,
    # ``.run(task) -> (task, demos)``.
    world_model_worker: ClassVar[type]

    def spec(self, manifest: Manifest, **overrides: Any) -> Any:
        """The recipe's spec: the manifest's, with the ``overrides`` that are not None."""
        return self.spec_class.from_manifest(manifest, **overrides)

    def check(self, manifest: Manifest, spec: Any) -> None:
        """Raise ValueError where the spec cannot be generated from this manifest."""

    def tasks(self, spec: Any, parents: list[Parent]) -> list[Task]:
        """Every task of the spec, in the order they are written."""
        raise NotImplementedError

    def task_of(self, spec: Any, record: DemoRecord) -> Task | None:
        """The task a written demo belongs to under ``spec`` (None: not one of this spec's attempts)."""
        raise NotImplementedError

    def task_size(self, spec: Any, task: Task) -> int:
        """How many attempts a task makes."""
        raise NotImplementedError

    def task_label(self, task: Task) -> str:
        return str(task)

    def attempts_in_simulator(
        self, env: WorldgenEnv, manifest: Manifest, parents: list[Parent], spec: Any, task: Task
    ) -> list[Demo]:
        """The task's attempts executed in the simulator (``env``); only recipes with a twin define it."""
        raise NotImplementedError(f"recipe {self.name!r} has no simulator twin")

    @property
    def simulator_twin(self) -> bool:
        return type(self).attempts_in_simulator is not Recipe.attempts_in_simulator

    def rows(self) -> dict[str, dict[str, Any]]:
        """The experiment rows it makes: its own name and its variants, each with its spec overrides."""
        return {self.name: {}, **self.variants}


_REGISTRY: dict[str, Recipe] = {}


def register(cls: type[Recipe]) -> type[Recipe]:
    """Class decorator: make ``cls`` a recipe of the family (its name, its variants' names unique)."""
    recipe = cls()
    taken = {row for r in _REGISTRY.values() if r.name != cls.name for row in r.rows()}
    clash = sorted(taken & set(recipe.rows()))
    if clash:
        raise ValueError(f"recipe {cls.name!r}: the names {clash} are taken by another recipe")
    _REGISTRY[cls.name] = recipe
    return cls


def unregister(name: str) -> None:
    """Take a recipe out of the family (a test that registered one cleans up with this)."""
    _REGISTRY.pop(name, None)


def recipes() -> list[Recipe]:
    """The registered recipes, in the order they were registered."""
    return list(_REGISTRY.values())


def recipe_names() -> list[str]:
    """Every name a recipe can be asked for by: the recipes' and their variants'."""
    return [row for recipe in recipes() for row in recipe.rows()]


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name`` (or having a variant of that name)."""
    for recipe in recipes():
        if name in recipe.rows():
            return recipe
    raise KeyError(f"no recipe {name!r}: expected one of {', '.join(recipe_names())}")


def recipe_spec(name: str, manifest: Manifest, **overrides: Any) -> Any:
    """The spec of recipe (or variant) ``name`` under ``manifest``: the variant's overrides, then
    ``overrides`` (those not None)."""
    recipe = get_recipe(name)
    return recipe.spec(manifest, **{**recipe.rows()[name], **overrides})


def spec_from_manifest(cls: type, values: dict[str, Any], overrides: dict[str, Any]) -> Any:
    """``cls`` from the manifest's ``values`` and the ``overrides`` that are not None; an override that
    is not one of its fields is refused (TypeError) rather than ignored."""
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(k for k, v in overrides.items() if v is not None and k not in fields)
    if unknown:
        raise TypeError(f"{cls.__name__} has no field {', '.join(unknown)}")
    return cls(**{**values, **{k: v for k, v in overrides.items() if v is not None}})


# --------------------------------------------------------------------------------------------------
# The entry points


def accepted(record: DemoRecord) -> bool:
    """A demo a policy trains on: a seed demo, an attempt that succeeded, or any attempt of a recipe that
    keeps them all (a negative control)."""
    if record.recipe is None:
        return True
    return record.success or (record.recipe in _REGISTRY and _REGISTRY[record.recipe].keeps_every_attempt)


def accepted_demos(path: str | Path) -> list[str]:
    """The seed demos and the generated attempts that are kept: what a policy trains on."""
    with open_dataset(path) as f:
        records = [demo_record(f, n) for n in demo_names(f)]
    return [r.name for r in records if accepted(r)]


def written_counts(writer: DatasetWriter) -> dict[str, int]:
    """The attempts in the whole output and how many are kept, those a resumed call found written
    included (a run killed after its last attempt and resumed makes none, and must report them all)."""
    attempts = [r for r in writer.records() if r.recipe is not None]
    return {"attempts": len(attempts), "accepted": sum(accepted(r) for r in attempts)}


def _record_of(demo: Demo) -> DemoRecord:
    return DemoRecord.from_attrs("", {"num_samples": demo.num_samples, **demo.attrs})


def _attempt_key(record: DemoRecord) -> tuple:
    """What tells one attempt from another in any recipe: its parent, start, scene and noise seed."""
    return (record.recipe, record.labeler, record.parent, record.branch_step, record.seed, record.noise_seed)


def _start_output(dataset: str | Path, out: str | Path) -> tuple[Manifest, DatasetWriter, list[Parent]]:
    """The dataset's manifest, a writer for ``out`` holding its seed demos, and the parents."""
    with open_dataset(dataset) as f:
        writer = DatasetWriter(out, read_header(f))
        for name in demo_names(f, "seed"):
            if name not in writer.demos:
                writer.append(read_demo(f["data"][name]), name)
        return dataset_manifest(f), writer, seed_parents(f)


def _pending(recipe: Recipe, spec: Any, parents: list[Parent], writer: DatasetWriter) -> list[Task]:
    written = Counter(recipe.task_of(spec, r) for r in writer.records())
    return [t for t in recipe.tasks(spec, parents) if written[t] < recipe.task_size(spec, t)]


def append_in_task_order(
    writer: DatasetWriter,
    tasks: list[Task],
    results: Iterable[tuple[Task, list[Demo]]],
    label: Callable[[Task], str],
    progress: Progress | None = None,
) -> None:
    """Append each task's attempts as ``(task, demos)`` results arrive, in task order whatever order they
    finish in (so demo names are those one process writes); an attempt already written (a task half
    written before a kill) is not written again. ``progress(label(task), kept, attempts)`` after each."""
    finished, next_task = {}, 0
    written = {_attempt_key(r) for r in writer.records()}
    for task, demos in results:
        finished[task] = demos
        while next_task < len(tasks) and tasks[next_task] in finished:
            made = finished.pop(tasks[next_task])
            for demo in made:
                if _attempt_key(_record_of(demo)) not in written:
                    writer.append(demo)
            kept = sum(accepted(_record_of(d)) for d in made)
            if progress is not None:
                progress(label(tasks[next_task]), kept, len(made))
            next_task += 1


def _generate(
    recipe: Recipe,
    dataset: str | Path,
    out: str | Path,
    spec: Any,
    worker: type,
    init: tuple,
    progress: Progress | None,
    workers: int,
    ray_address: str | None,
) -> dict[str, int]:
    manifest, writer, parents = _start_output(dataset, out)
    recipe.check(manifest, spec)
    tasks = _pending(recipe, spec, parents, writer)
    if tasks:
        results = map_on_workers(worker, init, tasks, workers, ray_address)
        append_in_task_order(writer, tasks, results, recipe.task_label, progress)
    writer.finalize()
    return written_counts(writer)


def generate_in_world_model(
    recipe: str,
    dataset: str | Path,
    ckpt: str | Path,
    out: str | Path,
    spec: Any,
    device: str = "cpu",
    progress: Progress | None = None,
    workers: int = 1,
    ray_address: str | None = None,
) -> dict[str, int]:
    """Append the seed demos of ``dataset`` and every attempt of ``recipe`` under ``spec`` in the world
    model ``ckpt`` to ``out`` (resumed task by task). An attempt's ``success`` is the world model's
    verdict; only kept attempts are for training (:func:`accepted_demos`). ``workers`` > 1 or a
    ``ray_address``: the tasks on that many Ray actors, written in the order one process writes them.
    Returns the whole output's counts: attempts, accepted."""
    r = get_recipe(recipe)
    init = (Path(dataset), ckpt, spec, device)
    return _generate(r, dataset, out, spec, r.world_model_worker, init, progress, workers, ray_address)


class SimulatorAttempts:
    """A recipe's simulator twin on one dataset's seed demos, one scene loaded once; also the body of a
    Ray actor. Attempts end once the predicate holds with the spec's margin to spare: the world model's
    stopping rule."""

    def __init__(self, recipe: str, dataset: str | Path, spec: Any, cameras: bool):
        self.recipe, self.spec = get_recipe(recipe), spec
        with open_dataset(dataset) as f:
            self.manifest, self.parents = dataset_manifest(f), seed_parents(f)
        self.env = WorldgenEnv(self.manifest, cameras=cameras, success_margin=spec.success_margin)

    def run(self, task: Task) -> tuple[Task, list[Demo]]:
        return task, self.recipe.attempts_in_simulator(self.env, self.manifest, self.parents, self.spec, task)

    def close(self) -> None:
        self.env.close()


def generate_in_simulator(
    recipe: str,
    dataset: str | Path,
    out: str | Path,
    spec: Any,
    cameras: bool = False,
    progress: Progress | None = None,
    workers: int = 1,
    ray_address: str | None = None,
) -> dict[str, int]:
    """The same attempts as :func:`generate_in_world_model` (same starts, labelers, plans and noise),
    executed in the simulator and appended to ``out`` beside the seed demos (``success`` from the
    simulator): the recipe's ceiling."""
    r = get_recipe(recipe)
    if not r.simulator_twin:
        raise ValueError(f"recipe {r.name!r} has no simulator twin")
    init = (recipe, Path(dataset), spec, cameras)
    return _generate(r, dataset, out, spec, SimulatorAttempts, init, progress, workers, ray_address)
