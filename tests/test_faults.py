"""Faults the machine throws at a run: a full disk at the dataset writer, shards and main files damaged
by a crash, storage errors as whatever library met them reports them. Each ends in one clear line (exit 2)
or a repair, nothing written before is lost, and a rerun once the fault is gone finishes what an
uninterrupted run makes. (SIGKILL in every stage of ``worldgen run``: tests/test_run.py; the long suite
with real full and read-only file systems: bench/faults.py.)"""

from __future__ import annotations

import errno
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from worldgen.dataset import DatasetReader, DatasetWriter
from worldgen.errors import disk_fault

from .conftest import PUSH
from .test_dataset import HEADER, _demo, assert_same_as_uninterrupted

# The CLI with the dataset writer's disk refusing the third demo's shard (ENOSPC, as the OS reports it).
FULL_AT_THIRD_DEMO = """
import errno, sys
import worldgen.dataset as dataset
write = dataset._write_demo
calls = []
def full_disk(group, demo):
    calls.append(1)
    if len(calls) == 3:
        raise OSError(errno.ENOSPC, "No space left on device", group.file.filename)
    write(group, demo)
dataset._write_demo = full_disk
from worldgen.apps.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _seed_command(out: Path, fault: str | None = None) -> list[str]:
    head = [sys.executable, "-c", fault] if fault else [sys.executable, "-m", "worldgen.apps.cli"]
    return [*head, "seed", str(PUSH), "-o", str(out), "--n", "4", "--no-cameras", "-q"]


def test_full_disk_at_the_dataset_writer_keeps_the_demos_and_a_rerun_finishes(tmp_path):
    out = tmp_path / "push.hdf5"
    full = subprocess.run(_seed_command(out, FULL_AT_THIRD_DEMO), capture_output=True, text=True)
    assert full.returncode == 2, full.stderr[-2000:]
    # Warp's native library prints one warning of its own at start-up on a machine without CUDA.
    lines = [line for line in full.stderr.strip().splitlines() if not line.startswith("Warp CUDA warning")]
    assert len(lines) == 1 and "No space left on device" in lines[0] and "demo_2" in lines[0], lines
    # The two demos written before the fault read back; the partial shard is gone.
    with DatasetReader(out) as reader:
        assert reader.names == ["demo_0", "demo_1"]
    assert sorted(p.name for p in Path(f"{out}.parts").iterdir()) == ["demo_0.hdf5", "demo_1.hdf5"]
    again = subprocess.run(_seed_command(out), capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    assert_same_as_uninterrupted(out, 4, tmp_path / "reference.hdf5")


def _three_demos(path: Path) -> DatasetWriter:
    writer = DatasetWriter(path, HEADER)
    for seed in range(3):
        writer.append(_demo(4 + seed, seed))
    return writer


def test_a_damaged_main_file_is_rebuilt_from_its_shards(tmp_path):
    path = tmp_path / "d.hdf5"
    _three_demos(path)
    path.write_bytes(path.read_bytes()[:100])  # a crash of the machine left the main file truncated
    writer = DatasetWriter(path, HEADER)
    assert sorted(writer.demos) == ["demo_0", "demo_1", "demo_2"] and writer.done_seeds() == {0, 1, 2}
    writer.append(_demo(3, 3))
    writer.finalize()
    with DatasetReader(path) as reader:
        assert reader.names == ["demo_0", "demo_1", "demo_2", "demo_3"]
        assert reader.data["demo_2/actions"].shape == (6, 7)


def test_a_damaged_shard_is_written_again(tmp_path):
    path = tmp_path / "d.hdf5"
    _three_demos(path)
    shard = Path(f"{path}.parts") / "demo_2.hdf5"
    shard.write_bytes(shard.read_bytes()[:200])
    writer = DatasetWriter(path, HEADER)
    assert sorted(writer.demos) == ["demo_0", "demo_1"] and writer.done_seeds() == {0, 1}
    writer.append(_demo(6, 2))  # the seed the damaged shard held, simulated again
    writer.finalize()
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["data/demo_2/actions"][()], _demo(6, 2).actions)


FULL_DEVICE = Path("/dev/full")  # Linux's always-full device: every write fails with ENOSPC


@pytest.mark.skipif(not FULL_DEVICE.is_char_device(), reason="no /dev/full on this machine")
def test_storage_faults_are_recognised_in_what_each_library_raises():
    with pytest.raises(OSError) as python, open(FULL_DEVICE, "wb") as handle:
        handle.write(b"x" * 100_000)
    assert disk_fault(python.value) == "No space left on device"
    with pytest.raises(OSError) as hdf5:
        h5py.File("/dev/full", "w")
    assert disk_fault(hdf5.value) == "/dev/full: No space left on device"
    # safetensors names the OS error inside its own exception type; a chained cause counts too.
    rust = RuntimeError("Error while serializing: I/O error: Read-only file system (os error 30)")
    assert disk_fault(rust) == "Read-only file system"
    try:
        try:
            raise OSError(errno.EDQUOT, "Disk quota exceeded", "/data/x.hdf5")
        except OSError as exc:
            raise RuntimeError("saving failed") from exc
    except RuntimeError as chained:
        assert disk_fault(chained) == "/data/x.hdf5: Disk quota exceeded"
    assert disk_fault(ValueError("errno = 2")) is None  # not a storage refusal (ENOENT)
    assert disk_fault(KeyError("x")) is None


def test_a_default_output_the_writer_could_not_use_is_refused_before_any_work():
    """``worldgen compile`` without -o writes NAME_seedN.usda in the working folder: from /proc (a file
    system that refuses new files while permission bits say yes) it stops in one line, exit 2."""
    done = subprocess.run(
        [sys.executable, "-m", "worldgen.apps.cli", "compile", str(PUSH)],
        capture_output=True,
        text=True,
        cwd="/proc",
    )
    assert done.returncode == 2, done.stderr[-2000:]
    lines = [line for line in done.stderr.strip().splitlines() if not line.startswith("Warp CUDA warning")]
    assert len(lines) == 1 and "push_to_target_seed0.usda" in lines[0] and "-o" in lines[0], lines
