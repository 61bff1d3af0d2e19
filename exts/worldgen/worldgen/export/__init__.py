"""Datasets handed to other stacks as they read them, one module per format:

- ``robomimic``: a self-contained copy of one mask (for example only the synthetic demos that passed
  the checks), so a team can give one file to robomimic's trainer;
- ``isaaclab``: the same copy with what Isaac Lab Mimic reads besides (nested scene states,
  ``obs/datagen_info``); robomimic still reads it;
- ``lerobot``: a LeRobot dataset (format v3.0) folder, written with pyarrow (LeRobot itself is not a
  dependency).

Every export is written under a temporary name beside its output and renamed into place, so the output
is either whole or absent, and an export never writes over an existing path.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ArgumentError

FORMATS = ("robomimic", "isaaclab", "lerobot")


def export(
    dataset: str | Path, out: str | Path, fmt: str, mask: str | None = None, videos: bool = False
) -> int:
    """Write ``dataset``'s demos of ``mask`` (every demo when None) to ``out`` in format ``fmt``; returns
    how many demos were written. ``videos`` (lerobot only): camera images as mp4 files."""
    if fmt not in FORMATS:
        raise ArgumentError(f"--format: unknown export format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if videos and fmt != "lerobot":
        raise ArgumentError(f"--videos: a lerobot export option; {fmt} files hold the images as arrays")
    if fmt == "lerobot":
        from .lerobot import export_lerobot

        return export_lerobot(dataset, out, mask, videos)
    from .isaaclab import export_isaaclab
    from .robomimic import export_robomimic

    return (export_robomimic if fmt == "robomimic" else export_isaaclab)(dataset, out, mask)
