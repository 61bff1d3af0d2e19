"""Scenes stepped together against one scene at a time, measured side by side in one run: control steps/s
and episodes/s of ``WorldgenVectorEnv`` with N worlds against ``WorldgenEnv``, low-dimensional and with
every camera rendered (each world through a view of its scene), and, given a trained policy, the same
held-out panel evaluated both ways (success rates and wall-clock). Writes
bench/results/vector_throughput.json (``--parts cameras`` measures only the camera block, both sides in
the same run, and keeps the file's low-dimensional block).

Both sides drive the arm with the same seeded random ``ee_delta`` actions (small translations and
rotations, the gripper switching now and then), so the physics does comparable work; an "episode" is a
reset plus the manifest's horizon of steps.

    python bench/vector_throughput.py [--worlds 1 8 32 128] [--camera-worlds 1 8 16] [--parts lowdim cameras]
                                      [--policy data/.../policies/seeds --episodes 100]
    python bench/vector_throughput.py --device cuda:0 --worlds 1 64 1024 4096 --parts lowdim frames

On a GPU (``--device cuda:0``, results in vector_throughput_cuda.json) each scene is a Newton world of
its own stepped by MuJoCo Warp, and ``frames`` measures camera frames/s of one sensor rendering every
world's cameras on the device.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "vector_throughput.json"


def random_actions(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    actions = np.clip(rng.normal(0.0, 0.4, (n, dim)), -1.0, 1.0)
    actions[:, -1] = np.where(rng.random(n) < 0.5, -1.0, 1.0)
    return actions.astype(np.float32)


def single_env(manifest, steps: int, episodes: int, cameras: bool = False, device: str = "cpu") -> dict:
    from worldgen.envs import WorldgenEnv

    env = WorldgenEnv(manifest, cameras=cameras, device=device)
    rng = np.random.default_rng(0)
    env.reset(seed=5000)
    started = time.perf_counter()
    for _ in range(steps):
        env.step(random_actions(rng, 1, env.action_space.shape[0])[0])
    step_seconds = time.perf_counter() - started
    started = time.perf_counter()
    for e in range(episodes):
        env.reset(seed=6000 + e)
        for _ in range(manifest.horizon):
            env.step(random_actions(rng, 1, env.action_space.shape[0])[0])
    episode_seconds = time.perf_counter() - started
    env.close()
    return {
        "steps_per_s": steps / step_seconds,
        "episodes_per_s": episodes / episode_seconds,
        "episodes": episodes,
    }


def vector_env(
    manifest, worlds: int, steps: int, episodes: int, cameras: bool = False, device: str = "cpu"
) -> dict:
    from worldgen.vector_env import WorldgenVectorEnv

    started = time.perf_counter()
    venv = WorldgenVectorEnv(manifest, worlds, device=device, autoreset_mode="Disabled", cameras=cameras)
    venv.reset(seed=[5000 + i for i in range(worlds)])
    build_seconds = time.perf_counter() - started
    rng = np.random.default_rng(0)
    dim = venv.single_action_space.shape[0]
    started = time.perf_counter()
    vector_steps = max(1, steps // worlds)
    for _ in range(vector_steps):
        venv.step(random_actions(rng, worlds, dim))
    step_seconds = time.perf_counter() - started
    batches = max(1, -(-episodes // worlds))
    started = time.perf_counter()
    for b in range(batches):
        venv.reset(seed=[6000 + b * worlds + i for i in range(worlds)])
        for _ in range(manifest.horizon):
            venv.step(random_actions(rng, worlds, dim))
    episode_seconds = time.perf_counter() - started
    venv.close()
    return {
        "worlds": worlds,
        "first_build_s": round(build_seconds, 2),
        "steps_per_s": vector_steps * worlds / step_seconds,
        "episodes_per_s": batches * worlds / episode_seconds,
        "episodes": batches * worlds,
    }


def camera_frames(manifest, worlds: int, renders: int, device: str, physics: bool = True) -> dict:
    """Frames/s of every camera of ``worlds`` separate worlds rendered by one sensor on the device (the
    images stay there, as a GPU consumer reads them), each render after a control step (``physics``),
    and with the step's time counted too."""
    import warp as wp
    from worldgen.sim.vector import VectorNewtonBackend

    started = time.perf_counter()
    backend = VectorNewtonBackend(manifest, device=device, render=True, separate_worlds=True)
    backend.reset([5000 + i for i in range(worlds)])
    backend.render_images()
    wp.synchronize()
    build_seconds = time.perf_counter() - started
    targets = backend.robot_q()  # hold the start pose: the physics still steps every world
    physics = physics and device != "cpu"  # separate worlds on a CPU only render (VectorNewtonBackend)
    if physics:
        backend.step(targets)  # the first step compiles MuJoCo Warp's kernels: not timed
    render_seconds = step_seconds = 0.0
    for _ in range(renders):
        started = time.perf_counter()
        if physics:
            backend.step(targets)
        wp.synchronize()
        step_seconds += time.perf_counter() - started
        started = time.perf_counter()
        backend.render_images()
        wp.synchronize()
        render_seconds += time.perf_counter() - started
    frames = renders * worlds * len(manifest.cameras)
    sample = backend.render()[worlds - 1]  # the last world's frames reach the host: they are pictures
    backend.close()
    return {
        "worlds": worlds,
        "cameras": [
            f"{c.name} {c.resolution[0]}x{c.resolution[1]} {'+'.join(c.outputs)}" for c in manifest.cameras
        ],
        "first_build_s": round(build_seconds, 2),
        "frames_per_s": frames / render_seconds,
        "frames_per_s_with_physics": frames / (render_seconds + step_seconds) if physics else None,
        "last_world_rgb_mean": float(np.mean(next(iter(sample.values())).rgb)),
    }


