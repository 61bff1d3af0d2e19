"""Calibrate the checks and gate a dataset's demos: per demo, per check, a score and a verdict in
``check_scores`` / ``check_passed``, the calibration that judged it in ``check_calibration``, a
``check_confidence`` for branches with siblings, and the ``/mask/passed`` list. Nothing is deleted. The
file is updated on a copy that is renamed over it, so an interrupted run leaves the dataset as it was.

Simulator demos are judged with thresholds calibrated on the dataset's simulator clips. World-model
demos are judged with a world-model calibration when one is given (``world_models.checking`` measures
it on seed clips passed through the model's own frame pipeline), else with the simulator's. A demo
whose ``sample_spread`` attribute was measured with the calibration's checkpoint (the spread of several
samples of the same attempt) is also judged by the ``agreement`` check."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from ..dataset import (
    DatasetError,
    dataset_manifest,
    demo_names,
    demo_record,
    depth_ranges,
    open_dataset,
    update_attributes,
)
from ..errors import ArgumentError
from ..manifest import Manifest
from . import (
    CHECK_NAMES,
    clip_from_demo,
    clip_scores,
    clip_statistics,
    run_checks,
    thresholds_from_scores,
)


@dataclass(frozen=True)
class Calibration:
    """Thresholds per check, and what they were measured on: ``name`` is the domain they judge
    (``simulator`` or ``world_model``), ``clips`` how many clips, ``about`` what those clips were."""

    name: str
    thresholds: dict[str, float]
    clips: int
    about: str
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"thresholds": self.thresholds, "clips": self.clips, "about": self.about, **self.details}

    @classmethod
    def from_dict(cls, name: str, data: dict) -> Calibration:
        """The inverse of :meth:`to_dict` (what a dataset's ``check_thresholds`` stores per calibration)."""
        rest = {k: v for k, v in data.items() if k not in ("thresholds", "clips", "about", "seconds")}
        return cls(name, dict(data["thresholds"]), int(data["clips"]), str(data["about"]), rest)


def calibration_from_scores(
    name: str,
    scores: dict[str, list[float]],
    clips: int,
    about: str,
    manifest: Manifest,
    ceilings: dict[str, float] | None = None,
    **details,
) -> Calibration:
    """Thresholds from the scores seen on ``clips`` calibration clips, none above its ``ceilings`` entry
    (the checks capped are listed in ``details["capped"]``), with the manifest's overrides on top."""
    thresholds = thresholds_from_scores(scores)
    if ceilings:
        capped = sorted(k for k, v in thresholds.items() if v > ceilings[k])
        thresholds = {k: min(v, ceilings[k]) for k, v in thresholds.items()}
        details = {**details, "capped": capped}
    thresholds.update(manifest.checks.thresholds)
    return Calibration(name, thresholds, clips, about, details)


def add_scores(scores: dict[str, list[float]], clip, backend: str = "warp", device: str = "cpu") -> None:
    """Append a clip's score per check to ``scores`` (the checks its inputs allow), reduced by
    ``backend``'s kernels."""
    for check, (score, _) in clip_scores(clip, clip_statistics(clip, backend, device)).items():
        if score is not None:
            scores[check].append(score)


@dataclass
class GateReport:
    camera: str
    calibrations: dict[str, Calibration]  # "simulator", and "world_model" when one was given
    checked: int = 0
    passed: int = 0
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # check -> verdict -> demos
    heatmap: np.ndarray | None = None  # (H, W) violations per pixel
    demos: dict[str, dict] = field(default_factory=dict)

    @property
    def thresholds(self) -> dict[str, float]:
        """The simulator calibration's thresholds."""
        return self.calibrations["simulator"].thresholds

    def table(self) -> str:
        model = self.calibrations.get("world_model")
        head = f"{'check':<13} {'threshold':>10}" + (f" {'(WM)':>10}" if model else "")
        rows = [f"{head} {'passed':>7} {'failed':>7} {'skipped':>8}"]
        for name in CHECK_NAMES:
            if name not in self.counts:
                continue
            c = self.counts[name]
            wm = f" {model.thresholds[name]:>10.4g}" if model else ""
            rows.append(
                f"{name:<13} {self.thresholds[name]:>10.4g}{wm} {c.get('passed', 0):>7} "
                f"{c.get('failed', 0):>7} {c.get('skipped', 0):>8}"
            )
        return "\n".join(rows)


def calibrate(
    f: h5py.File,
    manifest: Manifest,
    mask: str = "seed",
    camera: str | None = None,
    backend: str = "warp",
    device: str = "cpu",
) -> Calibration:
    """The simulator calibration: thresholds from the simulator clips in ``mask`` at camera resolution,
    scored by ``backend`` (the same backend that then judges)."""
    scores: dict[str, list[float]] = defaultdict(list)
    ranges = depth_ranges(f)
    cam = camera or manifest.world_model_camera
    names = demo_names(f, mask)
    for name in names:
        add_scores(scores, clip_from_demo(f["data"][name], manifest, cam, ranges.get(cam)), backend, device)
    about = f"simulator clips of mask {mask!r} at camera resolution"
    return calibration_from_scores("simulator", scores, len(names), about, manifest)


def _confidence(demos: dict[str, dict]) -> dict[str, float]:
    """Agreement among siblings (same parent and branch step): 1 / (1 + mean spread of score/threshold)."""
    groups: dict[tuple, list[str]] = defaultdict(list)
    for name, d in demos.items():
        if d["parent"]:
            groups[(d["parent"], d["branch_step"])].append(name)
    out = {}
    for members in groups.values():
        if len(members) < 2:
            continue
        spreads = []
        for check in CHECK_NAMES:
            ratios = [
                demos[m]["scores"][check]["score"] / demos[m]["scores"][check]["threshold"]
                for m in members
                if demos[m]["scores"].get(check, {}).get("score") is not None
            ]
            if len(ratios) >= 2:
                spreads.append(float(np.std(ratios)))
        conf = 1.0 / (1.0 + (float(np.mean(spreads)) if spreads else 0.0))
        out.update({m: conf for m in members})
    return out


def gate_dataset(
    path: str | Path,
    mask: str | None = None,
    calibrate_mask: str = "seed",
    camera: str | None = None,
    backend: str = "warp",
    device: str = "cpu",
    world_model: Calibration | None = None,
) -> GateReport:
    """Check the demos in ``mask`` (all when None) and write the verdicts into the dataset; world-model
    demos are judged by the ``world_model`` calibration when given."""
    path = Path(path)
    if Path(str(path) + ".parts").exists():
        raise DatasetError(f"{path}: a seed run is in progress or was interrupted; finish it first")
    with open_dataset(path) as f:
        manifest = dataset_manifest(f)
        cam = camera or manifest.world_model_camera
        cameras = [c.name for c in manifest.cameras]
        if cam not in cameras:
            raise ArgumentError(f"{path}: no camera {cam!r}; the manifest has {cameras}")
        simulator = calibrate(f, manifest, calibrate_mask, cam, backend, device)
        calibrations = {"simulator": simulator, **({"world_model": world_model} if world_model else {})}
        ranges = depth_ranges(f)
        report = GateReport(camera=cam, calibrations=calibrations)
        for name in demo_names(f, mask):
            group, record = f["data"][name], demo_record(f, name)
            judge = world_model if world_model and record.source == "world_model" else simulator
            clip = clip_from_demo(group, manifest, cam, ranges.get(cam))
            checkpoint = world_model.details.get("checkpoint") if world_model else None
            if checkpoint is None or group.attrs.get("sample_spread_model") != checkpoint:
                clip.sample_spread = None  # measured with another model, or no model judges it
            results = run_checks(
                clip, judge.thresholds, manifest.checks.enabled, backend=backend, device=device
            )
            verdicts = {k: r.verdict for k, r in results.items()}
            ok = "failed" not in verdicts.values() and "passed" in verdicts.values()
            report.demos[name] = {
                "scores": {
                    k: {"verdict": r.verdict, "score": r.score, "threshold": r.threshold}
                    for k, r in results.items()
                },
                "passed": ok,
                "calibration": judge.name,
                "parent": record.parent,
                "branch_step": record.branch_step,
            }
            report.checked += 1
            report.passed += int(ok)
            for k, v in verdicts.items():
                report.counts.setdefault(k, {}).setdefault(v, 0)
                report.counts[k][v] += 1
            if clip.seg is not None:
                if report.heatmap is None:
                    report.heatmap = np.zeros(clip.seg.shape[1:], dtype=np.float64)
                tracked = np.isin(clip.seg, [o.instance for o in clip.objects])
                for r in results.values():
                    if r.verdict == "failed" and r.frames:
                        report.heatmap += tracked[r.frames].sum(axis=0)
    _write_verdicts(path, report)
    return report


def _write_verdicts(path: Path, report: GateReport) -> None:
    confidence = _confidence(report.demos)
    verdicts = {
        name: {
            "check_scores": json.dumps(d["scores"], sort_keys=True),
            "check_passed": bool(d["passed"]),
            "check_calibration": d["calibration"],
            **({"check_confidence": confidence[name]} if name in confidence else {}),
        }
        for name, d in report.demos.items()
    }
    thresholds = {
        "camera": report.camera,
        "thresholds": report.thresholds,
        "calibrations": {name: c.to_dict() for name, c in report.calibrations.items()},
    }
    update_attributes(path, verdicts, {"check_thresholds": json.dumps(thresholds, sort_keys=True)})
