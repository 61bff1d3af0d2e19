"""Physics-consistency checks: Warp kernels against numpy references, calibration on simulator clips,
the corruption suite, skipped semantics and dataset gating."""

from __future__ import annotations

import copy
import json
from collections import defaultdict

import h5py
import numpy as np
import pytest
from worldgen.apps.cli import main
from worldgen.checks import (
    CHECK_NAMES,
    Clip,
    PinholeCamera,
    TrackedObject,
    clip_from_demo,
    clip_scores,
    clip_statistics,
    kernels,
    reference,
    run_checks,
    thresholds_from_scores,
)
from worldgen.checks.corrupt import DEFECTS, corrupt
from worldgen.checks.gate import _confidence, gate_dataset
from worldgen.manifest import load_manifest
from worldgen.pipeline import run_seed_stage

from .conftest import SCENARIOS


@pytest.fixture(scope="module")
def seed_clips(tmp_path_factory):
    """Eight real seed clips per shipped scenario (world-model camera), from one recorded dataset each,
    the eight scenes stepped together."""
    out = {}
    for path in SCENARIOS:
        dataset = tmp_path_factory.mktemp(path.stem) / "seeds.hdf5"
        run_seed_stage(path, dataset, n=8, envs=8)
        manifest = load_manifest(path)
        with h5py.File(dataset, "r") as f:
            names = sorted(f["data"], key=lambda n: int(n.split("_")[1]))
            out[path.stem] = (dataset, [clip_from_demo(f["data"][n], manifest) for n in names])
    return out


def _random_clip(rng, t=6, h=24, w=32) -> Clip:
    seg = rng.choice(np.array([1, 2, 3, 4, 5], np.uint8), size=(t, h, w), p=[0.3, 0.3, 0.1, 0.2, 0.1])
    depth = rng.uniform(0.5, 2.0, (t, h, w)).astype(np.float32)
    depth[rng.random((t, h, w)) < 0.05] = 0.0  # misses
    rgb = rng.integers(0, 256, (t, h, w, 3), dtype=np.uint8)
    camera = PinholeCamera.from_spec(
        type("Spec", (), {"resolution": (w, h), "fov": 50.0})(), (1.0, 0.5, 1.0), (0.0, 0.0, 0.3)
    )
    # The robot is instance 3; the state puts the end effector and the two objects around the scene.
    return Clip(
        fps=20.0,
        rgb=rgb,
        depth=depth,
        seg=seg,
        camera=camera,
        objects=[TrackedObject(4, "a", (0.05, 0.05, 0.05), 0.3), TrackedObject(5, "b", (0.1, 0.1, 0.1), 0.3)],
        static_ids=(1, 2),
        robot_id=3,
        eef=rng.uniform(0.0, 0.5, (t, 3)),
        object_positions=rng.uniform(0.0, 0.5, (t, 2, 3)),
        actions=rng.uniform(-1, 1, (t - 1, 7)),
        max_translation=0.015,
    )


def _assert_same_stats(a: dict, b: dict) -> None:
    """Counts exactly; centroids (sums / counts) and z extents to 1e-5 m (points are computed in
    float32 in the kernel, float64 in the reference; both sum in float64)."""
    assert a.keys() == b.keys()
    for group in a:
        for key in a[group]:
            x, y = a[group][key], b[group][key]
            assert x.shape == y.shape, (group, key)
            if key == "sums":
                n = np.maximum(a[group]["counts"], 1)[..., None]
                np.testing.assert_allclose(x / n, y / n, atol=1e-5)
            elif key in ("z_max", "z_min", "robot_to_eef", "robot_to_object"):
                np.testing.assert_allclose(x, y, atol=1e-5)
            else:
                np.testing.assert_array_equal(x, y, err_msg=f"{group}/{key}")


@pytest.mark.parametrize("seed", range(5))
def test_kernels_match_numpy_on_random_clips(seed):
    clip = _random_clip(np.random.default_rng(seed))
    stats = clip_statistics(clip, "warp")
    assert "state" in stats and stats["state"]["robot_pixels"].sum() > 0
    _assert_same_stats(stats, clip_statistics(clip, "numpy"))


def test_kernels_match_numpy_on_real_clips(seed_clips):
    for _, clips in seed_clips.values():
        for clip in clips[:2]:
            _assert_same_stats(clip_statistics(clip, "warp"), clip_statistics(clip, "numpy"))


