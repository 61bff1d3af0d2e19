"""``worldgen run`` on the tiny profile, for real (Newton, a real world model, real policies): every stage
runs, a second run skips them all, a changed field reruns exactly the stages that read it, a killed run
resumes to the same outputs, and the report shows run.json's numbers in headless Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from worldgen.apps.run import STAGES, UPSTREAM, run_pipeline
from worldgen.apps.run_outputs import run_differences
from worldgen.dataset import dataset_manifest, demo_names, open_dataset
from worldgen.manifest import load_manifest, manifest_text

from .conftest import PUSH


def _ran(record: dict) -> list[str]:
    return [name for name, stage in record["stages"].items() if stage["ran"]]


def test_every_stage_runs_and_records_its_lineage(first_run):
    folder, record, lines = first_run
    assert _ran(record) == list(STAGES)
    on_disk = json.loads((folder / "run.json").read_text())
    assert on_disk["verdict"] == record["verdict"]
    assert on_disk["manifest"]["hash"] == load_manifest(folder / "manifest.yaml").content_hash()
    assert set(on_disk["machine"]) >= {"platform", "cpus", "torch"}
    assert on_disk["code_version"]
    for name in STAGES:
        marker = json.loads((folder / name / "stage.json").read_text())
        assert marker["status"] == "done" and marker["key"] == on_disk["stages"][name]["key"]
    # Every stage said what it did, under its own name.
    for index, name in enumerate(STAGES, start=1):
        assert any(line.startswith(f"[{index}/{len(STAGES)} {name}]") for line in lines), name
    # The run trains on what it recorded: the world model and policies leave TensorBoard event files.
    assert list((folder / "world_model" / "logs").glob("events.out.tfevents.*"))
    assert list((folder / "policies" / "logs" / "seeds_r0").glob("events.out.tfevents.*"))
    rows = record["stages"]["eval"]["summary"]["rows"]
    assert list(rows) == ["seeds", "seeds+recover"]
    # Two policy seeds a row (the tiny profile), each on its own panel of 4 episodes, pooled.
    for row in rows.values():
        assert row["episodes"] == 8 and len(row["per_replicate"]) == 2
        assert row["replicate_ci95"][0] <= row["success_rate"] <= row["replicate_ci95"][1]
    panels = {
        json.loads((folder / "eval" / f"seeds_r{r}" / "eval.json").read_text())["panel"]["base_seed"]
        for r in range(2)
    }
    assert len(panels) == 2


def test_second_run_skips_every_stage(first_run):
    folder, record, _ = first_run
    written = ("run.json", "manifest.yaml")  # the run's own record, rewritten by every run
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file() and p.name not in written}
    # A temporary file half-written by a run killed in its bookkeeping goes; nothing else is touched.
    left = folder / "eval" / ".stage.json.k1ll3d.tmp"
    left.write_text('{"status": ')
    again = run_pipeline(load_manifest(PUSH), folder, profile="tiny")
    assert _ran(again) == []
    assert again["verdict"] == record["verdict"]
    assert {p: p.stat().st_mtime_ns for p in before} == before  # nothing rewritten (manifest.yaml aside)
    assert not left.exists()


def test_changed_generation_field_reruns_generation_and_what_follows_only(first_run, tmp_path):
    folder, record, _ = first_run
    copy = tmp_path / "push"
    shutil.copytree(folder, copy)
    manifest = load_manifest(PUSH)
    recover = manifest.generation.recover.model_copy(update={"action_noise": 0.25})
    changed = manifest.model_copy(
        update={"generation": manifest.generation.model_copy(update={"recover": recover})}
    )
    lines: list[str] = []
    again = run_pipeline(changed, copy, profile="tiny", say=lines.append)
    assert _ran(again) == ["synthetic", "checks", "policies", "eval", "report"]
    assert any("changed: spec" in line for line in lines)  # the recover spec it reads
    # The recorded seed demos were kept, and now carry the manifest the run used.
    with open_dataset(copy / "seeds" / "seeds.hdf5") as f:
        assert dataset_manifest(f).generation.recover.action_noise == 0.25
    with (
        open_dataset(copy / "synthetic" / "synthetic.hdf5") as f,
        h5py.File(folder / "seeds" / "seeds.hdf5") as g,
    ):
        assert f["data"][demo_names(f, "synthetic")[0]].attrs["action_noise"] == 0.25
        np.testing.assert_array_equal(f["data/demo_0/actions"][()], g["data/demo_0/actions"][()])


def test_each_stage_depends_on_what_it_reads():
    # A stage never reads a later one, and every stage but the first two reads an earlier one.
    for name, upstream in UPSTREAM.items():
        assert all(STAGES.index(u) < STAGES.index(name) for u in upstream)
    assert [n for n in STAGES if not UPSTREAM[n]] == ["scene", "seeds"]


def _run_command(manifest: Path, folder: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "worldgen.apps.cli",
        "run",
        str(manifest),
        "-o",
        str(folder),
        "--profile",
        "tiny",
    ]


def _status(folder: Path, stage: str) -> str | None:
    try:
        return json.loads((folder / stage / "stage.json").read_text())["status"]
    except (OSError, ValueError, KeyError):
        return None


# make test kills inside the stages that resume from state of their own (dataset shards, the training
# state, the attempts written so far); make test-all, and bench/faults.py 20 times over, kill in every stage.
KILLED_IN_MAKE_TEST = ("seeds", "world_model", "synthetic")


def test_a_kill_in_each_stage_with_state_resumes_to_the_uninterrupted_outputs(first_run, tmp_path):
    _kill_in_stages_then_resume(first_run, tmp_path, KILLED_IN_MAKE_TEST)


@pytest.mark.slow  # about 4 minutes on 2 cores
def test_a_kill_in_every_stage_resumes_to_the_uninterrupted_outputs(first_run, tmp_path):
    _kill_in_stages_then_resume(first_run, tmp_path, STAGES)


def _kill_in_stages_then_resume(first_run, tmp_path, stages: tuple[str, ...]) -> None:
    """SIGKILL at a seeded random moment inside each of ``stages`` in turn (each run resuming the one
    before), then a last run to the end: every output equals the uninterrupted run's, array by array."""
    folder, record, _ = first_run
    manifest = tmp_path / "push_to_target.yaml"
    manifest.write_text(manifest_text(load_manifest(PUSH)))
    killed = tmp_path / "killed"
    rng = np.random.default_rng(0)
    landed: dict[str, str | None] = {}
    for stage in stages:
        process = subprocess.Popen(
            _run_command(manifest, killed),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        deadline = time.monotonic() + 600
        while _status(killed, stage) != "running" and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        # Somewhere in the first half of the stage (as long as it took the uninterrupted run).
        time.sleep(rng.uniform(0.05, 0.5) * record["stages"][stage]["seconds"])
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        landed[stage] = _status(killed, stage)
    assert set(landed.values()) == {"running"}, landed
    done = subprocess.run(_run_command(manifest, killed), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming an interrupted run" in done.stdout
    assert json.loads((killed / "run.json").read_text())["verdict"] == record["verdict"]
    assert run_differences(folder, killed) == []
    assert not (killed / ".lock").exists()


def test_world_model_training_resumed_from_a_checkpoint_matches_an_uninterrupted_run(first_run, tmp_path):
    from safetensors.torch import load_file

    from world_models.train import train_world_model

    folder, _, _ = first_run
    data = folder / "world_model" / "train.hdf5"
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    train_world_model(data, whole, steps=3, batch_size=2, checkpoint_every=1)
    stopped = train_world_model(data, resumed, steps=3, batch_size=2, checkpoint_every=1, time_limit=0.0)
    assert stopped["step"] == 1 and stopped["stopped_early"]
    train_world_model(data, resumed, steps=3, batch_size=2, checkpoint_every=1)
    a, b = (load_file(p / "training_state.safetensors") for p in (whole, resumed))
    assert a.keys() == b.keys()
    for key in a:
        assert np.array_equal(a[key].numpy(), b[key].numpy()), key


def test_a_damaged_world_model_checkpoint_is_refused_as_damaged(first_run, tmp_path):
    """A training state truncated by a crash is named as damaged (the run then trains that stage afresh)
    rather than failing inside safetensors."""
    from worldgen.errors import CheckpointDamaged

    from world_models.train import train_world_model

    folder, _, _ = first_run
    data, out = folder / "world_model" / "train.hdf5", tmp_path / "ckpt"
    train_world_model(data, out, steps=2, batch_size=2, checkpoint_every=1, time_limit=0.0)
    state = out / "training_state.safetensors"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    with pytest.raises(CheckpointDamaged, match="does not read back"):
        train_world_model(data, out, steps=2, batch_size=2, checkpoint_every=1)


def test_cli_refuses_an_unknown_profile_in_one_line(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "worldgen.apps.cli",
            "run",
            str(PUSH),
            "-o",
            str(tmp_path),
            "--profile",
            "huge",
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "--profile" in done.stderr


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_report_renders_in_headless_chromium_with_the_runs_numbers(first_run, tmp_path):
    folder, record, _ = first_run
    page = folder / "report" / "index.html"
    html = page.read_text()
    assert "<script" not in html and "http://" not in html and "https://" not in html  # self-contained
    rows = record["stages"]["eval"]["summary"]["rows"]
    for name, row in rows.items():
        assert re.search(rf"<td>{re.escape(name)}</td>.*?{row['successes']}/{row['episodes']}", html, re.S)
    assert record["verdict"] in html
    variants = folder / record["stages"]["scene"]["summary"]["variants"]  # the preview grid, seed x camera
    assert variants.is_file() and "<h2>Scene variants</h2>" in html
    shot = tmp_path / "report.png"
    done = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--enable-logging=stderr",
            "--v=0",
            "--window-size=1200,2400",
            f"--screenshot={shot}",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    # The page runs no script, so any console message (a blocked or missing resource included) is wrong.
    console = [line for line in done.stderr.splitlines() if "CONSOLE" in line]
    assert console == []
    from PIL import Image

    image = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert image.std() > 10  # text, tables and figures, not a blank page
    dark = (image < 128).mean()
    assert 0.01 < dark < 0.6


@pytest.mark.slow  # about 3 minutes on 2 cores; Ray identity of one stage is in make test (test_dataset)
def test_two_ray_workers_generate_replay_and_evaluate_as_one_process(first_run, tmp_path):
    """Generation (parent, start step tasks), the agreement samples of the checks, replay verification and
    evaluation episodes sharded over 2 Ray actors give what one process gives, byte for byte where it
    writes a dataset."""
    from policies.evaluate import evaluate_policy
    from world_models.recipes import generate_in_world_model, recipe_spec
    from world_models.replay import replay_generated

    folder, _, _ = first_run
    seeds, ckpt = folder / "seeds" / "seeds.hdf5", folder / "world_model" / "checkpoint"
    manifest = load_manifest(folder / "manifest.yaml")
    spec = recipe_spec("recover", manifest, per_seed=1, start_steps=(0, 10), action_noise=0.1)
    one, two = tmp_path / "one.hdf5", tmp_path / "two.hdf5"
    generate_in_world_model("recover", seeds, ckpt, one, spec)
    generate_in_world_model("recover", seeds, ckpt, two, spec, workers=2)
    with h5py.File(one) as a, h5py.File(two) as b:
        assert demo_names(a) == demo_names(b)
        for name in demo_names(a):
            for key in ("actions", "executed_actions", "obs/front_rgb", "obs/object", "states"):
                if key in a["data"][name]:
                    np.testing.assert_array_equal(a["data"][name][key][()], b["data"][name][key][()])
        names = demo_names(a, "synthetic")
        assert replay_generated(a, names) == replay_generated(a, names, workers=2)
        assert replay_generated(a, names, envs=2) == replay_generated(a, names, envs=2, workers=2)
    # The checks' heavy part, the agreement samples, batched by (parent, start step).
    from world_models.checking import sample_spreads

    copies = [tmp_path / f"spread{i}.hdf5" for i in range(2)]
    for path in copies:
        shutil.copyfile(one, path)
    assert sample_spreads(copies[0], ckpt, 2) == sample_spreads(copies[1], ckpt, 2, workers=2)
    manifest = load_manifest(folder / "manifest.yaml")
    policy = folder / "policies" / "seeds_r0"
    for envs in (1, 2):  # one scene a worker, and batches of scenes stepped together
        alone = evaluate_policy(policy, manifest, 4, gifs=False, envs=envs)
        sharded = evaluate_policy(policy, manifest, 4, gifs=False, envs=envs, workers=2)
        assert sharded["per_episode"] == alone["per_episode"] and sharded["layout"] == alone["layout"]


class DiesOnce:
    """A Ray worker whose process dies the first time it is given item 1 (the marker says it happened)."""

    def __init__(self, marker: str):
        self.marker = Path(marker)

    def run(self, item: int) -> int:
        if item == 1 and not self.marker.exists():
            self.marker.touch()
            os._exit(1)
        return item * item


def test_a_worker_that_dies_is_replaced_and_its_item_run_again(tmp_path):
    import ray.cloudpickle
    from worldgen.distributed import map_on_workers

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import tests/
    results = sorted(map_on_workers(DiesOnce, (str(tmp_path / "died"),), [0, 1, 2, 3], workers=2))
    assert (tmp_path / "died").exists()  # one worker did die
    assert results == [0, 1, 4, 9]  # and no item was lost or done twice


def test_training_curves_mirror_to_weights_and_biases_offline(tmp_path, monkeypatch):
    """``--wandb``: the TensorBoard event files synced to a wandb run, kept on disk (offline mode)."""
    pytest.importorskip("wandb", reason="wandb is optional (the tracking extra, which make test installs)")
    from worldgen.training_log import TrainingLog

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    with TrainingLog(tmp_path / "logs", wandb_project="worldgen-test") as log:
        for step in range(3):
            log.scalars(step, {"train/loss": 1.0 / (step + 1)})
    assert list((tmp_path / "logs").glob("events.out.tfevents.*"))
    runs = list((tmp_path / "logs" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb"))
