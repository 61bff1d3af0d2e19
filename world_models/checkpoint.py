"""The world-model checkpoint folder's contract: the model registry, the typed description a checkpoint
carries (``worldgen.json``), the one pair of functions that write and read it, and the checkpoint's hash.

Folder layout (nothing pickled)::

    model/                      ``save_pretrained`` of the EMA weights (config.json + safetensors)
    vae/                        the frozen Wan VAE, when the model works in its latent space
    worldgen.json               :class:`CheckpointMeta`
    training_state.safetensors  raw weights, EMA shadow weights and AdamW moments, for resuming
    training_state.json         step, optimizer hyper-parameters, validation history
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from worldgen.errors import CheckpointDamaged, CheckpointError
from worldgen.files import write_atomically

from .data import Normalization
from .modeling_cosmos_world_model import CosmosWorldModel
from .modeling_unet_world_model import UNetWorldModel

WorldModel = UNetWorldModel | CosmosWorldModel
WORLD_MODELS: dict[str, type[WorldModel]] = {"unet": UNetWorldModel, "cosmos": CosmosWorldModel}
META_NAME = "worldgen.json"


OLD_NAMES = {"preset": "backbone", "scheduler": "objective"}  # worldgen.json keys before the rename


@dataclass(frozen=True)
class CheckpointMeta:
    """What a world-model checkpoint was trained on and how to sample it."""

    backbone: str  # a key of WORLD_MODELS
    camera: str
    resolution: tuple[int, int]  # the frames' (width, height) in pixels
    instances: tuple[int, ...]  # segmentation ids with a mask channel each: the robot, then the objects
    context_frames: int
    normalization: Normalization
    data_hash: str  # the training demos (worldgen.dataset.dataset_digest)
    manifest_hash: str
    objective: dict[str, Any]  # the objective's config (world_models.objectives.objective_from_config)
    step: int
    lora_rank: int | None = None
    mixed_precision: str = "no"
    latent: dict[str, Any] | None = None  # vae_digest, channels, resolution when in a VAE's latent space
    state_horizon: int = 1  # steps the state head was trained to roll out (1: checkpoints from before)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["resolution"], out["instances"] = list(self.resolution), list(self.instances)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CheckpointMeta:
        known = {f.name for f in fields(cls)}
        # Checkpoints written before the fields were renamed call the backbone "preset" and the objective
        # "scheduler"; those written before the cosmos backbone existed name no backbone (unet).
        data = {OLD_NAMES.get(k, k): v for k, v in data.items()}
        values = {k: v for k, v in data.items() if k in known}
        values.setdefault("backbone", "unet")
        values["resolution"] = tuple(values["resolution"])
        values["instances"] = tuple(values["instances"])
        values["normalization"] = Normalization(**values["normalization"])
        return cls(**values)

    def replace(self, **changes: Any) -> CheckpointMeta:
        return type(self)(**{**{f.name: getattr(self, f.name) for f in fields(self)}, **changes})


def write_checkpoint_meta(folder: Path, meta: CheckpointMeta) -> None:
    text = json.dumps(meta.to_json(), indent=2, sort_keys=True) + "\n"
    write_atomically(folder / META_NAME, text.encode())


def read_checkpoint_meta(ckpt: str | Path) -> CheckpointMeta:
    """A checkpoint's description; :class:`CheckpointError` naming the folder when it is not one."""
    path = Path(ckpt) / META_NAME
    if not path.is_file():
        raise CheckpointError(f"{ckpt}: not a world-model checkpoint (no {META_NAME}; see worldgen train-wm)")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointDamaged(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object describing the checkpoint")
    try:
        return CheckpointMeta.from_json(data)
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: not a world-model checkpoint description ({exc!r})") from None


def checkpoint_hash(ckpt: str | Path) -> str:
    """Identifies the weights a branch was sampled with: the objective, the model files and any VAE."""
    ckpt = Path(ckpt)
    digest = hashlib.sha256()
    digest.update(json.dumps(read_checkpoint_meta(ckpt).objective, sort_keys=True).encode())
    files = sorted((ckpt / "model").iterdir())
    if (ckpt / "vae").is_dir():  # a model in latent space is only reproducible with its VAE
        files += sorted((ckpt / "vae").iterdir())
    for path in files:
        digest.update((path.name if path.parent.name == "model" else f"vae/{path.name}").encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()
