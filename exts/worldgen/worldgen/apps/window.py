"""The plain-Python controller behind the Kit window. Every UI callback is a one-line call into this
class, so the whole behaviour is tested without Kit."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..manifest import Manifest, ManifestError, load_manifest


@dataclass
class AppState:
    manifest_path: str = "scenarios/pick_cube.yaml"
    seed: int = 0
    output_dir: str = "data/stages"
    status: str = ""
    errors: list[str] = field(default_factory=list)
    last_stage: str | None = None


class WorldgenApp:
    """Validate and compile manifests; report one status line and the error lines for the window."""

    def __init__(self, state: AppState | None = None):
        self.state = state or AppState()

    def _load(self) -> Manifest | None:
        try:
            manifest = load_manifest(self.state.manifest_path)
        except ManifestError as exc:
            self.state.errors = exc.lines
            self.state.status = f"{len(exc.lines)} problem(s) in {self.state.manifest_path}"
            return None
        self.state.errors = []
        return manifest

    def validate(self) -> bool:
        manifest = self._load()
        if manifest is not None:
            self.state.status = f"{manifest.name}: valid (hash {manifest.content_hash()[:12]})"
        return manifest is not None

    def compile(self) -> str | None:
        """Compile the current manifest and seed; returns the stage path for Kit to open."""
        from ..stage import compile_stage

        manifest = self._load()
        if manifest is None:
            return None
        out = Path(self.state.output_dir) / f"{manifest.name}_seed{self.state.seed}.usda"
        path, _ = compile_stage(manifest, self.state.seed, out)
        self.state.last_stage = str(path)
        self.state.status = f"compiled {manifest.name} seed {self.state.seed} -> {path}"
        return str(path)
