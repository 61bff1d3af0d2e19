"""Faults injected into ``worldgen run --profile tiny``, and whether the run survives each with nothing lost
and nothing stale: its outputs after a resume equal an uninterrupted run's (worldgen.apps.run_outputs:
datasets array by array, checkpoints tensor by tensor, policies, eval.json, run.json's summaries).

Groups (each trial seeded, its result appended to WORK/trials.jsonl, so a stopped bench goes on where it
was; bench/results/faults.json is rewritten after every group):
- kill:   per stage, SIGKILL of the whole process group at a random moment inside that stage (every fourth
          trial: twice, the second inside the resumed run), then a resume. A trial starts from a copy of
          the reference run with that stage and the later ones removed, and runs ``--until`` the stage;
          the later stages only read its outputs, which must equal the reference's.
- cache:  SIGKILL inside the run's own bookkeeping (a stage marker or run.json): after the temporary file
          is written and before it is renamed, or right after the rename.
- ray:    a Ray worker killed mid-item while the seeds are recorded with --workers 2.
- disk:   a full disk (a size-limited tmpfs, two sizes), the output made read-only between stages
          (tmpfs remounted ro), a training state truncated by a crash, a dataset shard and a dataset's main
          file truncated by a crash, a second run on a locked folder, an output path on /proc. The tmpfs
          cases need ``mount`` (root); without it they are reported as not run, with the reason.

    python bench/faults.py --work data/faults [--trials 20] [--jobs 2] [--time-limit 120]

Leave the library's sources alone while it runs: the stage keys hold their hash, so a trial started
after an edit would remake the stages its snapshot holds (documents and tests may change; the code version
the run records and its report shows is left out of the comparison for that reason).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from worldgen.apps.cache import code_version
from worldgen.apps.run import STAGES
from worldgen.apps.run_outputs import VOLATILE_KEYS, run_differences
from worldgen.files import write_atomically

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "scenarios" / "push_to_target.yaml"
RESULTS = ROOT / "bench" / "results"
WARP_NOTICE = "Warp CUDA warning"  # Warp's own start-up line on a machine without CUDA
CODE_ON_PAGE = re.compile(rb"code \d[^<\n]*")  # the report page's "code 0.1.0 (commit)"

# A child that dies inside the run's bookkeeping: its N-th _write_json, counted from the first marker of
# FAULT_STAGE, is SIGKILLed after the temporary file is written ("temporary") or right after the rename
# ("renamed").
CACHE_CHILD = """
import os, signal, sys
import worldgen.apps.run as run
from worldgen.files import temporary_beside
target, moment = int(os.environ["FAULT_WRITE"]), os.environ["FAULT_MOMENT"]
stage = os.environ["FAULT_STAGE"]
write, calls = run._write_json, []
def dying(path, data):
    if calls or path.parent.name == stage:  # counted from the stage's first marker
        calls.append(path)
    if len(calls) == target and moment == "temporary":
        temporary_beside(path).write_bytes(b'{"partial": ')
        os.kill(os.getpid(), signal.SIGKILL)
    write(path, data)
    if len(calls) == target:
        os.kill(os.getpid(), signal.SIGKILL)
