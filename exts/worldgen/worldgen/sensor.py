"""A camera model for rendered frames (``CameraSpec.sensor``): what a real camera adds to the picture, so
the target domain looks like footage rather than a renderer's output. Every draw comes from the scene
seed, the camera and the step, so a frame is the same whenever it is rendered again."""

from __future__ import annotations

import io

import numpy as np

from .manifest import CameraSpec, SensorSpec, rng_for
from .sim.base import CameraFrame


def gaussian_kernel(sigma: float) -> np.ndarray:
    radius = max(1, int(np.ceil(3.0 * sigma)))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of an (H, W, C) float image, edges reflected."""
    kernel = gaussian_kernel(sigma)
    r = len(kernel) // 2
    padded = np.pad(image, ((r, r), (0, 0), (0, 0)), mode="reflect")
    rows = sum(k * padded[i : i + image.shape[0]] for i, k in enumerate(kernel))
    padded = np.pad(rows, ((0, 0), (r, r), (0, 0)), mode="reflect")
    return sum(k * padded[:, i : i + image.shape[1]] for i, k in enumerate(kernel))


def vignette(height: int, width: int, strength: float) -> np.ndarray:
    """(H, W, 1) brightness factor: 1 at the centre, 1 - strength at the corners (quadratic fall-off)."""
    y = (np.arange(height) + 0.5) / height * 2.0 - 1.0
    x = (np.arange(width) + 0.5) / width * 2.0 - 1.0
    r2 = (x[None, :] ** 2 + y[:, None] ** 2) / 2.0
    return (1.0 - strength * r2)[..., None]


def jpeg_round_trip(rgb: np.ndarray, quality: int) -> np.ndarray:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


def sensor_rgb(rgb: np.ndarray, sensor: SensorSpec, rng: np.random.Generator) -> np.ndarray:
    """An (H, W, 3) uint8 rendering as this sensor records it."""
    image = rgb.astype(np.float64) * np.asarray(sensor.color_gain)
    if sensor.vignetting > 0.0:
        image = image * vignette(*rgb.shape[:2], sensor.vignetting)
    if sensor.blur_sigma > 0.0:
        image = blur(image, sensor.blur_sigma)
    if sensor.noise_std > 0.0:
        image = image + rng.normal(0.0, sensor.noise_std, image.shape)
    out = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return jpeg_round_trip(out, sensor.jpeg_quality) if sensor.jpeg_quality is not None else out


def sensor_depth(
    depth: np.ndarray, sensor: SensorSpec, camera: CameraSpec, rng: np.random.Generator
) -> np.ndarray:
    """Normalised depth ((z - near) / (far - near), 1 where nothing was hit) with the sensor's noise on
    the pixels that hit something."""
    if sensor.depth_noise_std == 0.0:
        return depth
    noise = rng.normal(0.0, sensor.depth_noise_std / (camera.far - camera.near), depth.shape)
    return np.where(depth < 1.0, np.clip(depth + noise, 0.0, 1.0), depth).astype(np.float32)


def sensor_frame(camera: CameraSpec, frame: CameraFrame, seed: int, step: int) -> CameraFrame:
    """``frame`` as ``camera``'s sensor records it at ``step`` of the episode of scene ``seed``
    (segmentation is untouched: it comes from a segmenter, not from the sensor)."""
    sensor = camera.sensor
    if sensor is None or sensor.ideal:
        return frame
    rng = rng_for(seed, f"sensor/{camera.name}/{step}")
    return CameraFrame(
        rgb=None if frame.rgb is None else sensor_rgb(frame.rgb, sensor, rng),
        depth=None if frame.depth is None else sensor_depth(frame.depth, sensor, camera, rng),
        seg=frame.seg,
    )
