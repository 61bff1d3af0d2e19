"""What every export shares: the demos it takes, and an output that is either whole or absent."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py

from ..dataset import CLIP, DatasetError, demo_names
from ..errors import OutputError


def selected_demos(f: h5py.File, mask: str | None) -> list[str]:
    """The demos of ``mask`` in ``f`` (every demo when None); an empty selection is a DatasetError."""
    names = demo_names(f, mask)
    if not names:
        raise DatasetError(f"{f.filename}: mask {mask!r} holds no demos")
    clips = [n for n in names if f["data"][n].attrs.get("source") == CLIP]
    if clips:
        raise DatasetError(
            f"{f.filename}: {clips[0]} is an unlabelled clip (images alone); exports take demos"
        )
    return names


@contextmanager
def staged(out: str | Path) -> Iterator[Path]:
    """A path to write the export to (file or folder), renamed to ``out`` when the block ends without an
    error; whatever was staged is removed either way."""
    out = Path(out)
    if out.exists():
        raise OutputError(f"{out}: already exists; an export never overwrites")
    staging = out.with_name(f".{out.name}.exporting")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
    except OSError as exc:
        raise OutputError(f"{out}: its folder cannot be made ({exc.strerror})") from None
    try:
        yield staging / out.name
        os.replace(staging / out.name, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
