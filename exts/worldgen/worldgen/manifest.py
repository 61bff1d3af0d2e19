"""Scenario manifests: the pydantic schema, loading with YAML line numbers, sampling, content hash.

A manifest is YAML validated by pydantic v2 (unknown keys are errors). Randomised quantities are
*distributions*: a plain number (a constant) or a mapping with a ``type`` among ``constant``,
``uniform``, ``normal`` and ``choice``. Units are SI (metres, kilograms, seconds, radians) except
camera field of view (degrees) and light colour temperature (kelvin).

Errors are reported as ``file:line: field.path: message``; :class:`ManifestError` carries them.
"""

from __future__ import annotations

import hashlib
import json
import math
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, get_args

import numpy as np
import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .errors import ArgumentError, WorldgenError
from .keys import EEF_POS, EEF_QUAT, GRIPPER_QPOS, JOINT_POS

ASSET_DIR = Path(__file__).resolve().parent / "assets"
MAX_HORIZON = 2000
MAX_RESOLUTION = 1024


class ManifestProblem(NamedTuple):
    """One problem of a manifest: where (file, line, field path such as ``task.objects[0].mass``) and why.
    ``field`` is ``<yaml>``, ``<root>`` or ``<file>`` for problems that are not a field's."""

    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.field}: {self.message}"


class ManifestError(WorldgenError, ValueError):
    """A manifest failed to load or validate. ``problems`` holds each :class:`ManifestProblem`; ``lines``
    the same as ``file:line: path: message`` text."""

    def __init__(self, problems: Sequence[ManifestProblem]):
        self.problems = list(problems)
        self.lines = [str(p) for p in self.problems]
        super().__init__("\n".join(self.lines))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------------------------------
# Distributions


class Constant(_Strict):
    type: Literal["constant"] = "constant"
    value: float = Field(allow_inf_nan=False)


class Uniform(_Strict):
    type: Literal["uniform"]
    low: float = Field(allow_inf_nan=False)
    high: float = Field(allow_inf_nan=False)

    @model_validator(mode="after")
    def _ordered(self) -> Uniform:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        return self


class Normal(_Strict):
    """A normal distribution, clipped to ``[low, high]`` when they are given."""

    type: Literal["normal"]
    mean: float = Field(allow_inf_nan=False)
    std: float = Field(ge=0.0, allow_inf_nan=False)
    low: float | None = Field(default=None, allow_inf_nan=False)
    high: float | None = Field(default=None, allow_inf_nan=False)

    @model_validator(mode="after")
    def _ordered(self) -> Normal:
        if self.low is not None and self.high is not None and self.low > self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        return self


class Choice(_Strict):
    type: Literal["choice"]
    values: list[Annotated[float, Field(allow_inf_nan=False)]] = Field(min_length=1, max_length=256)


def _number_to_constant(value: Any) -> Any:
    # A bare number in YAML means a constant; bools are not numbers here.
    if isinstance(value, int | float) and not isinstance(value, bool):
        return {"type": "constant", "value": value}
    return value


Distribution = Annotated[
    Constant | Uniform | Normal | Choice,
    Field(discriminator="type"),
    BeforeValidator(_number_to_constant),
]


def support(dist: Constant | Uniform | Normal | Choice) -> tuple[float, float]:
    """The smallest interval that holds every value the distribution can produce."""
    if isinstance(dist, Constant):
        return dist.value, dist.value
    if isinstance(dist, Uniform):
        return dist.low, dist.high
    if isinstance(dist, Choice):
        return min(dist.values), max(dist.values)
    lo = -math.inf if dist.low is None else dist.low
    hi = math.inf if dist.high is None else dist.high
    if dist.std == 0.0:
        return max(lo, min(dist.mean, hi)), max(lo, min(dist.mean, hi))
    return lo, hi


def sample(dist: Constant | Uniform | Normal | Choice, rng: np.random.Generator) -> float:
    """Draw one value. Always consumes the same number of draws per type, so streams stay aligned."""
    if isinstance(dist, Constant):
        return float(dist.value)
    if isinstance(dist, Uniform):
        return float(rng.uniform(dist.low, dist.high))
    if isinstance(dist, Choice):
        return float(dist.values[int(rng.integers(len(dist.values)))])
    value = float(rng.normal(dist.mean, dist.std))
    lo, hi = support(dist)
    return float(min(max(value, lo), hi))


def _within(lo: float, hi: float, what: str):
    """A validator: every value the distribution can produce lies in [lo, hi]."""

    def check(dist: Constant | Uniform | Normal | Choice) -> Constant | Uniform | Normal | Choice:
        s_lo, s_hi = support(dist)
        if s_lo < lo or s_hi > hi:
            bounds = "unbounded" if math.isinf(s_lo) or math.isinf(s_hi) else f"[{s_lo:g}, {s_hi:g}]"
            raise ValueError(
                f"{what} must stay within [{lo:g}, {hi:g}], but this distribution ranges over {bounds}"
                + (" (give a normal distribution low/high clip bounds)" if bounds == "unbounded" else "")
            )
        return dist

    return check


