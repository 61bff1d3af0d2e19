"""Data-parallel training as ``torchrun`` and ``accelerate launch`` start it: one process a rank
(``RANK`` / ``WORLD_SIZE`` in the environment), every rank draws the same global batch from the same
seed and trains on its share of it, and gradients are averaged with ``all_reduce`` (gloo on CPU, nccl
on GPUs) before each optimiser step, so N ranks follow the loss curve of one process with the same
global batch. Without ``WORLD_SIZE`` (one process) nothing changes."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from .errors import ArgumentError


class DataParallel:
    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self._dist = None
        if self.world > 1:
            import torch
            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
            self._dist = dist

    @property
    def main(self) -> bool:
        """The rank that logs and writes."""
        return self.rank == 0

    def check_batch(self, batch_size: int) -> None:
        if batch_size % self.world:
            raise ArgumentError(f"batch size {batch_size} does not split over {self.world} ranks")

    def share(self, batch: Any) -> Any:
        """This rank's contiguous share of a global batch (tensors split on their first dimension, in
        nested dicts)."""
        if self.world == 1:
            return batch
        if isinstance(batch, dict):
            return {k: self.share(v) for k, v in batch.items()}
        size = batch.shape[0] // self.world
        return batch[self.rank * size : (self.rank + 1) * size]

    def average_gradients(self, parameters: Iterable) -> None:
        if self._dist is None:
            return
        for p in parameters:
            if p.grad is not None:
                self._dist.all_reduce(p.grad)
                p.grad /= self.world

    def mean(self, value: float) -> float:
        """The mean of ``value`` over the ranks (a loss of each rank's share: the global batch's loss)."""
        if self._dist is None:
            return value
        import torch

        tensor = torch.tensor([value], dtype=torch.float64)
        self._dist.all_reduce(tensor)
        return float(tensor.item()) / self.world

    def close(self) -> None:
        if self._dist is not None:
            self._dist.barrier()
            self._dist.destroy_process_group()
            self._dist = None
