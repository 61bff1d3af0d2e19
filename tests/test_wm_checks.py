"""Judging world-model output (world_models.checking): calibration in the model's domain, agreement
between samples of one attempt, and the gate measured against simulator replay, on the tiny shared
pipeline of conftest (2 seeds, a 6-step world model, 8 recovery attempts)."""

from __future__ import annotations

import json
import re
import shutil

import h5py
import numpy as np
import pytest
from worldgen.apps.cli import main
from worldgen.dataset import demo_names, demo_record, open_dataset

from world_models.checking import auroc, spread, teacher_forced
from world_models.data import Episode
from world_models.sampler import WorldModelSampler


def test_auroc_ranks_positives_above_negatives():
    labels = np.array([True, True, False, False])
    assert auroc(np.array([0.9, 0.8, 0.1, 0.2]), labels) == 1.0
    assert auroc(np.array([0.1, 0.2, 0.9, 0.8]), labels) == 0.0
    assert auroc(np.ones(4), labels) == 0.5
    assert auroc(np.ones(2), np.array([True, True])) is None


def test_spread_is_the_largest_distance_from_the_samples_mean():
    same = np.zeros((3, 5, 2, 3))
    assert spread(same) == 0.0
    apart = np.zeros((2, 5, 2, 3))
    apart[1, 4, 1, 0] = 0.02  # one object, one step, 2 cm apart: each sample 1 cm from the mean
    assert spread(apart) == pytest.approx(0.01)
    apart[0, 4, 1] = np.nan  # a sample that does not show the object there: that step is not compared
    assert spread(apart) == 0.0


def test_teacher_forced_predictions_start_from_the_truth_and_repeat(world_model, seeds):
    sampler = WorldModelSampler(world_model[1])
    meta = sampler.meta
    with h5py.File(seeds, "r") as f:
        episode = Episode.load(f["data"]["demo_0"], meta.camera, list(meta.instances), meta.resolution)
    frames, states = teacher_forced(sampler, episode, seed=3)
    t = episode.actions.shape[0]
    assert frames.shape == (t + 1, *episode.frames.shape[1:]) and states.shape == (
        t + 1,
        episode.states.shape[1],
    )
    assert np.array_equal(frames[0].numpy(), episode.frames[0].numpy())
    assert np.array_equal(states[0], episode.states[0].numpy())
    again, _ = teacher_forced(sampler, episode, seed=3)
    assert np.array_equal(frames.numpy(), again.numpy())


def test_check_with_a_world_model_calibrates_samples_and_replays(recovered, world_model, tmp_path, capsys):
    dataset = tmp_path / "recover.hdf5"
    shutil.copy(recovered, dataset)
    report = tmp_path / "replay.json"
    args = ["check", str(dataset), "--world-model", str(world_model[1]), "--samples", "2"]
    assert main([*args, "--against-replay", "--report", str(report)]) == 0
    out = capsys.readouterr().out
    # 4 attempts (2 starts x 2) from the training seed demo; none from the one held out for validation.
    assert "teacher-forced" in out and "replayed 4 world-model demos" in out
    assert re.search(r"^agreement +\S+ +\S+ +\d+ +\d+ +2$", out, re.M)  # 4 judged, 2 seeds skipped
    with open_dataset(dataset) as f:
        thresholds = json.loads(f["data"].attrs["check_thresholds"])
        assert set(thresholds["calibrations"]) == {"simulator", "world_model"}
        model = thresholds["calibrations"]["world_model"]
        assert model["clips"] == 2 and "teacher-forced" in model["about"]  # demo_1 (valid), two ways
        assert set(model["thresholds"]) >= {"robot_image", "object_image", "agreement"}
        for name in demo_names(f):
            record, attrs = demo_record(f, name), f["data"][name].attrs
            generated = record.source == "world_model"
            assert attrs["check_calibration"] == ("world_model" if generated else "simulator")
            scores = json.loads(attrs["check_scores"])
            if generated:
                assert record.sample_spread is not None and record.sample_spread >= 0.0
                assert scores["agreement"]["verdict"] in ("passed", "failed")
                assert record.replay_faithful == (
                    max(attrs["replay_eef_error_max"], attrs["replay_object_error_max"]) <= 0.02
                )
            else:
                assert scores["agreement"]["verdict"] == "skipped" and record.replay_faithful is None
    result = json.loads(report.read_text())
    assert result["demos"] == 4 and result["faithful"] + result["unfaithful"] == 4
    assert set(result["checks"]) >= {"robot_image", "robot_action", "object_image", "contact", "agreement"}


def test_against_replay_needs_a_world_model(recovered, capsys):
    assert main(["check", str(recovered), "--against-replay"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--world-model" in err[0]
