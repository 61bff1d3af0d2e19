"""The run's answer and the interval it stands on (made-up rows), and the run folder's lock: no
simulator, no training."""

from __future__ import annotations

import os

import pytest
from worldgen.apps.experiment import pooled
from worldgen.apps.run import verdict

from policies.evaluate import replicate_interval, wilson_interval


def _row(*successes: int, episodes: int = 50) -> dict:
    return {
        "demos": 10,
        "samples": 800,
        **pooled([{"successes": k, "episodes": episodes} for k in successes]),
    }


def test_replicate_interval_widens_with_the_spread_between_replicates():
    agreeing = replicate_interval([30, 31, 29], [50, 50, 50])
    spread = replicate_interval([20, 31, 39], [50, 50, 50])  # the same pooled rate, 0.6
    assert spread[0] < agreeing[0] and spread[1] > agreeing[1]
    # Over-dispersed replicates: the pooled Wilson interval of the same 150 episodes is narrower.
    pooled_lo, pooled_hi = wilson_interval(90, 150)
    assert spread[1] - spread[0] > 2 * (pooled_hi - pooled_lo)
    # Known value: rates 0.4, 0.62, 0.78, mean 0.6, sd 0.1908, t(2) = 4.303 -> half width 0.474.
    assert spread == pytest.approx((0.6 - 0.474, 1.0), abs=2e-3)


def test_replicate_interval_is_never_narrower_than_the_pooled_episodes_allow():
    assert replicate_interval([30, 30, 30], [50, 50, 50]) == wilson_interval(90, 150)  # no spread at all
    # A little spread, less than the episodes' own: still the pooled episodes' interval.
    assert replicate_interval([30, 31, 29], [50, 50, 50]) == wilson_interval(90, 150)
    assert replicate_interval([7], [10]) == wilson_interval(7, 10)
    with pytest.raises(ValueError):
        replicate_interval([], [])


@pytest.mark.parametrize(
    ("seeds", "synthetic", "answer"),
    [
        ((30, 31, 29), (45, 46, 44), "yes"),
        ((45, 46, 44), (30, 31, 29), "no: worse"),
        # Pooled 90/150 vs 118/150: Wilson intervals disjoint ([0.52, 0.68] vs [0.71, 0.85]), but the
        # replicates disagree so much that the replicate-level intervals overlap.
        ((20, 31, 39), (30, 45, 43), "not shown"),
        ((30, 31, 29), (31, 30, 32), "not shown"),
    ],
)
def test_verdict_answers_from_the_replicate_level_intervals(seeds, synthetic, answer):
    rows = {"seeds": _row(*seeds), "seeds+recover": _row(*synthetic)}
    said = verdict(rows["seeds"], rows["seeds+recover"])
    if seeds == (20, 31, 39):  # the case the pooled episodes would have called a gain
        assert rows["seeds+recover"]["ci95"][0] > rows["seeds"]["ci95"][1]
    assert said.split(": ", 1)[1].startswith(answer), said
    assert f"{sum(synthetic)}/150" in said and f"{sum(seeds)}/150" in said and "3 policy seeds" in said


def test_a_second_run_on_a_locked_folder_refuses_in_one_line(tmp_path, capsys):
    """Two `worldgen run`s on one folder would race: the second refuses before writing anything; a lock
    left by a killed run is taken over, and the lock goes when the run ends."""
    import socket
    import subprocess
    import sys

    from worldgen.apps.cli import main
    from worldgen.apps.run import folder_lock

    from .conftest import PUSH

    folder = tmp_path / "run"
    folder.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (folder / ".lock").write_text(f"{socket.gethostname()}:{holder.pid}")
        assert main(["run", str(PUSH), "-o", str(folder), "--profile", "tiny"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"another worldgen run (process {holder.pid})" in err, err
        assert sorted(p.name for p in folder.iterdir()) == [".lock"]  # nothing written
    finally:
        holder.kill()
        holder.wait()
    with folder_lock(folder):  # the holder is dead: its lock is taken over
        assert (folder / ".lock").read_text().endswith(f":{os.getpid()}")
    assert not (folder / ".lock").exists()
