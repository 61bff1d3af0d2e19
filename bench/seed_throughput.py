"""Seed-trajectory throughput: frames/s of `worldgen seed` against a bare Newton step + render loop on
the same stages, measured side by side in one run, for 1 and 2 workers; plus cold and warm Warp
compile times. Writes bench/results/seed_throughput.json.

A "frame" is one control step with every camera of the manifest rendered (RGB + depth + segmentation).
The bare loop is what any user of Newton would write: import the stage, step SolverMuJoCo
``substeps`` times per control step, render each camera with SensorCamera; no controller, expert,
observation assembly or dataset writing. Both sides rebuild the model per seed.

    python bench/seed_throughput.py [--manifest scenarios/pick_cube.yaml] [--seeds 4]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "seed_throughput.json"


def bare_newton_episode(manifest_path: Path, seed: int, targets: np.ndarray) -> float:
    """Seconds to step + render with raw Newton APIs on seed ``seed``'s stage, driving the robot's
    joints through ``targets`` (T, 9) so the physics does the same work as worldgen's episode."""
    return bare_newton_loop(manifest_path, [seed], [targets])["seconds"]


def bare_newton_loop(manifest_path: Path, seeds: list[int], targets_per_seed: list[np.ndarray]) -> dict:
    """Step + render with raw Newton APIs on the very stages worldgen simulates."""
    import newton
    import newton.usd
    import warp as wp
    from newton.sensors import SensorCamera
    from worldgen.assets.panda import FINGER_JOINT_NAMES, JOINT_NAMES
    from worldgen.geometry import look_at_matrix, quat_from_matrix, wxyz_to_xyzw
    from worldgen.manifest import load_manifest
    from worldgen.scene import sample_scene
    from worldgen.stage import build_stage

    wp.config.quiet = True
    manifest = load_manifest(manifest_path)
    frames, started = 0, time.perf_counter()
    for seed, targets in zip(seeds, targets_per_seed, strict=True):
        scene = sample_scene(manifest, seed)
        builder = newton.ModelBuilder()
        builder.add_usd(
            build_stage(manifest, scene),
            schema_resolvers=[newton.usd.SchemaResolverNewton(), newton.usd.SchemaResolverPhysx()],
            enable_self_collisions=False,
            ignore_paths=["/World/Distractors"],
        )
        model = builder.finalize(device="cpu")
        solver = newton.solvers.SolverMuJoCo(model, use_mujoco_cpu=True, kinematic_switchable_roots=False)
        s0, s1, control = model.state(), model.state(), model.control()
        newton.eval_fk(model, model.joint_q, model.joint_qd, s0)
        labels = list(model.joint_label)
        q_start = model.joint_q_start.numpy()
        robot = [
            q_start[labels.index(f"/World/Robot/joints/{n}")] for n in [*JOINT_NAMES, *FINGER_JOINT_NAMES]
        ]
        target_q = model.joint_q.numpy().copy()
        sensor = SensorCamera(model)
        sensor.create_default_light(enable_shadows=True)
        sensor.default_render_config.enable_shadows = True
        cams = []
        for spec, sample in zip(manifest.cameras, scene.cameras, strict=True):
            w, h = spec.resolution
            pose = np.eye(4)
            pose[:3, :3] = look_at_matrix(sample.position, sample.look_at)
            q = wxyz_to_xyzw(quat_from_matrix(pose))
            xf = wp.array([wp.transformf(wp.vec3f(*sample.position), wp.quatf(*q))], dtype=wp.transformf)
            rays = SensorCamera.compute_camera_rays_pinhole(
                w, h, camera_fov=math.radians(spec.fov), device="cpu"
            )
            cams.append(
                (
                    xf,
                    rays,
                    sensor.allocate_image_color(1, w, h),
                    sensor.allocate_image_depth_forward(1, w, h),
                    sensor.allocate_image_shape_index(1, w, h),
                )
            )
        dt = 1.0 / manifest.physics_hz
        for step in range(len(targets) + 1):
            if step < len(targets):
                target_q[robot] = targets[step]
                control.joint_target_q.assign(target_q)
            for _ in range(manifest.substeps):
                s0.clear_forces()
                solver.step(s0, s1, control, None, dt)
                s0, s1 = s1, s0
            model.bvh_refit_shapes(s0)
            for xf, rays, color, depth, index in cams:
                sensor.update(
                    s0, xf, rays, color_image=color, forward_depth_image=depth, shape_index_image=index
                )
                color.numpy(), depth.numpy(), index.numpy()
            frames += 1
    seconds = time.perf_counter() - started
    return {"frames": frames, "seconds": seconds, "frames_per_s": frames / seconds}


def worldgen_seed(manifest_path: Path, n: int, workers: int, out_dir: Path) -> dict:
    from worldgen.dataset import DatasetReader, DemoRecord
    from worldgen.pipeline import run_seed_stage

    out = out_dir / f"seed_w{workers}.hdf5"
    finished: list[tuple[float, float]] = []  # (wall time at completion, the episode's own seconds)
    started = time.perf_counter()
    run_seed_stage(
        manifest_path,
        out,
        n=n,
        workers=workers,
        progress=lambda r, done, total: finished.append((time.perf_counter(), r.seconds)),
    )
    seconds = time.perf_counter() - started
    with DatasetReader(out) as reader:
        steps = [DemoRecord.from_group(g).num_samples for _, g in reader.iter_demos()]
    frames = sum(steps) + len(steps)  # T actions see T+1 rendered observations
    # Start-up (Ray, actors loading their kernels): until the first episode began.
    startup = finished[0][0] - finished[0][1] - started
    return {
        "frames": frames,
        "seconds": seconds,
        "frames_per_s": frames / seconds,
        "startup_s": startup,
        "steady_frames_per_s": frames / (seconds - startup),
        "steps_per_seed": steps,
    }