def Bounded(lo: float, hi: float, what: str) -> Any:  # noqa: N802 - reads as a type in annotations
    from pydantic import AfterValidator

    return Annotated[Distribution, AfterValidator(_within(lo, hi, what))]


Name = Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_]{0,47}$")]
Vec2 = tuple[Annotated[float, Field(allow_inf_nan=False)], Annotated[float, Field(allow_inf_nan=False)]]
Vec3 = tuple[
    Annotated[float, Field(allow_inf_nan=False)],
    Annotated[float, Field(allow_inf_nan=False)],
    Annotated[float, Field(allow_inf_nan=False)],
]
Unit = Annotated[float, Field(ge=0.0, le=1.0)]
RGB = tuple[Unit, Unit, Unit]
Size3 = tuple[
    Annotated[float, Field(gt=0.0, le=2.0)],
    Annotated[float, Field(gt=0.0, le=2.0)],
    Annotated[float, Field(gt=0.0, le=2.0)],
]


# --------------------------------------------------------------------------------------------------
# Embodiment


class EmbodimentSpec(_Strict):
    """The robot, its low-level controller and what one action means."""

    robot: Literal["panda"] = "panda"
    controller: Literal["differential_ik", "joint_pd"] = "differential_ik"
    action_space: Literal["ee_delta", "joint_position"] = "ee_delta"
    max_translation: float = Field(0.015, gt=0.0, le=0.1, description="metres per control step at |a|=1")
    max_rotation: float = Field(0.1, gt=0.0, le=0.5, description="radians per control step at |a|=1")
    base_position: Vec2 = (0.0, 0.0)

    @model_validator(mode="after")
    def _controller_fits_action_space(self) -> EmbodimentSpec:
        expected = {"ee_delta": "differential_ik", "joint_position": "joint_pd"}[self.action_space]
        if self.controller != expected:
            raise ValueError(f"action_space {self.action_space!r} needs controller {expected!r}")
        return self

    @property
    def action_dim(self) -> int:
        # ee_delta: dpos (3) + axis-angle drot (3) + gripper; joint_position: 7 joints + gripper.
        return 7 if self.action_space == "ee_delta" else 8


# --------------------------------------------------------------------------------------------------
# Task


class TableSpec(_Strict):
    size: tuple[Annotated[float, Field(gt=0.2, le=3.0)], Annotated[float, Field(gt=0.2, le=3.0)]] = (1.2, 1.0)
    height: float = Field(0.4, ge=0.0, le=1.2, description="height of the top surface above the ground")
    thickness: float = Field(0.04, gt=0.0, le=0.2)
    center: Vec2 = (0.35, 0.0)
    color: RGB = (0.55, 0.45, 0.35)


class PlacementSpec(_Strict):
    """Where an object starts, on its support, in world x/y (metres) and yaw (radians)."""

    x: Bounded(-1.5, 1.5, "x")
    y: Bounded(-1.5, 1.5, "y")
    yaw: Bounded(-math.pi, math.pi, "yaw") = Field(default_factory=lambda: Constant(value=0.0))


