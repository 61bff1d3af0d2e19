"""World-model throughput and fidelity on push_to_target, in one run:

- training samples/s (64x64 frames, the manifest's batch size), and branching frames/s for N=16
  branches sampled as one batch against 16 rollouts one after another, same seeds;
- fidelity after the training budget, per step ahead against the copy-last-frame baseline, with the
  action-sensitivity gap: open-loop on the held-out (``valid``) seeds' recorded frames, and, where Newton
  is installed, branches replayed in simulation.

On a machine without the simulator, pass a seed dataset made elsewhere (``--seeds-file``).
Writes bench/results/wm_throughput.json (CPU) or wm_throughput_cuda.json.

    python bench/wm_throughput.py [--seeds 20] [--steps N] [--batch-size B] [--device cuda] [--bf16]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch
from worldgen.dataset import open_dataset

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def main() -> None:
    from worldgen.files import write_atomically
    from worldgen.manifest import load_manifest

    from world_models.data import frame_channels
    from world_models.metrics import evaluate_open_loop
    from world_models.recipes import generate_in_world_model, recipe_spec
    from world_models.sampler import WorldModelSampler, noise_seed
    from world_models.train import train_world_model

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the manifest's)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the manifest's")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast in training (GPU)")
    parser.add_argument("--seeds-file", type=Path, help="use this seed dataset instead of simulating one")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--keep", type=Path, help="copy the trained checkpoint here")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    simulator = importlib.util.find_spec("newton") is not None
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        seeds = args.seeds_file
        if seeds is None:
            from worldgen.pipeline import run_seed_stage

            seeds = tmp / "seeds.hdf5"
            run_seed_stage(ROOT / "scenarios" / "push_to_target.yaml", seeds, n=args.seeds)
        ckpt = tmp / "ckpt"
        t0 = time.perf_counter()
        trained = train_world_model(
            seeds,
            ckpt,
            steps=args.steps,
            batch_size=args.batch_size,
            checkpoint_every=1000,
            mixed_precision="bf16" if args.bf16 else "no",
            device=args.device,
        )
        train_s = time.perf_counter() - t0
        budget_steps = trained["step"]
        batch_size = json.loads((ckpt / "training_state.json").read_text())["batch_size"]
        samples_per_s = budget_steps * batch_size / train_s
        if args.keep:
            shutil.copytree(ckpt, args.keep, dirs_exist_ok=True)

        sampler = WorldModelSampler(ckpt, device=args.device)
        k, c = sampler.meta.context_frames, frame_channels(sampler.meta.instances)
        res = sampler.meta.resolution[0]
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

        open_loop = evaluate_open_loop(seeds, ckpt, horizon=horizon, device=args.device)
        replayed = None
        if simulator:
            from world_models.metrics import evaluate_branches

            synth = tmp / "synth.hdf5"
            manifest = load_manifest(ROOT / "scenarios" / "push_to_target.yaml")
            spec = recipe_spec("perturb", manifest, per_seed=4, start_steps=(10, 30), horizon=horizon)
            generate_in_world_model("perturb", seeds, ckpt, synth, spec, device=args.device)
            replayed = evaluate_branches(synth, ckpt, tmp / "eval.json")

    result = {
        "benchmark": "wm_throughput",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "device": args.device,
        "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
        "scenario": "push_to_target",
        "seeds": _seed_count(seeds) if args.seeds_file else args.seeds,
        "resolution": res,
        "batch_size": batch_size,
        "bf16": args.bf16,
        "training_samples_per_s": samples_per_s,
        "training_steps": budget_steps,
        "training_seconds": train_s,
        "branch_frames_per_s_batched_16": n * horizon / batched,
        "branch_frames_per_s_sequential_16": n * horizon / sequential,
        "batched_vs_sequential_speedup": sequential / batched,
        "fidelity_open_loop": _fidelity(open_loop),
        "fidelity_replayed": _fidelity(replayed) if replayed else None,
    }
    out = RESULTS / ("wm_throughput.json" if args.device == "cpu" else "wm_throughput_cuda.json")
    write_atomically(out, (json.dumps(result, indent=2) + "\n").encode())
    print(
        f"training {samples_per_s:.1f} samples/s ({budget_steps} steps, {train_s:.0f} s); branching "
        f"{result['branch_frames_per_s_batched_16']:.1f} frames/s batched vs "
        f"{result['branch_frames_per_s_sequential_16']:.1f} sequential "
        f"(x{result['batched_vs_sequential_speedup']:.2f})"
    )
    for label, report in (("open-loop, held-out seeds", open_loop), ("replayed in simulation", replayed)):
        if report is None:
            continue
        steps = report["per_step"]
        print(f"  {label}:")
        for j in sorted(steps["psnr"]):
            print(
                f"    {j} ahead: PSNR {steps['psnr'][j]:.2f} dB vs copy-last {steps['copy_last_psnr'][j]:.2f}"
            )
        print(f"    action-sensitivity gap {report['action_sensitivity_psnr_gap']:+.2f} dB")
    print(f"wrote {out}")


def _seed_count(path: Path) -> int:
    from worldgen.dataset import demo_names

    with open_dataset(path) as f:
        return len(demo_names(f, "seed"))


def _fidelity(report: dict) -> dict:
    steps = report["per_step"]
    keys = ("psnr", "copy_last_psnr", "ssim", "copy_last_ssim", "depth_abs_m", "mask_iou", "object_error_m")
    return {
        "windows": report.get("windows", report.get("branches")),
        **{k: steps[k] for k in keys if k in steps},
        "action_sensitivity_psnr_gap": report["action_sensitivity_psnr_gap"],
        "diversity_rgb_l1": report.get("diversity_rgb_l1"),
    }


if __name__ == "__main__":
    main()
