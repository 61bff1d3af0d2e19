"""The plain-Python controller behind the Kit window (``worldgen.kit``). Every UI callback is a one-line
call into :class:`WorldgenApp`, so the whole behaviour is tested without Kit.

What it does: open and save a manifest (:class:`~worldgen.apps.manifest_editor.ManifestDocument`:
comments and key order kept), edit its fields with problems attached to the field, undo, show the
content hash live; compile a seed to a USD stage for the viewport; preview seeds x cameras as a grid
rendered by the headless engine; start, follow and cancel background jobs (seed recording, ``worldgen
run`` up to a stage, previews) in subprocesses; find the latest run report.

Outputs go under ``output_dir``::

    stages/<name>_seed<N>.usda      compiled stages
    previews/<name>-<hash12>-<seeds>.png
    seeds/<name>-<hash12>.hdf5      seed recordings (staged: complete or absent)
    runs/<name>/                    ``worldgen run`` folders (report/index.html inside)
"""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ArgumentError
from ..manifest import ManifestError
from ..preview import parse_seeds
from .jobs import FINISHED, OUTPUT, RUNNING, SUCCEEDED, Job
from .manifest_editor import ManifestDocument
from .run import PROFILES, STAGES


@dataclass
class AppState:
    """What the window shows besides the document: the one status line and the messages under it."""

    output_dir: str = "data/worldgen"
    seed: int = 0
    autosave: bool = True  # jobs read the file: save a valid, edited document before starting one
    python: str = sys.executable  # the interpreter jobs run under (Kit's own by default)
    backend: str = "newton"  # the simulator seed recording uses: newton or isaac
    status: str = ""
    messages: list[str] = field(default_factory=list)
    last_stage: str | None = None
    last_preview: str | None = None


