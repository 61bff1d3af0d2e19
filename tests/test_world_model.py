"""World model on tiny configs: forward/backward, overfitting one batch, save/load, resume, branching
that regenerates exactly, and branches gated by the checks."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
import yaml
from worldgen.apps.cli import main
from worldgen.errors import CheckpointError
from worldgen.manifest import load_manifest
from worldgen.pipeline import run_seed_stage

from world_models.checkpoint import read_checkpoint_meta, write_checkpoint_meta
from world_models.data import (
    Normalization,
    WorldModelData,
    frame_channels,
    frames_from_obs,
    obs_from_frames,
)
from world_models.metrics import evaluate_branches, evaluate_open_loop
from world_models.modeling_unet_world_model import UNetWorldModel
from world_models.objectives import (
    EDM_IMAGE_LOG_SIGMA,
    EDMResidual,
    RectifiedFlow,
    objective_for,
    objective_from_config,
    world_model_loss,
)
from world_models.recipes import generate_in_world_model, recipe_spec, seed_parents
from world_models.sampler import WorldModelSampler, noise_seed
from world_models.train import build_world_model, train_world_model

from .conftest import ROOT

TINY = dict(
    frame_channels=5,
    context_frames=2,
    action_dim=7,
    state_dim=15,
    resolution=16,
    block_out_channels=(16, 32),
    layers_per_block=1,
    hidden_dim=32,
)


def _batch(b=4, c=5, k=2, res=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "context": torch.rand(b, k, c, res, res, generator=g) * 2 - 1,
        "actions": torch.rand(b, k, 7, generator=g) * 2 - 1,
        "state": torch.randn(b, 15, generator=g),
        "next_frame": torch.rand(b, c, res, res, generator=g) * 2 - 1,
        "rollout_actions": torch.rand(b, 3, k, 7, generator=g) * 2 - 1,
        "rollout_states": torch.randn(b, 4, 15, generator=g),
        "rollout_valid": torch.tensor([[True, True, True]] * (b - 1) + [[True, False, False]]),
    }


NORM = Normalization([0.0] * 15, [1.0] * 15, [0.0] * 7, [1.0] * 7)


@pytest.mark.parametrize("backbone", ["unet", "cosmos"])
def test_forward_backward_and_overfitting_one_batch(backbone):
    """Each backbone with its objective: EDM on the residual (unet), rectified flow on the whole frame as
    Cosmos-Predict2 (cosmos)."""
    torch.manual_seed(0)
    model = build_world_model(backbone, None, 5, 2, 7, 15, 16)
    if backbone == "unet":
        model = UNetWorldModel(**TINY)
    objective = objective_for(backbone, 0.5)
    assert objective.name == {"unet": "edm_residual", "cosmos": "rectified_flow"}[backbone]
    batch = _batch()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(60):
        frame_loss, state_loss = world_model_loss(
            model, objective, batch, torch.Generator().manual_seed(step % 4), NORM
        )
        loss = frame_loss + state_loss
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-8:]) < 0.5 * np.mean(losses[:8]), losses


class _Oracle:
    """A denoiser that knows the next frame: sampling with it must land on that frame exactly."""

    def __init__(self, objective, target: torch.Tensor):
        self.objective, self.target = objective, target

    def denoise_next_frame(self, x, timestep, window, actions, states):
        t = timestep.view(-1, 1, 1, 1)
        if self.objective.name == "rectified_flow":  # x = (1 - t) x0 + t eps: velocity eps - x0
            return (x - self.target) / t
        sch, residual = self.objective.scheduler, self.target - window[:, -1]
        sigma = torch.exp(4.0 * t)  # EDM's c_noise = log(sigma) / 4
        raw = x * (sigma**2 + sch.config.sigma_data**2).sqrt()  # undo c_in
        zero = torch.zeros_like(raw)  # precondition_outputs(raw, F) = c_skip raw + c_out F
        c_skip_raw = sch.precondition_outputs(raw, zero, sigma)
        c_out = sch.precondition_outputs(zero, torch.ones_like(raw), sigma)
        return (residual - c_skip_raw) / c_out


class _ConstantStep(torch.nn.Module):
    """A state head that always predicts the same normalised change."""

    def __init__(self, delta: torch.Tensor):
        super().__init__()
        self.delta = delta

    def predict_state_delta(self, actions, state):
        return self.delta.expand(state.shape[0], -1)


def test_state_rollout_loss_feeds_the_head_its_own_predictions():
    """Over H steps of a still state, a head that predicts a constant change d is off by (h+1)d at step h
    where it is fed its own predictions, and by d on the known columns, re-read from the data each step;
    steps past an episode's end do not count. One step is the plain next-state MSE."""
    from world_models.objectives import state_rollout_loss

    d = torch.tensor([0.5] * 3 + [1.0] * 12)
    batch = {
        "rollout_actions": torch.zeros(2, 4, 2, 7),
        "rollout_states": torch.zeros(2, 5, 15),
        "rollout_valid": torch.tensor([[True] * 4, [True, True, False, False]]),
    }
    per_step = [(3 * 0.25 + 12 * (h + 1) ** 2) / 15 for h in range(4)]
    expected = (sum(per_step) + per_step[0] + per_step[1]) / 6
    loss = state_rollout_loss(_ConstantStep(d), batch, NORM, known_columns=3)
    assert loss.item() == pytest.approx(expected)
    fed_back = state_rollout_loss(_ConstantStep(d), batch, NORM)  # nothing known: the end effector drifts too
    assert fed_back.item() > loss.item()
    one = {k: v[:, :1] if k != "rollout_states" else v[:, :2] for k, v in batch.items()}
    assert state_rollout_loss(_ConstantStep(d), one, NORM).item() == pytest.approx((d**2).mean().item())


