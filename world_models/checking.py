"""Judging world-model output: the checks calibrated in the model's own domain, agreement between
samples of one attempt, and the gate measured against simulator replay.

- :func:`calibrate_world_model`: thresholds from held-out seed clips passed through the model's frame
  pipeline (its resolution and channel encoding, and its VAE when it has one) and from teacher-forced
  one-step predictions of the same clips (each frame predicted from the true frames, actions and state
  before it); the ``agreement`` threshold from the spread of several open-loop samples of each clip's
  actions. A model's blur is then judged against what the model does at its best, not against
  camera-resolution simulator frames.
- :func:`sample_spreads`: each generated demo's executed actions rolled out again under other noise
  seeds from the same start; the largest distance of an object's centroid in one sample's frames (its
  mask and depth, back-projected) from the samples' mean is written as ``sample_spread`` (with the
  checkpoint's hash), which the gate judges as ``agreement``. Frames, not the predicted state: the
  state head is deterministic given the actions, so only the frames differ between samples.
  Its threshold is calibrated on open-loop samples of whole held-out clips from their first step, the
  longest horizon any attempt has, so it errs on the side of passing shorter attempts.
- :func:`judge_against_replay`: every generated demo replayed in the simulator from its start state;
  "faithful" when the replay keeps the end effector and every object within ``tolerance`` of the
  prediction over the whole clip. Reports how the gate's verdicts and each check's scores separate
  faithful from unfaithful demos (rejection, pass rates, precision, AUROC) and which checks decide.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from worldgen.checks import CHECK_NAMES, MIN_PIXELS, WORLD_MODEL_CEILINGS, backend_module
from worldgen.checks.clip import clip_from_arrays
from worldgen.checks.gate import Calibration, GateReport, add_scores, calibration_from_scores, gate_dataset
from worldgen.dataset import (
    DatasetError,
    dataset_info,
    dataset_manifest,
    demo_names,
    demo_record,
    depth_ranges,
    executed_actions,
    open_dataset,
    read_demo,
    read_scene,
    update_attributes,
)
from worldgen.distributed import map_on_workers
from worldgen.keys import DEPTH, SEG, image_key
from worldgen.manifest import Manifest

from .checkpoint import checkpoint_hash
from .data import Episode, camera_size, state_layout
from .replay import replay_generated
from .sampler import WorldModelSampler, predicted_images, predicted_obs

REPLAY_TOLERANCE = 0.02  # m: a replay this close to the prediction everywhere makes the demo faithful
TEACHER_FORCED_BATCH = 32  # one-step predictions per model call


def _clip(sampler, manifest, group, frames, states, depth_range):
    """A Clip of model pixel frames (T+1, C, h, w) and raw states (T+1, S) of ``group``'s scene."""
    camera = sampler.meta.camera
    obs = predicted_obs(
        camera,
        list(sampler.meta.instances),
        frames,
        np.asarray(states),
        state_layout(group),
        camera_size(group, camera),
    )
    if "actions" not in group:
        raise DatasetError(
            f"{group.file.filename}: {group.name} is an unlabelled clip; it has no actions to judge"
        )
    return clip_from_arrays(
        manifest, obs, executed_actions(group)[()], read_scene(group), camera, depth_range
    )


@torch.no_grad()
def pipeline_frames(sampler: WorldModelSampler, episode: Episode) -> torch.Tensor:
    """The episode's true frames as the model sees and emits them: at its resolution, in its channel
    encoding, through its VAE when it has one."""
    return sampler.decode(sampler.encode(episode.frames))


