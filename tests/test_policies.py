"""Policies: datasets, behaviour cloning (MLP, image, diffusion), PPO in simulation and in the world
model, closed-loop evaluation, the four-row comparison, and their command lines."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from worldgen.apps.cli import main
from worldgen.geometry import matrix_from_quat
from worldgen.manifest import load_manifest
from worldgen.pipeline import run_seed_stage

from policies import load_policy
from policies.datasets import PolicyDataset
from policies.evaluate import evaluate_policy, wilson_interval
from policies.observation import rotation_6d
from policies.ppo import PPOConfig
from policies.ppo.training import mean_return, train_ppo
from policies.train import train_bc

ROOT = Path(__file__).resolve().parents[1]
PUSH = ROOT / "scenarios" / "push_to_target.yaml"


@pytest.fixture(scope="module")
def push_demos(tmp_path_factory) -> Path:
    """Four expert demos of push_to_target with cameras."""
    path = tmp_path_factory.mktemp("policies") / "push.hdf5"
    run_seed_stage(PUSH, path, n=4)
    return path


@pytest.fixture(scope="module")
def bc_policy(push_demos, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("bc") / "bc_mlp"
    meta = train_bc(push_demos, out, "bc-mlp", mask="seed", steps=300, batch_size=64)
    return out, meta


def test_wilson_interval_matches_known_values():
    low, high = wilson_interval(8, 10)
    assert (round(low, 3), round(high, 3)) == (0.490, 0.943)
    assert wilson_interval(0, 20)[0] == 0.0 and wilson_interval(20, 20)[1] == 1.0
    low, high = wilson_interval(40, 50)
    assert low < 0.8 < high and high - low < 0.25
    for n in range(1, 301):  # the interval holds the rate itself, to the last bit (a bar plot's error bars)
        assert all(lo <= k / n <= hi for k in (0, n) for lo, hi in [wilson_interval(k, n)])


def test_rotation_features_ignore_the_quaternion_sign():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(16, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    six = rotation_6d(torch.from_numpy(q)).numpy()
    assert np.allclose(six, rotation_6d(torch.from_numpy(-q)).numpy())
    for quat, feature in zip(q, six, strict=True):
        matrix = matrix_from_quat(np.array([quat[3], *quat[:3]]))  # wxyz
        assert np.allclose(feature, np.concatenate([matrix[:, 0], matrix[:, 1]]), atol=1e-9)


def test_policy_dataset_windows_pad_at_demo_edges(push_demos):
    data = PolicyDataset(push_demos, ["robot0_eef_pos"], n_obs_steps=2, horizon=4, mask="seed")
    with h5py.File(push_demos, "r") as f:
        first = f["data/demo_0"]
        actions, eef = first["actions"][()], first["obs/robot0_eef_pos"][()]
    t_last = len(actions) - 1
    sample = data.get(np.array([0, 1, t_last]))
    obs = sample["obs"]["robot0_eef_pos"].numpy()
    assert np.array_equal(obs[0], eef[[0, 0]]) and np.array_equal(obs[1], eef[[0, 1]])
    assert np.array_equal(sample["action"][1].numpy(), actions[1:5])
    assert sample["action_is_pad"][2].tolist() == [False, True, True, True]
    assert np.array_equal(sample["action"][2].numpy(), actions[[t_last] * 4])
    assert len(data) == sum(int(n) for n in data.lengths) and data.seeds == [0, 1, 2, 3]


def test_bc_mlp_learns_round_trips_and_is_reproducible(push_demos, bc_policy, tmp_path):
    out, meta = bc_policy
    data = PolicyDataset(push_demos, meta_keys := ["robot0_eef_pos", "object"], mask="seed")
    policy = load_policy(out)
    assert policy.config.obs_keys == meta_keys and meta["training_seeds"] == [0, 1, 2, 3]
    batch = data.get(np.arange(len(data)))
    with torch.no_grad():
        mse = float(policy.compute_loss(batch))
    baseline = float(batch["action"].pow(2).mean())  # predicting zeros
    assert mse < 0.5 * baseline
    # select_action on a raw observation equals the batched forward pass of the reloaded policy
    obs = {k: v[5, -1].numpy() for k, v in batch["obs"].items()}
    policy.reset()
    with torch.no_grad():
        expected = policy({k: v[5:6] for k, v in batch["obs"].items()})[0, 0].numpy()
    assert np.allclose(policy.select_action(obs), expected)
    again = train_bc(push_demos, tmp_path / "again", "bc-mlp", mask="seed", steps=300, batch_size=64)
    a, b = load_file(out / "model.safetensors"), load_file(tmp_path / "again" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a) and again["train_loss"] == meta["train_loss"]


def test_evaluation_reports_an_interval_and_writes_gifs(bc_policy, tmp_path):
    out, _ = bc_policy
    report = evaluate_policy(out, PUSH, episodes=2, out=tmp_path)
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["episodes"] == 2 and len(saved["per_episode"]) == 2
    assert saved["panel"]["base_seed"] == 1_000_000
    assert saved["successes"] == sum(e["success"] for e in saved["per_episode"])
    assert saved["success_rate"] == saved["successes"] / 2
    assert saved["ci95"] == list(wilson_interval(saved["successes"], 2))
    assert report["gifs"] and all(Path(p).stat().st_size > 1000 for p in report["gifs"].values())
    # the same policy and panel give the same episodes
    again = evaluate_policy(out, PUSH, episodes=2)
    assert again["per_episode"] == saved["per_episode"]


def test_evaluation_with_scenes_stepped_together(bc_policy):
    """``envs`` > 1: the same panel through WorldgenVectorEnv. The layout (which seed in which world) is
    recorded; the same layout gives the same episodes; each episode agrees with its one-scene run up to
    MuJoCo solving the scenes' contacts together (a step or two of episode length)."""
    out, _ = bc_policy
    alone = evaluate_policy(out, PUSH, episodes=3)
    together = evaluate_policy(out, PUSH, episodes=3, envs=2)
    assert together["layout"] == [[1_000_000, 1_000_001], [1_000_002, 1_000_002]]  # the last one repeated
    assert [e["seed"] for e in together["per_episode"]] == [e["seed"] for e in alone["per_episode"]]
    for a, b in zip(alone["per_episode"], together["per_episode"], strict=True):
        assert abs(a["length"] - b["length"]) <= 3
    assert evaluate_policy(out, PUSH, episodes=3, envs=2)["per_episode"] == together["per_episode"]


