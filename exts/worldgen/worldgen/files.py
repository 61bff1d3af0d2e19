"""Writing files and folders so that a crash leaves the old version or the new one, never a mix."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def temporary_beside(path: Path) -> Path:
    """A new empty file beside ``path`` (same folder, so a rename replaces ``path`` atomically), with the
    permissions a plain new file gets (mkstemp makes 0600; outputs are as readable as any file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    return Path(tmp)


@contextlib.contextmanager
def replaced_atomically(path: Path) -> Iterator[Path]:
    """A temporary file beside ``path`` to write; renamed over ``path`` when the block ends, removed when it
    raises (a full disk gets the partial file's space back, and ``path`` stays as it was)."""
    tmp = temporary_beside(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomically(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path`` and rename it, so a reader never sees a partial file."""
    with replaced_atomically(path) as tmp:
        tmp.write_bytes(data)


def staging_folder(target: Path) -> Path:
    """An empty folder beside ``target`` to write its next version into (then :func:`swap_in_folder`)."""
    staging = target.with_name(target.name + ".saving")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def swap_in_folder(staging: Path, target: Path) -> None:
    """Put the fully written ``staging`` folder in ``target``'s place; the previous version is deleted only
    once the new one is in (:func:`recover_folder` undoes a crash between the two renames)."""
    if not target.exists():
        os.replace(staging, target)
        return
    old = target.with_name(target.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(target, old)
    os.replace(staging, target)
    shutil.rmtree(old)


def recover_folder(target: Path) -> None:
    """Put the previous version back when a crash in :func:`swap_in_folder` left ``target`` missing."""
    old = target.with_name(target.name + ".old")
    if not target.exists() and old.is_dir():
        os.replace(old, target)
