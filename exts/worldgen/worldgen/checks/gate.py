"""Calibrate the checks on a dataset's simulator clips and gate its demos: per demo, per check, a score
and a verdict in ``check_scores`` / ``check_passed``, a ``check_confidence`` for branches with
siblings, and the ``/mask/passed`` list. Nothing is deleted. The file is updated on a copy that is
renamed over it, so an interrupted run leaves the dataset as it was."""

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
from . import CHECK_NAMES, clip_from_demo, clip_scores, clip_statistics, run_checks, thresholds_from_scores


@dataclass
class GateReport:
    thresholds: dict[str, float]
    camera: str
    checked: int = 0
    passed: int = 0
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # check -> verdict -> demos
    heatmap: np.ndarray | None = None  # (H, W) violations per pixel
    demos: dict[str, dict] = field(default_factory=dict)

    def table(self) -> str:
        rows = [f"{'check':<13} {'threshold':>10} {'passed':>7} {'failed':>7} {'skipped':>8}"]
        for name in CHECK_NAMES:
            if name not in self.counts:
                continue
            c = self.counts[name]
            rows.append(
                f"{name:<13} {self.thresholds[name]:>10.4g} {c.get('passed', 0):>7} {c.get('failed', 0):>7} "
                f"{c.get('skipped', 0):>8}"
            )
        return "\n".join(rows)


def calibrate(
    f: h5py.File, manifest: Manifest, mask: str = "seed", camera: str | None = None
) -> dict[str, float]:
    """Thresholds from the simulator clips in ``mask``, with the manifest's overrides on top."""
    scores: dict[str, list[float]] = defaultdict(list)
    ranges = depth_ranges(f)
    cam = camera or manifest.world_model_camera
    for name in demo_names(f, mask):
        clip = clip_from_demo(f["data"][name], manifest, cam, ranges.get(cam))
        for check, (score, _) in clip_scores(clip, clip_statistics(clip)).items():
            if score is not None:
                scores[check].append(score)
    thresholds = thresholds_from_scores(scores)
    thresholds.update(manifest.checks.thresholds)
    return thresholds


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
) -> GateReport:
    """Check the demos in ``mask`` (all when None) and write the verdicts into the dataset."""
    path = Path(path)
    if Path(str(path) + ".parts").exists():
        raise DatasetError(f"{path}: a seed run is in progress or was interrupted; finish it first")
    with open_dataset(path) as f:
        manifest = dataset_manifest(f)
        cam = camera or manifest.world_model_camera
        cameras = [c.name for c in manifest.cameras]
        if cam not in cameras:
            raise ArgumentError(f"{path}: no camera {cam!r}; the manifest has {cameras}")
        thresholds = calibrate(f, manifest, calibrate_mask, cam)
        ranges = depth_ranges(f)
        report = GateReport(thresholds=thresholds, camera=cam)
        for name in demo_names(f, mask):
            group, record = f["data"][name], demo_record(f, name)
            clip = clip_from_demo(group, manifest, cam, ranges.get(cam))
            results = run_checks(clip, thresholds, manifest.checks.enabled, backend=backend, device=device)
            verdicts = {k: r.verdict for k, r in results.items()}
            ok = "failed" not in verdicts.values() and "passed" in verdicts.values()
            report.demos[name] = {
                "scores": {
                    k: {"verdict": r.verdict, "score": r.score, "threshold": r.threshold}
                    for k, r in results.items()
                },
                "passed": ok,
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
            **({"check_confidence": confidence[name]} if name in confidence else {}),
        }
        for name, d in report.demos.items()
    }
    thresholds = {"camera": report.camera, "thresholds": report.thresholds}
    update_attributes(path, verdicts, {"check_thresholds": json.dumps(thresholds, sort_keys=True)})
