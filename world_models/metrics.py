"""Fidelity of world-model branches, measured against the simulator: every branch's actions are replayed
from its parent's recorded state at the branch step, and each predicted frame is compared with the
simulated one, per step ahead: PSNR and SSIM (RGB), depth error, mask IoU per tracked object, and
state error; beside them the copy-last-frame baseline, the action-sensitivity gap (PSNR with the true
actions minus PSNR with shuffled actions, same noise) and the diversity across sibling branches.

:func:`evaluate_open_loop` scores the same way without a simulator: rollouts under a held-out demo's
own recorded actions, compared with its recorded frames (the simulator's own output for those actions),
at the model's resolution. It is what a training machine without Newton can measure."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from worldgen import plots
from worldgen.dataset import (
    DatasetError,
    dataset_info,
    demo_names,
    demo_record,
    depth_ranges,
    flat_states,
    open_dataset,
    read_obs,
)
from worldgen.files import write_atomically
from worldgen.keys import EEF_POS, RGB, SEG, image_key
from worldgen.sim.base import ROBOT


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(data_range**2 / mse)


def _box_filter(x: np.ndarray, size: int) -> np.ndarray:
    """Mean over size x size windows ('valid' region) of an (H, W) image, via integral images."""
    c = np.pad(x, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    return (c[size:, size:] - c[:-size, size:] - c[size:, :-size] + c[:-size, :-size]) / size**2


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 255.0, window: int = 7) -> float:
    """Mean SSIM (Wang et al. 2004, uniform window) over channels of (H, W, C) or (H, W) images."""
    a = a.astype(np.float64).reshape(*a.shape[:2], -1)
    b = b.astype(np.float64).reshape(*b.shape[:2], -1)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    values = []
    for ch in range(a.shape[2]):
        x, y = a[..., ch], b[..., ch]
        mx, my = _box_filter(x, window), _box_filter(y, window)
        vx = _box_filter(x * x, window) - mx**2
        vy = _box_filter(y * y, window) - my**2
        cov = _box_filter(x * y, window) - mx * my
        s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
        values.append(s.mean())
    return float(np.mean(values))


def mask_iou(a: np.ndarray, b: np.ndarray, instance: int) -> float | None:
    pa, pb = a == instance, b == instance
    union = np.logical_or(pa, pb).sum()
    return None if union == 0 else float(np.logical_and(pa, pb).sum() / union)


def _frame_metrics(pred: dict, true: dict, instances: list[int], depth_scale: float) -> dict[str, float]:
    out = {
        "psnr": psnr(pred["rgb"], true["rgb"]),
        "ssim": ssim(pred["rgb"], true["rgb"]),
        "depth_abs_m": float(np.abs(pred["depth"] - true["depth"]).mean() * depth_scale),
    }
    # The tracked objects' masks (not the robot's, which newer models also predict): comparable across models.
    objects = [i for i in instances if i != ROBOT]
    ious = [v for v in (mask_iou(pred["seg"], true["seg"], i) for i in objects) if v is not None]
    if ious:
        out["mask_iou"] = float(np.mean(ious))
    return out


def evaluate_branches(
    synth: str | Path, ckpt: str | Path | None = None, out: str | Path | None = None
) -> dict:
    """Replay each branch in the simulator and score it; ``ckpt`` adds the action-sensitivity gap."""
    from worldgen.envs import WorldgenEnv

    synth = Path(synth)
    with open_dataset(synth) as f:
        info = dataset_info(f)
        branches = []
        for name in demo_names(f, "synthetic"):
            record = demo_record(f, name)
            parent = demo_record(f, record.parent)
            branches.append(
                {
                    "name": name,
                    "parent": record.parent,
                    "step": record.branch_step,
                    "seed": parent.seed,
                    "reset": flat_states(f["data"][record.parent])[record.branch_step],
                    "actions": f["data"][name]["actions"][()],
                    "obs": read_obs(f["data"][name]),  # T+1: the branch step's frame, then the predictions
                    "noise_seed": record.noise_seed,
                }
            )
    manifest = info.manifest
    camera = manifest.world_model_camera
    near, far = info.depth_range[camera]
    seg_ids = sorted({int(v) for b in branches for v in np.unique(b["obs"][image_key(camera, SEG)])} - {0})
    env = WorldgenEnv(manifest)
    per_step: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    truth_rgb: dict[str, np.ndarray] = {}
    for b in branches:
        env.reset(seed=b["seed"])
        env.set_state(b["reset"])
        pred_all = b["obs"]
        first = {s: pred_all[image_key(camera, s)][0] for s in ("rgb", "depth", "seg")}
        truths = []
        for j, action in enumerate(b["actions"]):
            obs, *_ = env.step(action)
            true = {s: obs[image_key(camera, s)] for s in ("rgb", "depth", "seg")}
            truths.append(true["rgb"])
            pred = {s: pred_all[image_key(camera, s)][j + 1] for s in ("rgb", "depth", "seg")}
            for key, value in _frame_metrics(pred, true, seg_ids, far - near).items():
                per_step[key][j + 1].append(value)
            for key, value in _frame_metrics(first, true, seg_ids, far - near).items():
                per_step[f"copy_last_{key}"][j + 1].append(value)
            for key in (EEF_POS, "object"):
                if key in pred_all:
                    err = np.linalg.norm(pred_all[key][j + 1][:3] - obs[key][:3])
                    per_step[f"{key}_error_m"][j + 1].append(float(err))
        truth_rgb[b["name"]] = np.stack(truths)
    report = {
        "branches": len(branches),
        "camera": camera,
        "per_step": _step_means(per_step),
    }
    siblings = defaultdict(list)
    for b in branches:
        siblings[(b["parent"], b["step"])].append(b["obs"][image_key(camera, RGB)][1:].astype(np.float64))
    spreads = [
        np.mean([np.abs(x - y).mean() for i, x in enumerate(v) for y in v[i + 1 :]])
        for v in siblings.values()
        if len(v) > 1
    ]
    report["diversity_rgb_l1"] = float(np.mean(spreads)) if spreads else None
    if ckpt is not None:
        report["action_sensitivity_psnr_gap"] = _action_sensitivity(ckpt, synth, branches, truth_rgb)
    if out is not None:
        _write_report(report, out)
    return report


def write_image(path: Path, image: np.ndarray) -> None:
    """An (H, W, 3) uint8 image as a PNG, written atomically."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    write_atomically(path, buffer.getvalue())