def test_evaluation_refuses_a_panel_that_overlaps_training_seeds(bc_policy):
    out, _ = bc_policy
    manifest = load_manifest(PUSH)
    overlapping = manifest.model_copy(
        update={"evaluation": manifest.evaluation.model_copy(update={"held_out_base_seed": 2})}
    )
    with pytest.raises(ValueError, match="shares seeds"):
        evaluate_policy(out, overlapping, episodes=3)


def test_image_and_diffusion_policies_train_and_evaluate(push_demos, tmp_path):
    image = train_bc(push_demos, tmp_path / "image", "bc-image", mask="seed", steps=20, batch_size=16)
    policy = load_policy(tmp_path / "image")
    assert policy.needs_cameras and policy.config.image_keys == ["front_rgb"] and image["demos"] == 4
    report = evaluate_policy(tmp_path / "image", PUSH, episodes=1)
    assert report["episodes"] == 1 and report["mean_length"] > 0
    # scenes stepped together render each world as its scene alone: the image policy runs there too
    together = evaluate_policy(tmp_path / "image", PUSH, episodes=2, envs=2, gifs=False)
    assert together["episodes"] == 2 and together["envs"] == 2
    assert together["per_episode"][0]["seed"] == report["per_episode"][0]["seed"]

    train_bc(push_demos, tmp_path / "diffusion", "diffusion", mask="seed", steps=30, batch_size=32)
    diffusion = load_policy(tmp_path / "diffusion")
    assert (diffusion.config.n_obs_steps, diffusion.config.horizon, diffusion.config.n_action_steps) == (
        2,
        16,
        8,
    )
    data = PolicyDataset(push_demos, diffusion.config.obs_keys, n_obs_steps=2, horizon=16, mask="seed")
    obs = {k: v[:1] for k, v in data.get(np.array([10]))["obs"].items()}
    chunk = diffusion.generate(obs, torch.Generator().manual_seed(1))
    assert chunk.shape == (1, 16, 7) and torch.equal(
        chunk, diffusion.generate(obs, torch.Generator().manual_seed(1))
    )
    assert not torch.equal(chunk, diffusion.generate(obs, torch.Generator().manual_seed(2)))
    report = evaluate_policy(tmp_path / "diffusion", PUSH, episodes=1)
    assert report["episodes"] == 1