run._write_json = dying
from worldgen.apps.cli import main
sys.exit(main(sys.argv[1:]))
"""


def run_command(folder: Path, *extra: str, child: str | None = None) -> list[str]:
    head = [sys.executable, "-c", child] if child else [sys.executable, "-m", "worldgen.apps.cli"]
    return [*head, "run", str(MANIFEST), "-o", str(folder), "--profile", "tiny", *extra]


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
    env.setdefault("WARP_CACHE_PATH", str(ROOT / ".cache" / "warp"))
    return env


def status(folder: Path, stage: str) -> str | None:
    try:
        return json.loads((folder / stage / "stage.json").read_text())["status"]
    except (OSError, ValueError, KeyError):
        return None


def start(command: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(),
        start_new_session=True,
    )


def finish(command: list[str], timeout: float = 1200) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, env=environment(), timeout=timeout)


def user_lines(stderr: str) -> list[str]:
    return [line for line in stderr.strip().splitlines() if line and not line.startswith(WARP_NOTICE)]


def kill_inside(folder: Path, stage: str, seconds: float, rng: np.random.Generator, *extra: str) -> dict:
    """Start a run, SIGKILL it at a random moment inside ``stage`` (up to ``seconds`` after it starts)."""
    marker = folder / stage / "stage.json"
    before = marker.stat().st_mtime_ns if marker.exists() else None  # a resumed stage rewrites its marker
    process = start(run_command(folder, "--until", stage, *extra))
    deadline = time.monotonic() + 900

    def started() -> bool:
        return status(folder, stage) == "running" and marker.stat().st_mtime_ns != before

    while not started() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    delay = float(rng.uniform(0.0, 1.0) * seconds)
    time.sleep(delay)
    alive = process.poll() is None
    if alive:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    stderr = process.stderr.read() if process.stderr else ""
    return {
        "delay_s": round(delay, 2),
        "killed": alive,
        "in_stage": status(folder, stage) == "running",
        "rc": process.returncode,
        "stderr": stderr[-500:] if not alive and process.returncode else "",
    }


def snapshot(reference: Path, stage: str, into: Path) -> None:
    """The reference run as it stood when ``stage`` was about to start."""
    shutil.rmtree(into, ignore_errors=True)
    into.mkdir(parents=True)
    shutil.copy2(reference / "manifest.yaml", into / "manifest.yaml")
    for name in STAGES[: STAGES.index(stage)]:
        shutil.copytree(reference / name, into / name)


def compare(reference: Path, folder: Path, stages: tuple[str, ...]) -> list[str]:
    # The tree may be edited while the bench runs (docs, tests): the commit's "+dirty" mark is not an output.
    volatile = VOLATILE_KEYS | {"code_version"}
    return run_differences(reference, folder, stages=stages, volatile=volatile, masks=(CODE_ON_PAGE,))


# --------------------------------------------------------------------------------------------------
# Groups


def kill_trial(reference: Path, seconds: dict[str, float], work: Path, stage: str, trial: int) -> dict:
    rng = np.random.default_rng([STAGES.index(stage), trial])
    folder = work / f"kill_{stage}_{trial}"
    snapshot(reference, stage, folder)
    kills = [kill_inside(folder, stage, seconds[stage], rng)]
    if trial % 4 == 3:  # two kills in a row: the second inside the resumed run
        kills.append(kill_inside(folder, stage, seconds[stage], rng))
    return resumed(
        reference, folder, stage, {"group": "kill", "stage": stage, "trial": trial, "kills": kills}
    )


def resumed(reference: Path, folder: Path, stage: str, result: dict) -> dict:
    """``result`` with how the run resumed ``--until stage`` went and whether that stage's outputs equal the
    reference's; the trial's folder is removed when they do (kept to look at when not)."""
    done = finish(run_command(folder, "--until", stage))
    differences = compare(reference, folder, (stage,)) if done.returncode == 0 else []
    result.update(
        resumed_rc=done.returncode,
        differences=differences[:10],
        equal=done.returncode == 0 and not differences,
    )
    if done.returncode:
        result["stderr"] = done.stderr[-1500:]
    if result["equal"]:
        shutil.rmtree(folder)
    return result


def cache_trial(reference: Path, work: Path, stage: str, trial: int) -> dict:
    """SIGKILL at the 1st, 2nd or 3rd bookkeeping write of ``stage`` (marker running, marker done,
    run.json), at one of the two moments."""
    rng = np.random.default_rng([100 + STAGES.index(stage), trial])
    folder = work / f"cache_{stage}_{trial}"
    snapshot(reference, stage, folder)
    write, moment = int(rng.integers(1, 4)), ("temporary", "renamed")[int(rng.integers(0, 2))]
    env = {**environment(), "FAULT_WRITE": str(write), "FAULT_MOMENT": moment, "FAULT_STAGE": stage}
    first = subprocess.run(
        run_command(folder, "--until", stage, child=CACHE_CHILD), capture_output=True, text=True, env=env
    )
    killed = first.returncode == -signal.SIGKILL
    trial_record = {"group": "cache", "stage": stage, "trial": trial, "write": write, "moment": moment}
    return resumed(reference, folder, stage, {**trial_record, "killed": killed})


def _ray_workers() -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                text = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text.startswith("ray::") and "Worker" in text:
                found.append(int(entry.name))
    return found


def ray_trial(reference: Path, seconds: dict[str, float], work: Path, trial: int) -> dict:
    rng = np.random.default_rng([200, trial])
    folder = work / f"ray_{trial}"
    snapshot(reference, "seeds", folder)
    process = start(run_command(folder, "--until", "seeds", "--workers", "2"))
    deadline = time.monotonic() + 600
    while not _ray_workers() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    while status(folder, "seeds") != "running" and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(float(rng.uniform(0.2, 0.6)) * seconds["seeds"])
    victims = _ray_workers()
    killed = None
    if victims and process.poll() is None:
        killed = victims[int(rng.integers(0, len(victims)))]
        os.kill(killed, signal.SIGKILL)
    process.wait()
    stderr = process.stderr.read() if process.stderr else ""
    differences = compare(reference, folder, ("seeds",)) if process.returncode == 0 else []
    result = {
        "group": "ray",
        "stage": "seeds",
        "trial": trial,
        "worker_killed": killed is not None,
        "rc": process.returncode,
        "differences": differences[:10],
        "equal": process.returncode == 0 and not differences,
    }
    if process.returncode:
        result["stderr"] = stderr[-1500:]
    if result["equal"]:
        shutil.rmtree(folder)
    return result


class Tmpfs:
    """A size-limited tmpfs (``mount`` needs root); :meth:`remount` changes its size or makes it ro/rw."""

    def __init__(self, path: Path, size_mb: int):
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)],
            check=True,
            capture_output=True,
        )

    def remount(self, option: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{option}", str(self.path)], check=True, capture_output=True)

    def close(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], capture_output=True)


def can_mount(work: Path) -> str | None:
    """None when a tmpfs can be mounted here, else why not."""
    try:
        Tmpfs(work / "probe_mount", 1).close()
    except (subprocess.CalledProcessError, OSError) as exc:
        return f"cannot mount a tmpfs ({getattr(exc, 'stderr', '') or exc})".strip()
    return None


def one_line(done: subprocess.CompletedProcess) -> bool:
    return done.returncode == 2 and len(user_lines(done.stderr)) == 1


def refusal(fault: str, done: subprocess.CompletedProcess) -> dict:
    """A disk-group record of a command ``fault`` must stop in one line with exit 2."""
    return {
        "group": "disk",
        "fault": fault,
        "rc": done.returncode,
        "one_line": one_line(done),
        "message": user_lines(done.stderr)[-1:],
    }


def full_disk_trial(reference: Path, work: Path, fraction: float, total_mb: float) -> dict:
    """The run on a tmpfs ``fraction`` of the space it needs: it stops with one line (exit 2), keeps what
    it finished, and once the disk grows a rerun completes to the reference's outputs."""
    size = max(4, int(total_mb * fraction))
    disk = Tmpfs(work / f"full_{int(fraction * 100)}", size)
    folder = disk.path / "run"
    try:
        full = finish(run_command(folder))
        finished = [s for s in STAGES if status(folder, s) == "done"]
        kept = compare(reference, folder, tuple(finished)) if finished else []
        disk.remount(f"size={int(total_mb * 2) + 64}m")
        again = finish(run_command(folder))
        differences = compare(reference, folder, STAGES) if again.returncode == 0 else []
        return {
            **refusal(f"full disk ({size} MB of the {total_mb:.0f} MB a run needs)", full),
            "stages_finished_before": finished,
            "finished_stages_intact": not kept,
            "rerun_rc": again.returncode,
            "differences": differences[:10],
            "equal": again.returncode == 0 and not differences and not kept,
            "survived": one_line(full) and again.returncode == 0 and not differences and not kept,
        }
    finally:
        disk.close()