def _write_report(report: dict, out: str | Path) -> None:
    """The report as JSON at ``out`` and its per-step PSNR plot beside it (same name, ``.png``)."""
    out = Path(out)
    write_atomically(out, (json.dumps(report, indent=2) + "\n").encode())
    mode = (
        "open loop under recorded actions" if report.get("mode") == "open_loop" else "replayed in simulation"
    )
    plots.psnr_per_step(report["per_step"], out.with_suffix(".png"), f"camera {report['camera']}: {mode}")


def _step_means(per_step: dict[str, dict[int, list[float]]]) -> dict[str, dict[int, float]]:
    return {key: {j: float(np.mean(v)) for j, v in sorted(d.items())} for key, d in per_step.items()}


def evaluate_open_loop(
    dataset: str | Path,
    ckpt: str | Path,
    mask: str = "valid",
    horizon: int = 8,
    stride: int = 6,
    device: str = "cpu",
    out: str | Path | None = None,
    strip: str | Path | None = None,
) -> dict:
    """Roll out from every ``stride``-th step of each demo in ``mask`` under its recorded actions and
    score each step ahead against the recorded frames, beside copy-last-frame; the action-sensitivity gap
    uses another window's actions with the same noise. Frames are compared at the model's resolution.
    ``strip``: a PNG of the first window, the recorded frames above the model's, one column a step."""
    from .data import Episode, obs_from_frames
    from .sampler import WorldModelSampler

    dataset = Path(dataset)
    sampler = WorldModelSampler(ckpt, device=device)
    meta = sampler.meta
    camera, instances, k = meta.camera, meta.instances, meta.context_frames
    with open_dataset(dataset) as f:
        near, far = depth_ranges(f)[camera]
        episodes = [
            Episode.load(f["data"][name], camera, instances, meta.resolution) for name in demo_names(f, mask)
        ]
    windows = [(e, t) for e in episodes for t in range(k, len(e.actions) - horizon + 1, stride)]
    if len(windows) < 2:
        raise DatasetError(f"{dataset}: mask {mask!r} has {len(windows)} windows of {horizon} steps; need 2")
    per_step: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    gaps = []
    for i, (episode, t) in enumerate(windows):
        context, past, state = episode.history(t, k)
        other_episode, other_t = windows[(i + len(windows) // 2) % len(windows)]
        actions = torch.stack(
            [episode.actions[t : t + horizon], other_episode.actions[other_t : other_t + horizon]]
        )
        pred, _ = sampler.rollout(context, past, state, actions, [i, i])
        truth = obs_from_frames(episode.frames[t + 1 : t + 1 + horizon], instances)
        first = {s: v[0] for s, v in obs_from_frames(episode.frames[t : t + 1], instances).items()}
        own, shuffled = (obs_from_frames(p, instances) for p in pred)
        if strip is not None and i == 0:
            rows = [np.concatenate(list(obs["rgb"]), axis=1) for obs in (truth, own)]
            write_image(Path(strip), np.concatenate(rows, axis=0))
        for j in range(horizon):
            true, pred_j = ({s: v[j] for s, v in obs.items()} for obs in (truth, own))
            for key, value in _frame_metrics(pred_j, true, instances, far - near).items():
                per_step[key][j + 1].append(value)
            for key, value in _frame_metrics(first, true, instances, far - near).items():
                per_step[f"copy_last_{key}"][j + 1].append(value)
        gaps.append(
            np.mean([psnr(a, b) for a, b in zip(own["rgb"], truth["rgb"], strict=True)])
            - np.mean([psnr(a, b) for a, b in zip(shuffled["rgb"], truth["rgb"], strict=True)])
        )
    report = {
        "mode": "open_loop",
        "mask": mask,
        "windows": len(windows),
        "camera": camera,
        "resolution": meta.resolution,
        "per_step": _step_means(per_step),
        "action_sensitivity_psnr_gap": float(np.mean(gaps)),
    }
    if out is not None:
        _write_report(report, out)
    return report


def _action_sensitivity(ckpt, synth: Path, branches: list[dict], truth_rgb: dict) -> float:
    """Mean PSNR (vs the simulator) with the branch's own actions minus with shuffled ones (another branch
    point's actions; reversed in time when there is only one branch point), same context and noise: how
    much the model's frames depend on the actions."""
    from .data import Episode, obs_from_frames
    from .sampler import WorldModelSampler

    sampler = WorldModelSampler(ckpt)
    meta = sampler.meta
    camera, instances, k = meta.camera, meta.instances, meta.context_frames
    # Branches are stored grouped by branch point: rotating by one group's size gives each branch the
    # actions of another point.
    shift = sum((b["parent"], b["step"]) == (branches[0]["parent"], branches[0]["step"]) for b in branches)
    gaps = []
    with open_dataset(synth) as f:
        for i, b in enumerate(branches):
            episode = Episode.load(f["data"][b["parent"]], camera, instances, meta.resolution)
            context, past, state = episode.history(b["step"], k)
            own = torch.from_numpy(b["actions"])[None]
            if shift < len(branches):
                other = torch.from_numpy(branches[(i + shift) % len(branches)]["actions"])[None]
            else:
                other = own.flip(1)
            pred, _ = sampler.rollout(context, past, state, torch.cat([own, other]), [b["noise_seed"]] * 2)
            h, w = truth_rgb[b["name"]].shape[1:3]
            scores = []
            for j in range(2):
                seq = torch.nn.functional.interpolate(pred[j], size=(h, w), mode="nearest")
                rgb = obs_from_frames(seq, instances)["rgb"]
                scores.append(np.mean([psnr(p, t) for p, t in zip(rgb, truth_rgb[b["name"]], strict=True)]))
            gaps.append(scores[0] - scores[1])
    return float(np.mean(gaps))
