"""Post-train (or train from scratch) the world model on a dataset's ``train`` mask; the checkpoint
folder it writes is described in :mod:`world_models.checkpoint`."""

from __future__ import annotations

import copy
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from diffusers.optimization import get_cosine_schedule_with_warmup
from diffusers.training_utils import EMAModel
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from worldgen.checks.clip import tracked_objects
from worldgen.data_parallel import DataParallel
from worldgen.dataset import dataset_manifest, demo_names, open_dataset, read_scene
from worldgen.errors import ArgumentError, CheckpointDamaged, CheckpointError
from worldgen.files import recover_folder, staging_folder, swap_in_folder, write_atomically
from worldgen.keys import EEF_POS
from worldgen.manifest import Manifest
from worldgen.sim.base import ROBOT
from worldgen.training_log import TrainingLog

from .checkpoint import (
    META_NAME,
    WORLD_MODELS,
    CheckpointMeta,
    WorldModel,
    read_checkpoint_meta,
    write_checkpoint_meta,
)
from .data import WorldModelData, frame_channels, state_layout
from .latents import WanFrameCodec
from .objectives import (
    BACKBONE_OBJECTIVE,
    Objective,
    objective_for,
    objective_from_config,
    world_model_loss,
)

EMA_DECAY = 0.999
WARMUP_STEPS = 100
PROGRESS_EVERY = 10  # steps between progress reports


LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2"]


def add_lora(model: WorldModel, rank: int) -> None:
    """Freeze the backbone and inject trainable LoRA adapters into its attention projections (and the
    U-Net's resnet convolutions); the action and state layers keep training in full."""
    from peft import LoraConfig, inject_adapter_in_model

    model.requires_grad_(False)
    for name in model.NEW_LAYERS:
        getattr(model, name).requires_grad_(True)
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, target_modules=LORA_TARGETS), model)