@pytest.mark.parametrize("objective", [EDMResidual(0.05), RectifiedFlow(0.05)], ids=lambda o: o.name)
def test_sampling_with_an_exact_denoiser_reaches_the_target(objective):
    g = torch.Generator().manual_seed(0)
    window = torch.rand(3, 2, 5, 8, 8, generator=g) * 2 - 1
    target = (window[:, -1] + 0.05 * torch.randn(3, 5, 8, 8, generator=g)).clamp(-1, 1)
    noise = torch.randn(3, 5, 8, 8, generator=g)
    out = objective.sample(_Oracle(objective, target), window, None, None, noise)
    assert torch.allclose(out, target, atol=1e-4), (out - target).abs().max()


class _InputRecorder:
    """A denoiser that predicts no change and records the (preconditioned) inputs it is given."""

    def __init__(self):
        self.inputs = []

    def denoise_next_frame(self, x, timestep, window, actions, states):
        self.inputs.append(x)
        return torch.zeros_like(x)


def test_edm_sampler_starts_from_the_noise_level_the_network_was_trained_on():
    # The first network input is c_in(sigma_max) * x_T: unit std when x_T ~ N(0, sigma_max^2), as in
    # training. diffusers' init_noise_sigma is sqrt(sigma_max^2 + 1), 1.6x too loud at sigma_max 0.8.
    objective, recorder = EDMResidual(0.04), _InputRecorder()
    noise = torch.randn(4, 5, 32, 32, generator=torch.Generator().manual_seed(0))
    objective.sample(recorder, torch.zeros(4, 2, 5, 32, 32), None, None, noise)
    assert abs(float(recorder.inputs[0].std()) - 1.0) < 0.02


def test_objective_config_round_trips_and_old_checkpoints_keep_their_training_noise():
    objective = EDMResidual(0.04)
    again = objective_from_config(json.loads(json.dumps(objective.config())))
    assert again.config() == objective.config()
    old = objective_from_config({"sigma_data": 0.04, "sampling_steps": 2})
    assert old.train_log_sigma == EDM_IMAGE_LOG_SIGMA != objective.train_log_sigma


def test_save_load_round_trip_reproduces_outputs(tmp_path):
    torch.manual_seed(1)
    model = UNetWorldModel(**TINY).eval()
    b = _batch()
    args = (b["next_frame"], torch.full((4,), 0.1), b["context"], b["actions"], b["state"])
    model.save_pretrained(tmp_path / "m")
    loaded = UNetWorldModel.from_pretrained(tmp_path / "m").eval()
    with torch.no_grad():
        assert torch.equal(model(*args), loaded(*args))
        assert torch.equal(
            model.predict_state_delta(b["actions"], b["state"]),
            loaded.predict_state_delta(b["actions"], b["state"]),
        )
    assert (tmp_path / "m" / "diffusion_pytorch_model.safetensors").is_file()


def test_context_noise_level_conditions_the_output():
    torch.manual_seed(2)
    model = UNetWorldModel(**TINY).eval()
    b = _batch()
    args = (b["next_frame"], torch.full((4,), 0.1), b["context"], b["actions"], b["state"])
    with torch.no_grad():
        clean, zero = model(*args), model(*args, context_noise=torch.zeros(4))
        noisy = model(*args, context_noise=torch.full((4,), 2.0))
    assert torch.equal(clean, zero) and not torch.allclose(clean, noisy)


def test_device_flag_is_checked_before_anything_runs(tmp_path, capsys):
    for device in ("gpu", "cuda:x"):
        code = main(["train-wm", "--device", device, str(tmp_path / "d.hdf5"), "-o", str(tmp_path / "ckpt")])
        assert code == 2 and "--device" in capsys.readouterr().err
    assert not (tmp_path / "ckpt").exists()


