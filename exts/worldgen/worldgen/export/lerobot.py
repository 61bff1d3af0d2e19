"""A LeRobot dataset (format v3.0, as LeRobot 0.6 writes it), written with pyarrow, and PyAV for videos.

Features, per frame ``t`` of a demo (the observation before action ``t``):

- ``observation.state``: the robot's keys that every exported demo has (end-effector position and
  quaternion, joints, fingers; a world model predicts only some of them), ``names`` saying which;
- ``observation.environment_state``: the task objects' features (position, quaternion x, y, z, w,
  position relative to the end effector);
- ``action`` (the labels), ``next.reward``, ``next.done``;
- per camera: ``observation.images.<camera>`` (RGB, PNG; an mp4 video with ``videos``),
  ``observation.images.<camera>_depth`` (metres, float TIFF, ``info.is_depth_map``, as LeRobot stores
  depth maps) and ``observation.images.<camera>_segmentation`` (instance ids, 16-bit PNG: LeRobot's
  reader returns the ids unscaled); only the images every exported demo has;
- LeRobot's own ``timestamp``, ``frame_index``, ``episode_index``, ``index``, ``task_index``.

The task is the manifest's description. Episodes follow the dataset's demo order with the ``valid``
mask's demos last, so the splits are ``train`` and ``valid`` ranges. What each episode is (its demo name,
source, recipe, parent, seed, verdicts, masks) goes in ``worldgen/*`` columns of the episodes table.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..dataset import Demo, DemoRecord, dataset_manifest, demo_names, depth_ranges, open_dataset, read_demo
from ..keys import (
    DEPTH,
    EEF_POS,
    EEF_QUAT,
    GRIPPER_QPOS,
    JOINT_POS,
    OBJECT,
    RGB,
    SEG,
    image_camera,
    image_kind,
)
from ..manifest import Manifest
from .staging import selected_demos, staged

CODEBASE_VERSION = "v3.0"
CHUNKS_SIZE = 1000  # files per chunk folder
DATA_FILES_SIZE_MB = 100
VIDEO_FILES_SIZE_MB = 200
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-000/file-000.parquet"
STATS = ("min", "max", "mean", "std", "count", "q01", "q10", "q50", "q90", "q99")
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
IMAGE_STATS_FRAMES = 100  # an image feature's statistics come from this many frames of each episode
STATE, ENVIRONMENT_STATE, ACTION = "observation.state", "observation.environment_state", "action"
ROBOT_KEYS = (EEF_POS, EEF_QUAT, JOINT_POS, GRIPPER_QPOS)
IMAGE_SUFFIX = {RGB: "", DEPTH: "_depth", SEG: "_segmentation"}
# LeRobot 0.6's default video encoding.
VIDEO_ENCODER = {"codec": "libsvtav1", "name": "av1", "pix_fmt": "yuv420p", "g": 2, "crf": 30, "preset": 12}
DEFAULT_FEATURES = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}


def export_lerobot(
    dataset: str | Path, out: str | Path, mask: str | None = None, videos: bool = False
) -> int:
    """Write the demos of ``mask`` (every demo when None) as a LeRobot dataset folder ``out``; returns how
    many episodes it holds."""
    with open_dataset(dataset) as f:
        names = selected_demos(f, mask)
        valid = set(demo_names(f, "valid"))
        names = [n for n in names if n not in valid] + [n for n in names if n in valid]
        layout = FrameLayout.of(f, names, videos)
        masks = {m: set(demo_names(f, m)) for m in f.get("mask", {})}
        with staged(out) as root:
            writer = _Writer(root, layout)
            try:
                for name in names:
                    record = DemoRecord.from_group(f["data"][name])
                    in_masks = sorted(m for m in masks if name in masks[m])
                    writer.add_episode(read_demo(f["data"][name]), record, in_masks)
                writer.finish(train=sum(n not in valid for n in names))
            finally:
                writer.close()
    return len(names)


@dataclass
class FrameLayout:
    """What one frame holds: the features, and where each comes from in a worldgen demo."""

    manifest: Manifest
    state_keys: list[str]
    images: dict[str, str]  # LeRobot feature -> worldgen observation key
    depth_range: dict[str, tuple[float, float]]
    videos: bool
    features: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def of(cls, f: h5py.File, names: list[str], videos: bool) -> FrameLayout:
        manifest = dataset_manifest(f)
        common = set.intersection(*(set(f["data"][n]["obs"]) for n in names))
        images = {
            f"observation.images.{image_camera(k)}{IMAGE_SUFFIX[image_kind(k)]}": k
            for k in sorted(common)
            if image_kind(k)
        }
        layout = cls(manifest, [k for k in ROBOT_KEYS if k in common], images, depth_ranges(f), videos)
        layout.features = layout._features(f["data"][names[0]])
        return layout

    def _features(self, group: h5py.Group) -> dict[str, dict[str, Any]]:
        obs = group["obs"]
        state_names = [f"{k}.{i}" for k in self.state_keys for i in range(obs[k].shape[1])]
        object_names = [
            f"{o.name}.{part}"
            for o in self.manifest.task.objects
            if not o.static
            for part in ("x", "y", "z", "qx", "qy", "qz", "qw", "dx", "dy", "dz")
        ]
        action_names = (
            ["dx", "dy", "dz", "rx", "ry", "rz", "gripper"]
            if self.manifest.embodiment.action_space == "ee_delta"
            else [f"joint{i + 1}" for i in range(7)] + ["gripper"]
        )
        features = {
            STATE: {"dtype": "float32", "shape": [len(state_names)], "names": state_names},
            ENVIRONMENT_STATE: {"dtype": "float32", "shape": [len(object_names)], "names": object_names},
            ACTION: {"dtype": "float32", "shape": [len(action_names)], "names": action_names},
            "next.reward": {"dtype": "float32", "shape": [1], "names": None},
            "next.done": {"dtype": "bool", "shape": [1], "names": None},
        }
        for feature, key in self.images.items():
            h, w, c = obs[key].shape[1:]
            spec = {"dtype": "image", "shape": [h, w, c], "names": ["height", "width", "channels"]}
            if image_kind(key) == DEPTH:
                spec["info"] = {"is_depth_map": True, "depth_unit": "m"}
            elif image_kind(key) == RGB and self.videos:
                spec["dtype"] = "video"
                spec["info"] = _video_info(h, w, self.manifest.control_hz)
            features[feature] = spec
        return {**features, **DEFAULT_FEATURES}

    @property
    def video_keys(self) -> list[str]:
        return [k for k, spec in self.features.items() if spec["dtype"] == "video"]

    def frames(self, demo: Demo) -> dict[str, np.ndarray]:
        """Every feature's values for the demo's T frames (images as stored: uint8 RGB, metres, ids)."""
        t = demo.num_samples
        obs = demo.obs
        out = {
            STATE: np.concatenate([obs[k][:t] for k in self.state_keys], 1).astype(np.float32),
            ENVIRONMENT_STATE: obs[OBJECT][:t].astype(np.float32),
            ACTION: demo.actions.astype(np.float32),
            "next.reward": demo.rewards.astype(np.float32),
            "next.done": demo.dones.astype(bool),
        }
        for feature, key in self.images.items():
            images = obs[key][:t]
            if image_kind(key) == DEPTH:
                near, far = self.depth_range[image_camera(key)]
                images = (near + images.astype(np.float64) * (far - near)).astype(np.float32)
            out[feature] = images
        return out


def _video_info(h: int, w: int, fps: int) -> dict[str, Any]:
    return {
        "video.height": h,
        "video.width": w,
        "video.codec": VIDEO_ENCODER["name"],
        "video.pix_fmt": VIDEO_ENCODER["pix_fmt"],
        "video.fps": fps,
        "video.channels": 3,
        "has_audio": False,
        "video.g": VIDEO_ENCODER["g"],
        "video.crf": VIDEO_ENCODER["crf"],
        "video.preset": VIDEO_ENCODER["preset"],
        "video.fast_decode": 0,
        "video.video_backend": "pyav",
        "video.extra_options": {},
        "is_depth_map": False,
    }


# -- encoding -------------------------------------------------------------------------------------


def encode_image(image: np.ndarray, kind: str) -> dict[str, Any]:
    """One image as the {bytes, path} struct of a Hugging Face ``datasets.Image`` column: RGB as PNG,
    depth (metres) as a float TIFF, instance ids as a 16-bit PNG."""
    from PIL import Image

    buffer = io.BytesIO()
    if kind == DEPTH:
        Image.fromarray(image[..., 0].astype(np.float32), mode="F").save(
            buffer, format="TIFF", compression="raw"
        )
        suffix = "tiff"
    elif kind == SEG:
        Image.fromarray(image[..., 0].astype(np.uint16)).save(buffer, format="PNG")
        suffix = "png"
    else:
        Image.fromarray(image).save(buffer, format="PNG", compress_level=6)
        suffix = "png"
    return {"bytes": buffer.getvalue(), "path": f"frame.{suffix}"}


def _arrow_type(spec: dict[str, Any]):
    import pyarrow as pa

    if spec["dtype"] == "image":
        return pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    scalar = {"float32": pa.float32(), "int64": pa.int64(), "bool": pa.bool_()}[spec["dtype"]]
    return scalar if spec["shape"] == [1] else pa.list_(scalar, spec["shape"][0])


def _hf_feature(spec: dict[str, Any]) -> dict[str, Any]:
    """The feature as Hugging Face ``datasets`` describes it in a parquet file's schema metadata."""
    if spec["dtype"] == "image":
        return {"_type": "Image"}
    value = {"dtype": spec["dtype"], "_type": "Value"}
    return value if spec["shape"] == [1] else {"feature": value, "length": spec["shape"][0], "_type": "List"}