def merged_copy(model: WorldModel) -> WorldModel:
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
            out[f"adam.{index}.{key}"] = value.cpu() if torch.is_tensor(value) else torch.tensor(value)
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
    write_atomically(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # a file system without hard links
        shutil.copy2(src, dst)


def save_checkpoint(
    out: Path,
    model: WorldModel,
    ema: EMAModel,
    optimizer,
    meta: CheckpointMeta,
    state: dict,
    codec: WanFrameCodec | None = None,
) -> None:
    """Write the whole checkpoint beside the old one, then swap it in."""
    staging = staging_folder(out)
    if codec is not None and (out / "vae").is_dir():  # frozen: the previous checkpoint's files, linked
        shutil.copytree(out / "vae", staging / "vae", copy_function=_link_or_copy)
    elif codec is not None:
        codec.vae.save_pretrained(staging / "vae", safe_serialization=True)
    raw = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    shadow = {f"ema.{i}": p.detach().cpu().contiguous() for i, p in enumerate(ema.shadow_params)}
    save_file({**raw, **shadow, **_optimizer_tensors(optimizer)}, staging / "training_state.safetensors")
    ema.store(model.parameters())
    ema.copy_to(model.parameters())
    merged_copy(model).save_pretrained(staging / "model", safe_serialization=True)
    ema.restore(model.parameters())
    write_checkpoint_meta(staging, meta)
    _write_json(staging / "training_state.json", state)
    swap_in_folder(staging, out)


def build_world_model(
    backbone: str,
    pretrained: str | Path | None,
    frame_channels: int,
    context_frames: int,
    action_dim: int,
    state_dim: int,
    resolution: int,
    channels: tuple[int, ...] | None = None,
) -> WorldModel:
    """The manifest's backbone, from scratch or from a local folder: a worldgen checkpoint's ``model/``
    of that backbone, or (cosmos) a Cosmos-Predict2 Video2World transformer in diffusers format, which
    gets zero-initialised action layers."""
    cls = WORLD_MODELS[backbone]
    if pretrained is not None:
        config = json.loads((Path(pretrained) / "config.json").read_text())
        if config.get("_class_name") == cls.__name__:
            try:
                model = cls.from_pretrained(pretrained)
            except OSError as exc:  # missing or unreadable weights
                raise CheckpointError(f"{pretrained}: cannot load the model ({exc})") from None
            channels = model.config.get("frame_channels", model.config.get("out_channels"))
            if channels != frame_channels:
                raise CheckpointError(
                    f"{pretrained}: a model of {channels}-channel frames, these are {frame_channels} "
                    "(pixel frames and VAE latents do not mix)"
                )
            return model
        if backbone == "cosmos":
            return cls.from_base(
                str(pretrained),
                action_dim=action_dim,
                action_chunk=context_frames,
                frame_channels=frame_channels,
                state_dim=state_dim,
            )
        raise CheckpointError(f"{pretrained}: holds a {config.get('_class_name')}, not a {cls.__name__}")
    if backbone == "cosmos":
        return cls.for_frames(frame_channels, context_frames, action_dim, state_dim, resolution)
    return cls(
        frame_channels=frame_channels,
        context_frames=context_frames,
        action_dim=action_dim,
        state_dim=state_dim,
        resolution=resolution,
        **({} if channels is None else {"block_out_channels": tuple(channels)}),  # None: the model's default
    )


def resolve_pretrained(
    pretrained: str | Path | None, vae: str | Path | None
) -> tuple[Path | None, Path | None]:
    """(model folder, VAE folder) from what ``--from`` and ``--vae`` name. ``--from`` may name a model
    folder, a diffusers pipeline folder (``model_index.json``: its ``transformer/``, and its ``vae/``
    unless ``--vae`` names one) or a worldgen checkpoint (its ``model/``, and the ``vae/`` it was trained
    in)."""
    model, vae = None, Path(vae) if vae is not None else None
    if pretrained is not None:
        root = Path(pretrained)
        if (root / "model_index.json").is_file():
            model = root / "transformer"
        elif (root / META_NAME).is_file():
            model = root / "model"
        else:
            model, root = root, root.parent
        bundle = (root / "model_index.json").is_file() or (root / META_NAME).is_file()
        if vae is None and bundle and (root / "vae").is_dir():
            vae = root / "vae"
    for folder in (model, vae):
        if folder is not None and not (folder / "config.json").is_file():
            raise CheckpointError(f"{folder}: not a diffusers model folder (no config.json)")
    return model, vae


def _pretrained_objective(pretrained: Path | None, backbone: str) -> Objective | None:
    """The objective (and its noise scale) a worldgen checkpoint's ``model/`` was trained with, kept when
    post-training it."""
    if pretrained is None or not (pretrained.parent / META_NAME).is_file():
        return None
    objective = objective_from_config(read_checkpoint_meta(pretrained.parent).objective)
    return objective if objective.name == BACKBONE_OBJECTIVE[backbone] else None


@dataclass
class TrainingConfig:
    """How a world-model training run goes; ``steps`` and ``batch_size`` default to the manifest's
    ``world_model``, as do ``pretrained`` and ``vae`` (see :func:`resolve_pretrained`).

    ``time_limit`` (seconds of training): stop early with a checkpoint at the step reached, so a job
    under a wall-clock limit resumes from there on its next run. ``lora_rank``: freeze the (pretrained)
    U-Net and train LoRA adapters of that rank on its attention and convolution layers (peft), plus the
    action/state conditioning in full; the saved ``model/`` has the adapters merged, so it loads as a
    plain model. ``mixed_precision="bf16"`` runs forward passes under bfloat16 autocast;
    ``gradient_checkpointing`` recomputes U-Net activations in the backward pass. ``device``: where the
    model trains ("cuda" on a GPU); the data is held and batches and noise are drawn there. ``log_dir``:
    TensorBoard event files of the run."""

    steps: int | None = None
    batch_size: int | None = None
    seed: int = 0
    checkpoint_every: int = 500
    pretrained: str | Path | None = None
    vae: str | Path | None = None
    lora_rank: int | None = None
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    device: str = "cpu"
    time_limit: float | None = None
    log_dir: str | Path | None = None  # TensorBoard event files: losses, learning rate, samples/s, validation
    wandb_project: str | None = None  # mirror them to a Weights & Biases run (the optional wandb package)

    def __post_init__(self) -> None:
        if self.mixed_precision not in ("no", "bf16"):
            raise ArgumentError(f"mixed_precision {self.mixed_precision!r}: expected 'no' or 'bf16'")


@dataclass
class TrainingData:
    """The train and valid demos in the model's frame space, and what describes that space."""

    train: WorldModelData
    valid: WorldModelData
    instances: list[int]
    channels: int  # frame channels the model sees (pixel channels, or the VAE's latent channels)
    resolution: int  # the model's frame size
    codec: WanFrameCodec | None = None
    latent: dict | None = None  # recorded in the checkpoint when the model works in a VAE's latents


def load_training_data(
    dataset: Path, manifest: Manifest, instances: list[int], vae: Path | None, device: str
) -> TrainingData:
    """The dataset's train and valid demos as frames of the tracked ``instances``, encoded by ``vae``."""
    spec = manifest.world_model
    camera, resolution = manifest.world_model_camera, tuple(spec.resolution)
    train = WorldModelData(
        dataset, "train", camera, resolution, instances, spec.context_frames, extra_masks=("play",)
    )
    valid = WorldModelData(dataset, "valid", camera, resolution, instances, spec.context_frames)
    data = TrainingData(train, valid, instances, frame_channels(instances), resolution[0])
    if vae is not None:
        data.codec = WanFrameCodec.from_pretrained(vae, data.channels).to(device)
        data.resolution = data.codec.latent_size(resolution[0])
        data.latent = {
            "vae_digest": data.codec.digest(),
            "channels": data.codec.latent_channels,
            "resolution": [data.codec.latent_size(r) for r in resolution],
        }
        train.encode(data.codec)
        valid.encode(data.codec)
        data.channels = data.codec.latent_channels
    return data


def resume_training(
    out: Path, meta: CheckpointMeta, model: WorldModel, ema: EMAModel, optimizer: torch.optim.Optimizer
) -> tuple[int, list[dict]]:
    """Load the training state in ``out`` into the model, EMA and optimizer when there is one; the step to
    go on from and the validation history. A checkpoint of other data, latents or LoRA rank is refused."""
    if not (out / "training_state.safetensors").exists():
        return 0, []
    previous = read_checkpoint_meta(out)
    if (previous.data_hash, previous.manifest_hash) != (meta.data_hash, meta.manifest_hash):
        raise CheckpointError(
            f"{out}: checkpoint was trained on other data or another manifest; "
            "choose a new output folder to train afresh"
        )
    if previous.latent != meta.latent:
        raise CheckpointError(f"{out}: checkpoint was trained in another latent space (VAE)")
    if previous.instances != meta.instances:
        raise CheckpointError(
            f"{out}: checkpoint predicts masks of instances {list(previous.instances)}, this run "
            f"{list(meta.instances)} (models before the robot's mask channel): train into a new folder"
        )
    if previous.lora_rank != meta.lora_rank:
        raise CheckpointError(f"{out}: checkpoint was trained with lora_rank {previous.lora_rank}")
    # Both files are read before anything is loaded: a damaged checkpoint leaves the model untouched.
    try:
        tensors = load_file(out / "training_state.safetensors")
        state = json.loads((out / "training_state.json").read_text())
    except (OSError, ValueError, SafetensorError) as exc:
        raise CheckpointDamaged(f"{out}: the training state does not read back ({exc})") from None
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    for i, p in enumerate(ema.shadow_params):
        p.data.copy_(tensors[f"ema.{i}"])
    _restore_optimizer(optimizer, tensors)
    ema.optimization_step = int(state.get("ema_step", state["step"]))
    return int(state["step"]), state.get("validation", [])


def train_world_model(
    dataset: str | Path,
    out: str | Path,
    config: TrainingConfig | None = None,
    progress: Callable[[int, float, float, float], None] | None = None,
    **overrides: Any,
) -> dict:
    """Train on ``train`` (plus ``play`` when present), validate on ``valid``; resumes from ``out`` when it
    holds a checkpoint. ``overrides`` are :class:`TrainingConfig` fields. The result has the step reached,
    the validation history and ``stopped_early`` (the time limit ended the run)."""
    # A keyword given as None leaves the config's value (the CLI passes every flag, given or not).
    config = replace(config or TrainingConfig(), **{k: v for k, v in overrides.items() if v is not None})
    dataset, out = Path(dataset), Path(out)
    # Under torchrun / accelerate launch: every rank draws the global batch and its noise and trains on its
    # share; gradients are averaged, so the ranks follow one process's run. Rank 0 logs and writes.
    parallel = DataParallel()
    if parallel.main:
        recover_folder(out)  # a run killed while swapping in a checkpoint goes on from the previous one
    with open_dataset(dataset) as f:
        manifest = dataset_manifest(f)
        scene = read_scene(f["data"][demo_names(f)[0]])
        layout = state_layout(f["data"][demo_names(f)[0]])
    spec = manifest.world_model
    # Generation takes the end effector from the arm controller: the state head's rollouts re-read it.
    known_columns = layout[EEF_POS]  # STATE_KEYS begins with it
    vae = config.vae or spec.vae
    if vae is None and (out / META_NAME).is_file() and (out / "vae").is_dir():
        vae = out / "vae"  # resuming a run in latent space
    pretrained, vae = resolve_pretrained(config.pretrained or spec.pretrained, vae)
    # The robot's mask too: the checks hold the predicted end effector against the robot the frames show.
    instances = [ROBOT, *(o.instance for o in tracked_objects(manifest, scene))]
    data = load_training_data(dataset, manifest, instances, vae, config.device)
    train, valid = data.train, data.valid
    norm = train.normalization()
    steps = config.steps or spec.train_steps
    batch_size = config.batch_size or spec.batch_size
    torch.manual_seed(config.seed)
    model = build_world_model(
        spec.backbone,
        pretrained,
        frame_channels=data.channels,
        context_frames=spec.context_frames,
        action_dim=train.episodes[0].actions.shape[1],
        state_dim=train.episodes[0].states.shape[1],
        resolution=data.resolution,
        channels=spec.channels,
    )
    device = torch.device(config.device)
    model.to(device)
    if config.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    if config.lora_rank is not None:
        add_lora(model, config.lora_rank)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=spec.learning_rate, weight_decay=1e-4)
    # EMA warm-up (decay 1 - (1 + step)^(-2/3), capped): short CPU budgets would otherwise average in
    # the untrained start for most of the run.
    ema = EMAModel(model.parameters(), decay=EMA_DECAY, use_ema_warmup=True, inv_gamma=1.0, power=2 / 3)
    objective = _pretrained_objective(pretrained, spec.backbone) or objective_for(
        spec.backbone, train.residual_std()
    )
    meta = CheckpointMeta(
        backbone=spec.backbone,
        camera=manifest.world_model_camera,
        resolution=tuple(spec.resolution),
        instances=tuple(data.instances),
        context_frames=spec.context_frames,
        normalization=norm,
        data_hash=train.data_hash,
        manifest_hash=manifest.content_hash(),
        objective=objective.config(),
        step=0,
        lora_rank=config.lora_rank,
        mixed_precision=config.mixed_precision,
        latent=data.latent,
        state_horizon=spec.state_horizon,
    )
    start, history = resume_training(out, meta, model, ema, optimizer)
    # Linear warm-up, then cosine decay to zero at the run's last step (a resumed run with a later last
    # step follows the longer curve from where it is).
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", spec.learning_rate)
    lr_schedule = get_cosine_schedule_with_warmup(
        optimizer, min(WARMUP_STEPS, steps // 10), max(steps, 1), last_epoch=start - 1
    )
    # Batches and noise are drawn on the training device: the same seed gives the same run on the same
    # machine and device (CPU and GPU runs draw different numbers).
    train.to(device)
    generator = torch.Generator(device)
    val_generator = torch.Generator().manual_seed(12345)
    val_batch = valid.batch(min(64, len(valid.index)), val_generator, spec.state_horizon)
    model.train()
    started = time.perf_counter()
    done, out_of_time = start, False
    parallel.check_batch(batch_size)
    log = TrainingLog(config.log_dir if parallel.main else None, config.wandb_project)
    for step in range(start, steps):
        # Reseeded where a checkpoint can be: a run killed and resumed draws what an uninterrupted one does.
        if step == start or step % config.checkpoint_every == 0:
            generator.manual_seed(config.seed * 1_000_003 + step)
        batch = train.batch(batch_size, generator, spec.state_horizon)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.mixed_precision == "bf16"):
            frame_loss, state_loss = world_model_loss(
                model, objective, batch, generator, norm, parallel, known_columns
            )
        optimizer.zero_grad(set_to_none=True)
        (frame_loss + state_loss).backward()
        parallel.average_gradients(trainable)
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        lr_schedule.step()
        ema.step(model.parameters())
        done = step + 1
        # Reading the loss waits for the device: every step, that would serialise a GPU run.
        if done % PROGRESS_EVERY == 0 or done == steps:
            rate = (done - start) * batch_size / (time.perf_counter() - started)
            losses = {
                "train/frame_loss": parallel.mean(frame_loss.item()),
                "train/state_loss": parallel.mean(state_loss.item()),
            }
            log.scalars(
                done, {**losses, "train/lr": lr_schedule.get_last_lr()[0], "train/samples_per_s": rate}
            )
            if progress is not None and parallel.main:
                progress(done, losses["train/frame_loss"], losses["train/state_loss"], rate)
        out_of_time = config.time_limit is not None and time.perf_counter() - started >= config.time_limit
        if config.time_limit is not None:  # the ranks stop together
            out_of_time = parallel.mean(float(out_of_time)) > 0
        if done % config.checkpoint_every == 0 or done == steps or out_of_time:
            # Validated on the EMA weights, the ones the checkpoint's model/ holds and every user samples.
            with torch.no_grad():
                model.eval()
                ema.store(model.parameters())
                ema.copy_to(model.parameters())
                v_frame, v_state = world_model_loss(
                    model, objective, val_batch, torch.Generator().manual_seed(7), norm, None, known_columns
                )
                ema.restore(model.parameters())
                model.train()
            history.append({"step": done, "frame_loss": float(v_frame), "state_loss": float(v_state)})
            log.scalars(done, {"valid/frame_loss": float(v_frame), "valid/state_loss": float(v_state)})
            if parallel.main:
                save_checkpoint(
                    out,
                    model,
                    ema,
                    optimizer,
                    meta.replace(step=done),
                    {
                        "step": done,
                        "ema_step": int(ema.optimization_step),
                        "lr": spec.learning_rate,
                        "batch_size": batch_size,
                        "validation": history,
                    },
                    data.codec,
                )
        if out_of_time:
            break
    log.close()
    parallel.close()
    return {"step": done, "validation": history, "out": str(out), "stopped_early": out_of_time}
