"""Figures with axes, units and legends (matplotlib), one function a figure. They use
:class:`matplotlib.figure.Figure` directly, not ``pyplot``: no global state and no display backend, so
they are safe in worker processes and headless jobs. Each writes its PNG atomically."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from .files import write_atomically

SEEDS_COLOR, CONTROL_COLOR, RECIPE_COLOR = "#9d9d9d", "#e45756", "#4c78a8"


def _save(fig: Figure, path: Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    write_atomically(Path(path), buffer.getvalue())
    return Path(path)


def success_rates(
    rows: Mapping[str, Mapping],
    path: Path,
    title: str,
    baseline: str | None = None,
    controls: Sequence[str] = (),
) -> Path:
    """One bar per row: success rate (%) with its 95 % interval (``ci95``) as an error bar; ``baseline``
    (grey, with a dashed line across) and ``controls`` (red) set apart from the rest."""
    names = list(rows)
    rates = np.array([rows[n]["success_rate"] for n in names])
    low = rates - np.array([rows[n]["ci95"][0] for n in names])
    high = np.array([rows[n]["ci95"][1] for n in names]) - rates
    colors = [
        SEEDS_COLOR if n == baseline else CONTROL_COLOR if n in controls else RECIPE_COLOR for n in names
    ]
    fig = Figure(figsize=(7, 4.2), dpi=120)
    ax = fig.subplots()
    ax.bar(names, 100 * rates, yerr=100 * np.stack([low, high]), capsize=4, color=colors)
    if baseline is not None:
        ax.axhline(100 * rows[baseline]["success_rate"], color="#555555", linestyle="--", linewidth=1)
        ax.plot([], [], color="#555555", linestyle="--", linewidth=1, label=baseline)
        ax.legend(loc="lower right", fontsize=8)
    ax.set_ylabel("success on held-out episodes (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title, fontsize=10)
    ax.tick_params(axis="x", labelsize=8, labelrotation=25)
    fig.tight_layout()
    return _save(fig, path)


def psnr_per_step(per_step: Mapping[str, Mapping[str, float]], path: Path, title: str) -> Path:
    """PSNR (dB) against steps ahead for the model and for copying the last frame."""
    fig = Figure(figsize=(5.5, 3.4), dpi=120)
    ax = fig.subplots()
    for key, label, style in (("psnr", "world model", "o-"), ("copy_last_psnr", "copy last frame", "s--")):
        series = sorted((int(j), v) for j, v in per_step.get(key, {}).items() if np.isfinite(v))
        if series:
            ax.plot(*zip(*series, strict=True), style, label=label)
    ax.set_xlabel("steps ahead")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def violation_heatmap(
    counts: np.ndarray, path: Path, title: str, background: np.ndarray | None = None
) -> Path:
    """Where in the camera image the checks flagged violations: counts per pixel with a colour bar, over
    a greyed frame of the scene (``background``, (H, W, 3) uint8) so the places can be recognised."""
    fig = Figure(figsize=(5.2, 4.2), dpi=120)
    ax = fig.subplots()
    if background is not None:
        if background.shape[:2] != counts.shape:
            from PIL import Image

            background = np.asarray(Image.fromarray(background).resize(counts.shape[::-1], Image.NEAREST))
        grey = background.astype(np.float64).mean(axis=-1)
        ax.imshow(grey, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    shown = np.ma.masked_equal(counts, 0) if background is not None else counts
    image = ax.imshow(
        shown, cmap="inferno", interpolation="nearest", vmin=0, vmax=max(float(counts.max()), 1.0), alpha=0.8
    )
    fig.colorbar(image, ax=ax, label="failed checks x flagged frames per pixel")
    ax.set_xlabel("x (pixels)")
    ax.set_ylabel("y (pixels)")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