class ObjectSpec(_Strict):
    name: Name
    shape: Literal["box", "cylinder", "sphere", "bin"] = "box"
    size: Size3 = Field(description="x, y, z extents in metres (cylinder: diameter, diameter, height)")
    color: RGB = (0.8, 0.2, 0.2)
    mass: float = Field(0.1, gt=0.0, le=20.0, description="nominal kg; stressors.mass_scale multiplies it")
    friction: float = Field(
        0.8, ge=0.0, le=2.0, description="nominal; stressors.friction_scale multiplies it"
    )
    static: bool = Field(False, description="a fixed collider (e.g. a bin) rather than a rigid body")
    support: str = Field("table", description="'table' or the name of a static object it rests in or on")
    placement: PlacementSpec
    wall_thickness: float = Field(0.01, gt=0.0, le=0.1, description="bins only")
    label: str | None = Field(None, max_length=64, description="semantic class; defaults to the name")
    asset: str | None = Field(
        None, description="optional USD file referenced as this object's visual, inside the manifest's folder"
    )

    @field_validator("asset")
    @classmethod
    def _asset_stays_inside(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return value
        if not value.endswith((".usd", ".usda", ".usdc")):
            raise ValueError("asset must be a .usd, .usda or .usdc file")
        base = (info.context or {}).get("base_dir")
        roots = [ASSET_DIR] + ([Path(base).resolve()] if base is not None else [])
        if Path(value).is_absolute():
            raise ValueError(f"asset path {value!r} must be relative to the manifest's folder")
        for root in reversed(roots):
            resolved = (root / value).resolve()
            if not any(resolved.is_relative_to(r) for r in roots):
                raise ValueError(
                    f"asset path {value!r} escapes the manifest's folder and the project's asset folder"
                )
            if resolved.is_file():
                return value
        raise ValueError(f"asset file {value!r} does not exist")

    @model_validator(mode="after")
    def _bins_are_static(self) -> ObjectSpec:
        if self.shape == "bin" and not self.static:
            raise ValueError("a bin must be static")
        if self.shape == "bin" and min(self.size[0], self.size[1]) <= 4 * self.wall_thickness:
            raise ValueError("a bin must be wider than four wall thicknesses")
        return self

    @property
    def semantic_label(self) -> str:
        return self.label or self.name


class RegionSpec(_Strict):
    """An axis-aligned rectangle on the table top, drawn as a flat visual marker (no collision)."""

    name: Name
    center: Vec2
    half_extents: tuple[Annotated[float, Field(gt=0.0, le=1.0)], Annotated[float, Field(gt=0.0, le=1.0)]]
    color: RGB = (0.2, 0.7, 0.3)


class SuccessSpec(_Strict):
    """The success predicate, evaluated on simulator state at every control step."""

    predicate: Literal["object_in_region", "object_lifted"]
    object: Name
    region: Name | None = Field(None, description="object_in_region: which goal region")
    min_height: float = Field(0.0, ge=0.0, le=1.0, description="object_lifted: metres above its start")
    max_height: float = Field(0.05, ge=0.0, le=1.0, description="object_in_region: centre above table top")
    gripper_open: bool = Field(False, description="object_in_region: the object must have been released")
    hold_steps: int = Field(3, ge=1, le=100, description="consecutive control steps the predicate must hold")


class TaskSpec(_Strict):
    kind: Literal["pick_place", "push", "bin_pick"]
    table: TableSpec = Field(default_factory=TableSpec)
    objects: list[ObjectSpec] = Field(min_length=1, max_length=16)
    regions: list[RegionSpec] = Field(default_factory=list, max_length=8)
    success: SuccessSpec

    @model_validator(mode="after")
    def _references_resolve(self) -> TaskSpec:
        names = [o.name for o in self.objects]
        if len(set(names)) != len(names):
            raise ValueError(f"object names must be unique, got {names}")
        by_name = {o.name: o for o in self.objects}
        for obj in self.objects:
            if obj.support != "table":
                support_obj = by_name.get(obj.support)
                if support_obj is None or not support_obj.static:
                    raise ValueError(
                        f"object {obj.name!r}: support must be 'table' or a static object, "
                        f"got {obj.support!r}"
                    )
        region_names = [r.name for r in self.regions]
        if len(set(region_names)) != len(region_names):
            raise ValueError(f"region names must be unique, got {region_names}")
        target = by_name.get(self.success.object)
        if target is None:
            raise ValueError(f"success.object {self.success.object!r} is not among the objects {names}")
        if target.static:
            raise ValueError(f"success.object {self.success.object!r} is static and can never move")
        if self.success.predicate == "object_in_region" and self.success.region not in region_names:
            raise ValueError(
                f"success.region {self.success.region!r} is not among the regions {region_names}"
            )
        return self

    def object(self, name: str) -> ObjectSpec:
        return next(o for o in self.objects if o.name == name)


# --------------------------------------------------------------------------------------------------
# Cameras

CameraOutput = Literal["rgb", "depth", "segmentation"]
Gain = Annotated[float, Field(ge=0.0, le=4.0)]


class SensorSpec(_Strict):
    """What a real camera does to the picture after the light reaches it, applied to rendered frames in
    this order: colour cast, vignetting, blur, read noise, JPEG compression; depth noise on depth. An
    ideal camera (the default) changes nothing."""

    color_gain: tuple[Gain, Gain, Gain] = Field((1.0, 1.0, 1.0), description="per-channel multiplier")
    vignetting: float = Field(0.0, ge=0.0, le=1.0, description="fraction of brightness lost at the corners")
    blur_sigma: float = Field(0.0, ge=0.0, le=5.0, description="Gaussian blur, pixels")
    noise_std: float = Field(0.0, ge=0.0, le=64.0, description="Gaussian read noise, 8-bit levels")
    jpeg_quality: int | None = Field(None, ge=5, le=100, description="JPEG round trip at this quality")
    depth_noise_std: float = Field(0.0, ge=0.0, le=0.1, description="Gaussian depth noise, metres")

    @property
    def ideal(self) -> bool:
        return self == IDEAL_SENSOR


IDEAL_SENSOR = SensorSpec()  # built once: every rendered frame asks whether its sensor is this one


class CameraSpec(_Strict):
    """A pinhole camera. ``position``/``look_at`` are in the world frame, or the hand frame when
    ``mount`` is ``wrist`` (hand frame: z along the fingers, y across them)."""

    name: Name
    mount: Literal["world", "wrist"] = "world"
    position: Vec3
    look_at: Vec3
    resolution: tuple[
        Annotated[int, Field(ge=16, le=MAX_RESOLUTION)], Annotated[int, Field(ge=16, le=MAX_RESOLUTION)]
    ] = Field((96, 96), description="width, height in pixels")
    fov: float = Field(60.0, gt=5.0, lt=170.0, description="vertical field of view, degrees")
    near: float = Field(0.02, gt=0.0, le=1.0)
    far: float = Field(3.0, gt=0.1, le=100.0)
    outputs: list[CameraOutput] = Field(
        default_factory=lambda: ["rgb", "depth", "segmentation"], min_length=1
    )
    sensor: SensorSpec | None = Field(None, description="the camera model; None renders ideal frames")

    @model_validator(mode="after")
    def _well_posed(self) -> CameraSpec:
        if self.near >= self.far:
            raise ValueError(f"near ({self.near}) must be less than far ({self.far})")
        if np.linalg.norm(np.subtract(self.look_at, self.position)) < 1e-3:
            raise ValueError("look_at must differ from position")
        if len(set(self.outputs)) != len(self.outputs):
            raise ValueError("outputs must not repeat")
        return self


# --------------------------------------------------------------------------------------------------
# Stressors


class LightingStressor(_Strict):
    intensity: Bounded(0.0, 1e5, "intensity") = Field(default_factory=lambda: Constant(value=3000.0))
    color_temperature: Bounded(1500.0, 15000.0, "color_temperature") = Field(
        default_factory=lambda: Constant(value=6500.0)
    )
    elevation: Bounded(0.0, math.pi / 2, "elevation") = Field(default_factory=lambda: Constant(value=1.0))
    azimuth: Bounded(-math.pi, math.pi, "azimuth") = Field(default_factory=lambda: Constant(value=0.5))
    ambient: Bounded(0.0, 1.0, "ambient") = Field(default_factory=lambda: Constant(value=0.3))


class CameraJitterStressor(_Strict):
    position: Bounded(0.0, 0.2, "position") = Field(
        default_factory=lambda: Constant(value=0.0), description="std of each position coordinate, metres"
    )
    look_at: Bounded(0.0, 0.2, "look_at") = Field(
        default_factory=lambda: Constant(value=0.0), description="std of each look-at coordinate, metres"
    )


class TextureStressor(_Strict):
    table_colors: list[RGB] = Field(default_factory=list, max_length=64, description="one is chosen per seed")
    object_color_jitter: float = Field(0.0, ge=0.0, le=0.5, description="uniform +- added per channel")


class DistractorSpec(_Strict):
    """A kinematic, collision-free body that crosses the scene on a straight line and back."""

    name: Name
    shape: Literal["box", "sphere", "cylinder"] = "box"
    size: Size3
    color: RGB = (0.3, 0.3, 0.9)
    start: Vec3
    end: Vec3
    speed: Bounded(0.0, 5.0, "speed") = Field(description="metres per second along the line")
    phase: Bounded(0.0, 1.0, "phase") = Field(
        default_factory=lambda: Constant(value=0.0), description="fraction of the path covered at t=0"
    )


class StressorSpec(_Strict):
    lighting: LightingStressor = Field(default_factory=LightingStressor)
    camera_jitter: CameraJitterStressor = Field(default_factory=CameraJitterStressor)
    textures: TextureStressor = Field(default_factory=TextureStressor)
    mass_scale: Bounded(0.05, 20.0, "mass_scale") = Field(default_factory=lambda: Constant(value=1.0))
    friction_scale: Bounded(0.0, 5.0, "friction_scale") = Field(default_factory=lambda: Constant(value=1.0))
    distractors: list[DistractorSpec] = Field(default_factory=list, max_length=8)


# --------------------------------------------------------------------------------------------------
# Downstream stages


class TargetDomainSpec(_Strict):
    """The appearance of the domain a policy is deployed in (it stands in for the real robot's): colours
    and lighting outside the training stressors' ranges and a camera model. Physics is not part of it:
    a seed's scene in the target domain has the source domain's placements, masses and frictions."""

    table_color: RGB | None = Field(None, description="the table's colour (texture stressors are off)")
    object_colors: dict[Name, RGB] = Field(default_factory=dict, description="colour per task object")
    lighting: LightingStressor | None = Field(None, description="replaces stressors.lighting")
    sensor: SensorSpec = Field(default_factory=SensorSpec, description="applied to every camera")


class SeedSpec(_Strict):
    count: int = Field(20, ge=1, le=100_000)
    base_seed: int = Field(0, ge=0, le=2**31 - 1)


class WorldModelSpec(_Strict):
    backbone: Literal["unet", "cosmos"] = "unet"
    camera: Name | None = Field(None, description="which camera it models; defaults to the first")
    resolution: tuple[Annotated[int, Field(ge=16, le=512)], Annotated[int, Field(ge=16, le=512)]] = (64, 64)
    context_frames: int = Field(4, ge=1, le=16)
    channels: tuple[Annotated[int, Field(ge=8, le=1024)], ...] = Field(
        (64, 128, 128),
        min_length=1,
        max_length=5,
        description="unet backbone: feature channels per U-Net level (diffusers' block_out_channels)",
    )
    horizon: int = Field(8, ge=1, le=256, description="steps predicted per branch")
    train_steps: int = Field(2000, ge=1, le=10_000_000)
    batch_size: int = Field(16, ge=1, le=4096)
    learning_rate: float = Field(3e-4, gt=0.0, le=1.0)
    state_horizon: int = Field(
        64, ge=1, le=256, description="steps the state head is trained to roll out on its own predictions"
    )
    pretrained: str | None = Field(
        None, description="local folder to post-train from: a model, a diffusers pipeline or a checkpoint"
    )
    vae: str | None = Field(None, description="local AutoencoderKLWan folder: learn in its latent space")

    @model_validator(mode="after")
    def _unet_shape(self) -> WorldModelSpec:
        """Refused at load rather than when training starts (a VAE's latents are checked when it loads)."""
        if self.backbone == "unet":
            problem = unet_shape_problem(self.channels, None if self.vae else self.resolution)
            if problem:
                raise ValueError(problem)
        return self


def unet_shape_problem(
    channels: Sequence[int], resolution: Sequence[int] | None, unshuffle: int = 2
) -> str | None:
    """What a U-Net world model of these ``channels`` per level cannot take, or None: every level's
    channels share the first level's GroupNorm group count (at most 32), and each level after a
    ``unshuffle`` pixel-unshuffle halves the frame (``resolution``: its sides; None: not checked)."""
    groups = min(32, channels[0])
    if any(c % groups for c in channels):
        return f"channels {list(channels)}: each must divide by {groups} (the norm groups)"
    halvings = unshuffle * 2 ** (len(channels) - 1)
    if resolution is not None and any(r % halvings for r in resolution):
        return f"resolution {list(resolution)} must divide by {halvings} for {len(channels)} U-Net levels"
    return None


class PerturbRecipe(_Strict):
    """``perturb``: the parent's actions plus noise for ``world_model.horizon`` steps; a negative control."""

    per_seed: int = Field(4, ge=1, le=1024)
    at_steps: list[Annotated[int, Field(ge=0)]] = Field(
        default_factory=lambda: [10], min_length=1, max_length=64
    )
    action_noise: float = Field(
        0.0, ge=0.0, le=1.0, description="std of Gaussian noise on normalised actions"
    )


class RecoverRecipe(_Strict):
    """``recover`` (DART in the world model): attempts from seed states under executed-action noise,
    every visited state labelled with the corrective action; kept when the predicted state succeeds."""

    per_seed: int = Field(4, ge=1, le=1024, description="attempts per seed demo and start step")
    at_steps: list[Annotated[int, Field(ge=0)]] = Field(
        default_factory=lambda: [0], min_length=1, max_length=64
    )
    action_noise: float = Field(0.1, ge=0.0, le=1.0, description="std on the executed translation")
    labeler: Literal["expert", "parent"] = Field(
        "expert", description="the scripted expert on the predicted state, or back toward the parent's path"
    )
    robot_state: Literal["controller", "model"] = Field(
        "controller",
        description="the end effector in imagination: commanded TCP + tracking offset, or the model's",
    )
    perturb_steps: int | None = Field(
        None, ge=1, le=100_000, description="noise on the first N steps of an attempt only (None: all)"
    )


class RetargetRecipe(_Strict):
    """``retarget`` (MimicGen in the world model): one attempt per new scene, a nearby seed demo's
    object-centric segments moved to the scene's objects; kept when the predicted state succeeds."""

    count: int = Field(40, ge=1, le=1_000_000, description="new scenes, one attempt each")
    scene_base_seed: int = Field(500_000, ge=0, le=2**31 - 1)
    nearest: int = Field(3, ge=1, le=1024, description="seed demos a scene draws its source among")
    action_noise: float = Field(0.05, ge=0.0, le=1.0, description="std on the executed translation")
    interpolation_steps: int = Field(5, ge=1, le=1000, description="fewest steps joining two segments")
    batch: int = Field(8, ge=1, le=1024, description="new scenes acted out together, one model call a step")


class GenerationSpec(_Strict):
    """How synthetic demos are made: each recipe's parameters (README: Generation recipes)."""

    recipe: str = Field(
        "recover",
        min_length=1,
        description="the recipe `worldgen run` generates with: a registered recipe or variant "
        "(world_models.recipes: perturb, recover, recover-parent, retarget)",
    )
    recover: RecoverRecipe = Field(default_factory=RecoverRecipe)
    retarget: RetargetRecipe = Field(default_factory=RetargetRecipe)
    perturb: PerturbRecipe = Field(default_factory=PerturbRecipe)
    success_margin: float = Field(
        0.0,
        ge=0.0,
        le=0.1,
        description="m to spare before a world-model attempt counts as a success (goal region shrunk, lift "
        "raised): about the state head's drift, so the simulator would agree",
    )


# The one list of checks (worldgen.checks scores these) and of policy recipes (policies trains these);
# the command line offers the same names.
CheckName = Literal[
    "permanence",
    "teleport",
    "acceleration",
    "penetration",
    "floating",
    "flicker",
    "depth",
    "robot_image",
    "robot_motion",
    "robot_action",
    "object_image",
    "contact",
    "agreement",
]
BCAlgorithm = Literal["bc-mlp", "bc-image", "diffusion"]
PolicyAlgorithm = Literal["bc-mlp", "bc-image", "diffusion", "ppo"]
CHECK_NAMES: tuple[str, ...] = get_args(CheckName)
BC_ALGORITHMS: tuple[str, ...] = get_args(BCAlgorithm)
POLICY_ALGORITHMS: tuple[str, ...] = get_args(PolicyAlgorithm)


class ChecksSpec(_Strict):
    enabled: list[CheckName] = Field(default_factory=lambda: list(CHECK_NAMES))
    thresholds: dict[CheckName, Annotated[float, Field(gt=0.0, allow_inf_nan=False)]] = Field(
        default_factory=dict
    )


LOW_DIM_KEYS = (EEF_POS, EEF_QUAT, JOINT_POS, GRIPPER_QPOS, "object")


class PolicySpec(_Strict):
    algorithm: PolicyAlgorithm = "bc-mlp"
    obs_keys: list[str] = Field(default_factory=lambda: [EEF_POS, GRIPPER_QPOS, "object"], min_length=1)
    train_steps: int = Field(5000, ge=1, le=100_000_000)
    batch_size: int = Field(256, ge=1, le=65536)
    learning_rate: float = Field(1e-3, gt=0.0, le=1.0)
    # The share of each training batch drawn from generated demos (the rest from simulator demos), the
    # co-training ratio; None: every sample equally likely, whatever its source.
    generated_share: float | None = Field(None, ge=0.0, le=1.0)


class EvaluationSpec(_Strict):
    episodes: int = Field(50, ge=1, le=10_000)
    held_out_base_seed: int = Field(1_000_000, ge=0, le=2**31 - 1)

    @model_validator(mode="before")
    @classmethod
    def _drop_success_metric(cls, data: Any) -> Any:
        """Manifests before this release named the one metric evaluation reports (``success_metric:
        success_rate``); it chose nothing and is read as absent."""
        if isinstance(data, dict) and data.get("success_metric") == "success_rate":
            data = {k: v for k, v in data.items() if k != "success_metric"}
        return data


# --------------------------------------------------------------------------------------------------
# The manifest

# What an episode of a given seed does not depend on: the seed range, the text, and what the stages
# after recording read (the world model, generation, checks, policies, evaluation).
NOT_SCENE = (
    "description",
    "seeds",
    "world_model",
    "generation",
    "checks",
    "policy",
    "evaluation",
    "target_domain",  # a source-domain episode does not depend on it; in_domain("target") applies it
)
DOMAINS = ("source", "target")
# Held-out seeds no generated scene may use, whatever panel size an evaluation asks for.
RESERVED_EVALUATION_SEEDS = 10_000


class Manifest(_Strict):
    # Set by parse_manifest: the YAML text and the folder it was read from (not fields: the hash is of
    # the validated content only).
    _source_text: str = PrivateAttr(default="")
    _base_dir: Path | None = PrivateAttr(default=None)

    name: Name
    version: Annotated[str, Field(pattern=r"^\d+(\.\d+){0,2}$")] = "1.0"
    description: str = Field("", max_length=2000)
    embodiment: EmbodimentSpec = Field(default_factory=EmbodimentSpec)
    task: TaskSpec
    cameras: list[CameraSpec] = Field(min_length=1, max_length=8)
    stressors: StressorSpec = Field(default_factory=StressorSpec)
    horizon: int = Field(ge=10, le=MAX_HORIZON, description="control steps per episode")
    control_hz: int = Field(20, ge=1, le=240)
    physics_hz: int = Field(500, ge=10, le=4000)
    seeds: SeedSpec = Field(default_factory=SeedSpec)
    world_model: WorldModelSpec = Field(default_factory=WorldModelSpec)
    generation: GenerationSpec = Field(default_factory=GenerationSpec)
    checks: ChecksSpec = Field(default_factory=ChecksSpec)
    policy: PolicySpec = Field(default_factory=PolicySpec)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    target_domain: TargetDomainSpec | None = None

    @model_validator(mode="before")
    @classmethod
    def _fold_branching(cls, data: Any) -> Any:
        """Manifests before ``generation:`` (datasets store theirs whole) named perturb's block
        ``branching:``; it is read as ``generation.perturb``."""
        if isinstance(data, dict) and "branching" in data:
            data = dict(data)
            branching = data.pop("branching")
            generation = data.get("generation")
            if isinstance(generation, dict) and "perturb" not in generation:
                data["generation"] = {**generation, "perturb": branching}
            elif generation is None:
                data["generation"] = {"perturb": branching}
            else:
                raise ValueError("branching is generation.perturb's old name: give only generation.perturb")
        return data

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        if self.physics_hz % self.control_hz:
            raise ValueError(
                f"physics_hz ({self.physics_hz}) must be a multiple of control_hz ({self.control_hz})"
            )
        camera_names = [c.name for c in self.cameras]
        if len(set(camera_names)) != len(camera_names):
            raise ValueError(f"camera names must be unique, got {camera_names}")
        if self.world_model.camera is not None and self.world_model.camera not in camera_names:
            raise ValueError(f"world_model.camera {self.world_model.camera!r} is not among {camera_names}")
        for recipe in ("perturb", "recover"):
            late = [k for k in getattr(self.generation, recipe).at_steps if k >= self.horizon]
            if late:
                raise ValueError(f"generation.{recipe}.at_steps {late} must be below horizon {self.horizon}")
        valid_keys = set(LOW_DIM_KEYS)
        suffix = {"rgb": "rgb", "depth": "depth", "segmentation": "seg"}
        for cam in self.cameras:
            valid_keys.update(f"{cam.name}_{suffix[o]}" for o in cam.outputs)
        unknown = [k for k in self.policy.obs_keys if k not in valid_keys]
        if unknown:
            raise ValueError(
                f"policy.obs_keys {unknown} are not observations of this manifest: {sorted(valid_keys)}"
            )
        lo, hi = self.seeds.base_seed, self.seeds.base_seed + self.seeds.count
        e_lo = self.evaluation.held_out_base_seed
        if e_lo < hi and lo < e_lo + self.evaluation.episodes:
            raise ValueError(
                f"evaluation seeds [{e_lo}, {e_lo + self.evaluation.episodes}) "
                f"overlap the seed range [{lo}, {hi})"
            )
        retarget = self.generation.retarget
        r_lo, r_hi = retarget.scene_base_seed, retarget.scene_base_seed + retarget.count
        taken = self.taken_seed_range(r_lo, r_hi)
        if taken is not None:
            name, a, b = taken
            name = {"seeds": "seed range", "evaluation": "evaluation seeds"}[name]
            raise ValueError(
                f"generation.retarget scene seeds [{r_lo}, {r_hi}) overlap the {name} [{a}, {b}): "
                "new scenes must be new"
            )
        names = [o.name for o in self.task.objects] + [d.name for d in self.stressors.distractors]
        if len(set(names)) != len(names):
            raise ValueError(f"object and distractor names must be unique together, got {names}")
        if self.target_domain is not None:
            objects = [o.name for o in self.task.objects]
            unknown = [n for n in self.target_domain.object_colors if n not in objects]
            if unknown:
                raise ValueError(f"target_domain.object_colors {unknown} are not task objects: {objects}")
        return self

    def taken_seed_range(self, lo: int, hi: int) -> tuple[str, int, int] | None:
        """The range that new scenes on seeds [lo, hi) would overlap: ``("seeds", a, b)`` the seed range or
        ``("evaluation", a, b)`` the first ``RESERVED_EVALUATION_SEEDS`` held-out seeds; None if neither."""
        seeds, evaluation = self.seeds.base_seed, self.evaluation.held_out_base_seed
        for name, a, b in (
            ("seeds", seeds, seeds + self.seeds.count),
            ("evaluation", evaluation, evaluation + RESERVED_EVALUATION_SEEDS),
        ):
            if lo < b and a < hi:
                return name, a, b
        return None

    def in_domain(self, domain: str) -> Manifest:
        """This manifest as rendered in ``domain``: ``source`` is itself; ``target`` takes the
        ``target_domain`` block's colours and lighting (texture stressors off) and gives every camera its
        sensor model. Placements, physics and the seed ranges are unchanged, so seed s is the same
        episode in both domains, seen differently."""
        if domain == "source":
            return self
        if domain != "target":
            raise ArgumentError(f"domain must be one of {DOMAINS}, got {domain!r}")
        if self.target_domain is None:
            raise ArgumentError(f"manifest {self.name!r} has no target_domain block (the target domain)")
        target = self.target_domain
        content = self.model_dump(mode="python")
        if target.table_color is not None:
            content["task"]["table"]["color"] = target.table_color
        for obj in content["task"]["objects"]:
            obj["color"] = target.object_colors.get(obj["name"], obj["color"])
        content["stressors"]["textures"] = TextureStressor().model_dump()
        if target.lighting is not None:
            content["stressors"]["lighting"] = target.lighting.model_dump()
        for camera in content["cameras"]:
            camera["sensor"] = target.sensor.model_dump()
        derived = type(self).model_validate(content)
        derived._base_dir = self._base_dir
        return derived

    @property
    def substeps(self) -> int:
        return self.physics_hz // self.control_hz

    @property
    def world_model_camera(self) -> str:
        return self.world_model.camera or self.cameras[0].name

    def canonical_json(self) -> str:
        return json.dumps(
            self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=True
        )

    @property
    def source_text(self) -> str:
        """The YAML it was parsed from, as written (datasets store it whole)."""
        return self._source_text

    @property
    def base_dir(self) -> Path | None:
        """The folder relative asset paths resolve against (the manifest file's folder)."""
        return self._base_dir

    def content_hash(self) -> str:
        """sha256 of the canonical JSON of the validated manifest: formatting and comments do not count."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()

    def section_hash(self, *sections: str) -> str:
        """sha256 of the canonical JSON of these top-level fields only: what one pipeline stage reads."""
        content = self.model_dump(mode="json", include=set(sections))
        text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def scene_hash(self) -> str:
        """The hash of what a seed's episode depends on: every field but the seed range and the sections
        of the stages after recording. Demos recorded for one manifest serve any with the same scene."""
        return self.section_hash(*(f for f in type(self).model_fields if f not in NOT_SCENE))


# --------------------------------------------------------------------------------------------------
# Loading


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader (no Python object tags) that also rejects duplicate mapping keys."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {key!r} (first at line {seen[key].start_mark.line + 1})",
                key_node.start_mark,
            )
        seen[key] = key_node
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _node_for(root: yaml.Node | None, loc: Sequence[Any]) -> tuple[yaml.Node | None, list[str | int]]:
    """Follow a pydantic error location through the YAML node tree.

    Returns the deepest node reached and the location with pydantic's union-member tags dropped.
    """
    node, path = root, []
    for i, part in enumerate(loc):
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            child = next((v for k, v in node.value if getattr(k, "value", None) == part), None)
            if child is not None:
                node, path = child, [*path, part]
                continue
            if i == len(loc) - 1 or all(not isinstance(p, str) or "[" in p for p in loc[i + 1 :]):
                path.append(part)  # a missing or forbidden key: name it, point at its parent
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            node, path = node.value[part], [*path, part]
    return node, path


def format_field_path(path: Sequence[str | int]) -> str:
    """``["task", "objects", 0, "mass"]`` -> ``task.objects[0].mass`` (keys that are not names quoted)."""
    out = ""
    for part in path:
        if isinstance(part, int) or not part.isidentifier():
            out += f"[{part!r}]"
        else:
            out += f".{part}" if out else part
    return out or "<root>"


def _clean_message(msg: str) -> str:
    return msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")


def _validation_problems(err: ValidationError, root: yaml.Node | None, file: str) -> list[ManifestProblem]:
    problems: list[ManifestProblem] = []
    for e in err.errors(include_url=False):
        node, path = _node_for(root, e["loc"])
        line = node.start_mark.line + 1 if node is not None else 1
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "missing":
            msg = "required field is missing"
        else:
            msg = _clean_message(e["msg"])
            if e["type"] not in ("value_error", "assertion_error") and "input" in e:
                msg += f" (got {e['input']!r})" if not isinstance(e["input"], dict | list) else ""
        problem = ManifestProblem(file, line, format_field_path(path), msg)
        if problem not in problems:
            problems.append(problem)
    return problems


MAX_NESTING = 32  # a manifest nests 6 levels deep; PyYAML composes recursively and would overflow the stack


def _check_nesting(text: str, file: str) -> None:
    """Refuse pathologically nested YAML before PyYAML's recursive composer meets it (the parser that
    emits these events is iterative)."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_NESTING:
                line = event.start_mark.line + 1
                raise ManifestError(
                    [ManifestProblem(file, line, "<yaml>", f"nested deeper than {MAX_NESTING} levels")]
                )
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def parse_manifest(text: str, file: str = "<string>", base_dir: Path | None = None) -> Manifest:
    """Validate manifest YAML text. Raises :class:`ManifestError` with ``file:line: path: message`` lines."""
    try:
        _check_nesting(text, file)
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problem = getattr(exc, "problem", None) or str(exc)
        raise ManifestError([ManifestProblem(file, line, "<yaml>", " ".join(str(problem).split()))]) from None
    if not isinstance(data, dict):
        got = "an empty document" if data is None else type(data).__name__
        raise ManifestError(
            [ManifestProblem(file, 1, "<root>", f"expected a mapping of manifest fields, got {got}")]
        )
    try:
        manifest = Manifest.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        raise ManifestError(_validation_problems(exc, root, file)) from None
    manifest._source_text, manifest._base_dir = text, base_dir
    return manifest