def read_only_trial(reference: Path, work: Path, stage: str, total_mb: float) -> dict:
    """The output folder made read-only just before ``stage``: one line, exit 2; writable again, the rerun
    completes to the reference's outputs."""
    disk = Tmpfs(work / f"ro_{stage}", int(total_mb * 2) + 64)
    folder = disk.path / "run"
    try:
        snapshot(reference, stage, folder)
        disk.remount("ro")
        refused = finish(run_command(folder))
        disk.remount("rw")
        again = finish(run_command(folder))
        differences = (
            compare(reference, folder, STAGES[STAGES.index(stage) :]) if again.returncode == 0 else []
        )
        return {
            **refusal(f"output folder read-only before {stage}", refused),
            "rerun_rc": again.returncode,
            "differences": differences[:10],
            "equal": again.returncode == 0 and not differences,
            "survived": one_line(refused) and again.returncode == 0 and not differences,
        }
    finally:
        disk.close()


def damaged_trial(reference: Path, seconds: dict[str, float], work: Path, what: str) -> dict:
    """A crash of the machine left a file truncated in an interrupted stage: ``checkpoint`` (the world
    model's training state), ``shard`` (the newest seed demo's shard) or ``main`` (seeds.hdf5 itself)."""
    stage = "world_model" if what == "checkpoint" else "seeds"
    folder = work / f"damaged_{what}"
    snapshot(reference, stage, folder)
    process = start(run_command(folder, "--until", stage))
    if what == "checkpoint":
        target = folder / "world_model" / "checkpoint" / "training_state.safetensors"
        ready = target.exists
    else:
        parts = folder / "seeds" / "seeds.hdf5.parts"
        ready = lambda: len(list(parts.glob("demo_*.hdf5"))) >= 2  # noqa: E731
    deadline = time.monotonic() + 600
    while not ready() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    if what == "shard":
        target = max(parts.glob("demo_*.hdf5"), key=lambda p: int(p.stem.split("_")[1]))
    elif what == "main":
        target = folder / "seeds" / "seeds.hdf5"
    size = target.stat().st_size
    with open(target, "r+b") as handle:
        handle.truncate(size // 3)
    done = finish(run_command(folder, "--until", stage))
    differences = compare(reference, folder, (stage,)) if done.returncode == 0 else []
    return {
        "group": "disk",
        "fault": f"{target.relative_to(folder)} truncated to a third by a crash ({what})",
        "rerun_rc": done.returncode,
        "said": [line for line in done.stdout.splitlines() if "does not read back" in line][:1],
        "differences": differences[:10],
        "equal": done.returncode == 0 and not differences,
        "survived": done.returncode == 0 and not differences,
        **({"stderr": done.stderr[-1500:]} if done.returncode else {}),
    }


def lock_trial(reference: Path, work: Path) -> dict:
    folder = work / "locked"
    snapshot(reference, "eval", folder)
    first = start(run_command(folder))
    deadline = time.monotonic() + 300
    while not (folder / ".lock").exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    second = finish(run_command(folder))
    first.wait()
    differences = compare(reference, folder, ("eval", "report")) if first.returncode == 0 else []
    return {
        **refusal("a second run on the folder while the first runs", second),
        "first_rc": first.returncode,
        "differences": differences[:10],
        "survived": one_line(second) and first.returncode == 0 and not differences,
    }


def proc_trial() -> dict:
    t0 = time.perf_counter()
    command = [
        sys.executable,
        "-m",
        "worldgen.apps.cli",
        "seed",
        str(MANIFEST),
        "-o",
        "/proc/forbidden.hdf5",
        "--n",
        "1",
        "--no-cameras",
    ]
    done = finish(command)
    return {
        **refusal("output path on /proc (permission bits say yes, the file system says no)", done),
        "seconds": round(time.perf_counter() - t0, 1),
        "survived": one_line(done) and "simulat" not in done.stdout,
    }


# --------------------------------------------------------------------------------------------------


def summarise(trials: list[dict], meta: dict) -> dict:
    by_stage: dict[str, dict[str, Any]] = {}
    for group in ("kill", "cache"):
        for stage in STAGES:
            rows = [t for t in trials if t["group"] == group and t["stage"] == stage]
            if not rows:
                continue
            kills = (
                sum(sum(k["killed"] for k in t["kills"]) for t in rows)
                if group == "kill"
                else sum(t["killed"] for t in rows)
            )
            entry = by_stage.setdefault(stage, {})
            entry[group] = {
                "trials": len(rows),
                "kills": int(kills),
                "kills_inside_the_stage": int(sum(k["in_stage"] for t in rows for k in t.get("kills", []))),
                "two_kills": sum(len(t.get("kills", [])) == 2 for t in rows),
                "resumed": sum(t["resumed_rc"] == 0 for t in rows),
                "equal_to_uninterrupted": sum(t["equal"] for t in rows),
            }
    ray = [t for t in trials if t["group"] == "ray"]
    disk = [t for t in trials if t["group"] == "disk"]
    return {
        **meta,
        "stages": by_stage,
        "ray": {
            "trials": len(ray),
            "workers_killed": sum(t["worker_killed"] for t in ray),
            "equal_to_uninterrupted": sum(t["equal"] for t in ray),
        },
        "disk": disk,
        "all_equal": all(t.get("equal", t.get("survived", False)) for t in trials if t["group"] != "disk")
        and all(t.get("survived", False) for t in disk if not t.get("not_run")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--trials", type=int, default=20, help="kill trials per stage")
    parser.add_argument("--cache-trials", type=int, default=1, help="bookkeeping kills per stage")
    parser.add_argument("--ray-trials", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2, help="trials run side by side")
    parser.add_argument("--time-limit", type=float, default=150.0, help="minutes; the rest is left for later")
    parser.add_argument("--groups", default="kill,cache,ray,disk")
    args = parser.parse_args()
    started = time.monotonic()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    log = work / "trials.jsonl"
    lock = threading.Lock()
    trials = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    done_ids = {t["id"] for t in trials}

    reference = work / "reference"
    if not (reference / "run.json").exists() or "verdict" not in json.loads(
        (reference / "run.json").read_text()
    ):
        print("reference: an uninterrupted tiny run", flush=True)
        shutil.rmtree(reference, ignore_errors=True)
        made = finish(run_command(reference))
        if made.returncode:
            sys.exit(made.stderr[-3000:])
    record = json.loads((reference / "run.json").read_text())
    seconds = {s: float(record["stages"][s]["made_in_seconds"]) for s in STAGES}
    total_mb = sum(p.stat().st_size for p in reference.rglob("*") if p.is_file()) / 2**20
    meta = {
        "bench": "faults",
        "profile": "tiny",
        "manifest": MANIFEST.name,
        "code_version": code_version(),
        "reference_stage_seconds": seconds,
        "machine": "2-core CPU development machine, no GPU; trials run two at a time, one thread each",
    }

    def record_trial(trial_id: str, result: dict) -> None:
        result["id"] = trial_id
        with lock:
            trials.append(result)
            with open(log, "a") as handle:
                handle.write(json.dumps(result) + "\n")
            ok = result.get("equal", result.get("survived"))
            print(f"{time.monotonic() - started:7.0f} s  {trial_id}: {'ok' if ok else 'FAILED'}", flush=True)

    def out_of_time() -> bool:
        return time.monotonic() - started > args.time_limit * 60

    def write_results() -> None:
        summary = summarise(trials, {**meta, "complete": not out_of_time()})
        write_atomically(RESULTS / "faults.json", (json.dumps(summary, indent=2) + "\n").encode())

    groups = args.groups.split(",")
    jobs: list[tuple[str, Any]] = []
    if "kill" in groups:
        for trial in range(args.trials):
            for stage in STAGES:
                jobs.append(
                    (
                        f"kill/{stage}/{trial}",
                        lambda s=stage, t=trial: kill_trial(reference, seconds, work, s, t),
                    )
                )
    if "cache" in groups:
        for trial in range(args.cache_trials):
            for stage in STAGES:
                jobs.append(
                    (f"cache/{stage}/{trial}", lambda s=stage, t=trial: cache_trial(reference, work, s, t))
                )
    parallel = [(i, f) for i, f in jobs if i not in done_ids]
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        futures = {}
        for trial_id, func in parallel:
            futures[pool.submit(lambda f=func: None if out_of_time() else f())] = trial_id
        for future in concurrent.futures.as_completed(futures):
            result = future.result()
            if result is not None:
                record_trial(futures[future], result)
    write_results()

    serial: list[tuple[str, Any]] = []
    if "ray" in groups:
        serial += [
            (f"ray/{t}", lambda t=t: ray_trial(reference, seconds, work, t)) for t in range(args.ray_trials)
        ]
    if "disk" in groups:
        serial += [("disk/proc", proc_trial), ("disk/lock", lambda: lock_trial(reference, work))]
        serial += [
            (f"disk/damaged_{w}", lambda w=w: damaged_trial(reference, seconds, work, w))
            for w in ("checkpoint", "shard", "main")
        ]
        why_not = can_mount(work)
        mounted = [
            (f"disk/full_{int(f * 100)}", lambda f=f: full_disk_trial(reference, work, f, total_mb))
            for f in (0.1, 0.5)
        ]
        mounted += [
            (f"disk/read_only_{s}", lambda s=s: read_only_trial(reference, work, s, total_mb))
            for s in ("world_model", "policies")
        ]
        if why_not:
            for trial_id, _ in mounted:
                if trial_id not in done_ids:
                    record_trial(trial_id, {"group": "disk", "fault": trial_id, "not_run": why_not})
        else:
            serial += mounted
    for trial_id, func in serial:
        if trial_id in done_ids or out_of_time():
            continue
        record_trial(trial_id, func())
        write_results()
    write_results()
    print(json.dumps(summarise(trials, meta)["stages"], indent=1)[:3000])


if __name__ == "__main__":
    main()