def test_frames_round_trip_through_model_channels():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    depth = rng.uniform(0, 1, (3, 16, 16, 1)).astype(np.float32)
    seg = rng.choice(np.array([0, 4, 6], np.uint8), (3, 16, 16, 1))
    frames = frames_from_obs(rgb, depth, seg, [4, 6], (16, 16))
    assert frames.shape == (3, 6, 16, 16) and frames.min() >= -1 and frames.max() <= 1
    back = obs_from_frames(frames, [4, 6])
    assert np.array_equal(back["seg"], seg)
    assert np.abs(back["rgb"].astype(int) - rgb).max() <= 1
    assert np.allclose(back["depth"], depth, atol=1e-6)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("wm")
    dataset = root / "seeds.hdf5"
    run_seed_stage(ROOT / "scenarios" / "push_to_target.yaml", dataset, n=3)
    ckpt = root / "ckpt"
    result = train_world_model(dataset, ckpt, steps=6, batch_size=4, checkpoint_every=3)
    return dataset, ckpt, result


def test_training_writes_a_resumable_checkpoint(trained):
    dataset, ckpt, result = trained
    assert result["step"] == 6 and len(result["validation"]) == 2
    meta = read_checkpoint_meta(ckpt)
    assert meta.camera == "front" and meta.step == 6 and len(meta.data_hash) == 64
    assert (ckpt / "model" / "config.json").is_file()
    # Noise levels follow the measured frame-to-frame change; actions and states are normalised.
    assert 0.005 < meta.objective["sigma_data"] < 0.2 and meta.objective["sampling_steps"] == 1
    assert len(meta.normalization.action_std) == 7 and min(meta.normalization.action_std) >= 0.1
    again = train_world_model(dataset, ckpt, steps=8, batch_size=4, checkpoint_every=4)
    assert again["step"] == 8 and [v["step"] for v in again["validation"]] == [3, 6, 8]
    write_checkpoint_meta(ckpt, meta.replace(data_hash="0" * 64))  # as if trained on other data
    with pytest.raises(CheckpointError, match="other data"):
        train_world_model(dataset, ckpt, steps=9, batch_size=4)


def test_checkpoints_written_before_the_rename_still_read(trained, tmp_path):
    """worldgen.json once called the backbone ``preset`` and the objective ``scheduler``."""
    _, ckpt, _ = trained
    meta = read_checkpoint_meta(ckpt)
    old = json.loads((ckpt / "worldgen.json").read_text())
    old["preset"], old["scheduler"] = old.pop("backbone"), old.pop("objective")
    (tmp_path / "worldgen.json").write_text(json.dumps(old))
    assert read_checkpoint_meta(tmp_path) == meta


def test_time_limit_stops_with_a_checkpoint_and_an_interrupted_swap_resumes(trained, tmp_path):
    dataset, _, _ = trained
    out = tmp_path / "ckpt"
    train_world_model(dataset, out, steps=3, batch_size=4)
    out.rename(tmp_path / "ckpt.old")  # as if killed between save_checkpoint's two renames
    first = train_world_model(dataset, out, steps=9, batch_size=4, checkpoint_every=3, time_limit=0.0)
    assert first["stopped_early"] and first["step"] == 4  # resumed at 3 from ckpt.old, then out of time
    assert json.loads((out / "worldgen.json").read_text())["step"] == 4
    assert not (tmp_path / "ckpt.old").exists()
    rest = train_world_model(dataset, out, steps=9, batch_size=4, checkpoint_every=3)
    assert rest["step"] == 9 and not rest["stopped_early"]
    assert [v["step"] for v in rest["validation"]] == [3, 4, 6, 9]


def test_batches_gather_the_windows_they_index(trained):
    """The vectorised batch is the per-window reference, stacked, for windows near episode starts too."""
    dataset = trained[0]
    data = WorldModelData(dataset, "train", "front", (16, 16), [4], context_frames=3)
    batch = data.batch(256, torch.Generator().manual_seed(3), state_horizon=6)
    picks = torch.randint(len(data.index), (256,), generator=torch.Generator().manual_seed(3))
    # Some windows repeat the first frame and pad actions with zeros; some rollouts run past the end.
    assert any(data.index[i][1] < 2 for i in picks.tolist())
    assert not batch["rollout_valid"].all() and batch["rollout_valid"][:, 0].all()
    windows = [data.window(data.episodes[data.index[i][0]], data.index[i][1], 6) for i in picks.tolist()]
    for key, value in batch.items():
        assert torch.equal(value, torch.stack([w[key] for w in windows])), key