def feature_stats(values: np.ndarray, image: bool) -> dict[str, np.ndarray]:
    """min, max, mean, std, count and quantiles of one episode's values of a feature (T, ...): per
    component for vectors, per channel (C, 1, 1) for images (RGB scaled to [0, 1], as LeRobot does)."""
    if image:  # at most IMAGE_STATS_FRAMES frames, evenly spaced, in float32: LeRobot samples them too
        picked = np.linspace(0, len(values) - 1, min(len(values), IMAGE_STATS_FRAMES)).round().astype(int)
        values = np.asarray(values)[np.unique(picked)]
        scale = np.float32(255.0 if values.shape[-1] == 3 else 1.0)
        flat = values.reshape(-1, values.shape[-1]).astype(np.float32) / scale
        shape = (values.shape[-1], 1, 1)
    else:
        flat = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
        shape = flat.shape[1:]
    stats = {
        "min": flat.min(0),
        "max": flat.max(0),
        "mean": flat.mean(0),
        "std": flat.std(0),
        **{f"q{round(q * 100):02d}": np.quantile(flat, q, axis=0) for q in QUANTILES},
    }
    out = {k: np.asarray(v, dtype=np.float64).reshape(shape) for k, v in stats.items()}
    out["count"] = np.array([len(values)], dtype=np.int64)
    return out


