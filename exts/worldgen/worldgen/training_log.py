"""TensorBoard event files for training runs (world model, policies): what the field opens to see a run's
curves. ``TrainingLog(None)`` logs nothing, so training code calls it unconditionally."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np


class TrainingLog:
    """Scalars and images under ``log_dir`` (``tensorboard --logdir`` reads it), flushed on close."""

    def __init__(self, log_dir: str | Path | None):
        self.writer = None
        if log_dir is not None:
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

    def __enter__(self) -> TrainingLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
