"""One rule for reusing what a run, an experiment or a bench made before: a result is reused only when the
inputs recorded beside it equal today's (the manifest fields it reads, its parameters, the keys of what it
reads and the hash of the library's sources); otherwise it is made again and the fields that changed are
named. ``worldgen run``'s stage markers, an experiment's :class:`Stages` and ``worldgen compare``'s cells
all record their inputs and decide with :func:`changed_fields`."""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .. import __version__
from ..files import write_atomically


def code_version() -> str:
    """worldgen's version and, in a git checkout, its commit (``+dirty`` with uncommitted changes)."""
    root = Path(__file__).resolve().parents[3]
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "describe", "--always", "--dirty=+dirty", "--abbrev=12"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__} ({commit})" if commit else __version__


@functools.cache
def code_hash() -> str:
    """sha256 of the library's Python sources (worldgen, world_models, policies) as this process found
    them: what a cached result depends on, where the commit also moves with documents and results."""
    import importlib

    digest = hashlib.sha256()
    for name in ("worldgen", "world_models", "policies"):
        package = Path(importlib.import_module(name).__file__).parent
        for path in sorted(package.rglob("*.py")):
            digest.update(f"{name}/{path.relative_to(package).as_posix()}".encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def content_key(data: Any) -> str:
    """A stable hash of JSON-able ``data`` (keys sorted; anything else by its ``str``)."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def changed_fields(before: dict[str, Any] | None, now: dict[str, Any]) -> list[str]:
    """The fields of ``now`` that ``before`` (the inputs recorded with a cached result; None: none were
    recorded) does not match."""
    if before is None:
        return ["no inputs recorded"]
    return sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))


def _remove(path: Path) -> None:
    for target in (path, path.with_name(path.name + ".parts")):  # a dataset's shards go with it
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)


class Stages:
    """An experiment's named stages, each made once and kept in ``stages.json`` with the inputs it was
    made from (plus :func:`code_hash`). Called again, a stage is reused when those match; otherwise its
    ``outputs`` are removed and it is made again, and what changed is said. A stage that reads another
    passes ``stages.key(name)`` among its inputs, so it is made again when that one is."""

    def __init__(self, out: Path, say: Callable[[str], None] | None = None):
        self.path = Path(out) / "stages.json"
        self.say = say or (lambda text: None)
        self.stats: dict = json.loads(self.path.read_text()) if self.path.exists() else {}

    def key(self, name: str) -> str | None:
        """The key ``name`` was made under (None: not made)."""
        return self.stats.get(name, {}).get("key")

    def __call__(
        self,
        name: str,
        fn: Callable[[], dict | None],
        inputs: dict[str, Any] | None = None,
        outputs: Iterable[Path] = (),
    ) -> dict:
        inputs = {**(inputs or {}), "code": code_hash()}
        key = content_key(inputs)
        made = self.stats.get(name)
        if made is not None and made.get("key") == key:
            return made
        if made is not None:
            changed = changed_fields(made.get("inputs"), inputs)
            self.say(f"{name}: made before from other inputs ({', '.join(changed)}): made again")
            for path in outputs:
                _remove(Path(path))
            del self.stats[name]
        started = time.perf_counter()
        self.say(f"{name} ...")
        value = fn() or {}
        seconds = round(time.perf_counter() - started, 1)
        self.stats[name] = {**value, "seconds": seconds, "inputs": inputs, "key": key}
        write_atomically(self.path, (json.dumps(self.stats, indent=2) + "\n").encode())
        shown = {k: v for k, v in self.stats[name].items() if k not in ("per_demo", "inputs", "key")}
        self.say(f"{name}: {shown}")
        return self.stats[name]
