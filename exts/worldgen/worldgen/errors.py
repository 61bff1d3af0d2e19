"""The user-error family. Every error the user can fix by changing what they passed (a manifest, a
dataset, a checkpoint, an argument, an output path) is a :class:`WorldgenError` whose message names the
thing and says what was expected; the command line prints it as one line and exits 2. Anything else
that is raised is a bug: it keeps its traceback and the command exits 1.

Each class also derives from the built-in exception a caller would catch without knowing worldgen
(``ValueError`` for content, ``OSError`` for an output that cannot be written).

The storage refusing a write midway (a full disk, a file system remounted read-only) is the user's to
fix too: :func:`disk_fault` recognises it in whatever a writing library raised, and the command line
prints it as one line, exits 2 and keeps everything written before it (a rerun resumes)."""

from __future__ import annotations

import errno
import os
import re


class WorldgenError(Exception):
    """Bad input: one line naming the file, field or argument and what was expected."""


class ArgumentError(WorldgenError, ValueError):
    """An argument out of range or naming something that does not exist (a mask, a camera, a key)."""


class CheckpointError(WorldgenError, ValueError):
    """A folder that is not the model or policy checkpoint it was given as, or not one that fits."""


class CheckpointDamaged(CheckpointError):
    """A checkpoint whose files do not read back (truncated or corrupt, e.g. by a crash of the machine):
    nothing in it can be used; whoever wrote it may remove it and start over."""


class OutputError(WorldgenError, OSError):
    """An output path that cannot be written (its folder cannot be made, or it is a folder)."""


# What the machine's storage can refuse: out of space or quota, a read-only file system, no permission.
# These are the user's to fix (free space, remount, chmod) and the run resumes afterwards.
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})
# Libraries that write for us report the operating system's error inside their own message: HDF5's
# "errno = 28", safetensors' "(os error 28)".
_ERRNO_IN_TEXT = re.compile(r"(?:errno = |os error |\[Errno )(\d+)")
_FILENAME_IN_TEXT = re.compile(r"filename = '([^']+)'")


def disk_fault(exc: BaseException) -> str | None:
    """``file: reason`` when ``exc`` (or what caused it) is the file system refusing (out of space,
    read-only, no permission); None for anything else."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        code = exc.errno if isinstance(exc, OSError) else None
        text = str(exc)
        if code is None and (match := _ERRNO_IN_TEXT.search(text)):
            code = int(match.group(1))
        if code in DISK_ERRNOS:
            name = getattr(exc, "filename", None)
            if name is None and (match := _FILENAME_IN_TEXT.search(text)):
                name = match.group(1)
            where = f"{name}: " if name else ""
            return f"{where}{os.strerror(code)}"
        exc = exc.__cause__ or exc.__context__
    return None