def test_lora_post_training_bf16_and_checkpointing(trained, tmp_path):
    """LoRA adapters on a frozen pretrained U-Net under bf16 autocast with gradient checkpointing: only
    adapters and conditioning change, and the saved model (adapters merged) loads as a plain model."""
    from peft.tuners.lora import LoraLayer

    from world_models.train import add_lora

    dataset, ckpt, _ = trained
    base = UNetWorldModel.from_pretrained(ckpt / "model")
    probe = UNetWorldModel.from_pretrained(ckpt / "model")
    add_lora(probe, 4)
    trainable = sum(p.numel() for p in probe.parameters() if p.requires_grad)
    assert any(isinstance(m, LoraLayer) for m in probe.modules())
    assert trainable < 0.5 * sum(p.numel() for p in base.parameters())
    out = tmp_path / "lora"
    result = train_world_model(
        dataset,
        out,
        steps=3,
        batch_size=4,
        pretrained=ckpt / "model",
        lora_rank=4,
        mixed_precision="bf16",
        gradient_checkpointing=True,
    )
    assert all(np.isfinite(v["frame_loss"]) for v in result["validation"])
    tuned = UNetWorldModel.from_pretrained(out / "model")
    before, after = base.state_dict(), tuned.state_dict()
    assert before.keys() == after.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(".attentions." in k or ".resnets." in k for k in changed)  # merged adapters
    assert json.loads((out / "worldgen.json").read_text())["lora_rank"] == 4
    with pytest.raises(ValueError, match="lora_rank"):
        train_world_model(dataset, out, steps=4, batch_size=4, pretrained=ckpt / "model")


def test_branches_regenerate_exactly_and_differ_by_seed(trained):
    dataset, ckpt, _ = trained
    sampler = WorldModelSampler(ckpt)
    k, c = sampler.meta.context_frames, frame_channels(sampler.meta.instances)
    res = sampler.meta.resolution[0]
    g = torch.Generator().manual_seed(0)
    context = torch.rand(k, c, res, res, generator=g) * 2 - 1
    past = torch.zeros(k, 7)
    state = torch.tensor(sampler.norm.state_mean)
    actions = torch.rand(3, 4, 7, generator=g) * 2 - 1
    seeds = [noise_seed(0, "demo_0", 5, i) for i in range(3)]
    a_frames, a_states = sampler.rollout(context, past, state, actions, seeds)
    b_frames, b_states = sampler.rollout(context, past, state, actions, seeds)
    assert a_frames.shape == (3, 4, c, res, res) and a_states.shape == (3, 4, 15)
    assert torch.equal(a_frames, b_frames) and torch.equal(a_states, b_states)
    assert not torch.equal(a_frames[0], a_frames[1])  # other noise seed, other future
    same_actions = actions[:1].repeat(3, 1, 1)
    c_frames, _ = sampler.rollout(context, past, state, same_actions, [seeds[0]] * 3)
    # Identical rows of one batch agree to float rounding, not bitwise (the CPU kernels block by batch
    # position): exact regeneration needs the recorded batch layout, which branches store.
    assert torch.allclose(c_frames[0], c_frames[1], atol=1e-4)


def test_branch_cli_writes_synthetic_demos_that_the_checks_gate(trained, tmp_path, capsys):
    dataset, ckpt, _ = trained
    synth = tmp_path / "synth.hdf5"
    code = main(
        [
            "generate",
            str(dataset),
            str(ckpt),
            "--recipe",
            "perturb",
            "-o",
            str(synth),
            "--per-seed",
            "2",
            "--starts",
            "3",
            "--horizon",
            "4",
        ]
    )
    assert code == 0
    with h5py.File(synth, "r") as f:
        synthetic = [n.decode() for n in f["mask/synthetic"][()]]
        # Branches start, as every recipe's attempts do, from the training seeds (the valid one held out).
        assert len(synthetic) == 2 * len(seed_parents(f))
        demo = f["data"][synthetic[0]]
        assert demo.attrs["source"] == "world_model" and int(demo.attrs["branch_step"]) == 3
        assert demo["obs/front_rgb"].shape == (4, 96, 96, 3) and demo["actions"].shape == (4, 7)
        assert int(demo.attrs["noise_seed"]) == noise_seed(0, demo.attrs["parent"], 3, 0)
        assert len(demo.attrs["model"]) == 64
    assert main(["check", str(synth), "--mask", "synthetic"]) == 0
    with h5py.File(synth, "r") as f:
        for name in (n.decode() for n in f["mask/synthetic"][()]):
            scores = json.loads(f["data"][name].attrs["check_scores"])
            assert scores["flicker"]["verdict"] in ("passed", "failed")
            assert "check_confidence" in f["data"][name].attrs  # two siblings per parent and step
    capsys.readouterr()
    missing = tmp_path / "no_ckpt"
    assert (
        main(["generate", str(dataset), str(missing), "--recipe", "perturb", "-o", str(tmp_path / "x.hdf5")])
        == 2
    )
    assert f"{missing}: not a world-model checkpoint" in capsys.readouterr().err


