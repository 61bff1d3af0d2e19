"""TensorBoard event files for training runs (world model, policies): what the field opens to see a run's
curves. ``TrainingLog(None)`` logs nothing, so training code calls it unconditionally."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .errors import ArgumentError


class TrainingLog:
    """Scalars and images under ``log_dir`` (``tensorboard --logdir`` reads it), flushed on close.
    ``wandb_project``: the same event files mirrored to a Weights & Biases run (``sync_tensorboard``;
    ``WANDB_MODE=offline`` keeps it on disk), when the optional ``wandb`` package is installed."""

    def __init__(self, log_dir: str | Path | None, wandb_project: str | None = None):
        self.writer = self.wandb_run = None
        if log_dir is None:
            return
        if wandb_project is not None:
            try:
                import wandb
            except ImportError:
                raise ArgumentError(
                    "--wandb: the wandb package is not installed (pip install wandb)"
                ) from None
            Path(log_dir).mkdir(parents=True, exist_ok=True)
            self.wandb_run = wandb.init(
                project=wandb_project,
                dir=str(log_dir),
                name=Path(log_dir).name,
                sync_tensorboard=True,
                reinit="create_new",
            )
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package (ml extra)

        self.writer = SummaryWriter(str(log_dir))

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        if self.writer is not None:
            for tag, value in values.items():
                self.writer.add_scalar(tag, float(value), step)

    def image(self, step: int, tag: str, image: np.ndarray) -> None:
        """``image``: (H, W, 3) uint8."""
        if self.writer is not None:
            self.writer.add_image(tag, np.ascontiguousarray(image), step, dataformats="HWC")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None

    def __enter__(self) -> TrainingLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