def interleaved(manifest_path: Path, n: int, out_dir: Path) -> tuple[dict, dict]:
    """One worker against the bare loop, seed by seed in alternation, so machine noise hits both alike.

    The worldgen side is the seed stage's own path: expert episode + dataset append, then finalize."""
    from worldgen.dataset import DatasetWriter, dataset_header
    from worldgen.manifest import load_manifest
    from worldgen.pipeline import SeedWorker
    from worldgen.sim.base import instance_table

    manifest = load_manifest(manifest_path)
    writer = DatasetWriter(
        out_dir / "interleaved.hdf5",
        dataset_header(manifest, instance_table(manifest), manifest_path.read_text()),
    )
    worker = SeedWorker(str(manifest_path))
    ours, theirs, steps = 0.0, 0.0, []
    for seed in range(n):
        t0 = time.perf_counter()
        result = worker.run(seed)
        writer.append(result.demo, name=f"demo_{seed}")
        ours += time.perf_counter() - t0
        steps.append(result.demo.num_samples)
        # The joint targets worldgen applied at each step: recorded in the next state's target slot.
        backend = worker.env.backend
        start = 1 + backend.model.joint_coord_count + backend.model.joint_dof_count
        applied = np.concatenate(
            [result.demo.states[1:, start : start + 9], backend.get_state()[None, start : start + 9]]
        )
        theirs += bare_newton_episode(manifest_path, seed, applied)
    t0 = time.perf_counter()
    writer.finalize()
    ours += time.perf_counter() - t0
    frames = sum(steps) + len(steps)
    return (
        {
            "frames": frames,
            "seconds": ours,
            "frames_per_s": frames / ours,
            "startup_s": 0.0,
            "steady_frames_per_s": frames / ours,
            "steps_per_seed": steps,
        },
        {"frames": frames, "seconds": theirs, "frames_per_s": frames / theirs},
    )


def compile_time(cache: Path, manifest_path: Path) -> float:
    """Wall time of a fresh process's first reset + step + render with the given kernel cache."""
    code = (
        "import time; t=time.perf_counter();"
        "from worldgen.envs import WorldgenEnv; import numpy as np;"
        f"e=WorldgenEnv({str(manifest_path)!r}); e.reset(seed=0); e.step(np.zeros(e.action_space.shape));"
        "print(time.perf_counter()-t)"
    )
    env = {**os.environ, "WARP_CACHE_PATH": str(cache)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--manifest", default=str(ROOT / "scenarios" / "pick_cube.yaml"))
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument(
        "--skip-cold", action="store_true", help="skip the cold-compile measurement (minutes)"
    )
    args = parser.parse_args()
    manifest_path = Path(args.manifest)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        warm_cache = Path(os.environ.get("WARP_CACHE_PATH", ROOT / ".cache" / "warp"))
        compile_s = {"warm_s": compile_time(warm_cache, manifest_path)}
        if not args.skip_cold:
            compile_s["cold_s"] = compile_time(tmp / "cold-cache", manifest_path)
        # Warm this process's kernels first so neither side pays compilation inside its timing.
        warmup = worldgen_seed(manifest_path, 1, 1, tmp / "warmup")
        bare_newton_loop(manifest_path, [0], [np.zeros((5, 9))])
        one, bare = interleaved(manifest_path, args.seeds, tmp)
        two = worldgen_seed(manifest_path, args.seeds, 2, tmp)

    result = {
        "benchmark": "seed_throughput",
        "manifest": manifest_path.name,
        "seeds": args.seeds,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "device": "cpu",
        "bare_newton": bare,
        "worldgen_seed_1_worker": one,
        "worldgen_seed_2_workers": two,
        "ratio_1_worker_vs_bare": one["frames_per_s"] / bare["frames_per_s"],
        "ratio_2_workers_vs_bare": two["frames_per_s"] / bare["frames_per_s"],
        "ratio_2_workers_vs_bare_steady": two["steady_frames_per_s"] / bare["frames_per_s"],
        "speedup_2_vs_1_workers": two["frames_per_s"] / one["frames_per_s"],
        "speedup_2_vs_1_workers_steady": two["steady_frames_per_s"] / one["steady_frames_per_s"],
        "warp_compile": compile_s,
        "notes": "frames_per_s is wall clock including start-up (for 2 workers: starting Ray and each "
        "actor's kernel load); steady_frames_per_s leaves start-up out; "
        f"first-process warm-up seed took {warmup['seconds']:.1f} s",
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(
        json.dumps({k: v for k, v in result.items() if k.startswith(("ratio", "speedup", "warp"))}, indent=2)
    )
    print(
        f"bare {bare['frames_per_s']:.1f} frames/s, worldgen 1 worker {one['frames_per_s']:.1f}, "
        f"2 workers {two['frames_per_s']:.1f}; wrote {RESULTS}"
    )


if __name__ == "__main__":
    main()