def test_metrics_known_values():
    from world_models.metrics import mask_iou, psnr, ssim

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (24, 24, 3)).astype(np.uint8)
    assert ssim(x, x) == pytest.approx(1.0)
    y = np.clip(x.astype(int) + 10, 0, 255).astype(np.uint8)
    mse = np.mean((x.astype(float) - y.astype(float)) ** 2)
    assert psnr(x, y) == pytest.approx(10 * np.log10(255**2 / mse))
    assert ssim(x, 255 - x) < 0.5
    a = np.zeros((4, 4), np.uint8)
    b = np.zeros((4, 4), np.uint8)
    a[:2], b[1:3] = 5, 5
    assert mask_iou(a, b, 5) == pytest.approx(4 / 12) and mask_iou(a, b, 9) is None


def test_eval_wm_replays_branches_in_simulation(trained, tmp_path, capsys):
    dataset, ckpt, _ = trained
    synth = tmp_path / "synth.hdf5"
    assert (
        main(
            [
                "generate",
                str(dataset),
                str(ckpt),
                "--recipe",
                "perturb",
                "-o",
                str(synth),
                "--per-seed",
                "2",
                "--starts",
                "2",
                "--horizon",
                "3",
            ]
        )
        == 0
    )
    out = tmp_path / "eval.json"
    assert main(["eval-wm", str(synth), str(ckpt), "-o", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["branches"] == 4 and set(report["per_step"]["psnr"]) == {"1", "2", "3"}  # 2 parents
    # The copy-last baseline of step 1 compares the simulator's frame with the branch's first frame.
    assert 10 < report["per_step"]["copy_last_psnr"]["1"] < 60
    assert "action_sensitivity_psnr_gap" in report and out.with_suffix(".png").is_file()


def test_eval_wm_open_loop_scores_recorded_actions_without_the_simulator(trained, tmp_path, capsys):
    dataset, ckpt, _ = trained
    out = tmp_path / "open.json"
    assert main(["eval-wm", str(dataset), str(ckpt), "--open-loop", "-o", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["mode"] == "open_loop" and report["windows"] >= 2
    assert set(report["per_step"]["psnr"]) == {str(j) for j in range(1, 9)}
    # Copy-last compares recorded frames with recorded frames: finite, and worse further ahead.
    copy = report["per_step"]["copy_last_psnr"]
    assert 10 < copy["8"] < copy["1"] < 80 and np.isfinite(report["action_sensitivity_psnr_gap"])
    assert "windows of the valid demos" in capsys.readouterr().out
    assert main(["eval-wm", str(dataset), "--open-loop"]) == 2
    assert main(["eval-wm", str(dataset), str(ckpt), "--open-loop", "--mask", "nope"]) == 2
    err = capsys.readouterr().err
    assert "needs CKPT" in err and "invalid choice: 'nope'" in err and "Traceback" not in err


@pytest.mark.slow
@pytest.mark.timeout(2700)
def test_unet_beats_copy_last_frame_at_4_steps_on_push_to_target(tmp_path):
    """The issue's CPU bar, with margin: the unet backbone trained on 20 push_to_target seeds at 64 x 64 (the
    manifest's 2000 steps, about 12 minutes on 2 idle cores). Rolled out under the held-out demos' recorded
    actions it beats copy-last-frame by 3 dB 4 and 8 steps ahead (the bench measured +5.9 / +6.0) and scores
    1 dB better under those actions than under another window's (+2.6); its branches, replayed in the
    simulator, beat copy-last-frame by 1.5 dB 4 steps ahead (+3.0)."""
    dataset = tmp_path / "seeds.hdf5"
    run_seed_stage(ROOT / "scenarios" / "push_to_target.yaml", dataset, n=20)
    ckpt = tmp_path / "ckpt"
    train_world_model(dataset, ckpt, checkpoint_every=1000)
    open_loop = evaluate_open_loop(dataset, ckpt, horizon=8)
    per_step = open_loop["per_step"]
    assert all(per_step["psnr"][j] > per_step["copy_last_psnr"][j] + 3.0 for j in (4, 8)), per_step
    assert open_loop["action_sensitivity_psnr_gap"] > 1.0, open_loop["action_sensitivity_psnr_gap"]
    synth = tmp_path / "synth.hdf5"
    manifest = load_manifest(ROOT / "scenarios" / "push_to_target.yaml")
    spec = recipe_spec("perturb", manifest, per_seed=4, start_steps=(10, 30), horizon=8)
    generate_in_world_model("perturb", dataset, ckpt, synth, spec)
    per_step = evaluate_branches(synth, ckpt)["per_step"]
    assert per_step["psnr"][4] > per_step["copy_last_psnr"][4] + 1.5, per_step


COSMOS_TINY = dict(
    in_channels=4,
    out_channels=4,
    num_attention_heads=2,
    attention_head_dim=16,
    num_layers=2,
    text_embed_dim=32,
    adaln_lora_dim=8,
    max_size=(4, 16, 16),
    patch_size=(1, 2, 2),
    rope_scale=(1.0, 1.0, 1.0),
    concat_padding_mask=True,
)


def _cosmos_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(2, 4, 2, 16, 16, generator=g),
        torch.tensor([0.5, 0.7]),
        torch.randn(2, 3, 32, generator=g),
        torch.randn(2, 2, 7, generator=g),
        torch.zeros(1, 1, 16, 16),
    )


def test_cosmos_backbone_forward_backward_and_action_sensitivity():
    from world_models.modeling_cosmos_world_model import CosmosWorldModel

    torch.manual_seed(0)
    model = CosmosWorldModel(action_dim=7, action_chunk=2, **COSMOS_TINY)
    x, t, enc, actions, pad = _cosmos_inputs()
    out = model(x, t, enc, actions=actions, padding_mask=pad).sample
    assert out.shape == x.shape
    out.square().mean().backward()
    assert model.action_embedder.net[-1].weight.grad is not None
    with torch.no_grad():  # from scratch the action layers are non-zero: other actions, other output
        other = model(x, t, enc, actions=-actions, padding_mask=pad).sample
    assert not torch.equal(out.detach(), other)


def _cosmos_seeds(tmp_path, resolution: int):
    """Three push_to_target seed demos whose manifest picks the cosmos backbone at this resolution."""
    manifest = yaml.safe_load((ROOT / "scenarios" / "push_to_target.yaml").read_text())
    manifest["world_model"].update(backbone="cosmos", resolution=[resolution] * 2, context_frames=2)
    path = tmp_path / "push_cosmos.yaml"
    path.write_text(yaml.safe_dump(manifest))
    dataset = tmp_path / "seeds.hdf5"
    run_seed_stage(path, dataset, n=3)
    return dataset


def test_cosmos_backbone_trains_post_trains_and_branches_through_the_same_commands(tmp_path, capsys):
    """``world_model.backbone: cosmos`` goes through train-wm, resume, --from a Video2World-format folder
    and branch like the unet backbone."""
    from diffusers import CosmosTransformer3DModel

    dataset = _cosmos_seeds(tmp_path, resolution=16)
    ckpt = tmp_path / "ckpt"
    assert main(["train-wm", str(dataset), "-o", str(ckpt), "--steps", "2", "--batch-size", "2", "-q"]) == 0
    assert train_world_model(dataset, ckpt, steps=3, batch_size=2)["step"] == 3
    meta = read_checkpoint_meta(ckpt)
    config = json.loads((ckpt / "model" / "config.json").read_text())
    assert meta.backbone == "cosmos" and config["_class_name"] == "CosmosWorldModel"

    sampler = WorldModelSampler(ckpt)
    channels = frame_channels(sampler.meta.instances)  # RGB, depth, the robot's and the object's masks
    g = torch.Generator().manual_seed(0)
    context = torch.rand(2, channels, 16, 16, generator=g) * 2 - 1
    past, state = torch.zeros(2, 7), torch.tensor(sampler.norm.state_mean)
    actions = torch.rand(3, 2, 7, generator=g) * 2 - 1
    a, _ = sampler.rollout(context, past, state, actions, [1, 2, 1])
    b, _ = sampler.rollout(context, past, state, actions[:1], [1])
    assert a.shape == (3, 2, channels, 16, 16) and torch.allclose(a[0], b[0], atol=1e-5)
    assert not torch.allclose(a[0], a[1])
    synth = tmp_path / "synth.hdf5"
    args = [
        "generate",
        str(dataset),
        str(ckpt),
        "--recipe",
        "perturb",
        "-o",
        str(synth),
        "--per-seed",
        "2",
        "--starts",
        "2",
    ]
    assert main([*args, "--horizon", "2"]) == 0
    assert "4/4 perturb attempts" in capsys.readouterr().out  # 2 training seed demos x 2 branches

    # Post-training from a Video2World-format transformer folder: the action layers start at zero.
    torch.manual_seed(0)
    base = CosmosTransformer3DModel(**{**COSMOS_TINY, "in_channels": channels + 1, "out_channels": channels})
    base.save_pretrained(tmp_path / "base")
    tuned = tmp_path / "tuned"
    result = train_world_model(dataset, tuned, steps=2, batch_size=2, pretrained=tmp_path / "base")
    assert all(np.isfinite(v["frame_loss"]) for v in result["validation"])
    assert json.loads((tuned / "model" / "config.json").read_text())["_class_name"] == "CosmosWorldModel"


def test_cosmos_zero_initialised_action_model_equals_its_base(tmp_path):
    from diffusers import CosmosTransformer3DModel

    from world_models.modeling_cosmos_world_model import CosmosWorldModel

    torch.manual_seed(0)
    base = CosmosTransformer3DModel(**COSMOS_TINY).eval()
    base.save_pretrained(tmp_path / "base")
    model = CosmosWorldModel.from_base(str(tmp_path / "base"), action_dim=7, action_chunk=2).eval()
    x, t, enc, actions, pad = _cosmos_inputs()
    with torch.no_grad():
        assert torch.equal(
            base(x, t, enc, padding_mask=pad).sample,
            model(x, t, enc, actions=actions, padding_mask=pad).sample,
        )
    base_keys = set(base.state_dict())
    assert base_keys <= set(model.state_dict())
    assert {k.split(".")[0] for k in set(model.state_dict()) - base_keys} == set(CosmosWorldModel.NEW_LAYERS)
    model.save_pretrained(tmp_path / "wm")
    again = CosmosWorldModel.from_pretrained(tmp_path / "wm").eval()
    with torch.no_grad():
        assert torch.equal(
            model(x, t, enc, actions=actions, padding_mask=pad).sample,
            again(x, t, enc, actions=actions, padding_mask=pad).sample,
        )


def _tiny_wan_vae(z_dim=4, seed=0):
    """A Wan VAE of 4x downsampling with non-trivial latent statistics (random weights)."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    return AutoencoderKLWan(
        base_dim=8,
        z_dim=z_dim,
        dim_mult=[1, 2, 2],
        num_res_blocks=1,
        temperal_downsample=[False, False],
        latents_mean=[0.1 * i for i in range(z_dim)],
        latents_std=[1.0 + 0.5 * i for i in range(z_dim)],
    ).eval()


def test_wan_codec_encodes_channel_groups_as_one_frame_videos():
    from world_models.latents import WanFrameCodec

    vae = _tiny_wan_vae()
    codec = WanFrameCodec(vae, frame_channels=5)  # RGB | depth, mask, padding
    assert (codec.groups, codec.latent_channels, codec.factor) == (2, 8, 4)
    frames = torch.rand(3, 5, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    latents = codec.encode(frames)
    assert latents.shape == (3, 8, 4, 4) and torch.equal(latents, codec.encode(frames))
    mean, std = torch.tensor(vae.config.latents_mean), torch.tensor(vae.config.latents_std)
    second = torch.cat([frames[:, 3:], -torch.ones(3, 1, 16, 16)], dim=1)
    with torch.no_grad():
        for group, images in enumerate((frames[:, :3], second)):
            mode = vae.encode(images[:, :, None]).latent_dist.mode()[:, :, 0]
            expected = (mode - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
            assert torch.allclose(latents[:, 4 * group : 4 * group + 4], expected, atol=1e-5)
        decoded = codec.decode(latents)
        raw = vae.decode(vae.encode(frames[:, :3, None]).latent_dist.mode()).sample[:, :, 0]
    assert decoded.shape == frames.shape
    assert torch.allclose(decoded[:, :3], raw, atol=1e-5)  # the normalisation is undone exactly
    with pytest.raises(ValueError, match="6 channels"):
        codec.encode(torch.zeros(1, 6, 16, 16))
    with pytest.raises(ValueError, match="divide"):
        codec.latent_size(18)


def test_cosmos_base_widened_for_more_latent_channels_keeps_its_own(tmp_path):
    """Latents of depth and masks beside RGB: a 4-channel Video2World base takes 7-channel frames; the
    first 4 output channels are the base's whatever the new inputs hold, and the new outputs start at 0."""
    from diffusers import CosmosTransformer3DModel

    from world_models.modeling_cosmos_world_model import CosmosWorldModel

    torch.manual_seed(0)
    base = CosmosTransformer3DModel(**{**COSMOS_TINY, "in_channels": 5}).eval()  # + condition mask
    base.save_pretrained(tmp_path / "base")
    model = CosmosWorldModel.from_base(
        str(tmp_path / "base"), action_dim=7, action_chunk=2, frame_channels=7
    ).eval()
    assert (model.config.in_channels, model.config.out_channels) == (8, 7)
    x, t, enc, actions, pad = _cosmos_inputs()
    condition = torch.zeros(2, 1, 2, 16, 16)
    condition[:, :, 0] = 1.0
    extra = torch.randn(2, 3, 2, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = base(x, t, enc, condition_mask=condition, padding_mask=pad).sample
        got = model(
            torch.cat([x, extra], 1), t, enc, actions=actions, condition_mask=condition, padding_mask=pad
        ).sample
    assert got.shape == (2, 7, 2, 16, 16)
    assert torch.allclose(got[:, :4], want, atol=1e-5)
    assert torch.equal(got[:, 4:], torch.zeros_like(got[:, 4:]))
    model.save_pretrained(tmp_path / "wm")
    assert CosmosWorldModel.from_pretrained(tmp_path / "wm").config.out_channels == 7
    with pytest.raises(ValueError, match="at least 7"):
        model.widen_frame_channels(5)


def test_world_model_trains_branches_and_steps_in_wan_latent_space(trained, tmp_path, capsys):
    from world_models.env import WorldModelEnv

    dataset, _, _ = trained
    _tiny_wan_vae().save_pretrained(tmp_path / "vae")
    ckpt = tmp_path / "ckpt"
    args = ["train-wm", str(dataset), "-o", str(ckpt), "--batch-size", "2", "-q"]
    assert main([*args, "--steps", "2", "--vae", str(tmp_path / "vae")]) == 0
    ckpt.rename(tmp_path / "ckpt.old")  # as if killed while swapping in a checkpoint
    assert main([*args, "--steps", "3"]) == 0  # resumes in the checkpoint's latent space
    meta = read_checkpoint_meta(ckpt)
    assert meta.step == 3 and meta.latent["channels"] == 8 and meta.latent["resolution"] == [16, 16]
    assert json.loads((ckpt / "model" / "config.json").read_text())["frame_channels"] == 8

    sampler = WorldModelSampler(ckpt)
    k, c = meta.context_frames, frame_channels(meta.instances)
    g = torch.Generator().manual_seed(0)
    context = torch.rand(k, c, 64, 64, generator=g) * 2 - 1
    past, state = torch.zeros(k, 7), torch.tensor(sampler.norm.state_mean)
    actions = torch.rand(2, 3, 7, generator=g) * 2 - 1
    a, _ = sampler.rollout(context, past, state, actions, [1, 2])
    b, _ = sampler.rollout(context, past, state, actions, [1, 2])
    assert a.shape == (2, 3, c, 64, 64) and torch.equal(a, b) and not torch.equal(a[0], a[1])

    synth = tmp_path / "synth.hdf5"
    assert (
        main(
            [
                "generate",
                str(dataset),
                str(ckpt),
                "--recipe",
                "perturb",
                "-o",
                str(synth),
                "--per-seed",
                "2",
                "--starts",
                "3",
            ]
        )
        == 0
    )
    with h5py.File(synth, "r") as f:
        demo = f["data"][f["mask/synthetic"][0].decode()]
        assert demo["obs/front_rgb"].shape[1:] == (96, 96, 3)
        assert demo.attrs["model"] == sampler.hash

    env = WorldModelEnv(ckpt, dataset, cameras=True)
    obs, _ = env.reset(seed=0)
    assert env.frames.shape[-3:] == (8, 16, 16)  # the env keeps latent frames ...
    obs, *_ = env.step(np.zeros(7, np.float32))
    assert obs["front_rgb"].shape == (64, 64, 3)  # ... and shows decoded ones

    # Another VAE cannot resume this run; a folder that is no Wan VAE is refused with its name.
    _tiny_wan_vae(seed=1).save_pretrained(tmp_path / "vae1")
    capsys.readouterr()
    assert main([*args, "--steps", "4", "--vae", str(tmp_path / "vae1")]) == 2
    assert "another latent space" in capsys.readouterr().err
    assert main([*args, "--steps", "4", "--vae", str(tmp_path)]) == 2
    assert f"{tmp_path}: not a diffusers model folder" in capsys.readouterr().err


def test_cosmos_post_trains_from_a_video2world_pipeline_folder_with_its_vae(tmp_path):
    """``--from`` a Cosmos-Predict2 Video2World pipeline folder (diffusers layout): its transformer is
    widened for the depth and mask latents, and its Wan VAE becomes the model's latent space."""
    from diffusers import CosmosTransformer3DModel

    dataset = _cosmos_seeds(tmp_path, resolution=32)
    pipeline = tmp_path / "Cosmos-Predict2-tiny-Video2World"
    torch.manual_seed(0)
    CosmosTransformer3DModel(**{**COSMOS_TINY, "in_channels": 5, "max_size": (3, 8, 8)}).save_pretrained(
        pipeline / "transformer"
    )
    _tiny_wan_vae().save_pretrained(pipeline / "vae")
    (pipeline / "model_index.json").write_text(json.dumps({"_class_name": "Cosmos2VideoToWorldPipeline"}))
    ckpt = tmp_path / "ckpt"
    result = train_world_model(dataset, ckpt, steps=2, batch_size=2, pretrained=pipeline)
    assert all(np.isfinite(v["frame_loss"]) for v in result["validation"])
    config = json.loads((ckpt / "model" / "config.json").read_text())
    assert (config["_class_name"], config["out_channels"]) == ("CosmosWorldModel", 8)
    assert (ckpt / "vae" / "config.json").is_file()
    sampler = WorldModelSampler(ckpt)
    c = frame_channels(sampler.meta.instances)
    frames, _ = sampler.rollout(
        torch.zeros(2, c, 32, 32), torch.zeros(2, 7), torch.zeros(15), torch.zeros(1, 2, 7), [0]
    )
    assert frames.shape == (1, 2, c, 32, 32) and torch.isfinite(frames).all()