def load_manifest(path: str | Path) -> Manifest:
    """Read and validate a manifest file; asset paths resolve against its folder."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(
            [ManifestProblem(str(path), 0, "<file>", f"cannot read: {exc.strerror or exc}")]
        ) from None
    return parse_manifest(text, file=str(path), base_dir=path.resolve().parent)


def manifest_text(manifest: Manifest) -> str:
    """YAML that parses back to ``manifest``: the text it was read from, or (built or changed in code,
    e.g. ``model_copy(update=...)``) a dump of its validated content. Datasets store it whole."""
    text = manifest.source_text
    if text and parse_manifest(text, base_dir=manifest.base_dir).content_hash() == manifest.content_hash():
        return text
    return yaml.safe_dump(manifest.model_dump(mode="json"), sort_keys=False)


def as_manifest(manifest: Manifest | str | Path) -> Manifest:
    """The manifest object itself, or the one a path names: functions take either, and are passed the
    object once the edge (a command, a test) has parsed it."""
    return manifest if isinstance(manifest, Manifest) else load_manifest(manifest)


# --------------------------------------------------------------------------------------------------
# Per-seed sampling


def rng_for(seed: int, stream: str) -> np.random.Generator:
    """An independent generator per (seed, named stream): adding a stressor never shifts the others."""
    return np.random.default_rng([seed, zlib.crc32(stream.encode())])