@torch.no_grad()
def teacher_forced(
    sampler: WorldModelSampler, episode: Episode, seed: int
) -> tuple[torch.Tensor, np.ndarray]:
    """Frames (T+1, C, h, w) and raw states (T+1, S): the true first ones, then each step predicted from
    the true frames, actions and state before it (one noise generator per step, seeded from ``seed``)."""
    k = sampler.meta.context_frames
    t_count = episode.actions.shape[0]
    frames, states = [episode.frames[:1]], [episode.states[:1].numpy()]
    for first in range(0, t_count, TEACHER_FORCED_BATCH):
        steps = range(first, min(first + TEACHER_FORCED_BATCH, t_count))
        windows, actions, start = [], [], []
        for t in steps:
            context, past, state = episode.history(t, k)
            windows.append(sampler.encode(context))
            actions.append(torch.cat([past[1:], episode.actions[t : t + 1]]))
            start.append(state)
        generators = [torch.Generator().manual_seed(seed * 100_003 + t) for t in steps]
        nxt, norm = sampler.step(
            torch.stack(windows), torch.stack(actions), sampler.norm.normalize(torch.stack(start)), generators
        )
        frames.append(sampler.decode(nxt))
        states.append(sampler.norm.denormalize(norm).numpy())
    return torch.cat(frames), np.concatenate(states)


def frame_centroids(
    manifest: Manifest,
    images: dict[str, np.ndarray],
    scene: dict,
    camera: str,
    depth_range,
    backend: str = "warp",
) -> np.ndarray:
    """(T, K, 3): the world centroid of each tracked object's visible surface in a camera's dataset images
    (T frames); NaN where fewer than MIN_PIXELS of it are visible."""
    clip = clip_from_arrays(manifest, images, None, scene, camera, depth_range)
    ids = [o.instance for o in clip.objects]
    tracked = np.zeros(256, np.int32)
    tracked[ids] = 1
    points = backend_module(backend).object_points(clip.seg, clip.depth, tracked, clip.camera)  # only these
    counts, sums = points["counts"][:, ids], points["sums"][:, ids]
    centroids = sums / np.maximum(counts, 1)[..., None]
    return np.where((counts >= MIN_PIXELS)[..., None], centroids, np.nan)


def spread(samples: np.ndarray) -> float:
    """Largest distance of a sample's position from the samples' mean, over the steps and objects every
    sample shows: (M, T, K, 3) with NaN where not shown -> metres (0 where none is shown by all)."""
    shown = np.isfinite(samples).all(axis=(0, 3))  # (T, K)
    if not shown.any():
        return 0.0
    seen = samples[:, shown]  # (M, N, 3)
    return float(np.linalg.norm(seen - seen.mean(axis=0), axis=-1).max())


def _resample_seeds(noise_seed: int, samples: int) -> list[int]:
    return [int(np.random.SeedSequence([noise_seed, j]).generate_state(1)[0]) for j in range(1, samples)]


def calibrate_world_model(
    dataset: str | Path,
    ckpt: str | Path,
    mask: str = "valid",
    samples: int = 3,
    device: str = "cpu",
    progress: Callable[[str], None] | None = None,
    backend: str = "warp",
) -> Calibration:
    """The world-model calibration from the seed clips of ``mask`` (held out from the model's training):
    each clip through the frame pipeline and teacher-forced, and ``samples`` open-loop rollouts of its
    actions for the agreement threshold."""
    sampler = WorldModelSampler(ckpt, device=device)
    meta = sampler.meta
    instances = list(meta.instances)
    scores: dict[str, list[float]] = defaultdict(list)
    with open_dataset(dataset) as f:
        manifest = dataset_manifest(f)
        names = [n for n in demo_names(f, mask) if demo_record(f, n).source == "sim"]
        if not names:
            raise DatasetError(f"{dataset}: mask {mask!r} holds no simulator demos to calibrate on")
        depth_range = depth_ranges(f).get(meta.camera)
        for name in names:
            group, seed = f["data"][name], int(demo_record(f, name).seed)
            episode = Episode.load(group, meta.camera, instances, meta.resolution)
            states = episode.states.numpy()
            add_scores(
                scores,
                _clip(sampler, manifest, group, pipeline_frames(sampler, episode), states, depth_range),
                backend,
            )
            frames, predicted = teacher_forced(sampler, episode, seed)
            add_scores(scores, _clip(sampler, manifest, group, frames, predicted, depth_range), backend)
            context, past, state = episode.history(0, meta.context_frames)
            seeds = _resample_seeds(seed, samples + 1)
            actions = episode.actions[None].repeat(samples, 1, 1)
            rolled, _ = sampler.rollout(context, past, state, actions, seeds)
            size, scene = camera_size(group, meta.camera), read_scene(group)
            images = [predicted_images(meta.camera, instances, r, size) for r in rolled]
            centroids = [
                frame_centroids(manifest, i, scene, meta.camera, depth_range, backend) for i in images
            ]
            scores["agreement"].append(spread(np.stack(centroids)))
            if progress is not None:
                progress(name)
    about = (
        f"{len(names)} seed clips of mask {mask!r} through the world model's frame pipeline "
        f"({meta.resolution[0]}x{meta.resolution[1]}{', VAE' if meta.latent else ''}) and teacher-forced "
        f"one-step predictions; agreement from {samples} open-loop samples of each"
    )
    return calibration_from_scores(
        "world_model",
        scores,
        2 * len(names),
        about,
        manifest,
        ceilings=WORLD_MODEL_CEILINGS,
        checkpoint=sampler.hash,
        samples=samples,
    )