def test_ppo_trains_in_simulation_and_in_the_world_model(push_demos, tmp_path):
    from world_models.env import WorldModelEnv
    from world_models.train import train_world_model

    manifest = load_manifest(PUSH)
    config = PPOConfig(
        obs_keys=["robot0_eef_pos", "object"], steps=128, n_steps=64, batch_size=32, n_epochs=2
    )
    meta = train_ppo(manifest, tmp_path / "ppo_sim", config)
    assert meta["trained_in"] == "simulation" and meta["episodes"] >= 1
    policy = load_policy(tmp_path / "ppo_sim")
    assert np.isfinite(mean_return(manifest, policy.select_action, [1_000_000]))

    ckpt = tmp_path / "wm"
    train_world_model(push_demos, ckpt, steps=2, batch_size=4)
    env = WorldModelEnv(ckpt, push_demos)
    first, _ = env.reset(seed=3)
    action = env.action_space.sample()
    step_a = env.step(action)[0]
    env.reset(seed=3)
    step_b = env.step(action)[0]
    assert all(np.array_equal(step_a[k], step_b[k]) for k in step_a), (step_a, step_b)
    assert set(first) == {"robot0_eef_pos", "robot0_gripper_qpos", "object"}

    config = PPOConfig(obs_keys=["robot0_eef_pos", "object"], steps=64, n_steps=32, batch_size=32, n_epochs=1)
    meta = train_ppo(manifest, tmp_path / "ppo_wm", config, world_model=ckpt, dataset=push_demos)
    assert meta["trained_in"] == "world_model"
    report = evaluate_policy(tmp_path / "ppo_wm", PUSH, episodes=1)  # imagination -> simulation
    assert report["episodes"] == 1


def test_ppo_on_scenes_stepped_together(tmp_path):
    """SB3's PPO on VectorTaskEnv: every world finishes an episode (horizon 120 < 128 steps each) and
    restarts within the step on a training seed, its last observation in its info."""
    from policies.ppo.training import VectorTaskEnv

    manifest = load_manifest(PUSH)
    config = PPOConfig(
        obs_keys=["robot0_eef_pos", "object"], steps=512, n_steps=128, batch_size=64, n_epochs=1
    )
    meta = train_ppo(manifest, tmp_path / "ppo_vec", config, envs=4)
    assert meta["envs"] == 4 and meta["episodes"] == 4
    assert np.isfinite(mean_return(manifest, load_policy(tmp_path / "ppo_vec").select_action, [1_000_000]))
    env = VectorTaskEnv(manifest, config, 2, seed=1)
    first = env.reset()
    assert first.shape == (2, config.low_dim_shapes["robot0_eef_pos"] + config.low_dim_shapes["object"])
    env.env.steps[:] = manifest.horizon - 1
    env.step_async(np.zeros((2, 7), np.float32))
    obs, rewards, dones, infos = env.step_wait()
    assert dones.all() and all(info["TimeLimit.truncated"] for info in infos)
    assert all(info["terminal_observation"].shape == first.shape[1:] for info in infos)
    assert list(env.env.steps) == [0, 0] and set(env.scene_seeds) <= set(
        range(manifest.seeds.base_seed, 10**6)
    )
    env.close()


