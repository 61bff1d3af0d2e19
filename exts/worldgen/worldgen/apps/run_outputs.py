"""Two ``worldgen run`` folders compared output by output: what a run that was killed and resumed, or that
met a full disk and was run again, must equal (an uninterrupted run of the same manifest and profile).

Datasets are compared array by array and attribute by attribute, safetensors tensor by tensor, JSON with
its wall-clock fields set aside, and every other file byte by byte, after the folder's own path is
replaced by a placeholder (a run records some absolute paths). Left out: TensorBoard event files (wall
clock in every event, host and pid in the name), the run's lock, and what a resumed run keeps beside its
outputs by design (nothing else: a temporary file or a ``.parts`` folder left behind is a difference)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..dataset import hdf5_differences
from .run import STAGES

# Wall-clock fields: how long something took, and whether this invocation ran a stage or reused it.
VOLATILE_KEYS = frozenset({"seconds", "made_in_seconds", "ran"})
LEFT_OUT_FOLDERS = frozenset({"logs"})  # TensorBoard event files
LEFT_OUT_FILES = frozenset({".lock"})
RUN_RECORD = "run.json"
PLACEHOLDER = "<run>"
# The same fields in the report's page: "93 s in all", and whether this invocation ran a stage.
_VOLATILE_TEXT = (re.compile(rb"\d+(?:\.\d+)? s\b"), re.compile(rb"<td>(?:ran|cached)</td>"))


def _files(folder: Path, stages: tuple[str, ...]) -> set[str]:
    names = {p.name for p in folder.iterdir() if p.is_file() and p.name not in LEFT_OUT_FILES}
    for stage in stages:
        root = folder / stage
        if not root.is_dir():
            continue
        for path in root.rglob("*"):
            rel = path.relative_to(folder)
            if path.is_file() and not LEFT_OUT_FOLDERS & set(rel.parts):
                names.add(rel.as_posix())
    return names


def _placed(text: str, folder: Path) -> str:
    """``text`` with the run folder's path (as given, and resolved) replaced by the placeholder."""
    for form in {str(folder.resolve()), str(folder)}:
        text = text.replace(form, PLACEHOLDER)
    return text


def _without_volatile(data: Any, folder: Path, volatile: frozenset[str]) -> Any:
    if isinstance(data, dict):
        return {k: _without_volatile(v, folder, volatile) for k, v in data.items() if k not in volatile}
    if isinstance(data, list):
        return [_without_volatile(v, folder, volatile) for v in data]
    if isinstance(data, str):
        return _placed(data, folder)
    return data


def _json_differences(
    a: Path, b: Path, name: str, folders: tuple[Path, Path], stages: tuple[str, ...], volatile: frozenset[str]
) -> list[str]:
    try:
        left, right = (
            _without_volatile(json.loads(p.read_text()), f, volatile)
            for p, f in zip((a, b), folders, strict=True)
        )
    except ValueError as exc:
        return [f"{name}: does not parse ({exc})"]
    if name == RUN_RECORD and stages != STAGES:  # a run stopped --until a stage: that part of the record
        left, right = ({s: d.get("stages", {}).get(s) for s in stages} for d in (left, right))
    if left == right:
        return []
    if isinstance(left, dict) and isinstance(right, dict):
        keys = sorted(k for k in set(left) | set(right) if left.get(k) != right.get(k))
        return [f"{name}: differs at {', '.join(keys)}"]
    return [f"{name}: differs"]


def _safetensors_differences(a: Path, b: Path, name: str) -> list[str]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(a, "np") as left, safe_open(b, "np") as right:
            if left.metadata() != right.metadata():
                return [f"{name}: metadata differs"]
            keys = set(left.keys()) | set(right.keys())
            if set(left.keys()) != set(right.keys()):
                return [f"{name}: tensor names differ"]
            return [
                f"{name}:{k}: values differ"
                for k in sorted(keys)
                if not np.array_equal(left.get_tensor(k), right.get_tensor(k), equal_nan=True)
            ]
    except (OSError, SafetensorError) as exc:
        return [f"{name}: does not read back ({exc})"]


def _bytes_differences(
    a: Path, b: Path, name: str, folders: tuple[Path, Path], masks: tuple[re.Pattern[bytes], ...]
) -> list[str]:
    left, right = (
        _placed(p.read_bytes().decode("latin-1"), f).encode("latin-1")
        for p, f in zip((a, b), folders, strict=True)
    )
    for pattern in (*_VOLATILE_TEXT, *masks):
        left, right = pattern.sub(b"#", left), pattern.sub(b"#", right)
    return [] if left == right else [f"{name}: bytes differ"]


def run_differences(
    reference: str | Path,
    other: str | Path,
    stages: tuple[str, ...] = STAGES,
    volatile: frozenset[str] = VOLATILE_KEYS,
    masks: tuple[re.Pattern[bytes], ...] = (),
) -> list[str]:
    """What differs between two run folders in ``stages`` (and the run's own files; of ``run.json``, only
    those stages' entries when ``stages`` is not all of them): one line a difference, naming the file and,
    inside a dataset or JSON file, what in it. Empty when they match. ``volatile``: JSON keys left out;
    ``masks``: more text left out of the other files (e.g. the code version a page shows)."""
    reference, other = Path(reference), Path(other)
    folders = (reference, other)
    mine, theirs = _files(reference, stages), _files(other, stages)
    found = [f"{n}: only in the reference run" for n in sorted(mine - theirs)]
    found += [f"{n}: only in the other run" for n in sorted(theirs - mine)]
    for name in sorted(mine & theirs):
        a, b = reference / name, other / name
        if a.read_bytes() == b.read_bytes():
            continue
        suffix = a.suffix
        if suffix == ".json":
            found += _json_differences(a, b, name, folders, tuple(stages), volatile)
        elif suffix in (".hdf5", ".h5"):
            found += hdf5_differences(a, b, name)
        elif suffix == ".safetensors":
            found += _safetensors_differences(a, b, name)
        else:
            found += _bytes_differences(a, b, name, folders, masks)
    return found