def test_flicker_kernel_counts_a_one_frame_spike():
    rgb = np.full((5, 8, 8, 3), 100, np.uint8)
    rgb[2, :2, :4] = 200  # 8 pixels spike in frame 2 only
    rgb[3:, 4:, :] = 50  # a lasting change is not flicker
    for k in (kernels, reference):
        counts = k.flicker_counts(rgb, 25.0)
        assert counts.tolist() == [0, 0, 8, 0, 0]


def test_missing_inputs_are_skipped_never_passed():
    rng = np.random.default_rng(0)
    clip = _random_clip(rng)
    rgb_only = Clip(fps=20.0, rgb=clip.rgb)
    results = run_checks(rgb_only)
    assert results["flicker"].verdict in ("passed", "failed")
    for name in CHECK_NAMES:
        if name != "flicker":
            assert results[name].verdict == "skipped" and results[name].reason
    moving_camera = Clip(
        fps=20.0,
        seg=clip.seg,
        depth=clip.depth,
        objects=clip.objects,
        static_ids=(1, 2),
        eef=clip.eef,
        actions=clip.actions,
        max_translation=clip.max_translation,
    )
    results = run_checks(moving_camera)
    assert results["teleport"].verdict == "skipped" and results["permanence"].verdict != "skipped"
    # The state checks need a fixed camera too, except the end effector against the actions.
    assert results["robot_image"].verdict == "skipped" and results["contact"].verdict == "skipped"
    assert results["robot_action"].verdict != "skipped"


def _calibrated(clips) -> dict[str, float]:
    scores = defaultdict(list)
    for clip in clips:
        for check, (score, _) in clip_scores(clip, clip_statistics(clip)).items():
            scores[check].append(score)
    return thresholds_from_scores(scores)


def test_untouched_seed_clips_pass_calibrated_checks(seed_clips):
    # Calibrate on the first half of each scenario's seeds; the held-out half must not be flagged.
    for name, (_, clips) in seed_clips.items():
        thresholds = _calibrated(clips[:4])
        for clip in clips[4:]:
            failed = {k: r.score for k, r in run_checks(clip, thresholds).items() if r.verdict == "failed"}
            assert not failed, (name, failed)


def test_corruption_suite_is_caught_at_moderate_strength(seed_clips):
    rng = np.random.default_rng(1)
    caught, total = defaultdict(int), defaultdict(int)
    for _, clips in seed_clips.values():
        thresholds = _calibrated(clips[:4])
        for clip in clips[4:]:
            for defect in DEFECTS:
                bad, record = corrupt(clip, defect, "moderate", rng)
                assert record["frames"]
                total[defect] += 1
                caught[defect] += any(r.verdict == "failed" for r in run_checks(bad, thresholds).values())
    recall = {d: caught[d] / total[d] for d in DEFECTS}
    assert all(r >= 0.95 for r in recall.values()), recall


def test_world_model_defects_touch_only_what_they_claim(seed_clips):
    clip = seed_clips["push_to_target"][1][4]
    frozen, record = corrupt(clip, "frozen", "moderate", np.random.default_rng(0))
    first, *rest = record["frames"]
    assert len(record["frames"]) == 11
    assert all(np.array_equal(frozen.rgb[t], frozen.rgb[first - 1]) for t in rest)
    assert np.array_equal(frozen.eef, clip.eef) and np.array_equal(frozen.actions, clip.actions)
    drift, record = corrupt(clip, "state_drift", "moderate", np.random.default_rng(0))
    assert np.array_equal(drift.rgb, clip.rgb) and np.array_equal(drift.seg, clip.seg)
    offset = np.linalg.norm(drift.object_positions - clip.object_positions, axis=2).max(axis=1)
    assert offset[record["frames"][-1]] == pytest.approx(0.05) and offset[0] == 0.0


def test_state_that_ignores_the_actions_fails_robot_action(seed_clips):
    clips = seed_clips["push_to_target"][1]
    thresholds = _calibrated(clips[:4])
    clip = copy.deepcopy(clips[4])
    assert run_checks(clip, thresholds)["robot_action"].verdict == "passed"
    # The predicted end effector stops where it moves fastest, while the actions still drive it on.
    start = int(np.argmax(np.linalg.norm(clip.eef[4:] - clip.eef[:-4], axis=1)))
    clip.eef[start:] = clip.eef[start]
    result = run_checks(clip, thresholds)["robot_action"]
    assert result.verdict == "failed" and min(result.frames) > start