def panel_agreement(policy: str, manifest, episodes: int, worlds: int) -> dict:
    """One policy, one held-out panel, evaluated one scene at a time and ``worlds`` scenes together."""
    from policies.evaluate import evaluate_policy

    rows = {}
    for envs in (1, worlds):
        started = time.perf_counter()
        report = evaluate_policy(policy, manifest, episodes, gifs=False, envs=envs)
        rows[f"envs={envs}"] = {
            "successes": report["successes"],
            "episodes": report["episodes"],
            "ci95": report["ci95"],
            "seconds": round(time.perf_counter() - started, 1),
            "per_episode_success": [e["success"] for e in report["per_episode"]],
        }
    one, many = rows["envs=1"], rows[f"envs={worlds}"]
    agree = sum(a == b for a, b in zip(one["per_episode_success"], many["per_episode_success"], strict=True))
    return {
        "policy": policy,
        "rows": {k: {kk: vv for kk, vv in v.items() if kk != "per_episode_success"} for k, v in rows.items()},
        "same_outcome_episodes": agree,
        "within_single_interval": one["ci95"][0] <= many["successes"] / many["episodes"] <= one["ci95"][1],
        "speedup": round(one["seconds"] / many["seconds"], 2),
    }


def compare(
    manifest,
    worlds_list: list[int],
    steps: int,
    episodes: int,
    cameras: bool,
    device: str = "cpu",
    single_steps: int | None = None,
):
    """The single env, then each number of worlds, the same work, measured in this run (the single env
    over ``single_steps`` steps when given: on a GPU it is slow enough that fewer measure it)."""
    what = "cameras" if cameras else "low-dim"
    single = single_env(manifest, single_steps or steps, min(episodes, 8), cameras=cameras, device=device)
    print(
        f"[{what}] single env: {single['steps_per_s']:.1f} steps/s, {single['episodes_per_s']:.3f} episodes/s"
    )
    vector = []
    for worlds in worlds_list:
        row = vector_env(manifest, worlds, steps, episodes, cameras=cameras, device=device)
        row["steps_ratio"] = round(row["steps_per_s"] / single["steps_per_s"], 2)
        row["episodes_ratio"] = round(row["episodes_per_s"] / single["episodes_per_s"], 2)
        vector.append(row)
        print(
            f"[{what}] {worlds} worlds: {row['steps_per_s']:.1f} steps/s ({row['steps_ratio']}x), "
            f"{row['episodes_per_s']:.3f} episodes/s ({row['episodes_ratio']}x), "
            f"first build {row['first_build_s']} s",
            flush=True,
        )
    return single, vector


