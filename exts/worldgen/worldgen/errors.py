"""The user-error family. Every error the user can fix by changing what they passed (a manifest, a
dataset, a checkpoint, an argument, an output path) is a :class:`WorldgenError` whose message names the
thing and says what was expected; the command line prints it as one line and exits 2. Anything else
that is raised is a bug: it keeps its traceback and the command exits 1.

Each class also derives from the built-in exception a caller would catch without knowing worldgen
(``ValueError`` for content, ``OSError`` for an output that cannot be written)."""

from __future__ import annotations


class WorldgenError(Exception):
    """Bad input: one line naming the file, field or argument and what was expected."""


class ArgumentError(WorldgenError, ValueError):
    """An argument out of range or naming something that does not exist (a mask, a camera, a key)."""


class CheckpointError(WorldgenError, ValueError):
    """A folder that is not the model or policy checkpoint it was given as, or not one that fits."""


class OutputError(WorldgenError, OSError):
    """An output path that cannot be written (its folder cannot be made, or it is a folder)."""
