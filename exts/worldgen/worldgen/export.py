"""Datasets handed to other stacks as they read them. ``robomimic``: a self-contained copy of one mask
of a worldgen dataset (for example only the synthetic demos that passed the checks), so a team can give
one file to robomimic's trainer. The copy keeps the demos' names, arrays and attributes byte for byte;
its masks are recomputed from the demos it holds."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .dataset import DatasetError, DatasetWriter, demo_names, open_dataset, read_demo, read_header
from .errors import OutputError

FORMATS = ("robomimic",)


def export_robomimic(dataset: str | Path, out: str | Path, mask: str | None = None) -> int:
    """Copy the demos of ``mask`` (every demo when None) into a new file ``out``; returns how many. The
    copy is written under a temporary name and renamed, so ``out`` is either whole or absent."""
    out = Path(out)
    if out.exists():
        raise OutputError(f"{out}: already exists; an export never overwrites")
    with open_dataset(dataset) as f:
        names = demo_names(f, mask)
        if not names:
            raise DatasetError(f"{dataset}: mask {mask!r} holds no demos")
        staging = out.with_name(f".{out.name}.exporting")
        shutil.rmtree(staging, ignore_errors=True)
        try:
            staging.mkdir(parents=True)
        except OSError as exc:
            raise OutputError(f"{out}: its folder cannot be made ({exc.strerror})") from None
        try:
            writer = DatasetWriter(staging / out.name, read_header(f))
            for name in names:
                writer.append(read_demo(f["data"][name]), name)
            writer.finalize()
            os.replace(staging / out.name, out)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return len(names)