def test_compare_runs_every_recipe_row_and_resumes(tmp_path, monkeypatch):
    """The experiment on a tiny budget: each recipe in the world model and in the simulator, the
    negative control and the oracle, two replicates pooled on disjoint panels; a second call resumes
    everything from the folder."""
    from worldgen.apps.compare import CompareConfig, compare
    from worldgen.manifest import load_manifest

    from world_models.recipes import accepted_demos

    manifest = load_manifest(PUSH)
    generation = manifest.generation.model_copy(
        update={
            "recover": manifest.generation.recover.model_copy(update={"per_seed": 1}),
            "retarget": manifest.generation.retarget.model_copy(update={"count": 2}),
            "perturb": manifest.generation.perturb.model_copy(update={"per_seed": 1, "at_steps": [0]}),
        }
    )
    manifest = manifest.model_copy(update={"generation": generation})
    rows = ("seeds", "+perturb (WM)", "+recover (WM)", "+recover (sim)", "+retarget (WM)", "+retarget (sim)")
    config = CompareConfig(
        seeds=2, play=1, wm_steps=2, policy_steps=20, replicates=2, episodes=2, workers=1, envs=2, rows=rows
    )
    result = compare(manifest, tmp_path, config)
    assert list(result["rows"]) == list(rows)
    for name, row in result["rows"].items():
        assert row["episodes"] == 4 and len(row["per_replicate"]) == 2, name
        scores = [tuple(map(int, score.split("/"))) for score in row["per_replicate"]]
        assert row["successes"] == sum(k for k, _ in scores) and [n for _, n in scores] == [2, 2], name
        assert row["ci95"] == list(wilson_interval(row["successes"], 4)), name
    cells = sorted((tmp_path / "cells").glob("*.json"))
    assert len(cells) == 2 * len(rows)
    panels = [json.loads((tmp_path / "cells" / f"seeds_r{r}.json").read_text())["panel"] for r in (0, 1)]
    assert panels[1]["base_seed"] == panels[0]["base_seed"] + 2  # each replicate on its own panel
    # A generated row trains on the seeds and the attempts the world model judged successful only.
    seeds = result["rows"]["seeds"]["demos"]
    for row, file in (("+recover (WM)", "recover_wm"), ("+retarget (WM)", "retarget_wm")):
        accepted = int(result["rows"][row]["accepted"].split("/")[0])
        kept = accepted_demos(tmp_path / f"{file}.hdf5")
        assert result["rows"][row]["demos"] == seeds + accepted == len(kept)
    # The control keeps every branch: 1 training seed (the other is held out) x 1 branch x 1 start step.
    assert result["rows"]["+perturb (WM)"]["accepted"] == "1/1"
    assert set(result["gain_recovered"]) == {"recover", "retarget"}
    replay = result["replay_of_accepted_wm_demos"]
    # recover starts from the training seed only (the other seed demo is held out for validation).
    assert replay["recover"]["replayed"] == 1 and replay["retarget"]["replayed"] == 2
    assert (tmp_path / "compare.png").stat().st_size > 0
    assert "| +retarget (sim) |" in (tmp_path / "compare.md").read_text()

    before = {p: p.stat().st_mtime_ns for p in cells}
    stages = (tmp_path / "stages.json").read_text()
    again = compare(manifest, tmp_path, config)
    assert again["rows"] == result["rows"]
    assert {p: p.stat().st_mtime_ns for p in cells} == before
    assert (tmp_path / "stages.json").read_text() == stages

    # A cached cell is reused only when what made it matches. A field no cell reads changes nothing.
    said: list[str] = []
    unrelated = manifest.model_copy(update={"description": "another description"})
    compare(unrelated, tmp_path, dataclasses.replace(config, rows=("seeds",)), progress=said.append)
    assert {p: p.stat().st_mtime_ns for p in cells} == before and not [s for s in said if "recomputed" in s]
    # Another policy budget: the seeds row's cells, and only they, are made again, and say why.
    compare(
        manifest,
        tmp_path,
        dataclasses.replace(config, rows=("seeds",), policy_steps=21),
        progress=said.append,
    )
    remade = {p for p in cells if p.stat().st_mtime_ns != before[p]}
    assert remade == {tmp_path / "cells" / f"seeds_r{r}.json" for r in (0, 1)}
    assert [s for s in said if "recomputed" in s and "(steps)" in s] and len(said) > 0
    # Other code: the cells recomputed, naming the code version (the stages' own reaction to other code:
    # tests/test_cache.py).
    monkeypatch.setattr("worldgen.apps.compare.code_hash", lambda: "another version")
    said.clear()
    compare(
        manifest,
        tmp_path,
        dataclasses.replace(config, rows=("seeds",), policy_steps=21),
        progress=said.append,
    )
    assert sum("recomputed" in s and "(code)" in s for s in said) == 2


