"""Data-parallel policy training as torchrun starts it: 2 CPU processes on the gloo backend follow the
loss curve of one process with the same global batch, within float tolerance."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

TWO_RANKS = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def _on_two_ranks(*args: str) -> subprocess.CompletedProcess:
    """``worldgen ARGS`` as torchrun starts it on 2 CPU ranks (gloo)."""
    command = [*TWO_RANKS, "-m", "worldgen.apps.cli", *args, "-q"]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


def test_two_ranks_follow_the_loss_curve_of_one_process(seeds, tmp_path):
    from policies.pretrained import policy_meta
    from policies.train import train_bc

    one = train_bc(seeds, tmp_path / "one", "bc-mlp", steps=40, batch_size=16)
    done = _on_two_ranks(
        "train-policy", str(seeds), "--algo", "bc-mlp", "-o", str(tmp_path / "two"), "--steps", "40",
        "--batch-size", "16",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    two = policy_meta(tmp_path / "two")
    assert two["data_parallel_ranks"] == 2 and one["data_parallel_ranks"] == 1
    assert len(two["loss_curve"]) == len(one["loss_curve"]) == 4
    np.testing.assert_allclose(two["loss_curve"], one["loss_curve"], rtol=1e-4)
    assert abs(one["loss_curve"][-1] - one["loss_curve"][0]) > 1e-3  # it learned something to compare


def test_batch_that_does_not_split_is_refused(seeds, tmp_path):
    done = _on_two_ranks(
        "train-policy", str(seeds), "--algo", "bc-mlp", "-o", str(tmp_path / "two"), "--steps", "2",
        "--batch-size", "15",
    )  # fmt: skip
    assert done.returncode != 0
    assert "batch size 15 does not split over 2 ranks" in done.stderr


def test_two_ranks_train_the_world_model_one_process_trains(world_model, tmp_path):
    """The global batch and its noise are drawn alike on both ranks and shared: the validation losses at
    every checkpoint match one process's with the same global batch."""
    from world_models.train import train_world_model

    data, _ = world_model
    one = train_world_model(data, tmp_path / "one", steps=6, batch_size=4, checkpoint_every=2)
    done = _on_two_ranks(
        "train-wm", str(data), "-o", str(tmp_path / "two"), "--steps", "6", "--batch-size", "4",
        "--checkpoint-every", "2",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "training_state.json").read_text())["validation"]
    assert [v["step"] for v in two] == [v["step"] for v in one["validation"]] == [2, 4, 6]
    # Gradients summed in another order differ in their last bits; Adam's normalised steps carry that
    # into the weights, so the curves agree to a few parts in ten thousand, not bit for bit.
    for a, b in zip(one["validation"], two, strict=True):
        for key in ("frame_loss", "state_loss"):
            np.testing.assert_allclose(b[key], a[key], rtol=2e-3, err_msg=f"step {a['step']} {key}")
    assert one["validation"][0] != one["validation"][-1]  # it trained
