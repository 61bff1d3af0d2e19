"""One concrete draw of a manifest's randomised values for a seed: what the stage compiler and the
simulator build, and what a dataset records with each demo so a scene can be rebuilt exactly."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from .manifest import Manifest, ObjectSpec, rng_for, sample


@dataclass(frozen=True)
class ObjectSample:
    name: str
    position: tuple[float, float, float]  # centre, world frame
    yaw: float
    mass: float
    friction: float
    color: tuple[float, float, float]


@dataclass(frozen=True)
class CameraSample:
    name: str
    mount: str
    position: tuple[float, float, float]
    look_at: tuple[float, float, float]


@dataclass(frozen=True)
class LightSample:
    intensity: float
    color: tuple[float, float, float]
    elevation: float
    azimuth: float
    ambient: float

    @property
    def direction(self) -> tuple[float, float, float]:
        """Unit vector the light travels along (from the sky towards the scene)."""
        ce = math.cos(self.elevation)
        return (-ce * math.cos(self.azimuth), -ce * math.sin(self.azimuth), -math.sin(self.elevation))


@dataclass(frozen=True)
class DistractorSample:
    name: str
    start: tuple[float, float, float]
    end: tuple[float, float, float]
    speed: float
    phase: float

    def position(self, t: float) -> tuple[float, float, float]:
        """Back-and-forth motion along start->end at ``speed``; ``phase`` is the fraction covered at t=0."""
        start, end = np.asarray(self.start), np.asarray(self.end)
        length = float(np.linalg.norm(end - start))
        if length == 0.0 or self.speed == 0.0:
            s = self.phase
        else:
            s = (self.phase + self.speed * t / length) % 2.0
            s = 2.0 - s if s > 1.0 else s
        return tuple(float(v) for v in start + s * (end - start))


@dataclass(frozen=True)
class SceneSample:
    seed: int
    manifest_hash: str
    objects: list[ObjectSample]
    cameras: list[CameraSample]
    light: LightSample
    table_color: tuple[float, float, float]
    distractors: list[DistractorSample] = field(default_factory=list)

    def object(self, name: str) -> ObjectSample:
        return next(o for o in self.objects if o.name == name)

    def to_dict(self) -> dict:
        return asdict(self)


def color_temperature_to_rgb(kelvin: float) -> tuple[float, float, float]:
    """Approximate sRGB white point of a black body (fit valid for 1000-40000 K)."""
    t = kelvin / 100.0
    r = 1.0 if t <= 66 else 1.292936186 * (t - 60) ** -0.1332047592
    g = 0.390081579 * math.log(t) - 0.631841444 if t <= 66 else 1.129890861 * (t - 60) ** -0.0755148492
    b = 1.0 if t >= 66 else (0.0 if t <= 19 else 0.543206789 * math.log(t - 10) - 1.196254089)
    return tuple(float(min(max(c, 0.0), 1.0)) for c in (r, g, b))


def support_top(manifest: Manifest, obj: ObjectSpec, placed: dict[str, ObjectSample]) -> float:
    """Height of the surface an object rests on: the table top, or a static object's floor/top."""
    table_top = manifest.task.table.height
    if obj.support == "table":
        return table_top
    support = manifest.task.object(obj.support)
    base = placed[support.name].position[2] - support.size[2] / 2
    return base + (support.wall_thickness if support.shape == "bin" else support.size[2])


def _footprint_radius(obj: ObjectSpec) -> float:
    return 0.5 * math.hypot(obj.size[0], obj.size[1])


def _place_objects(manifest: Manifest, seed: int) -> list[ObjectSample]:
    """Sample object poses, rejecting overlaps on the same support (deterministic retries)."""
    stress = manifest.stressors
    placed: dict[str, ObjectSample] = {}
    # Supports first, so objects inside a bin can be placed relative to it.
    order = sorted(manifest.task.objects, key=lambda o: o.support != "table")
    for obj in order:
        rng = rng_for(seed, f"object/{obj.name}/placement")
        for _attempt in range(200):
            x, y, yaw = (sample(d, rng) for d in (obj.placement.x, obj.placement.y, obj.placement.yaw))
            if obj.support != "table":
                sx, sy, _ = placed[obj.support].position
                x, y = x + sx, y + sy
            clear = all(
                math.hypot(x - o.position[0], y - o.position[1])
                >= _footprint_radius(obj) + _footprint_radius(manifest.task.object(o.name))
                for o in placed.values()
                if manifest.task.object(o.name).support == obj.support and o.name != obj.support
            )
            if clear:
                break
        else:
            raise ValueError(f"seed {seed}: could not place object {obj.name!r} without overlap in 200 tries")
        z = support_top(manifest, obj, placed) + obj.size[2] / 2
        phys = rng_for(seed, f"object/{obj.name}/physics")
        mass = obj.mass * sample(stress.mass_scale, phys)
        friction = obj.friction * sample(stress.friction_scale, phys)
        jitter = stress.textures.object_color_jitter
        crng = rng_for(seed, f"object/{obj.name}/color")
        color = tuple(float(np.clip(c + crng.uniform(-jitter, jitter), 0.0, 1.0)) for c in obj.color)
        placed[obj.name] = ObjectSample(
            obj.name, (float(x), float(y), float(z)), float(yaw), mass, friction, color
        )
    return [placed[o.name] for o in manifest.task.objects]


def sample_scene(manifest: Manifest, seed: int) -> SceneSample:
    """Draw every randomised value of the manifest for one seed. Same manifest + seed, same sample."""
    stress = manifest.stressors
    lrng = rng_for(seed, "lighting")
    light = LightSample(
        intensity=sample(stress.lighting.intensity, lrng),
        color=color_temperature_to_rgb(sample(stress.lighting.color_temperature, lrng)),
        elevation=sample(stress.lighting.elevation, lrng),
        azimuth=sample(stress.lighting.azimuth, lrng),
        ambient=sample(stress.lighting.ambient, lrng),
    )
    cameras = []
    for cam in manifest.cameras:
        crng = rng_for(seed, f"camera/{cam.name}")
        pos_std = sample(stress.camera_jitter.position, crng)
        look_std = sample(stress.camera_jitter.look_at, crng)
        pos = np.asarray(cam.position) + crng.normal(0.0, 1.0, 3) * pos_std
        look = np.asarray(cam.look_at) + crng.normal(0.0, 1.0, 3) * look_std
        cameras.append(CameraSample(cam.name, cam.mount, tuple(map(float, pos)), tuple(map(float, look))))
    table_colors = stress.textures.table_colors
    table_color = manifest.task.table.color
    if table_colors:
        table_color = table_colors[int(rng_for(seed, "textures/table").integers(len(table_colors)))]
    distractors = []
    for d in stress.distractors:
        drng = rng_for(seed, f"distractor/{d.name}")
        distractors.append(
            DistractorSample(d.name, d.start, d.end, sample(d.speed, drng), sample(d.phase, drng))
        )
    return SceneSample(
        seed=seed,
        manifest_hash=manifest.content_hash(),
        objects=_place_objects(manifest, seed),
        cameras=cameras,
        light=light,
        table_color=tuple(map(float, table_color)),
        distractors=distractors,
    )
