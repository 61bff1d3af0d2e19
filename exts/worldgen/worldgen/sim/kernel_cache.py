"""Fill Warp's kernel cache before the first run: ``python -m worldgen.sim.kernel_cache MANIFEST ...``.

Warp compiles a module's kernels on first use and keeps them under ``WARP_CACHE_PATH``; on a fresh
machine that first compile (Newton's model building, collision and ray-cast camera kernels, the checks'
kernels) takes 1-3 minutes of the first command. ``make venv`` runs this once after installing, so the
compile is part of set-up and ``worldgen run`` finds the cache warm. The kernels are compiled by doing
what a run does: a scene built, stepped and rendered from every camera, and the checks' module loaded.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from ..manifest import Manifest, load_manifest


def warm_kernel_cache(manifest: Manifest) -> float:
    """Compile (or find cached) every Warp kernel a run of ``manifest`` launches on the CPU; the seconds
    it took."""
    import warp as wp

    from ..checks import kernels
    from .newton import NewtonBackend

    started = time.perf_counter()
    backend = NewtonBackend(manifest, render=True)
    try:
        backend.reset(manifest.seeds.base_seed)
        for _ in range(2):
            backend.step(np.asarray(backend.robot_q()))  # hold still: physics, contacts
        backend.render()
    finally:
        backend.close()
    wp.load_module(kernels, device="cpu")
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    paths = [Path(p) for p in (argv if argv is not None else sys.argv[1:])]
    if not paths:
        raise SystemExit("usage: python -m worldgen.sim.kernel_cache MANIFEST ...")
    for path in paths:
        seconds = warm_kernel_cache(load_manifest(path))
        print(f"Warp kernel cache warm for {path.name} ({seconds:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
