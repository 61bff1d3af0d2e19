"""Appearance transfer to the target domain: train :class:`AppearanceTransferModel` on unlabelled
target-domain clips (``worldgen seed --domain target --no-actions``), save and load it, and write
transferred copies of datasets whose RGB frames are repainted from their depth and segmentation.

Checkpoint folder (nothing pickled)::

    model/          ``save_pretrained`` of the generator (config.json + safetensors)
    transfer.json   :class:`TransferMeta`
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from worldgen.dataset import (
    DatasetError,
    DatasetWriter,
    dataset_digest,
    dataset_info,
    dataset_manifest,
    demo_names,
    open_dataset,
    read_demo,
    read_header,
    read_obs,
)
from worldgen.errors import CheckpointError
from worldgen.files import staging_folder, swap_in_folder, write_atomically
from worldgen.keys import DEPTH, RGB, SEG, image_key
from worldgen.manifest import rng_for

from .modeling_appearance_transfer import AppearanceTransferModel

META_NAME = "transfer.json"
TRANSFERRED = "transferred"  # the domain a transferred demo records


@dataclass(frozen=True)
class TransferMeta:
    """What a transfer checkpoint was trained on."""

    cameras: tuple[str, ...]  # the cameras it repaints (each has rgb, depth and segmentation)
    resolution: tuple[int, int]  # (width, height)
    instances: tuple[str, ...]  # the instance table's names in id order (one one-hot channel each)
    data_hash: str  # the target clips (worldgen.dataset.dataset_digest)
    manifest_hash: str
    clips: int
    step: int
    seed: int

    def to_json(self) -> dict:
        out = asdict(self)
        return {
            **out,
            "cameras": list(self.cameras),
            "resolution": list(self.resolution),
            "instances": list(self.instances),
        }

    @classmethod
    def from_json(cls, data: dict) -> TransferMeta:
        tuples = {key: tuple(data[key]) for key in ("cameras", "resolution", "instances")}
        return cls(**{**data, **tuples})


@dataclass(frozen=True)
class TransferConfig:
    steps: int = 1500
    batch_size: int = 16
    learning_rate: float = 1e-3
    seed: int = 0
    previous_noise: float = 0.05  # std of the noise on the previous frame in training ([-1, 1] units)
    previous_dropout: float = 0.2  # how often training shows no previous frame (a clip's first frame)


def _to_unit(rgb: np.ndarray) -> torch.Tensor:
    """(..., H, W, 3) uint8 -> (..., 3, H, W) float in [-1, 1]."""
    return torch.from_numpy(rgb).movedim(-1, -3).float() / 127.5 - 1.0


def _to_uint8(rgb: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [-1, 1] -> (H, W, 3) uint8."""
    return ((rgb.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()


def transfer_cameras(f: h5py.File) -> list[str]:
    """The cameras of a dataset's manifest that record rgb, depth and segmentation."""
    manifest = dataset_manifest(f)
    return [c.name for c in manifest.cameras if {"rgb", "depth", "segmentation"} <= set(c.outputs)]


def instance_names(f: h5py.File) -> tuple[str, ...]:
    """The dataset's segmentation ids, as names in id order."""
    return tuple(row["name"] for row in sorted(dataset_info(f).instances, key=lambda r: r["id"]))


def load_clips(f: h5py.File, cameras: list[str]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """One (rgb (T+1, H, W, 3), depth (T+1, H, W), segmentation (T+1, H, W)) per demo and camera."""
    clips = []
    for name in demo_names(f):
        obs = read_obs(f["data"][name], [image_key(c, k) for c in cameras for k in (RGB, DEPTH, SEG)])
        for c in cameras:
            clips.append(
                (obs[image_key(c, RGB)], obs[image_key(c, DEPTH)][..., 0], obs[image_key(c, SEG)][..., 0])
            )
    return clips


def train_transfer(
    clips_path: str | Path,
    output: str | Path,
    config: TransferConfig = TransferConfig(),
    progress: Callable[[int, float], None] | None = None,
) -> tuple[AppearanceTransferModel, TransferMeta]:
    """Train the generator on a dataset of target-domain clips and save it to ``output`` (replaced
    atomically). ``progress(step, loss)`` after every step."""
    with open_dataset(clips_path) as f:
        cameras = transfer_cameras(f)
        if not cameras:
            raise DatasetError(f"{clips_path}: no camera records rgb, depth and segmentation")
        clips = load_clips(f, cameras)
        names = demo_names(f)
        if not names:
            raise DatasetError(f"{clips_path}: no clips")
        manifest = dataset_manifest(f)
        data_hash = dataset_digest(f, names)
        instances = instance_names(f)
    # Every frame of every camera of every clip in one array per kind; ``previous[i]`` is the frame
    # before frame i in its clip (-1 for a clip's first).
    rgb, depth, seg = (np.concatenate([c[i] for c in clips]) for i in range(3))
    starts = np.cumsum([0] + [len(c[0]) for c in clips[:-1]])
    previous = np.arange(len(rgb)) - 1
    previous[starts] = -1
    height, width = rgb.shape[1:3]
    if height % 16 or width % 16:  # a 4x unshuffle, then two 2x downsamplings
        raise DatasetError(
            f"{clips_path}: frames of {width}x{height}; the transfer model needs multiples of 16"
        )

    torch.manual_seed(config.seed)
    model = AppearanceTransferModel(instances=len(instances), resolution=(width, height))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate)
    generator = torch.Generator().manual_seed(config.seed)
    model.train()
    for step in range(1, config.steps + 1):
        i = torch.randint(len(rgb), (config.batch_size,), generator=generator).numpy()
        keep = torch.rand(config.batch_size, generator=generator) >= config.previous_dropout
        has_previous = torch.from_numpy(previous[i] >= 0) & keep
        before = _to_unit(rgb[np.maximum(previous[i], 0)])
        before = before + config.previous_noise * torch.randn(before.shape, generator=generator)
        controls = model.controls(torch.from_numpy(depth[i]), torch.from_numpy(seg[i]))
        loss = torch.nn.functional.l1_loss(model(controls, before, has_previous), _to_unit(rgb[i]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if progress is not None:
            progress(step, float(loss))
    meta = TransferMeta(
        cameras=tuple(cameras),
        resolution=(width, height),
        instances=instances,
        data_hash=data_hash,
        manifest_hash=manifest.content_hash(),
        clips=len(names),
        step=config.steps,
        seed=config.seed,
    )
    save_transfer_model(model, meta, output)
    model.eval()
    return model, meta


def save_transfer_model(model: AppearanceTransferModel, meta: TransferMeta, output: str | Path) -> None:
    """``model/`` (safetensors) and ``transfer.json`` written beside ``output``, then swapped in."""
    staging = staging_folder(Path(output))
    model.save_pretrained(staging / "model", safe_serialization=True)
    text = json.dumps(meta.to_json(), indent=2, sort_keys=True) + "\n"
    write_atomically(staging / META_NAME, text.encode())
    swap_in_folder(staging, Path(output))


def read_transfer_meta(ckpt: str | Path) -> TransferMeta:
    """A transfer checkpoint's description; :class:`CheckpointError` naming the folder when it is not one."""
    path = Path(ckpt) / META_NAME
    if not path.is_file() or not (Path(ckpt) / "model").is_dir():
        raise CheckpointError(
            f"{ckpt}: not a transfer checkpoint (no {META_NAME} and model/; see worldgen train-transfer)"
        )
    try:
        return TransferMeta.from_json(json.loads(path.read_text()))
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: not a transfer checkpoint description ({exc!r})") from None


def load_transfer_model(ckpt: str | Path) -> tuple[AppearanceTransferModel, TransferMeta]:
    meta = read_transfer_meta(ckpt)
    model = AppearanceTransferModel.from_pretrained(Path(ckpt) / "model")
    model.eval()
    return model, meta


def transfer_checkpoint_hash(ckpt: str | Path) -> str:
    """Identifies the weights a transferred demo was painted with."""
    digest = hashlib.sha256()
    for path in sorted((Path(ckpt) / "model").iterdir()):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


@torch.no_grad()
def transfer_frames(
    model: AppearanceTransferModel,
    depth: np.ndarray,
    seg: np.ndarray,
    noise_std: np.ndarray | None = None,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """A clip's target-domain RGB (T, H, W, 3) uint8 from its depth (T, H, W, 1) and segmentation
    (T, H, W, 1), frame by frame, each conditioned on the one before. ``noise_std`` (per channel, 8-bit
    levels; drawn from ``rng``): sample each pixel around the painted mean instead of taking the mean."""
    controls = model.controls(torch.from_numpy(depth[..., 0]), torch.from_numpy(seg[..., 0]))
    out = np.empty((*depth.shape[:3], 3), dtype=np.uint8)
    previous = torch.zeros(1, 3, *depth.shape[1:3])
    for t in range(depth.shape[0]):
        frame = model(controls[t : t + 1], previous, torch.tensor([t > 0])).clamp(-1.0, 1.0)
        if noise_std is None:
            out[t] = _to_uint8(frame[0])
        else:
            mean = (frame[0].permute(1, 2, 0).numpy().astype(np.float64) + 1.0) * 127.5
            out[t] = np.clip(np.rint(mean + rng.normal(0.0, 1.0, mean.shape) * noise_std), 0, 255)
        previous = _to_unit(out[t])[None]  # what the next frame sees is the stored frame, rounded
    return out


@torch.no_grad()
def residual_std(model: AppearanceTransferModel, clips_path: str | Path, frames: int = 256) -> np.ndarray:
    """Per-channel std (8-bit levels) of what the generator does not explain on clip frames, teacher
    forced (the real previous frame given): the spread a sampled transfer draws around the painted mean."""
    with open_dataset(clips_path) as f:
        clips = load_clips(f, transfer_cameras(f))
    residuals = []
    rng = np.random.default_rng(0)
    for _ in range(frames):
        rgb, depth, seg = clips[rng.integers(len(clips))]
        t = int(rng.integers(1, len(rgb)))
        controls = model.controls(torch.from_numpy(depth[t : t + 1]), torch.from_numpy(seg[t : t + 1]))
        painted = model(controls, _to_unit(rgb[t - 1 : t]), torch.tensor([True])).clamp(-1.0, 1.0)
        residuals.append(rgb[t].astype(np.float64) - (painted[0].permute(1, 2, 0).numpy() + 1.0) * 127.5)
    return np.std(np.stack(residuals), axis=(0, 1, 2))


def transfer_dataset(
    dataset: str | Path,
    ckpt: str | Path,
    output: str | Path,
    progress: Callable[[str, int, int], None] | None = None,
    noise_std: np.ndarray | None = None,
    cameras: list[str] | None = None,
) -> DatasetWriter:
    """Write ``output``: every demo of ``dataset`` with its cameras' RGB repainted in the target domain
    and every other array as stored. Each demo records ``domain: transferred`` and the checkpoint hash;
    ``source`` keeps its value. ``noise_std`` (:func:`residual_std`): frames sampled around the painted
    mean, seeded by the demo's scene seed and the camera. ``cameras``: those of the checkpoint's to
    repaint (default: all; world-model demos hold only the camera the model imagines). Resumes: demos
    already in ``output`` are kept."""
    model, meta = load_transfer_model(ckpt)
    model_hash = transfer_checkpoint_hash(ckpt)
    cameras = list(meta.cameras) if cameras is None else cameras
    if not cameras or not set(cameras) <= set(meta.cameras):
        raise DatasetError(f"{ckpt} repaints cameras {meta.cameras}, not {cameras}")
    with open_dataset(dataset) as f:
        header = read_header(f)
        header["worldgen"] = {**header["worldgen"], "domain": TRANSFERRED, "transfer_model": model_hash}
        if instance_names(f) != meta.instances:
            raise DatasetError(f"{dataset}: its segmentation ids are not the ones {ckpt} was trained on")
        keys = [image_key(c, k) for c in cameras for k in (RGB, DEPTH, SEG)]
        writer = DatasetWriter(output, header)
        names = demo_names(f)
        for i, name in enumerate(names, start=1):
            if name in writer.demos:
                continue
            demo = read_demo(f["data"][name])
            missing = [k for k in keys if k not in demo.obs]
            if missing:
                raise DatasetError(f"{dataset}: {name} has no {missing} (the cameras {ckpt} repaints)")
            size = demo.obs[keys[0]].shape[2:0:-1]
            if tuple(size) != meta.resolution:
                raise DatasetError(
                    f"{dataset}: frames of {size[0]}x{size[1]}, {ckpt} paints {meta.resolution}"
                )
            for camera in cameras:
                rng = None if noise_std is None else rng_for(int(demo.attrs["seed"]), f"transfer/{camera}")
                demo.obs[image_key(camera, RGB)] = transfer_frames(
                    model,
                    demo.obs[image_key(camera, DEPTH)],
                    demo.obs[image_key(camera, SEG)],
                    noise_std,
                    rng,
                )
            demo.attrs = {**demo.attrs, "domain": TRANSFERRED, "transfer_model": model_hash}
            if noise_std is not None:
                demo.attrs["transfer_noise_std"] = [float(v) for v in noise_std]
            writer.append(demo, name)
            if progress is not None:
                progress(name, i, len(names))
    writer.finalize()
    return writer