class SpreadWorker:
    """The agreement of the world-model demos of one (parent, start step): their own predicted
    trajectories and ``samples - 1`` more rollouts of their executed actions, batched. Holds the sampler,
    so it loads once; also the body of a Ray actor (``worldgen.distributed``)."""

    def __init__(
        self, dataset: str | Path, ckpt: str | Path, samples: int, device: str = "cpu", backend: str = "warp"
    ):
        self.dataset, self.samples, self.backend = Path(dataset), samples, backend
        self.sampler = WorldModelSampler(ckpt, device=device)

    def run(self, key: tuple[str, int]) -> dict[str, float]:
        parent, step = key
        meta, samples = self.sampler.meta, self.samples
        camera, instances = meta.camera, list(meta.instances)
        with open_dataset(self.dataset) as f:
            manifest = dataset_manifest(f)
            depth_range = depth_ranges(f).get(camera)
            records = [demo_record(f, n) for n in demo_names(f)]
            records = [r for r in records if r.source == "world_model" and (r.parent, r.branch_step) == key]
            if parent not in f["data"]:
                raise DatasetError(
                    f"{self.dataset}: {records[0].name}'s parent {parent} is not in the dataset"
                )
            group = f["data"][parent]
            size, scene = camera_size(group, camera), read_scene(group)
            episode = Episode.load(group, camera, instances, meta.resolution)
            demos = [read_demo(f["data"][r.name]) for r in records]
        context, past, state = episode.history(step, meta.context_frames)
        executed = [d.executed_actions for d in demos]
        horizon = max(len(a) for a in executed)
        actions, seeds = [], []
        for record, acts in zip(records, executed, strict=True):
            padded = np.zeros((horizon, acts.shape[1]), np.float32)
            padded[: len(acts)] = acts
            for seed in _resample_seeds(record.noise_seed or 0, samples):
                actions.append(padded)
                seeds.append(seed)
        rolled, _ = self.sampler.rollout(context, past, state, torch.from_numpy(np.stack(actions)), seeds)
        rolled = rolled.unflatten(0, (len(records), samples - 1))
        out = {}
        for i, (record, demo) in enumerate(zip(records, demos, strict=True)):
            t = len(executed[i])
            own = {image_key(camera, k): demo.obs[image_key(camera, k)][1 : t + 1] for k in (DEPTH, SEG)}
            runs = [own] + [predicted_images(camera, instances, r[:t], size) for r in rolled[i]]
            centroids = [
                frame_centroids(manifest, images, scene, camera, depth_range, self.backend) for images in runs
            ]
            out[record.name] = spread(np.stack(centroids))
        return out