def test_corruptions_keep_inputs_consistent(seed_clips):
    clip = seed_clips["pick_cube"][1][0]
    bad, record = corrupt(clip, "teleport", "strong", np.random.default_rng(0))
    assert bad.rgb.dtype == np.uint8 and bad.seg.dtype == np.uint8 and bad.depth.dtype == np.float32
    t = record["frames"][0]
    assert not np.array_equal(bad.seg[t], clip.seg[t])
    assert np.array_equal(bad.seg[0], clip.seg[0]) or t == 0  # frames before the defect are untouched


def test_check_cli_gates_the_dataset(seed_clips, tmp_path, capsys):
    dataset = seed_clips["push_to_target"][0]
    copy = tmp_path / "d.hdf5"
    copy.write_bytes(dataset.read_bytes())
    heatmap = tmp_path / "heat.png"
    assert main(["check", str(copy), "--heatmap", str(heatmap)]) == 0
    out = capsys.readouterr().out
    assert "checked 8 demos" in out and "permanence" in out and heatmap.is_file()
    with h5py.File(copy, "r") as f:
        for name in f["data"]:
            scores = json.loads(f["data"][name].attrs["check_scores"])
            assert set(scores) == set(CHECK_NAMES)
            assert all(s["verdict"] in ("passed", "failed", "skipped") for s in scores.values())
            assert "check_passed" in f["data"][name].attrs
        passed = sorted(n.decode() for n in f["mask/passed"][()])
        assert passed == sorted(n for n in f["data"] if bool(f["data"][n].attrs["check_passed"]))
        assert json.loads(f["data"].attrs["check_thresholds"])["camera"] == "front"
    assert main(["check", str(copy), "--mask", "nope"]) == 2


def test_gate_refuses_an_unfinished_run(tmp_path):
    dataset = tmp_path / "x.hdf5"
    dataset.write_bytes(b"")
    (tmp_path / "x.hdf5.parts").mkdir()
    from worldgen.dataset import DatasetError

    with pytest.raises(DatasetError, match="in progress"):
        gate_dataset(dataset)


def test_confidence_reflects_sibling_agreement():
    def demo(parent, score):
        return {
            "parent": parent,
            "branch_step": 5,
            "scores": {"teleport": {"score": score, "threshold": 1.0, "verdict": "passed"}},
        }

    agree = _confidence({"demo_1": demo("demo_0", 0.5), "demo_2": demo("demo_0", 0.5)})
    disagree = _confidence({"demo_1": demo("demo_0", 0.1), "demo_2": demo("demo_0", 0.9)})
    assert agree["demo_1"] == 1.0 and disagree["demo_1"] < agree["demo_1"]
    assert _confidence({"demo_0": demo("", 0.5)}) == {}


def test_numpy_backend_calibrates_and_judges_without_a_warp_kernel(seeds, tmp_path, monkeypatch):
    """``check --backend numpy``: the calibration and the verdicts on the numpy references, the same
    verdicts as the Warp kernels'; the agreement's object centroids too (the world-model gate's part)."""
    import shutil

    import warp as wp
    from worldgen.dataset import dataset_manifest, depth_ranges, read_scene
    from worldgen.keys import DEPTH, SEG, image_key

    from world_models.checking import frame_centroids

    warp_copy, numpy_copy = tmp_path / "warp.hdf5", tmp_path / "numpy.hdf5"
    for path in (warp_copy, numpy_copy):
        shutil.copy(seeds, path)
    assert main(["check", str(warp_copy)]) == 0
    with h5py.File(seeds, "r") as f:
        manifest, group = dataset_manifest(f), f["data"]["demo_0"]
        camera = manifest.world_model_camera
        images = {image_key(camera, k): group[f"obs/{image_key(camera, k)}"][()] for k in (DEPTH, SEG)}
        depth_range, scene = depth_ranges(f).get(camera), read_scene(group)
    with_kernels = frame_centroids(manifest, images, scene, camera, depth_range)

    def no_kernels(*_args, **_kwargs):
        raise AssertionError("a Warp kernel was launched with --backend numpy")

    monkeypatch.setattr(wp, "launch", no_kernels)
    assert main(["check", str(numpy_copy), "--backend", "numpy"]) == 0
    with h5py.File(warp_copy, "r") as a, h5py.File(numpy_copy, "r") as b:
        for name in a["data"]:
            assert a["data"][name].attrs["check_passed"] == b["data"][name].attrs["check_passed"], name
    references = frame_centroids(manifest, images, scene, camera, depth_range, backend="numpy")
    np.testing.assert_allclose(references, with_kernels, atol=1e-6)
