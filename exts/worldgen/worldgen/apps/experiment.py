"""What the policy experiments share (``worldgen compare`` and the experiments in bench/): stages that run
once and resume from what their folder holds, replicates pooled with their interval, and the
seeds -> play rollouts -> world model preparation they stand on."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ..manifest import Manifest, as_manifest
from .cache import Stages


class TimeLimitReached(RuntimeError):
    """A stage stopped at its time limit with its state saved: the same call again goes on."""


def say(text: str) -> None:
    """A timestamped progress line."""
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def pooled(cells: list[dict]) -> dict[str, Any]:
    """One row's replicate cells (each with successes and episodes) pooled: the rate, the Wilson 95 %
    interval of the pooled episodes (``ci95``), the replicate-level 95 % interval (``replicate_ci95``,
    what a gain is judged by) and what each replicate scored."""
    from policies.evaluate import replicate_interval, wilson_interval

    k, n = sum(c["successes"] for c in cells), sum(c["episodes"] for c in cells)
    return {
        "successes": k,
        "episodes": n,
        "success_rate": k / n,
        "ci95": list(wilson_interval(k, n)),
        "replicate_ci95": list(
            replicate_interval([c["successes"] for c in cells], [c["episodes"] for c in cells])
        ),
        "per_replicate": [f"{c['successes']}/{c['episodes']}" for c in cells],
    }


PLAY_NOISE = (0.15, 0.3)  # the play rollouts' action noise, one rollout per seed demo each


def prepare_world_model(
    stage: Stages,
    manifest: Manifest | str | Path,
    out: Path,
    seeds: int,
    play: int,
    wm_steps: int | None,
    minutes: float | None,
) -> None:
    """``seeds.hdf5`` (expert demos with cameras), ``wm_train.hdf5`` (+ ``play`` noisy replays per seed,
    at most 2) and the world model ``wm/`` trained on them. Raises :class:`TimeLimitReached` when
    ``minutes`` stops the training (its checkpoint saved: call again to go on)."""
    from world_models.train import train_world_model

    from ..pipeline import run_play_stage, run_seed_stage

    manifest = as_manifest(manifest)
    seeds_path, train_path = out / "seeds.hdf5", out / "wm_train.hdf5"
    stage(
        "seeds",
        lambda: {"demos": len(run_seed_stage(manifest, seeds_path, n=seeds))},
        {"scene": manifest.scene_hash(), "base_seed": manifest.seeds.base_seed, "seeds": seeds},
        [seeds_path],
    )
    noise = list(PLAY_NOISE[:play])
    stage(
        "play",
        lambda: {"rollouts": len(run_play_stage(manifest, seeds_path, train_path, noise)) - seeds},
        {"seeds": stage.key("seeds"), "noise": noise},
        [train_path],
    )

    def train() -> dict:
        limit = None if minutes is None else minutes * 60
        result = train_world_model(train_path, out / "wm", steps=wm_steps, time_limit=limit)
        if result.get("stopped_early"):
            raise TimeLimitReached("the world model stopped at its time limit: run again to resume")
        last = result["validation"][-1] if result.get("validation") else None
        return {"steps": result["step"], "last_validation": last}

    stage(
        "world_model",
        train,
        {"play": stage.key("play"), "world_model": manifest.section_hash("world_model"), "steps": wm_steps},
        [out / "wm"],
    )