def sample_spreads(
    dataset: str | Path,
    ckpt: str | Path,
    samples: int = 3,
    device: str = "cpu",
    progress: Callable[[int, int], None] | None = None,
    workers: int = 1,
    ray_address: str | None = None,
    backend: str = "warp",
) -> dict[str, float]:
    """Each world-model demo's ``sample_spread``: its own predicted trajectory and ``samples - 1`` more
    rollouts of its executed actions from the same start, under seeds derived from its noise seed.
    Demos of one parent and start step are rolled out in one batch (:class:`SpreadWorker`), on ``workers``
    Ray actors when asked. Written into the dataset."""
    if samples < 2:
        raise ValueError("agreement needs at least 2 samples")
    with open_dataset(dataset) as f:
        records = [demo_record(f, n) for n in demo_names(f)]
    keys = list(dict.fromkeys((r.parent, r.branch_step) for r in records if r.source == "world_model"))
    keys = [k for k in keys if k[0] is not None]
    total = sum(r.source == "world_model" and r.parent is not None for r in records)
    init = (dataset, ckpt, samples, device, backend)
    results = map_on_workers(SpreadWorker, init, keys, workers, ray_address)
    out: dict[str, float] = {}
    for spreads in results:
        out.update(spreads)
        if progress is not None:
            progress(len(out), total)
    model = checkpoint_hash(ckpt)
    spread_of = {name: {"sample_spread": out[name], "sample_spread_model": model} for name in sorted(out)}
    update_attributes(dataset, spread_of, {})
    return out


def gate_with_world_model(
    dataset: str | Path,
    ckpt: str | Path,
    mask: str | None = "synthetic",
    held_out: str | Path | None = None,
    held_out_mask: str = "valid",
    samples: int = 3,
    device: str = "cpu",
    workers: int = 1,
    ray_address: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    **gate_options,
) -> GateReport:
    """Gate a dataset's world-model demos the way this module means: thresholds calibrated through the
    model on held-out seed clips (``held_out``'s ``held_out_mask``; default this dataset's), the
    agreement of ``samples`` samples per attempt (``samples`` < 2: none; on ``workers`` Ray actors when
    asked; ``progress(done, total)`` as demos get theirs), simulator demos as before."""
    backend = gate_options.get("backend", "warp")  # calibration, agreement and verdicts on one backend
    calibration = calibrate_world_model(
        held_out or dataset, ckpt, held_out_mask, samples, device, backend=backend
    )
    if samples >= 2:
        sample_spreads(dataset, ckpt, samples, device, progress, workers, ray_address, backend)
    return gate_dataset(dataset, mask=mask, world_model=calibration, device=device, **gate_options)