def aggregate_stats(episodes: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Dataset statistics from per-episode ones, as LeRobot 0.6.1 combines them: count-weighted means,
    pooled variance, extreme min / max, count-weighted mean of the quantiles."""
    counts = np.array([float(e["count"][0]) for e in episodes])
    weights = (counts / counts.sum()).reshape(-1, *[1] * episodes[0]["mean"].ndim)
    means = np.stack([e["mean"] for e in episodes])
    mean = (weights * means).sum(0)
    variance = (weights * (np.stack([e["std"] for e in episodes]) ** 2 + (means - mean) ** 2)).sum(0)
    out = {
        "min": np.min([e["min"] for e in episodes], axis=0),
        "max": np.max([e["max"] for e in episodes], axis=0),
        "mean": mean,
        "std": np.sqrt(variance),
        "count": np.array([int(counts.sum())], dtype=np.int64),
    }
    for q in QUANTILES:
        key = f"q{round(q * 100):02d}"
        out[key] = (weights * np.stack([e[key] for e in episodes])).sum(0)
    return {k: out[k] for k in STATS}


# -- writing ----------------------------------------------------------------------------------------


class _Writer:
    """Data files, videos and per-episode metadata, episode by episode, under ``root``."""

    def __init__(self, root: Path, layout: FrameLayout):
        import pyarrow as pa

        self.root, self.layout = root, layout
        self.fps = layout.manifest.control_hz
        self.task = layout.manifest.description or layout.manifest.name
        columns = [k for k, spec in layout.features.items() if spec["dtype"] != "video"]
        hf = {"info": {"features": {k: _hf_feature(layout.features[k]) for k in columns}}}
        self.schema = pa.schema(
            [(k, _arrow_type(layout.features[k])) for k in columns],
            metadata={"huggingface": json.dumps(hf)},
        )
        self.data = _DataFiles(root)
        self.videos = {
            k: _VideoFiles(root, k, layout.features[k]["info"], self.fps) for k in layout.video_keys
        }
        self.frames_written = 0
        self.episodes: list[dict[str, Any]] = []
        self.stats: list[dict[str, dict[str, np.ndarray]]] = []

    def add_episode(self, demo: Demo, record: DemoRecord, masks: list[str]) -> None:
        import pyarrow as pa

        index, t = len(self.episodes), demo.num_samples
        values = self.layout.frames(demo)
        values |= {
            "timestamp": (np.arange(t) / self.fps).astype(np.float32),
            "frame_index": np.arange(t, dtype=np.int64),
            "episode_index": np.full(t, index, dtype=np.int64),
            "index": np.arange(self.frames_written, self.frames_written + t, dtype=np.int64),
            "task_index": np.zeros(t, dtype=np.int64),
        }
        columns = {}
        for name in self.schema.names:
            spec = self.layout.features[name]
            if spec["dtype"] == "image":
                kind = image_kind(self.layout.images[name])
                columns[name] = [encode_image(image, kind) for image in values[name]]
            else:
                columns[name] = list(values[name])
        chunk, file = self.data.write(pa.table(columns, schema=self.schema))
        episode = {
            "episode_index": index,
            "tasks": [self.task],
            "length": t,
            "data/chunk_index": chunk,
            "data/file_index": file,
            "dataset_from_index": self.frames_written,
            "dataset_to_index": self.frames_written + t,
        }
        for key, video in self.videos.items():
            episode |= video.add_episode(values[key], key)
        stats = {
            k: feature_stats(values[k], spec["dtype"] in ("image", "video"))
            for k, spec in self.layout.features.items()
        }
        for feature, by_stat in stats.items():
            for stat in STATS:
                episode[f"stats/{feature}/{stat}"] = by_stat[stat].tolist()
        episode |= {"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0}
        episode |= {
            "worldgen/demo": record.name,
            "worldgen/source": record.source,
            "worldgen/recipe": record.recipe,
            "worldgen/parent": record.parent,
            "worldgen/branch_step": record.branch_step,
            "worldgen/seed": record.seed,
            "worldgen/success": record.success,
            "worldgen/check_passed": record.check_passed,
            "worldgen/masks": masks,
        }
        self.episodes.append(episode)
        self.stats.append(stats)
        self.frames_written += t

    def close(self) -> None:
        """Close the open data file and videos (again after :meth:`finish` is harmless)."""
        self.data.close()
        for video in self.videos.values():
            video.close()

    def finish(self, train: int) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.close()
        episodes = pa.Table.from_pylist(self.episodes)
        (self.root / EPISODES_PATH).parent.mkdir(parents=True)
        pq.write_table(episodes, self.root / EPISODES_PATH, compression="snappy")
        self._write_tasks()
        stats = {
            feature: {k: v.tolist() for k, v in aggregate_stats([s[feature] for s in self.stats]).items()}
            for feature in self.layout.features
        }
        (self.root / "meta/stats.json").write_text(json.dumps(stats, indent=4))
        total = len(self.episodes)
        splits = {"train": f"0:{train}"}
        if train < total:
            splits["valid"] = f"{train}:{total}"
        info = {
            "codebase_version": CODEBASE_VERSION,
            "fps": self.fps,
            "features": self.layout.features,
            "total_episodes": total,
            "total_frames": self.frames_written,
            "total_tasks": 1,
            "chunks_size": CHUNKS_SIZE,
            "data_files_size_in_mb": DATA_FILES_SIZE_MB,
            "video_files_size_in_mb": VIDEO_FILES_SIZE_MB,
            "data_path": DATA_PATH,
            "video_path": VIDEO_PATH if self.videos else None,
            "robot_type": self.layout.manifest.embodiment.robot,
            "splits": splits,
        }
        (self.root / "meta/info.json").write_text(json.dumps(info, indent=4))

    def _write_tasks(self) -> None:
        """``meta/tasks.parquet`` as pandas writes a frame indexed by the task (LeRobot reads the index
        back as the task's text, so the pandas metadata must say it is the index)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        pandas = {
            "index_columns": ["task"],
            "column_indexes": [],
            "columns": [
                {
                    "name": "task_index",
                    "field_name": "task_index",
                    "pandas_type": "int64",
                    "numpy_type": "int64",
                },
                {"name": "task", "field_name": "task", "pandas_type": "unicode", "numpy_type": "object"},
            ],
            "pandas_version": "2.2.3",
        }
        schema = pa.schema(
            [("task_index", pa.int64()), ("task", pa.string())], metadata={"pandas": json.dumps(pandas)}
        )
        pq.write_table(
            pa.table({"task_index": [0], "task": [self.task]}, schema=schema),
            self.root / "meta/tasks.parquet",
        )


def _next_file(chunk: int, file: int) -> tuple[int, int]:
    return (chunk + 1, 0) if file + 1 >= CHUNKS_SIZE else (chunk, file + 1)


class _DataFiles:
    """The data parquet files: one row group per episode, a new file once the current one passes
    :data:`DATA_FILES_SIZE_MB`."""

    def __init__(self, root: Path):
        self.root = root
        self.chunk = self.file = 0
        self.writer = None
        self.path: Path | None = None

    def write(self, table) -> tuple[int, int]:
        import pyarrow.parquet as pq

        if self.writer is not None and self.path.stat().st_size >= DATA_FILES_SIZE_MB * 2**20:
            self.close()
            self.chunk, self.file = _next_file(self.chunk, self.file)
        if self.writer is None:
            self.path = self.root / DATA_PATH.format(chunk_index=self.chunk, file_index=self.file)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.writer = pq.ParquetWriter(self.path, table.schema, compression="snappy")
        self.writer.write_table(table)
        return self.chunk, self.file

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class _VideoFiles:
    """One camera's mp4 files: episodes one after the other, a new file once the current one passes the
    size limit; frame ``i`` of a file is shown at ``i / fps`` seconds."""

    def __init__(self, root: Path, key: str, info: dict[str, Any], fps: int):
        self.root, self.key, self.fps = root, key, fps
        self.size = (info["video.width"], info["video.height"])
        self.chunk = self.file = 0
        self.container = self.stream = None
        self.frames = 0

    def add_episode(self, images: np.ndarray, key: str) -> dict[str, Any]:
        import av

        # SVT-AV1 prints its whole configuration to stderr at every file unless told to keep to errors.
        os.environ.setdefault("SVT_LOG", "1")
        if self.container is not None and self.path.stat().st_size >= VIDEO_FILES_SIZE_MB * 2**20:
            self.close()
            self.chunk, self.file = _next_file(self.chunk, self.file)
        if self.container is None:
            self.path = self.root / VIDEO_PATH.format(
                video_key=key, chunk_index=self.chunk, file_index=self.file
            )
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.container = av.open(str(self.path), "w")
            options = {k: str(VIDEO_ENCODER[k]) for k in ("g", "crf", "preset")}
            self.stream = self.container.add_stream(VIDEO_ENCODER["codec"], rate=self.fps, options=options)
            self.stream.width, self.stream.height = self.size
            self.stream.pix_fmt = VIDEO_ENCODER["pix_fmt"]
            self.frames = 0
        start = self.frames
        for image in images:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = self.frames
            self.container.mux(self.stream.encode(frame))
            self.frames += 1
        prefix = f"videos/{key}"
        return {
            f"{prefix}/chunk_index": self.chunk,
            f"{prefix}/file_index": self.file,
            f"{prefix}/from_timestamp": start / self.fps,
            f"{prefix}/to_timestamp": self.frames / self.fps,
        }

    def close(self) -> None:
        if self.container is not None:
            self.container.mux(self.stream.encode(None))
            self.container.close()
            self.container = None
