"""Post-train (or train from scratch) the world model on a dataset's ``train`` mask.

Checkpoint folder layout (nothing pickled):

    model/                      ``save_pretrained`` of the EMA weights (config.json + safetensors)
    worldgen.json               preset, camera, resolution, tracked instances, normalisation, data hash,
                                manifest hash, step
    training_state.safetensors  raw weights, EMA shadow weights and AdamW moments, for resuming
    training_state.json         step, optimizer hyper-parameters, validation history
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import h5py
import torch
from diffusers import EDMEulerScheduler
from diffusers.training_utils import EMAModel
from safetensors.torch import load_file, save_file
from worldgen.checks.clip import tracked_objects
from worldgen.checks.gate import dataset_manifest

from .data import Normalization, WorldModelData
from .modeling_unet_world_model import UNetWorldModel

P_MEAN, P_STD = -1.2, 1.2  # EDM's log-normal training noise distribution
SIGMA_DATA = 0.5
EMA_DECAY = 0.999


def make_scheduler() -> EDMEulerScheduler:
    return EDMEulerScheduler(sigma_min=0.002, sigma_max=80.0, sigma_data=SIGMA_DATA)


def edm_loss(
    model: UNetWorldModel,
    scheduler: EDMEulerScheduler,
    batch: dict,
    generator: torch.Generator,
    norm: Normalization,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(frame loss, state loss) of one batch: EDM-weighted denoising of the residual to the next frame,
    and MSE of the normalised state change."""
    last = batch["context"][:, -1]
    residual = batch["next_frame"] - last
    b = residual.shape[0]
    sigma = torch.exp(P_MEAN + P_STD * torch.randn(b, generator=generator))
    noise = torch.randn(residual.shape, generator=generator)
    s = sigma.view(-1, 1, 1, 1)
    noisy = residual + s * noise
    state = norm.normalize(batch["state"])
    out = model(
        scheduler.precondition_inputs(noisy, s),
        scheduler.precondition_noise(sigma),
        batch["context"],
        batch["actions"],
        state,
    )
    denoised = scheduler.precondition_outputs(noisy, out, s)
    weight = (s**2 + SIGMA_DATA**2) / (s * SIGMA_DATA) ** 2
    frame_loss = (weight * (denoised - residual) ** 2).mean()
    target_delta = norm.normalize(batch["next_state"]) - state
    state_loss = ((model.predict_state_delta(batch["actions"], state) - target_delta) ** 2).mean()
    return frame_loss, state_loss


LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2"]


def add_lora(model: UNetWorldModel, rank: int) -> None:
    """Freeze the U-Net and inject trainable LoRA adapters into its attention and resnet convolutions."""
    from peft import LoraConfig, inject_adapter_in_model

    model.unet.requires_grad_(False)
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, target_modules=LORA_TARGETS), model.unet)