def auroc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Area under the ROC curve of ``scores`` ranking ``positive`` above the rest (ties count half);
    None when one class is empty."""
    pos, neg = scores[positive], scores[~positive]
    if pos.size == 0 or neg.size == 0:
        return None
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (pos.size * neg.size))


def judge_against_replay(
    dataset: str | Path,
    envs: int = 1,
    tolerance: float = REPLAY_TOLERANCE,
    workers: int = 1,
    ray_address: str | None = None,
) -> dict:
    """Replay every checked world-model demo in the simulator, label it faithful or not (written into the
    dataset as ``replay_faithful`` with its errors), and measure the gate against that label. ``envs``,
    ``workers``, ``ray_address``: as :func:`world_models.replay.replay_generated` takes them."""
    with open_dataset(dataset) as f:
        records = [demo_record(f, n) for n in demo_names(f)]
        records = [r for r in records if r.source == "world_model" and r.check_passed is not None]
        if not records:
            raise DatasetError(f"{dataset}: no world-model demo has been checked yet (run worldgen check)")
        results = replay_generated(f, [r.name for r in records], envs, workers, ray_address)
    update_attributes(
        dataset,
        {
            r.name: {
                "replay_faithful": max(x["eef_error_max"], x["object_error_max"]) <= tolerance,
                "replay_success": bool(x["replay_success"]),
                "replay_eef_error_max": x["eef_error_max"],
                "replay_object_error_max": x["object_error_max"],
            }
            for r, x in zip(records, results, strict=True)
        },
        {"replay_tolerance": tolerance},
    )
    return gate_against_replay(dataset)


def gate_against_replay(dataset: str | Path) -> dict:
    """The gate's verdicts and scores against the replay labels a dataset already holds (written by
    :func:`judge_against_replay`; a copy gated again keeps them)."""
    with open_dataset(dataset) as f:
        records = [demo_record(f, n) for n in demo_names(f)]
        records = [r for r in records if r.replay_faithful is not None and r.check_passed is not None]
        if not records:
            raise DatasetError(f"{dataset}: no checked demo has a replay label (check --against-replay)")
        tolerance = dataset_info(f).replay_tolerance
    scores = {r.name: r.check_scores for r in records}
    replay_success = np.array([bool(r.replay_success) for r in records])
    faithful = np.array([bool(r.replay_faithful) for r in records])
    passed = np.array([bool(r.check_passed) for r in records])
    result = gate_against_label([r.name for r in records], scores, passed, faithful, tolerance)
    # What acceptance (the world model's predicted success, then the gate) keeps, against replay success.
    predicted = np.array([r.success for r in records])
    result["acceptance"] = {
        "predicted_success": int(predicted.sum()),
        "replay_success": int(replay_success.sum()),
        "precision_predicted": _share(replay_success, predicted),
        "accepted": int((predicted & passed).sum()),
        "precision_accepted": _share(replay_success, predicted & passed),
    }
    return result


def _share(a: np.ndarray, b: np.ndarray) -> float | None:
    """The share of ``b`` that is also ``a``; None when ``b`` is empty."""
    return float((a & b).sum() / b.sum()) if b.any() else None


def gate_against_label(
    names: list[str], scores: dict[str, dict], passed: np.ndarray, faithful: np.ndarray, tolerance: float
) -> dict:
    """How the gate and each check separate faithful from unfaithful demos (``names`` in the order of the
    label arrays; ``scores`` their ``check_scores``)."""
    unfaithful = ~faithful

    def ratio(name: str, check: str) -> float:
        s = scores[name].get(check)
        return 0.0 if not s or s.get("score") is None else float(s["score"]) / float(s["threshold"])

    worst = np.array([max([ratio(n, c) for c in CHECK_NAMES] + [0.0]) for n in names])
    checks = {}
    for check in CHECK_NAMES:
        failed = np.array([scores[n].get(check, {}).get("verdict") == "failed" for n in names])
        judged = np.array([scores[n].get(check, {}).get("verdict") in ("passed", "failed") for n in names])
        if not judged.any():
            continue
        others = np.array(
            [
                any(scores[n].get(c, {}).get("verdict") == "failed" for c in CHECK_NAMES if c != check)
                for n in names
            ]
        )
        checks[check] = {
            "judged": int(judged.sum()),
            "failed_unfaithful": int((failed & unfaithful).sum()),
            "failed_faithful": int((failed & faithful).sum()),
            "decides_alone": int((failed & ~others).sum()),  # demos this check alone rejects
            "auroc": auroc(np.array([ratio(n, check) for n in names]), unfaithful),
        }

    return {
        "demos": len(names),
        "tolerance_m": tolerance,
        "faithful": int(faithful.sum()),
        "unfaithful": int(unfaithful.sum()),
        "passed": int(passed.sum()),
        "rejected_of_unfaithful": _share(~passed, unfaithful),
        "passed_of_faithful": _share(passed, faithful),
        "precision_of_passed": _share(faithful, passed),
        "auroc": auroc(worst, unfaithful),  # the gate's continuous score: the worst score / threshold
        "checks": checks,
    }
