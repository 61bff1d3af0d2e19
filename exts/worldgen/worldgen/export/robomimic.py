"""A self-contained copy of one mask of a worldgen dataset in robomimic's layout. The copy keeps the
demos' names, arrays and attributes byte for byte; its masks are recomputed from the demos it holds."""

from __future__ import annotations

from pathlib import Path

import h5py

from ..dataset import DatasetWriter, open_dataset, read_demo, read_header
from .staging import selected_demos, staged


def copy_demos(f: h5py.File, names: list[str], path: Path) -> None:
    """Write ``names`` of the open dataset ``f`` to a new, finalized dataset at ``path``."""
    writer = DatasetWriter(path, read_header(f))
    for name in names:
        writer.append(read_demo(f["data"][name]), name)
    writer.finalize()


def export_robomimic(dataset: str | Path, out: str | Path, mask: str | None = None) -> int:
    """Copy the demos of ``mask`` (every demo when None) into a new file ``out``; returns how many."""
    with open_dataset(dataset) as f:
        names = selected_demos(f, mask)
        with staged(out) as path:
            copy_demos(f, names, path)
    return len(names)
