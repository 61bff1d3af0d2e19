"""Background jobs for the window: ``worldgen`` commands (seed recording, ``worldgen run`` up to a stage,
previews) in subprocesses, so nothing long ever runs on the UI thread. A job is followed by polling:
its state, its progress (the ``done/total`` pair on its last line of output: tqdm bars and ``worldgen run``
progress lines both print one), the tail of its log, and cancelled by stopping its process group.

A job with a *staged* output writes it into a private folder beside the target and moves it into place
only when the command succeeds; cancelled or failed, the folder is removed, so no partial output is
ever left where the target is. ``worldgen run`` jobs are not staged: a run folder is resumable by
design (an interrupted stage stays marked ``running`` and resumes next time; finished stages are kept).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..files import swap_in_folder

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
FINISHED = (SUCCEEDED, FAILED, CANCELLED)
OUTPUT = "{output}"  # in a job's arguments: where the command writes (the staging path when staged)
_PROGRESS = re.compile(r"(\d+)/(\d+)")
CANCEL_GRACE_S = 10.0  # SIGINT first (the CLI stops cleanly); then the whole group is killed
LOG_WINDOW = 65536  # bytes of a log read to follow a job


@dataclass
class Job:
    """One ``worldgen`` command in a subprocess. ``argv`` are the CLI's arguments, with :data:`OUTPUT`
    standing for ``output``."""

    name: str
    argv: Sequence[str]
    output: Path
    staged: bool = True
    python: str = sys.executable
    state: str = QUEUED
    returncode: int | None = None
    reason: str = ""  # why a job failed, when it is not in its log
    started: float | None = None
    ended: float | None = None
    _process: subprocess.Popen | None = field(default=None, repr=False)
    _log: Path | None = field(default=None, repr=False)

    @property
    def work_folder(self) -> Path:
        return self.output.with_name(f".{self.output.name}.job")

    @property
    def log_path(self) -> Path:
        """The command's stdout and stderr; kept beside the output (it is the job's record)."""
        return self.output.with_name(f"{self.output.name}.log")

    def start(self, env: dict[str, str] | None = None) -> None:
        if self.state != QUEUED:
            raise RuntimeError(f"job {self.name!r} is {self.state}; make a new Job to run it again")
        target = self.output
        if self.staged:
            shutil.rmtree(self.work_folder, ignore_errors=True)
            self.work_folder.mkdir(parents=True)
            target = self.work_folder / self.output.name
        else:
            self.output.parent.mkdir(parents=True, exist_ok=True)
        argv = [str(target) if a == OUTPUT else a for a in self.argv]
        self._log = self.log_path
        try:
            with open(self._log, "ab") as log:  # appended: a resumed run keeps its earlier log
                log.write(f"\n# {time.strftime('%Y-%m-%d %H:%M:%S')} worldgen {' '.join(argv)}\n".encode())
                log.flush()
                self._process = subprocess.Popen(
                    [self.python, "-m", "worldgen.apps.cli", *argv],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
                    # its own process group: cancel stops it and everything it started (Ray workers)
                    start_new_session=os.name != "nt",
                    creationflags=subprocess.CREATE_NEW_PROCESS_GROUP if os.name == "nt" else 0,
                )
        except OSError:
            if self.staged:
                shutil.rmtree(self.work_folder, ignore_errors=True)
            raise
        self.started, self.state = time.monotonic(), RUNNING

    def poll(self) -> str:
        """Update and return the state; a finished staged job's output is moved into place here."""
        if self.state != RUNNING or self._process is None:
            return self.state
        code = self._process.poll()
        if code is None:
            return self.state
        self._finish(code)
        return self.state

    def wait(self, timeout: float | None = None) -> str:
        if self._process is not None and self.state == RUNNING:
            self._finish(self._process.wait(timeout))
        return self.state

    def _finish(self, code: int) -> None:
        self.returncode, self.ended = code, time.monotonic()
        if self.state == CANCELLED:
            pass
        elif code == 0:
            try:
                if self.staged:
                    produced = self.work_folder / self.output.name
                    if produced.is_dir():
                        swap_in_folder(produced, self.output)
                    elif produced.exists():
                        os.replace(produced, self.output)
                self.state = SUCCEEDED
            except OSError as exc:  # the output could not be put in place: the job failed, said once
                self.state, self.reason = FAILED, f"could not move the output into place: {exc}"
        else:
            self.state = FAILED
        if self.staged:
            shutil.rmtree(self.work_folder, ignore_errors=True)

    def stop(self) -> None:
        """Ask the command to stop (SIGINT to its group: the CLI stops cleanly) without waiting; the
        next :meth:`cancel` or :meth:`poll` finishes it."""
        if self.state == RUNNING and self._process is not None and self._process.poll() is None:
            self._signal(signal.CTRL_BREAK_EVENT if os.name == "nt" else signal.SIGINT)

    def cancel(self) -> None:
        """Stop the command and everything it started; a staged job leaves nothing behind. A command that
        has already finished is finished as it ended (its output kept)."""
        if self.state == QUEUED:
            self.state = CANCELLED
            return
        if self.state != RUNNING or self._process is None:
            return
        process = self._process
        if process.poll() is not None:
            self._finish(process.returncode)
            return
        self.state = CANCELLED
        self.stop()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(CANCEL_GRACE_S)
        self._signal(signal.SIGKILL if os.name != "nt" else signal.SIGTERM)  # whatever it left running
        process.wait()
        self._finish(process.returncode)

    def _signal(self, sig: int) -> None:
        try:
            if os.name == "nt":
                self._process.send_signal(sig)
            else:
                os.killpg(self._process.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass  # the group is gone already

    # -- following ---------------------------------------------------------------------------------

    def _lines(self) -> list[str]:
        """The last lines of the log (its last 64 KB), each as it last showed: a tqdm bar rewrites its
        line with carriage returns, so only a line's last state is kept."""
        if self._log is None or not self._log.exists():
            return []
        with open(self._log, "rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - LOG_WINDOW))
            text = log.read().decode("utf-8", errors="replace")
        shown = (line.rstrip("\r").rsplit("\r", 1)[-1].strip() for line in text.split("\n"))
        return [line for line in shown if line and not line.startswith("# ")]

    def log_tail(self, lines: int = 12) -> list[str]:
        """The last lines of output, with the staging path written as the output it became."""
        tail = self._lines()[-lines:]
        if not self.staged:
            return tail
        staging = str(self.work_folder / self.output.name)
        return [line.replace(staging, str(self.output)) for line in tail]

    @property
    def progress(self) -> tuple[int, int] | None:
        """``(done, total)``: the first such pair on the last line of output (a tqdm bar's count, a
        ``worldgen run`` progress line's), or ``None`` when that line has none."""
        lines = self._lines()
        if not lines:
            return None
        for done, total in _PROGRESS.findall(lines[-1]):
            if 0 <= int(done) <= int(total) and int(total) > 0:
                return int(done), int(total)
        return None

    @property
    def elapsed(self) -> float:
        if self.started is None:
            return 0.0
        return (self.ended or time.monotonic()) - self.started

    def describe(self) -> str:
        """One line for the window: name, state, progress, elapsed time."""
        text = f"{self.name}: {self.state}"
        progress = self.progress
        if progress is not None and self.state == RUNNING:
            text += f" {progress[0]}/{progress[1]}"
        if self.state == FAILED:
            text += f" ({self.reason or f'exit {self.returncode}'})"
        return f"{text}, {self.elapsed:.0f} s"
