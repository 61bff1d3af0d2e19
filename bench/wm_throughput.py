"""World-model throughput and fidelity on push_to_target, in one run:

- training samples/s (64x64 frames, the manifest's batch size), and branching frames/s for N=16
  branches sampled as one batch against 16 rollouts one after another, same seeds;
- fidelity after a fixed training budget: branches replayed in simulation, PSNR per step ahead against
  the copy-last-frame baseline, and the action-sensitivity gap.

Writes bench/results/wm_throughput.json.   python bench/wm_throughput.py [--seeds 20] [--minutes 10]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "wm_throughput.json"


def main() -> None:
    from worldgen.pipeline import run_seed_stage

    from world_models.branch import WorldModelSampler, branch_dataset, noise_seed
    from world_models.metrics import evaluate_branches
    from world_models.train import train_world_model

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--minutes", type=float, default=10.0, help="training budget for the fidelity part")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    manifest = ROOT / "scenarios" / "push_to_target.yaml"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        seeds = tmp / "seeds.hdf5"
        run_seed_stage(manifest, seeds, n=args.seeds)
        ckpt = tmp / "ckpt"
        # Throughput: a short run, then keep training within the budget, checkpointing as it goes.
        t0 = time.perf_counter()
        train_world_model(seeds, ckpt, steps=20, batch_size=args.batch_size, checkpoint_every=20)
        samples_per_s = 20 * args.batch_size / (time.perf_counter() - t0)
        budget_steps = max(20, int(args.minutes * 60 * samples_per_s / args.batch_size))
        t0 = time.perf_counter()
        train_world_model(seeds, ckpt, steps=budget_steps, batch_size=args.batch_size, checkpoint_every=250)
        train_s = time.perf_counter() - t0 + 20 * args.batch_size / samples_per_s

        sampler = WorldModelSampler(ckpt)
        k, c = sampler.meta["context_frames"], sampler.model.config.frame_channels
        res = sampler.meta["resolution"][0]
        g = torch.Generator().manual_seed(0)
        context = torch.rand(k, c, res, res, generator=g) * 2 - 1
        past, state = torch.zeros(k, 7), torch.tensor(sampler.norm.state_mean)
        horizon, n = 8, 16
        actions = torch.rand(n, horizon, 7, generator=g) * 2 - 1
        rollout_seeds = [noise_seed(0, "demo_0", 10, i) for i in range(n)]
        sampler.rollout(context, past, state, actions[:2], rollout_seeds[:2])  # warm-up
        t0 = time.perf_counter()
        sampler.rollout(context, past, state, actions, rollout_seeds)
        batched = time.perf_counter() - t0
        t0 = time.perf_counter()
        for i in range(n):
            sampler.rollout(context, past, state, actions[i : i + 1], rollout_seeds[i : i + 1])
        sequential = time.perf_counter() - t0

        synth = tmp / "synth.hdf5"
        branch_dataset(seeds, ckpt, synth, per_seed=4, at_steps=[10, 30], horizon=horizon)
        fidelity = evaluate_branches(synth, ckpt, tmp / "eval.json")

    steps = fidelity["per_step"]
    result = {
        "benchmark": "wm_throughput",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "device": "cpu",
        "scenario": "push_to_target",
        "seeds": args.seeds,
        "resolution": res,
        "batch_size": args.batch_size,
        "training_samples_per_s": samples_per_s,
        "training_steps": budget_steps,
        "training_seconds": train_s,
        "branch_frames_per_s_batched_16": n * horizon / batched,
        "branch_frames_per_s_sequential_16": n * horizon / sequential,
        "batched_vs_sequential_speedup": sequential / batched,
        "fidelity": {
            "branches": fidelity["branches"],
            "psnr": steps["psnr"],
            "copy_last_psnr": steps["copy_last_psnr"],
            "ssim": steps["ssim"],
            "depth_abs_m": steps["depth_abs_m"],
            "mask_iou": steps.get("mask_iou"),
            "object_error_m": steps.get("object_error_m"),
            "action_sensitivity_psnr_gap": fidelity["action_sensitivity_psnr_gap"],
            "diversity_rgb_l1": fidelity["diversity_rgb_l1"],
        },
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"training {samples_per_s:.1f} samples/s ({budget_steps} steps, {train_s:.0f} s); branching "
        f"{result['branch_frames_per_s_batched_16']:.1f} frames/s batched vs "
        f"{result['branch_frames_per_s_sequential_16']:.1f} sequential "
        f"(x{result['batched_vs_sequential_speedup']:.2f})"
    )
    for j in sorted(steps["psnr"]):
        print(f"  {j} ahead: PSNR {steps['psnr'][j]:.2f} dB vs copy-last {steps['copy_last_psnr'][j]:.2f}")
    print(f"  action-sensitivity gap {fidelity['action_sensitivity_psnr_gap']:+.2f} dB; wrote {RESULTS}")


if __name__ == "__main__":
    main()