def gpu_name() -> str:
    import warp as wp

    return f"{wp.get_device('cuda:0').name}, {multiprocessing.cpu_count()} CPU cores"


def main() -> None:
    from worldgen.manifest import load_manifest

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--manifest", type=Path, default=ROOT / "scenarios" / "push_to_target.yaml")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda:0 (MuJoCo Warp, separate worlds)")
    parser.add_argument("--out", type=Path, help="default: bench/results/vector_throughput[_cuda].json")
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--steps", type=int, default=512, help="world-steps per throughput measurement")
    parser.add_argument("--episodes", type=int, default=32, help="episodes per episodes/s measurement")
    parser.add_argument("--single-steps", type=int, help="steps of the single env (default: --steps)")
    parser.add_argument("--policy", help="a trained low-dim policy: evaluate it both ways on one panel")
    parser.add_argument("--panel", type=int, default=100, help="held-out episodes for --policy")
    parser.add_argument("--panel-worlds", type=int, default=32)
    parser.add_argument(
        "--parts", nargs="+", choices=["lowdim", "cameras", "frames"], default=["lowdim", "cameras"]
    )
    parser.add_argument("--camera-worlds", type=int, nargs="+", default=[1, 8, 16])
    parser.add_argument("--camera-steps", type=int, default=128, help="world-steps per measurement, cameras")
    parser.add_argument("--camera-episodes", type=int, default=8, help="episodes per measurement, cameras")
    parser.add_argument("--frame-worlds", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--frame-renders", type=int, default=20, help="renders per frames/s measurement")
    parser.add_argument(
        "--frame-physics",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="step the worlds before each render (--no-frame-physics: rendering alone)",
    )
    args = parser.parse_args()
    manifest = load_manifest(args.manifest)
    gpu = args.device != "cpu"
    out = args.out or RESULTS.with_name(f"vector_throughput{'_cuda' if gpu else ''}.json")

    started = time.perf_counter()
    result = json.loads(out.read_text()) if out.exists() and "lowdim" not in args.parts else {}
    result.update(
        {
            "manifest": manifest.name,
            "device": args.device,
            "machine": gpu_name()
            if gpu
            else f"{multiprocessing.cpu_count()} CPU cores ({platform.machine()}), no GPU",
        }
    )

    def save() -> None:  # after every part: a run stopped at its time limit keeps what it measured
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")

    if "lowdim" in args.parts:
        single, vector = compare(
            manifest,
            args.worlds,
            args.steps,
            args.episodes,
            cameras=False,
            device=args.device,
            single_steps=args.single_steps,
        )
        result.update(
            {
                "observations": "low-dim",
                "single_env": single,
                "vector_env": vector,
                "best_steps_ratio": max(r["steps_ratio"] for r in vector),
            }
        )
        save()
    if "frames" in args.parts:
        result["frames"] = []
        for worlds in args.frame_worlds:
            row = camera_frames(manifest, worlds, args.frame_renders, args.device, args.frame_physics)
            with_physics = row["frames_per_s_with_physics"]
            print(
                f"[frames] {worlds} worlds: {row['frames_per_s']:.0f} frames/s rendering"
                + (f", {with_physics:.0f} with the control step" if with_physics else "")
                + f", first build {row['first_build_s']} s",
                flush=True,
            )
            result["frames"].append(row)
            save()
    if "cameras" in args.parts:
        steps, episodes = args.camera_steps, args.camera_episodes
        camera_started = time.perf_counter()
        single, vector = compare(
            manifest, args.camera_worlds, steps, episodes, cameras=True, device=args.device
        )
        result["cameras"] = {
            "seconds": round(time.perf_counter() - camera_started, 1),
            "observations": f"low-dim + every camera output ({', '.join(c.name for c in manifest.cameras)})",
            "single_env": single,
            "vector_env": vector,
            "best_steps_ratio": max(r["steps_ratio"] for r in vector),
        }
        save()
    if args.policy:
        result["panel"] = panel_agreement(args.policy, manifest, args.panel, args.panel_worlds)
        print(json.dumps(result["panel"], indent=2), flush=True)
    if "lowdim" in args.parts:
        result["seconds"] = round(time.perf_counter() - started, 1)
    save()
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
