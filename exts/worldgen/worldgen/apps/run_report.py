"""The run's report: ``report/index.html``, one self-contained page (figures and GIFs inline) built from
``run.json`` with a Jinja2 template, so every number on it is the run's own record."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import h5py
import jinja2
import numpy as np

from .. import plots
from ..dataset import DemoRecord, demo_names, executed_actions, open_dataset, read_obs
from ..files import write_atomically
from ..keys import RGB, image_key
from ..manifest import Manifest
from ..report import frames_gif

TEMPLATES = Path(__file__).with_name("templates")
GIF_DEMOS = 2  # generated demos shown beside their seed and their replay


def _data_uri(path: Path) -> str:
    kind = {".png": "image/png", ".gif": "image/gif"}[path.suffix]
    return f"data:{kind};base64,{base64.b64encode(path.read_bytes()).decode()}"


def _same_length(frames: list[np.ndarray]) -> list[np.ndarray]:
    """Clips padded with their last frame to the longest one's length."""
    n = max(len(f) for f in frames)
    return [np.concatenate([f, np.repeat(f[-1:], n - len(f), axis=0)]) for f in frames]


def replayed_frames(manifest: Manifest, parent: h5py.Group, group: h5py.Group, key: str) -> np.ndarray:
    """A generated demo's executed actions replayed in the simulator from its parent's state at its start
    step, with cameras: the frames of ``key``."""
    from ..envs import WorldgenEnv

    record = DemoRecord.from_group(group)
    executed = executed_actions(group)[()]
    env = WorldgenEnv(manifest, cameras=True)
    try:
        env.reset(seed=record.seed)
        env.set_state(parent["states"][record.branch_step])
        frames = [env.observe()[key]]
        for action in executed:
            obs, _, terminated, truncated, _ = env.step(action)
            frames.append(obs[key])
            if terminated or truncated:
                break
    finally:
        env.close()
    return np.stack(frames)


def side_by_side_gifs(manifest: Manifest, dataset: Path, out: Path) -> list[dict[str, str]]:
    """For the first generated demos of ``dataset``: seed | world model | simulator replay, a GIF each."""
    key = image_key(manifest.world_model_camera, RGB)
    gifs = []
    with open_dataset(dataset) as f:
        records = [DemoRecord.from_group(f["data"][n]) for n in demo_names(f, "synthetic")]
        shown = sorted(records, key=lambda r: not r.success)[:GIF_DEMOS]  # successful attempts first
        for record in shown:
            group, parent = f["data"][record.name], f["data"][record.parent]
            start = record.branch_step
            seed_clip, predicted = (read_obs(g, [key])[key] for g in (parent, group))
            seed_clip = seed_clip[start:]
            replayed = replayed_frames(manifest, parent, group, key)
            clips = _same_length([seed_clip, predicted, replayed])
            path = out / f"{record.name}.gif"
            frames_gif({f"{i}_{RGB}": c[::2] for i, c in enumerate(clips)}, path, fps=5)
            verdict = "succeeded" if record.success else "failed"
            gifs.append(
                {
                    "src": _data_uri(path),
                    "caption": f"{record.name}: from {record.parent} at step {start}; {verdict} in the world "
                    f"model; checks {'passed' if record.check_passed else 'failed'}",
                }
            )
    return gifs


def write_report(folder: Path, manifest: Manifest) -> Path:
    """Write ``report/index.html`` of the run in ``folder`` from its ``run.json`` and its stages' outputs;
    returns its path."""
    record: dict[str, Any] = json.loads((folder / "run.json").read_text())
    out = folder / "report"
    stages = record["stages"]
    scene, seeds, wm = (stages[s]["summary"] for s in ("scene", "seeds", "world_model"))
    synthetic, checks = stages["synthetic"]["summary"], stages["checks"]["summary"]
    evaluation = stages["eval"]["summary"]
    rows = evaluation["rows"]
    success = plots.success_rates(
        rows, out / "success.png", f"{manifest.name}: success on one held-out panel, 95 % CI", "seeds"
    )
    fidelity = json.loads((folder / wm["fidelity"]).read_text())
    curve = plots.psnr_per_step(
        fidelity["per_step"], out / "fidelity.png", "world model against copy-last-frame, held-out demo"
    )
    images = {
        "success": _data_uri(success),
        "fidelity": _data_uri(curve),
        "rollout": _data_uri(folder / wm["rollout"]),
        "sheets": [_data_uri(p) for p in sorted((folder / "seeds").glob("demo_*.png"))[:1]],
        "variants": _data_uri(folder / scene["variants"]) if scene.get("variants") else None,
        "heatmap": _data_uri(folder / checks["heatmap"]) if checks.get("heatmap") else None,
        "gifs": side_by_side_gifs(manifest, folder / checks["dataset"], out),
    }
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, undefined=jinja2.StrictUndefined
    )
    html = environment.get_template("report.html").render(
        run=record,
        rows=rows,
        verdict=evaluation["verdict"],
        seeds=seeds,
        wm=wm,
        synthetic=synthetic,
        checks=checks,
        images=images,
        total_seconds=sum(s["made_in_seconds"] or 0 for s in stages.values()),
        manifest_text=(folder / "manifest.yaml").read_text(),
        precision=lambda p: "none" if p is None else f"{100 * p:.0f} %",
    )
    path = out / "index.html"
    write_atomically(path, html.encode())
    return path