def test_cli_train_policy_and_eval(push_demos, tmp_path, capsys):
    out = tmp_path / "cli_bc"
    code = main(
        [
            "train-policy",
            str(push_demos),
            "--algo",
            "bc-mlp",
            "--mask",
            "seed",
            "--steps",
            "20",
            "-o",
            str(out),
            "-q",
        ]
    )
    assert code == 0 and (out / "model.safetensors").exists()
    assert main(["eval", str(out), str(PUSH), "--episodes", "1", "--no-gifs", "-q"]) == 0
    assert "successes on push_to_target" in capsys.readouterr().out
    code = main(
        ["train-policy", str(push_demos), "--algo", "bc-mlp", "--obs-keys", "nope", "-o", str(out), "-q"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "nope" in err[0] and "Traceback" not in err[0]
    code = main(["eval", str(tmp_path / "missing"), str(PUSH), "-q"])
    assert code == 2 and "not a policy folder" in capsys.readouterr().err


def test_bc_mlp_learns_push_to_target_within_a_ci_budget(tmp_path):
    """Learning quality in every CI run (the full bar is the slow test below): 10 expert demos, 1500 steps,
    24 held-out scenes. BC-MLP succeeds on at least 6 more of them than the same network after one step,
    the negative control (measured: 13 against 4; the scenes where pushing anywhere near the target is
    enough make the control's floor)."""
    dataset = tmp_path / "push10.hdf5"
    run_seed_stage(PUSH, dataset, n=10, cameras=False)
    scores = {}
    for name, steps in (("trained", 1500), ("one step", 1)):
        train_bc(dataset, tmp_path / name, "bc-mlp", mask="seed", steps=steps)
        scores[name] = evaluate_policy(tmp_path / name, PUSH, episodes=24, gifs=False, envs=8)["successes"]
    assert scores["trained"] >= scores["one step"] + 6, scores


@pytest.mark.slow
def test_bc_mlp_reaches_80_percent_on_push_to_target(tmp_path):
    """The issue's bar: 50 expert demos, a 50-episode held-out panel, >= 80 % success."""
    dataset = tmp_path / "push50.hdf5"
    run_seed_stage(PUSH, dataset, n=50, cameras=False)
    train_bc(dataset, tmp_path / "bc", "bc-mlp", mask="seed")
    report = evaluate_policy(tmp_path / "bc", PUSH, episodes=50, out=tmp_path / "eval")
    assert report["success_rate"] >= 0.8, report["success_rate"]


@pytest.mark.slow
def test_ppo_improves_mean_return_over_random(tmp_path):
    manifest = load_manifest(PUSH)
    config = PPOConfig(obs_keys=["robot0_eef_pos", "object"], steps=16_384, n_steps=512)
    train_ppo(manifest, tmp_path / "ppo", config)
    policy = load_policy(tmp_path / "ppo")
    seeds = [2_000_000 + i for i in range(5)]
    rng = np.random.default_rng(0)
    random = mean_return(manifest, lambda obs: rng.uniform(-1, 1, 7).astype(np.float32), seeds)
    trained = mean_return(manifest, policy.select_action, seeds)
    assert trained > random, (trained, random)