class WorldgenApp:
    def __init__(self, state: AppState | None = None):
        self.state = state or AppState()
        self.document: ManifestDocument | None = None
        self.jobs: dict[str, Job] = {}
        self._saved_text: str | None = None  # the text the file holds (what jobs read)

    # -- the document --------------------------------------------------------------------------------

    def open(self, path: str | Path) -> bool:
        """Open a manifest; ``False`` (with the reason as the status) when it cannot be read as YAML.
        A manifest that reads but does not validate opens, its problems attached to their fields."""
        try:
            self.document = ManifestDocument.open(path)
        except ManifestError as exc:
            self.document = None
            self._say(f"cannot open {path}", exc.lines)
            return False
        self._saved_text = self.document.text
        self._say_document()
        return True

    @property
    def modified(self) -> bool:
        """Whether the document differs from the file it was opened from or last saved to."""
        return self.document is not None and self.document.text != self._saved_text

    def _require_document(self) -> ManifestDocument:
        if self.document is None:
            raise ArgumentError("no manifest is open")
        return self.document

    def edit(self, path: str, text: str) -> bool:
        """Set the field at ``path`` from one line of YAML; returns whether the manifest is valid after."""
        document = self._require_document()
        try:
            valid = document.set_text(path, text)
        except ArgumentError as exc:
            self._say(f"{path}: not changed", [str(exc)])
            return False
        self._say_document()
        return valid

    def undo(self) -> bool:
        document = self._require_document()
        undone = document.undo()
        self._say_document()
        return undone

    def field_text(self, path: str) -> str:
        return self._require_document().get_text(path)

    def field_problems(self, path: str) -> list[str]:
        """The problems of the field at ``path`` and of the fields inside it, for the line under it."""
        problems = self._require_document().problems_under(path)
        return [f"{f}: {m}" for f, messages in problems.items() for m in messages]

    def fields(self) -> list[str]:
        return self._require_document().main_fields()

    def save(self, path: str | Path | None = None) -> bool:
        document = self._require_document()
        try:
            saved = document.save(path)
        except ManifestError as exc:
            self._say("not saved: the manifest has problems", exc.lines)
            return False
        self._saved_text = document.text
        self._say(f"saved {saved} (hash {document.content_hash[:12]})")
        return True

    def _say_document(self) -> None:
        document = self._require_document()
        name = document.get("name") or "?"
        edited = " (edited)" if self.modified else ""
        if document.valid:
            self._say(f"{name}{edited}: valid, hash {document.content_hash[:12]}")
        else:
            lines = [f"{f}: {m}" for f, messages in document.problems.items() for m in messages]
            self._say(f"{name}{edited}: {len(lines)} problem(s)", lines)

    def _say(self, status: str, messages: list[str] | None = None) -> None:
        self.state.status, self.state.messages = status, list(messages or [])

    # -- compiling and previews ----------------------------------------------------------------------

    def _valid_manifest(self):
        document = self._require_document()
        if not document.valid or document.manifest is None:
            raise ArgumentError(f"{document.file}: fix the manifest's problems first")
        return document.manifest

    def compile(self, seed: int | None = None) -> str | None:
        """Compile the document (as edited) for one seed; returns the stage path for the viewport."""
        from ..stage import compile_stage

        try:
            manifest = self._valid_manifest()
        except ArgumentError as exc:
            self._say(str(exc), self.state.messages)
            return None
        seed = self.state.seed if seed is None else seed
        out = Path(self.state.output_dir) / "stages" / f"{manifest.name}_seed{seed}.usda"
        path, _ = compile_stage(manifest, seed, out)
        self.state.last_stage = str(path)
        self._say(f"compiled {manifest.name} seed {seed} -> {path}")
        return str(path)

    def preview_path(self, seeds: list[int], cameras: list[str] | None = None) -> Path:
        manifest = self._valid_manifest()
        if not seeds:
            raise ArgumentError("preview: expected at least one seed")
        if len(seeds) == 1:
            label = str(seeds[0])
        elif seeds == list(range(seeds[0], seeds[-1] + 1)):
            label = f"{seeds[0]}-{seeds[-1]}"
        else:  # any list, in a name of bounded length
            label = "s" + hashlib.sha256(",".join(map(str, seeds)).encode()).hexdigest()[:10]
        views = "-".join(cameras) if cameras else "all"
        name = f"{manifest.name}-{manifest.content_hash()[:12]}-{label}-{views}.png"
        return Path(self.state.output_dir) / "previews" / name

    def start_preview(
        self, seeds: list[int] | str, cameras: list[str] | None = None, scale: int = 2
    ) -> Job | None:
        """Render the variant grid (``worldgen preview``) in a background job; ``seeds`` as a list or as
        text such as ``0-7``."""
        try:
            seeds = parse_seeds(seeds) if isinstance(seeds, str) else list(seeds)
            output = self.preview_path(seeds, cameras)
        except ArgumentError as exc:
            self._say(f"preview: {exc}", self.state.messages)
            return None
        argv = ["--seeds", ",".join(map(str, seeds)), "--scale", str(scale), "-o", OUTPUT]
        if cameras:
            argv += ["--camera", ",".join(cameras)]
        return self._start("preview", "preview", argv, output, staged=True)

    def preview_image(self) -> tuple[bytes, int, int] | None:
        """The latest preview grid as RGBA bytes, width, height (what omni.ui's ByteImageProvider takes)."""
        if self.state.last_preview is None or not Path(self.state.last_preview).exists():
            return None
        from PIL import Image

        with Image.open(self.state.last_preview) as image:
            rgba = np.asarray(image.convert("RGBA"))
        return rgba.tobytes(), rgba.shape[1], rgba.shape[0]

    # -- background jobs -----------------------------------------------------------------------------

    def start_seeds(self, count: int | None = None) -> Job | None:
        """Record seed demos (``worldgen seed``) in a background job; the dataset appears only when done."""
        try:
            manifest = self._valid_manifest()
        except ArgumentError as exc:
            self._say(str(exc), self.state.messages)
            return None
        count = count or manifest.seeds.count
        label = f"{manifest.name}-{manifest.content_hash()[:12]}-n{count}"
        output = Path(self.state.output_dir) / "seeds" / f"{label}.hdf5"
        argv = ["-o", OUTPUT, "--backend", self.state.backend, "--n", str(count)]
        return self._start("seeds", "seed", argv, output, staged=True)

    def start_run(self, until: str = "report", profile: str = "quick") -> Job | None:
        """``worldgen run`` up to ``until`` in a background job (resumable: a cancelled run picks up where
        it stopped when started again)."""
        if until not in STAGES or profile not in PROFILES:
            raise ArgumentError(
                f"run: expected a stage among {', '.join(STAGES)} and a profile among {', '.join(PROFILES)}"
            )
        try:
            manifest = self._valid_manifest()
        except ArgumentError as exc:
            self._say(str(exc), self.state.messages)
            return None
        output = self.run_folder(manifest.name)
        argv = ["-o", OUTPUT, "--profile", profile, "--until", until]
        return self._start("run", "run", argv, output, staged=False)

    def run_folder(self, name: str) -> Path:
        return Path(self.state.output_dir) / "runs" / name

    def _start(self, name: str, command: str, argv: list[str], output: Path, staged: bool) -> Job | None:
        document = self._require_document()
        running = self.jobs.get(name)
        if running is not None and running.state == RUNNING:
            self._say(f"{name}: a job is already running; cancel it first")
            return None
        if self.modified and not (self.state.autosave and self.save()):
            self._say(f"{name}: save the manifest first (jobs read the file)", self.state.messages)
            return None
        if document.path is None:
            self._say(f"{name}: save the manifest to a file first (jobs read the file)")
            return None
        job = Job(name, [command, str(document.path), *argv], output, staged=staged, python=self.state.python)
        try:
            # Inside Kit, worldgen and its pip requirements are importable only through the paths Kit
            # added; the job's interpreter gets the same ones.
            job.start(env={"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)})
        except OSError as exc:
            self._say(f"{name}: could not start {self.state.python}: {exc}")
            return None
        self.jobs[name] = job
        self._say(f"{name}: started ({command} -> {output})")
        return job

    def cancel(self, name: str) -> None:
        job = self.jobs.get(name)
        if job is not None and job.state == RUNNING:
            job.cancel()
            self._say(f"{name}: cancelled")
        else:
            self._say(f"{name}: nothing is running")

    def poll(self) -> list[str]:
        """Advance every job; returns one line per job that finished since the last poll (what the window
        shows as a notification). A finished preview becomes the shown grid."""
        finished = []
        for name, job in self.jobs.items():
            was_running = job.state == RUNNING
            state = job.poll()
            if not (was_running and state in FINISHED):
                continue
            tail = job.log_tail(1)
            line = f"{name}: {state} in {job.elapsed:.0f} s" + (f" ({tail[0]})" if tail else "")
            if name == "preview" and state == SUCCEEDED:
                self.state.last_preview = str(job.output)
            finished.append(line)
        if finished:
            self._say(finished[-1], finished[:-1])
        return finished

    def job_lines(self, tail: int = 3) -> list[str]:
        """A line per job, each running job followed by the last ``tail`` lines of its log (indented)."""
        lines = []
        for job in self.jobs.values():
            lines.append(job.describe())
            if job.state == RUNNING:
                lines += [f"    {line}" for line in job.log_tail(tail)]
        return lines

    # -- reports -------------------------------------------------------------------------------------

    def latest_report(self) -> Path | None:
        """The newest ``report/index.html`` under the output folder's runs."""
        reports = list((Path(self.state.output_dir) / "runs").glob("*/report/index.html"))
        return max(reports, key=lambda p: p.stat().st_mtime) if reports else None

    def open_report(self) -> Path | None:
        """Open the latest report in the system's browser; the path, or ``None`` (said) when there is none."""
        import webbrowser

        report = self.latest_report()
        if report is None:
            self._say(f"no report yet under {Path(self.state.output_dir) / 'runs'}")
            return None
        webbrowser.open(report.resolve().as_uri())
        self._say(f"opened {report}")
        return report
