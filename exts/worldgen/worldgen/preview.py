"""Variant previews: the first frame of several seeds of a manifest, seed by camera, rendered by the
headless engine, so an engineer sees what lighting, jitter, textures, placements and distractors do
before generating anything.

``render_variants`` returns the frames; ``variant_grid`` lays them out as one labelled image (a row a
seed, a column a camera). ``worldgen preview``, the window's preview grid and the run report use these.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from .errors import ArgumentError
from .manifest import Manifest

LABEL_HEIGHT = 14  # pixels of caption above each column and left of each row
LABEL_WIDTH = 64
BACKGROUND, INK = (32, 32, 32), (230, 230, 230)


def preview_cameras(manifest: Manifest, cameras: Sequence[str] | None = None) -> list[str]:
    """The cameras asked for (all of the manifest's that record RGB when none are), each checked."""
    with_rgb = [c.name for c in manifest.cameras if "rgb" in c.outputs]
    if not cameras:
        return with_rgb
    for name in cameras:
        if name not in with_rgb:
            raise ArgumentError(
                f"camera {name!r}: {manifest.name} has no RGB camera of that name "
                f"(it has {', '.join(with_rgb)})"
            )
    return list(cameras)


def render_variants(
    manifest: Manifest, seeds: Sequence[int], cameras: Sequence[str] | None = None, device: str | None = None
) -> dict[tuple[int, str], np.ndarray]:
    """``{(seed, camera): (H, W, 3) uint8}``: each seed's scene as it starts, from each camera."""
    from .sim.newton import NewtonBackend

    names = preview_cameras(manifest, cameras)
    backend = NewtonBackend(manifest, device=device, render=True)
    try:
        frames = {}
        for seed in seeds:
            backend.reset(int(seed))
            for name, frame in backend.render(names).items():
                frames[(int(seed), name)] = frame.rgb
        return frames
    finally:
        backend.close()


def variant_grid(frames: dict[tuple[int, str], np.ndarray], scale: int = 1) -> Image.Image:
    """One image: a row per seed, a column per camera, captions on the top and left edges; frames of one
    camera share a size, columns of different sizes are padded to the tallest."""
    seeds = sorted({s for s, _ in frames})
    cameras = list(dict.fromkeys(c for _, c in frames))
    sizes = {c: next(f.shape[:2] for (_, name), f in frames.items() if name == c) for c in cameras}
    cell_h = max(h for h, _ in sizes.values()) * scale
    widths = [sizes[c][1] * scale for c in cameras]
    grid = Image.new("RGB", (LABEL_WIDTH + sum(widths), LABEL_HEIGHT + cell_h * len(seeds)), BACKGROUND)
    draw = ImageDraw.Draw(grid)
    x = LABEL_WIDTH
    for camera, width in zip(cameras, widths, strict=True):
        draw.text((x + 2, 1), camera, fill=INK)
        for row, seed in enumerate(seeds):
            image = Image.fromarray(frames[(seed, camera)])
            if scale != 1:
                image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
            grid.paste(image, (x, LABEL_HEIGHT + row * cell_h))
        x += width
    for row, seed in enumerate(seeds):
        draw.text((2, LABEL_HEIGHT + row * cell_h + 2), f"seed {seed}", fill=INK)
    return grid


def parse_seeds(text: str) -> list[int]:
    """``"0-7"``, ``"3"`` or ``"0,2,5-6"``: the seeds in order, each once."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            low, _, high = part.strip().partition("-")
            first, last = int(low), int(high or low)
            if first < 0 or last < first:
                raise ValueError
            seeds += range(first, last + 1)
    except ValueError:
        raise ArgumentError(
            f"expected seeds such as 0-7 or 0,2,5-6 (non-negative, ranges ascending), got {text!r}"
        ) from None
    return list(dict.fromkeys(seeds))