def merged_copy(model: UNetWorldModel) -> UNetWorldModel:
    """The model itself, or with LoRA present a copy with the adapters merged into plain layers."""
    from peft.tuners.lora import LoraLayer

    if not any(isinstance(m, LoraLayer) for m in model.modules()):
        return model
    plain = copy.deepcopy(model)
    for name, module in list(plain.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent, _, child = name.rpartition(".")
            setattr(plain.get_submodule(parent), child, module.get_base_layer())
    return plain


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    out = {}
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            out[f"adam.{index}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return out


def _restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    state = optimizer.state_dict()
    per_param: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("adam."):
            _, index, key = name.split(".", 2)
            per_param.setdefault(int(index), {})[key] = value
    state["state"] = per_param
    optimizer.load_state_dict(state)


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def save_checkpoint(
    out: Path, model: UNetWorldModel, ema: EMAModel, optimizer, meta: dict, state: dict
) -> None:
    """Write the whole checkpoint beside the old one, then swap it in."""
    staging = out.with_name(out.name + ".saving")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    raw = {f"model.{k}": v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    shadow = {f"ema.{i}": p.detach().clone().contiguous() for i, p in enumerate(ema.shadow_params)}
    save_file({**raw, **shadow, **_optimizer_tensors(optimizer)}, staging / "training_state.safetensors")
    ema.store(model.parameters())
    ema.copy_to(model.parameters())
    merged_copy(model).save_pretrained(staging / "model", safe_serialization=True)
    ema.restore(model.parameters())
    _write_json(staging / "worldgen.json", meta)
    _write_json(staging / "training_state.json", state)
    if out.exists():
        old = out.with_name(out.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(staging, out)
        shutil.rmtree(old)
    else:
        os.replace(staging, out)


def train_world_model(
    dataset: str | Path,
    out: str | Path,
    steps: int | None = None,
    pretrained: str | Path | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    checkpoint_every: int = 500,
    progress: Callable[[int, float, float, float], None] | None = None,
    lora_rank: int | None = None,
    mixed_precision: str = "no",
    gradient_checkpointing: bool = False,
) -> dict:
    """Train on ``train``, validate on ``valid``; resumes from ``out`` when it holds a checkpoint.

    ``lora_rank``: freeze the (pretrained) U-Net and train LoRA adapters of that rank on its attention
    and convolution layers (peft), plus the action/state conditioning in full; the saved ``model/`` has
    the adapters merged, so it loads as a plain model. ``mixed_precision="bf16"`` runs forward passes
    under bfloat16 autocast; ``gradient_checkpointing`` recomputes U-Net activations in the backward pass.
    """
    if mixed_precision not in ("no", "bf16"):
        raise ValueError(f"mixed_precision {mixed_precision!r}: expected 'no' or 'bf16'")
    dataset, out = Path(dataset), Path(out)
    with h5py.File(dataset, "r") as f:
        manifest = dataset_manifest(f, dataset)
        first = next(iter(f["data"].values()))
        scene = json.loads(first.attrs["scene"])
    spec = manifest.world_model
    if spec.backbone != "unet":
        raise ValueError(f"backbone {spec.backbone!r}: only the unet backbone trains here")
    camera = manifest.world_model_camera
    instances = [o.instance for o in tracked_objects(manifest, scene)]
    resolution = tuple(spec.resolution)
    train = WorldModelData(dataset, "train", camera, resolution, instances, spec.context_frames)
    valid = WorldModelData(dataset, "valid", camera, resolution, instances, spec.context_frames)
    norm = train.normalization()
    steps = steps or spec.train_steps
    batch_size = batch_size or spec.batch_size
    torch.manual_seed(seed)
    if pretrained is not None:
        model = UNetWorldModel.from_pretrained(pretrained)
    else:
        model = UNetWorldModel(
            frame_channels=4 + len(instances),
            context_frames=spec.context_frames,
            action_dim=train.episodes[0].actions.shape[1],
            state_dim=train.episodes[0].states.shape[1],
            resolution=resolution[0],
        )
    if gradient_checkpointing:
        model.unet.enable_gradient_checkpointing()
    if lora_rank is not None:
        add_lora(model, lora_rank)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=spec.learning_rate, weight_decay=1e-4)
    # EMA warm-up (decay 1 - (1 + step)^(-2/3), capped): short CPU budgets would otherwise average in
    # the untrained start for most of the run.
    ema = EMAModel(model.parameters(), decay=EMA_DECAY, use_ema_warmup=True, inv_gamma=1.0, power=2 / 3)
    scheduler = make_scheduler()
    start, history = 0, []
    if (out / "training_state.safetensors").exists():
        previous = json.loads((out / "worldgen.json").read_text())
        if (previous.get("data_hash"), previous.get("manifest_hash")) != (
            train.data_hash,
            manifest.content_hash(),
        ):
            raise ValueError(
                f"{out}: checkpoint was trained on other data or another manifest; "
                "choose a new output folder to train afresh"
            )
        if previous.get("lora_rank") != lora_rank:
            raise ValueError(f"{out}: checkpoint was trained with lora_rank {previous.get('lora_rank')}")
        tensors = load_file(out / "training_state.safetensors")
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        for i, p in enumerate(ema.shadow_params):
            p.data.copy_(tensors[f"ema.{i}"])
        _restore_optimizer(optimizer, tensors)
        state = json.loads((out / "training_state.json").read_text())
        start, history = int(state["step"]), state.get("validation", [])
        ema.optimization_step = int(state.get("ema_step", start))
    meta = {
        "preset": "unet",
        "camera": camera,
        "resolution": list(resolution),
        "instances": instances,
        "context_frames": spec.context_frames,
        "normalization": asdict(norm),
        "data_hash": train.data_hash,
        "manifest_hash": manifest.content_hash(),
        "scheduler": {"sigma_data": SIGMA_DATA, "sampling_steps": 3},
        "lora_rank": lora_rank,
        "mixed_precision": mixed_precision,
    }
    generator = torch.Generator().manual_seed(seed * 1_000_003 + start)
    val_generator = torch.Generator().manual_seed(12345)
    val_batch = valid.batch(min(64, len(valid.index)), val_generator)
    model.train()
    started = time.perf_counter()
    for step in range(start, steps):
        batch = train.batch(batch_size, generator)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mixed_precision == "bf16"):
            frame_loss, state_loss = edm_loss(model, scheduler, batch, generator, norm)
        optimizer.zero_grad(set_to_none=True)
        (frame_loss + state_loss).backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        ema.step(model.parameters())
        done = step + 1
        if progress is not None:
            rate = (done - start) * batch_size / (time.perf_counter() - started)
            progress(done, frame_loss.item(), state_loss.item(), rate)
        if done % checkpoint_every == 0 or done == steps:
            with torch.no_grad():
                model.eval()
                v_frame, v_state = edm_loss(
                    model, scheduler, val_batch, torch.Generator().manual_seed(7), norm
                )
                model.train()
            history.append({"step": done, "frame_loss": float(v_frame), "state_loss": float(v_state)})
            save_checkpoint(
                out,
                model,
                ema,
                optimizer,
                {**meta, "step": done},
                {
                    "step": done,
                    "ema_step": int(ema.optimization_step),
                    "lr": spec.learning_rate,
                    "batch_size": batch_size,
                    "validation": history,
                },
            )
    return {"step": max(start, steps), "validation": history, "out": str(out)}
