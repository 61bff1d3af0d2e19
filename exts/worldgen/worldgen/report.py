"""Pictures of datasets: contact sheets (PNG) and GIFs of demos, with depth and segmentation shown in
false colour. Plain numpy + Pillow, so it runs wherever the core does."""

from __future__ import annotations

import io
from pathlib import Path

import h5py
import numpy as np
from PIL import Image

from .files import write_atomically
from .keys import DEPTH, RGB, SEG, image_kind

SHEET_FRAMES = 6


def save_png(image: Image.Image, path: Path) -> Path:
    """Write ``image`` as a PNG atomically (a reader never sees half an image)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    write_atomically(Path(path), buffer.getvalue())
    return Path(path)


def instance_palette(n: int = 256) -> np.ndarray:
    """Distinct colours per instance id (id 0, background, is black)."""
    ids = np.arange(n, dtype=np.uint32)
    # Spread ids over the hue circle with the golden ratio; fixed, so colours match across images.
    hue = (ids * 0.61803398875) % 1.0
    k = (np.array([5.0, 3.0, 1.0])[None, :] + hue[:, None] * 6.0) % 6.0
    rgb = 1.0 - 0.75 * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
    palette = (rgb * 255).astype(np.uint8)
    palette[0] = 0
    return palette


PALETTE = instance_palette()


def depth_to_rgb(depth: np.ndarray) -> np.ndarray:
    """Normalised depth (..., 1) in [0, 1] to a near-bright, far-dark false colour image."""
    d = np.clip(depth[..., 0], 0.0, 1.0)
    near = 1.0 - d
    rgb = np.stack([near**0.5, near**1.5, 0.35 + 0.4 * d], axis=-1)
    return (rgb * 255).astype(np.uint8)


def seg_to_rgb(seg: np.ndarray) -> np.ndarray:
    return PALETTE[seg[..., 0].astype(np.int64) % len(PALETTE)]


def _as_rgb(key: str, frames: np.ndarray) -> np.ndarray:
    if image_kind(key) == DEPTH:
        return depth_to_rgb(frames)
    if image_kind(key) == SEG:
        return seg_to_rgb(frames)
    return frames


def image_keys(group: h5py.Group) -> list[str]:
    return [k for k in group["obs"] if image_kind(k) is not None and group["obs"][k].ndim == 4]


def _to_height(image: np.ndarray, height: int) -> np.ndarray:
    """Nearest-neighbour rescale of an (H, W, 3) image to ``height`` rows, keeping its aspect ratio."""
    width = image.shape[1] * height // image.shape[0]
    return np.asarray(Image.fromarray(image).resize((width, height), Image.NEAREST))


def contact_sheet(group: h5py.Group, frames: int = SHEET_FRAMES) -> Image.Image:
    """Rows: each image observation; columns: frames evenly spaced over the demo."""
    keys = image_keys(group)
    if not keys:
        raise ValueError("the demo has no image observations")
    t = group["obs"][keys[0]].shape[0]
    picks = np.unique(np.linspace(0, t - 1, min(frames, t)).round().astype(int))
    height = max(group["obs"][k].shape[1] for k in keys)
    rows = []
    for key in keys:
        tiles = _as_rgb(key, group["obs"][key][picks])
        tiles = [_to_height(tile, height) for tile in tiles]
        rows.append(np.concatenate(tiles, axis=1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
    return Image.fromarray(np.concatenate(rows, axis=0))


def demo_gif(group: h5py.Group, path: Path, fps: int = 10, stride: int = 2) -> Path:
    """An animated GIF of the demo's colour cameras side by side."""
    keys = [k for k in image_keys(group) if image_kind(k) == RGB] or image_keys(group)[:1]
    return frames_gif({k: group["obs"][k][::stride] for k in keys}, path, fps / stride)


def frames_gif(frames: dict[str, np.ndarray], path: Path, fps: float = 10) -> Path:
    """An animated GIF of equally long image sequences (rgb, depth or seg by key suffix) side by side."""
    height = max(v.shape[1] for v in frames.values())
    clips = [[_to_height(f, height) for f in _as_rgb(key, v)] for key, v in frames.items()]
    images = [Image.fromarray(np.concatenate(row, axis=1)) for row in zip(*clips, strict=True)]
    path.parent.mkdir(parents=True, exist_ok=True)
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    return path
