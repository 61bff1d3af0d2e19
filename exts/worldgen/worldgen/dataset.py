"""HDF5 datasets in robomimic's layout with Isaac Lab's attributes and worldgen's provenance.

On-disk layout (one file once a run completes)::

    /data                attrs: total, env_args (JSON: env_name, type=2, env_kwargs),
                                worldgen (JSON: manifest_hash, manifest, code_version, domain
                                "source" | "target" | "transferred", transfer_model where transferred),
                                depth_range (JSON: camera -> [near, far] metres),
                                segmentation (JSON: instance id table), discarded (JSON list)
    /data/demo_<i>       attrs: num_samples, seed, success, source ("sim" | "world_model" | "play" |
                                "clip": unlabelled footage, images alone, no arrays below but obs),
                                scene (JSON of the sampled scene); where they apply (DemoRecord reads
                                the rest as None): recipe, parent, branch_step, noise_seed, model,
                                labeler, action_noise, check_scores (JSON), check_passed
      actions (T, A) float32 in [-1, 1]   rewards (T,)   dones (T,)   states (T, S) float64
      executed_actions (T, A)   where the labels are not what was executed (recovery demos)
      obs/<key>, next_obs/<key>   (T, ...) images chunked per frame and gzip-compressed
    /mask/<name>         arrays of demo names (bytes): train, valid, seed (expert demos), synthetic
                         (world model), passed (checks), play (non-expert rollouts)

While a run is in progress every complete demo lives in its own shard file under ``<file>.parts/``
and the main file holds HDF5 external links to them (h5py and robomimic follow those unchanged). Each
shard and each rewrite of the main file goes to a temporary name and is renamed into place, so a
killed run (even ``kill -9``) leaves a main file whose every demo reads back. :meth:`finalize`
copies the demos into one self-contained file and removes the shards.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from . import __version__
from .errors import OutputError, WorldgenError
from .files import replaced_atomically, temporary_beside
from .keys import EXECUTED_ACTIONS, image_kind
from .manifest import Manifest, manifest_text, parse_manifest

ENV_TYPE_ISAAC_LAB = 2  # robomimic's EnvType for Isaac Lab / "gym-like" environments
MASKS = ("train", "valid", "seed", "synthetic", "passed", "play")
CLIP = "clip"  # a demo's source when it is unlabelled footage (images only), in no mask


@dataclass
class Demo:
    """One trajectory. ``obs`` holds T+1 observations: ``obs[t]`` is seen before ``actions[t]``. A clip
    (``source: clip``, unlabelled footage) has camera images alone: no actions, states, rewards or
    dones (None)."""

    actions: np.ndarray | None
    states: np.ndarray | None
    obs: dict[str, np.ndarray]
    rewards: np.ndarray | None
    dones: np.ndarray | None
    attrs: dict[str, Any] = field(default_factory=dict)
    # Per-step arrays beside ``actions`` (T, ...), e.g. ``executed_actions`` where the labels are not
    # what was executed (recovery demos: noisy actions executed, the labeler's actions as labels).
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def executed_actions(self) -> np.ndarray | None:
        """The actions the simulator (or world model) executed: ``executed_actions`` where the labels are
        not what was executed (recovery demos), else the labels themselves."""
        return self.extras.get(EXECUTED_ACTIONS, self.actions)

    @property
    def num_samples(self) -> int:
        if self.actions is None:
            return int(next(iter(self.obs.values())).shape[0]) - 1
        return int(self.actions.shape[0])

    def as_clip(self) -> Demo:
        """This demo as unlabelled footage: its camera images, seed and scene; no actions, states,
        rewards, dones or success."""
        keep = ("seed", "scene", "sim_backend")
        return Demo(
            None,
            None,
            {k: v for k, v in self.obs.items() if image_kind(k) is not None},
            None,
            None,
            {**{k: v for k, v in self.attrs.items() if k in keep}, "source": CLIP},
        )


class DatasetError(WorldgenError, ValueError):
    """A dataset that cannot be appended to or read as asked (names the file and the reason)."""


GZIP_LEVEL = 1  # images: fast deflate; level 4 saved ~4 % of the bytes for ~30 % more time


def _is_image(name: str, data: np.ndarray) -> bool:
    return image_kind(name) is not None and data.ndim >= 3


def _write_array(group: h5py.Group, name: str, data: np.ndarray) -> None:
    group.create_dataset(name, data=np.ascontiguousarray(data), track_times=False)


def _compressed_frame(frame: np.ndarray) -> bytes:
    """One chunk as HDF5's shuffle + deflate filter pipeline stores it."""
    raw = np.ascontiguousarray(frame).view(np.uint8).reshape(-1, frame.dtype.itemsize)
    return zlib.compress(raw.T.tobytes(), GZIP_LEVEL)


def _write_frames(obs: h5py.Group, next_obs: h5py.Group, name: str, frames: np.ndarray) -> None:
    """Images chunked per frame and compressed once: obs/<name>[t] and next_obs/<name>[t-1] share
    frame t's compressed chunk (written directly, so the pair costs one compression, not two)."""
    t = frames.shape[0] - 1
    chunks = [_compressed_frame(f) for f in frames]
    zero = (0,) * (frames.ndim - 1)
    for group, offset in ((obs, 0), (next_obs, 1)):
        ds = group.create_dataset(
            name,
            shape=(t, *frames.shape[1:]),
            dtype=frames.dtype,
            chunks=(1, *frames.shape[1:]),
            compression="gzip",
            compression_opts=GZIP_LEVEL,
            shuffle=True,
            track_times=False,
        )
        for i in range(t):
            ds.id.write_direct_chunk((i, *zero), chunks[i + offset])


def _json_attr(value: Any) -> Any:
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return "" if value is None else value


def _write_demo(group: h5py.Group, demo: Demo) -> None:
    t = demo.num_samples
    for key, arr in demo.obs.items():
        if arr.shape[0] != t + 1:
            raise ValueError(f"obs/{key} has {arr.shape[0]} rows, expected T+1 = {t + 1}")
    standard = {"actions": np.float32, "states": np.float64, "rewards": np.float32, "dones": np.uint8}
    for key, dtype in standard.items():
        if getattr(demo, key) is not None:  # a clip has none
            _write_array(group, key, getattr(demo, key).astype(dtype))
    for key, arr in sorted(demo.extras.items()):
        if arr.shape[0] != t:
            raise ValueError(f"{key} has {arr.shape[0]} rows, expected T = {t}")
        _write_array(group, key, arr)
    obs, next_obs = group.create_group("obs"), group.create_group("next_obs")
    for key, arr in sorted(demo.obs.items()):
        if _is_image(key, arr[1:]):
            _write_frames(obs, next_obs, key, arr)
        else:
            _write_array(obs, key, arr[:-1])
            _write_array(next_obs, key, arr[1:])
    group.attrs["num_samples"] = t
    for key, value in sorted(demo.attrs.items()):
        group.attrs[key] = _json_attr(value)


STANDARD_ARRAYS = ("actions", "states", "rewards", "dones")
# Where an Isaac Lab export keeps the flat simulator states, its ``states`` being Isaac Lab's nested form.
SIM_STATES = "sim_states"
HEADER_KEYS = ("env_args", "worldgen", "depth_range", "segmentation")


def open_dataset(path: str | Path) -> h5py.File:
    """The one way to open a dataset for reading. A missing file, a file that is not HDF5 (or is
    truncated) and one without robomimic's ``/data`` group are a :class:`DatasetError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(
            f"{path}: no such file" if not path.exists() else f"{path}: a folder, not a dataset"
        )
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise DatasetError(f"{path}: not a readable HDF5 file ({exc})") from None
    if "data" not in f:
        f.close()
        raise DatasetError(f"{path}: no /data group; not a robomimic-layout dataset")
    return f


def dataset_manifest(f: h5py.File) -> Manifest:
    """The manifest a worldgen dataset was written for (stored whole in ``/data`` attrs)."""
    try:
        info = json.loads(f["data"].attrs["worldgen"])
        return parse_manifest(info["manifest"], file=f"{f.filename}:/data.attrs['worldgen'].manifest")
    except (KeyError, ValueError) as exc:
        raise DatasetError(f"{f.filename}: no usable worldgen manifest in /data attrs ({exc})") from None


def read_header(f: h5py.File) -> dict[str, Any]:
    """A dataset's header (what :class:`DatasetWriter` takes), to write derived datasets with."""
    return {key: json.loads(f["data"].attrs[key]) for key in HEADER_KEYS}


def executed_actions(group: h5py.Group) -> h5py.Dataset:
    """A demo group's executed actions: ``executed_actions`` where they differ from the labels, else
    ``actions`` (see :attr:`Demo.executed_actions`)."""
    return group[EXECUTED_ACTIONS] if EXECUTED_ACTIONS in group else group["actions"]


def read_obs(group: h5py.Group, keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """A stored demo's T+1 observations of ``keys`` (every key when None): ``obs`` then the last
    ``next_obs``, undoing how :class:`DatasetWriter` splits them."""
    if keys is None:  # arrays only: an Isaac Lab export also has the group obs/datagen_info
        keys = [k for k, v in group["obs"].items() if isinstance(v, h5py.Dataset)]
    keys = list(keys)
    missing = [k for k in keys if k not in group["obs"]]
    if missing:
        hint = " (recorded without cameras?)" if any(image_kind(k) for k in missing) else ""
        have = sorted(group["obs"])
        raise DatasetError(
            f"{group.file.filename}: {group.name} has no observations {missing}{hint}; it has {have}"
        )
    return {k: np.concatenate([group["obs"][k][()], group["next_obs"][k][-1:]]) for k in keys}


@dataclass(frozen=True)
class DemoRecord:
    """What a demo is, read from its attributes; ``None`` where a field does not apply (a simulator demo
    has no parent; files written before this record stored "" and -1 there, read as ``None`` too)."""

    name: str
    num_samples: int
    seed: int
    success: bool
    source: str  # "sim" (expert or a recipe executed in the simulator), "world_model", "play" or "clip"
    recipe: str | None = None  # the name of the recipe that made a generated demo (world_models.recipes)
    parent: str | None = None  # the seed demo it was generated from
    branch_step: int | None = None  # the parent's step it starts from
    noise_seed: int | None = None
    model: str | None = None  # world-model checkpoint hash
    check_passed: bool | None = None  # None until worldgen check has judged it
    labeler: str | None = None  # whose corrective actions are the labels ("expert", "parent"), where chosen
    action_noise: float | None = None  # std of the noise on the executed actions (play, recipes)
    sample_spread: float | None = None  # m: an object's farthest centroid from the mean of several samples
    replay_faithful: bool | None = None  # its simulator replay stayed within tolerance of its prediction
    replay_success: bool | None = None  # its simulator replay met the success predicate
    # check -> {"verdict", "score", "threshold"}: what the gate said, check by check (None: not checked)
    check_scores: dict[str, dict[str, Any]] | None = field(default=None, hash=False)

    @classmethod
    def from_group(cls, group: h5py.Group) -> DemoRecord:
        return cls.from_attrs(group.name.rsplit("/", 1)[-1], group.attrs)

    @classmethod
    def from_attrs(cls, name: str, attrs: Mapping[str, Any]) -> DemoRecord:
        def text(key: str) -> str | None:
            value = attrs.get(key)
            return None if value is None or value == "" else str(value)

        def number(key: str) -> int | None:
            value = attrs.get(key)
            return None if value is None or int(value) < 0 else int(value)

        passed, faithful = attrs.get("check_passed"), attrs.get("replay_faithful")
        replayed, scores = attrs.get("replay_success"), attrs.get("check_scores")
        return cls(
            name=name,
            num_samples=int(attrs["num_samples"]),
            seed=int(attrs["seed"]),
            success=bool(attrs.get("success", False)),
            source=str(attrs.get("source", "sim")),
            recipe=text("recipe"),
            parent=text("parent"),
            branch_step=number("branch_step"),
            noise_seed=number("noise_seed"),
            model=text("model"),
            check_passed=None if passed is None else bool(passed),
            labeler=text("labeler"),
            action_noise=None if attrs.get("action_noise") is None else float(attrs["action_noise"]),
            sample_spread=None if attrs.get("sample_spread") is None else float(attrs["sample_spread"]),
            replay_faithful=None if faithful is None else bool(faithful),
            replay_success=None if replayed is None else bool(replayed),
            check_scores=None if scores is None else json.loads(scores),
        )


def read_scene(group: h5py.Group) -> dict[str, Any] | None:
    """The scene a demo was recorded in (``SceneSample.to_dict``), None where it was not stored."""
    scene = group.attrs.get("scene")
    return json.loads(scene) if isinstance(scene, str) else scene


def demo_record(f: h5py.File, name: str) -> DemoRecord:
    return DemoRecord.from_group(f["data"][name])


@dataclass(frozen=True)
class DatasetInfo:
    """A dataset's metadata, typed: what it was recorded for and how to read its images."""

    manifest: Manifest
    manifest_hash: str
    depth_range: dict[str, tuple[float, float]]  # camera -> (near, far) metres that depth 0..1 spans
    instances: list[dict[str, Any]]  # the segmentation ids' table
    masks: dict[str, list[str]]
    replay_tolerance: float | None = None  # m: the replay verification's tolerance, once it has run

    @property
    def cameras(self) -> list[str]:
        return sorted(self.depth_range)


def depth_ranges(f: h5py.File) -> dict[str, tuple[float, float]]:
    """Camera -> (near, far) metres that its stored depth 0..1 spans (no manifest parse needed)."""
    ranges = json.loads(f["data"].attrs.get("depth_range", "{}"))
    return {camera: (float(near), float(far)) for camera, (near, far) in ranges.items()}


def dataset_info(f: h5py.File) -> DatasetInfo:
    data = f["data"].attrs
    return DatasetInfo(
        manifest=dataset_manifest(f),
        manifest_hash=json.loads(data["worldgen"])["manifest_hash"],
        depth_range=depth_ranges(f),
        instances=json.loads(data.get("segmentation", "[]")),
        masks={m: demo_names(f, m) for m in f.get("mask", {})},
        replay_tolerance=float(data["replay_tolerance"]) if "replay_tolerance" in data else None,
    )


def update_attributes(path: str | Path, demos: dict[str, dict[str, Any]], data: dict[str, Any]) -> None:
    """Set attributes of a finished dataset's demos (``demos``: name -> attributes) and of ``/data``, on a
    copy renamed over the file, and rebuild the ``passed`` mask from the demos' ``check_passed``."""
    path = Path(path)
    tmp = temporary_beside(path)
    try:
        shutil.copy2(path, tmp)
        with h5py.File(tmp, "r+") as f:
            for name, attrs in demos.items():
                f["data"][name].attrs.update(attrs)
            f["data"].attrs.update(data)
            passed = [n for n in demo_names(f) if bool(f["data"][n].attrs.get("check_passed", False))]
            if "mask/passed" in f:
                del f["mask/passed"]
            f.create_dataset("mask/passed", data=np.array(passed, dtype="S"), track_times=False)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def flat_states(group: h5py.Group) -> h5py.Dataset:
    """A demo's flat simulator states (T, S): ``states``, or ``sim_states`` in an Isaac Lab export."""
    return group["states"] if isinstance(group["states"], h5py.Dataset) else group[SIM_STATES]


def read_demo(group: h5py.Group, obs_keys: Iterable[str] | None = None) -> Demo:
    """A stored demo as :class:`Demo`: T+1 observations (``obs``, then the last ``next_obs``) of
    ``obs_keys`` (every key when None), its attributes as stored (so appending it elsewhere writes the
    same bytes) and any extra arrays."""
    obs = read_obs(group, obs_keys)
    extras = {
        k: group[k][()]
        for k in group
        if k not in (*STANDARD_ARRAYS, SIM_STATES) and isinstance(group[k], h5py.Dataset)
    }
    labelled = "actions" in group  # a clip is images alone
    return Demo(
        group["actions"][()] if labelled else None,
        flat_states(group)[()] if labelled else None,
        obs,
        group["rewards"][()] if labelled else None,
        group["dones"][()] if labelled else None,
        {k: v for k, v in group.attrs.items() if k != "num_samples"},
        extras,
    )


def demo_index(name: str) -> int:
    """The ``i`` of ``demo_<i>``: demos sort by it, as robomimic sorts them."""
    return int(name.split("_")[1])


def demo_names(f: h5py.File, mask: str | None = None) -> list[str]:
    """The demos of a dataset, or of one of its masks, in index order."""
    if mask is None:
        names = [k for k in f["data"] if k.startswith("demo_")]
    elif f"mask/{mask}" not in f:
        raise DatasetError(f"{f.filename}: no mask {mask!r}; have {sorted(f.get('mask', {}))}")
    else:
        names = [n.decode() for n in f[f"mask/{mask}"][()]]
    return sorted(names, key=demo_index)


def dataset_digest(f: h5py.File, names: list[str]) -> str:
    """Identifies training data: the dataset's manifest and generator record plus the chosen demos' names
    and attributes (a regenerated demo records another noise seed, model hash or verdict)."""
    digest = hashlib.sha256(f["data"].attrs["worldgen"].encode())
    for name in names:
        digest.update(name.encode())
        attrs = f["data"][name].attrs
        digest.update(repr(sorted((k, str(attrs[k])) for k in attrs)).encode())
    return digest.hexdigest()


class DatasetWriter:
    """Appends demos one by one; creates the file or resumes one written for the same manifest."""

    def __init__(self, path: str | Path, header: dict[str, Any]):
        """``header``: env_args, worldgen (with manifest_hash), depth_range and segmentation."""
        self.path = Path(path)
        self.parts = self.path.with_name(self.path.name + ".parts")
        self.header = header
        self.demos: dict[str, dict[str, Any]] = {}  # name -> {"file": relative shard or "", "attrs": ...}
        self.discarded: list[dict[str, Any]] = []
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"{self.path}: its folder cannot be made ({exc.strerror})") from None
        if self.path.exists():
            self._resume()

    def _resume(self) -> None:
        try:
            f = open_dataset(self.path)
        except DatasetError:
            if not self.parts.is_dir():
                raise
            self._resume_from_shards()  # the main file was damaged; every complete demo is in a shard
            return
        with f:
            info = json.loads(f["data"].attrs.get("worldgen", "{}"))
            want = self.header["worldgen"]["manifest_hash"]
            if info.get("manifest_hash") != want:
                raise DatasetError(
                    f"{self.path}: written for manifest {str(info.get('manifest_hash'))[:12]}, "
                    f"not {want[:12]}; choose another output"
                )
            for key, default in (("domain", "source"), ("transfer_model", None)):
                have, need = info.get(key, default), self.header["worldgen"].get(key, default)
                if have != need:  # e.g. demos painted by another transfer checkpoint
                    raise DatasetError(
                        f"{self.path}: written with {key} {have}, not {need}; choose another output"
                    )
            self.discarded = json.loads(f["data"].attrs.get("discarded", "[]"))
            for name in demo_names(f):
                link = f["data"].get(name, getlink=True)
                shard = link.filename if isinstance(link, h5py.ExternalLink) else ""
                try:
                    attrs = dict(f["data"][name].attrs)
                except (KeyError, OSError):  # a shard gone or damaged: that demo is written again
                    continue
                self.demos[name] = {"file": shard, "attrs": attrs}

    def _resume_from_shards(self) -> None:
        """Resume from ``.parts`` alone: the demos of every shard that reads back (the list of discarded
        seeds went with the main file: those seeds are tried again and give the same verdict)."""
        for shard in sorted(self.parts.glob("*.hdf5")):
            try:
                with h5py.File(shard, "r") as f:
                    found = {name: dict(group.attrs) for name, group in f["data"].items()}
            except (KeyError, OSError):
                continue
            for name, attrs in found.items():
                self.demos[name] = {"file": f"{self.parts.name}/{shard.name}", "attrs": attrs}

    # -- queries ---------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.demos)

    def done_seeds(self, source: str = "sim") -> set[int]:
        """Seeds already written as ``source`` demos, or discarded."""
        seeds = {int(d["attrs"]["seed"]) for d in self.demos.values() if d["attrs"].get("source") == source}
        return seeds | {int(d["seed"]) for d in self.discarded}

    def records(self) -> list[DemoRecord]:
        """What each demo written so far is (resumed ones included)."""
        return [DemoRecord.from_attrs(n, d["attrs"]) for n, d in self.demos.items()]

    def next_index(self) -> int:
        return 1 + max((demo_index(n) for n in self.demos), default=-1)

    # -- writing ---------------------------------------------------------------------------------

    def append(self, demo: Demo, name: str | None = None) -> str:
        """Write one demo as a shard, then republish the main file. Returns the demo's name."""
        name = name or f"demo_{self.next_index()}"
        if name in self.demos:
            raise DatasetError(f"{self.path}: {name} already exists")
        self.parts.mkdir(exist_ok=True)
        shard = self.parts / f"{name}.hdf5"
        with replaced_atomically(shard) as tmp, h5py.File(tmp, "w", track_order=True) as f:
            _write_demo(f.create_group(f"data/{name}"), demo)
        attrs = {"num_samples": demo.num_samples, **{k: _json_attr(v) for k, v in demo.attrs.items()}}
        self.demos[name] = {"file": f"{self.parts.name}/{shard.name}", "attrs": attrs}
        self._publish()
        return name

    def discard(self, seed: int, reason: str) -> None:
        """Record a trajectory that was not written (e.g. the simulation diverged)."""
        self.discarded.append({"seed": int(seed), "reason": reason})
        self._publish()

    def _masks(self) -> dict[str, list[str]]:
        names = sorted(self.demos, key=demo_index)
        attrs = {n: self.demos[n]["attrs"] for n in names}
        # Expert demos; a generation recipe executed in the simulator (its ceiling) is not one.
        seed = [n for n in names if attrs[n].get("source") == "sim" and not attrs[n].get("recipe", "")]
        synthetic = [n for n in names if attrs[n].get("source") == "world_model"]
        # Non-expert simulator rollouts ("play"): world-model training data, never policy labels.
        play = [n for n in names if attrs[n].get("source") == "play"]
        passed = [n for n in names if bool(attrs[n].get("check_passed", False))]
        usable = [n for n in seed if bool(attrs[n].get("success", False))]
        # Every tenth successful seed demo validates; with two to nine, the last one does.
        valid = [n for i, n in enumerate(usable) if i % 10 == 9]
        if not valid and len(usable) > 1:
            valid = usable[-1:]
        train = [n for n in usable if n not in valid]
        return {
            "train": train,
            "valid": valid,
            "seed": seed,
            "synthetic": synthetic,
            "passed": passed,
            "play": play,
        }

    def _write_header(self, f: h5py.File) -> h5py.Group:
        data = f.create_group("data")
        data.attrs["total"] = int(sum(int(d["attrs"]["num_samples"]) for d in self.demos.values()))
        for key in HEADER_KEYS:
            data.attrs[key] = json.dumps(self.header[key], sort_keys=True)
        data.attrs["discarded"] = json.dumps(sorted(self.discarded, key=lambda d: d["seed"]), sort_keys=True)
        for mask, names in self._masks().items():
            f.create_dataset(f"mask/{mask}", data=np.array(names, dtype="S"), track_times=False)
        return data

    def _publish(self) -> None:
        """Rewrite the main file (links + attrs + masks) under a temporary name and rename it."""
        embedded = [n for n, d in self.demos.items() if not d["file"]]
        if embedded:
            # Demos inside an earlier finalized file: a hard link keeps that file as a shard while
            # the main file is replaced.
            self.parts.mkdir(exist_ok=True)
            base = self.parts / "base.hdf5"
            if not base.exists():
                os.link(self.path, base)
            for n in embedded:
                self.demos[n]["file"] = f"{self.parts.name}/{base.name}"
        with replaced_atomically(self.path) as tmp, h5py.File(tmp, "w") as f:
            data = self._write_header(f)
            for name in sorted(self.demos, key=demo_index):
                data[name] = h5py.ExternalLink(self.demos[name]["file"], f"/data/{name}")

    def finalize(self) -> None:
        """Copy every demo into one self-contained file and remove the shards."""
        if not self.parts.exists():
            if not self.path.exists():
                self._publish()
            return
        with (
            replaced_atomically(self.path) as tmp,
            h5py.File(tmp, "w") as out,
            h5py.File(self.path, "r") as src,
        ):
            data = self._write_header(out)
            for name in sorted(self.demos, key=demo_index):
                src.copy(src[f"data/{name}"], data, name=name)
        shutil.rmtree(self.parts)
        for d in self.demos.values():
            d["file"] = ""


class DatasetReader:
    """Read a worldgen (or any robomimic-layout) dataset."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.file = open_dataset(self.path)
        self.data = self.file["data"]

    def __enter__(self) -> DatasetReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.file.close()

    def attr_json(self, key: str, default: Any = None) -> Any:
        value = self.data.attrs.get(key)
        return default if value is None else json.loads(value)

    @property
    def names(self) -> list[str]:
        return demo_names(self.file)

    def mask(self, name: str) -> list[str]:
        return demo_names(self.file, name)

    def iter_demos(self, mask: str | None = None) -> Iterator[tuple[str, h5py.Group]]:
        """(name, group) for each demo, in index order, optionally restricted to a mask."""
        for name in demo_names(self.file, mask):
            yield name, self.data[name]

    def summary(self) -> dict[str, Any]:
        demos = list(self.iter_demos())
        labelled = [(n, g) for n, g in demos if g.attrs.get("source") != CLIP]  # clips have no success
        first = demos[0][1] if demos else None
        obs = {k: list(first["obs"][k].shape[1:]) for k in first["obs"]} if first is not None else {}
        return {
            "file": str(self.path),
            "demos": len(demos),
            "samples": int(sum(int(g.attrs["num_samples"]) for _, g in demos)),
            "success_rate": float(np.mean([bool(g.attrs.get("success", False)) for _, g in labelled]))
            if labelled
            else 0.0,
            "sources": sorted({str(g.attrs.get("source", "")) for _, g in demos}),
            "masks": {k: len(self.file[f"mask/{k}"]) for k in self.file.get("mask", {})},
            "action_dim": next((int(g["actions"].shape[1]) for _, g in demos if "actions" in g), 0),
            "obs": obs,
            "discarded": self.attr_json("discarded", []),
            "manifest_hash": self.attr_json("worldgen", {}).get("manifest_hash", ""),
        }


def dataset_header(manifest, instances: list[dict], manifest_text: str) -> dict[str, Any]:
    """The /data attributes of a dataset written for ``manifest``."""
    return {
        "env_args": {
            "env_name": f"worldgen/{manifest.name}",
            "type": ENV_TYPE_ISAAC_LAB,
            "env_kwargs": {
                "manifest": manifest.name,
                "control_hz": manifest.control_hz,
                "horizon": manifest.horizon,
                "action_space": manifest.embodiment.action_space,
            },
        },
        "worldgen": {
            "manifest_hash": manifest.content_hash(),
            "manifest": manifest_text,
            "code_version": __version__,
        },
        "depth_range": {c.name: [c.near, c.far] for c in manifest.cameras},
        "segmentation": instances,
    }


def restamp_dataset(source: str | Path, output: str | Path, manifest: Manifest) -> None:
    """Write ``source``'s demos and masks to ``output`` under ``manifest``, whose scene must be the one
    they were recorded in (:meth:`Manifest.scene_hash`): a run whose world-model, generation, checks,
    policy or evaluation sections changed keeps its recorded seed demos. Chunks are copied as stored;
    ``output`` appears whole or not at all (it may be ``source``)."""
    source, output = Path(source), Path(output)
    with open_dataset(source) as f:
        recorded = dataset_manifest(f)
        if recorded.scene_hash() != manifest.scene_hash():
            raise DatasetError(
                f"{source}: recorded for another scene than manifest {manifest.name!r} describes "
                "(only its seeds, world_model, branching, checks, policy and evaluation may differ)"
            )
        output.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary_beside(output)
        with h5py.File(tmp, "w") as out:
            data = out.create_group("data")
            for key, value in f["data"].attrs.items():
                data.attrs[key] = value
            info = json.loads(f["data"].attrs["worldgen"])
            info.update(manifest_hash=manifest.content_hash(), manifest=manifest_text(manifest))
            data.attrs["worldgen"] = json.dumps(info, sort_keys=True)
            for name in demo_names(f):
                f.copy(f["data"][name], data, name=name)
            if "mask" in f:
                f.copy(f["mask"], out, name="mask")
    os.replace(tmp, output)


def _attrs_of(obj: h5py.HLObject) -> dict[str, Any]:
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in obj.attrs.items()}


def hdf5_differences(a: str | Path, b: str | Path, name: str = "") -> list[str]:
    """Where two HDF5 files differ, one line each: a group or array only in one, attributes that differ
    (named), arrays whose dtype, shape or values differ (NaN equal to NaN); ``name`` prefixes the lines.
    None: the same content."""
    found: list[str] = []
    try:
        with h5py.File(a, "r") as left, h5py.File(b, "r") as right:
            items: dict[str, tuple[h5py.HLObject, ...]] = {"/": (left, right)}
            paths = [set(), set()]
            left.visititems(lambda p, _: paths[0].add(p))
            right.visititems(lambda p, _: paths[1].add(p))
            for path in sorted(paths[0] ^ paths[1]):
                found.append(
                    f"{name}:/{path}: only in {'the reference' if path in paths[0] else 'the other'}"
                )
            for path in sorted(paths[0] & paths[1]):
                items[path] = (left[path], right[path])
            for path, (x, y) in items.items():
                if _attrs_of(x) != _attrs_of(y):
                    keys = sorted(
                        k for k in set(x.attrs) | set(y.attrs) if _attrs_of(x).get(k) != _attrs_of(y).get(k)
                    )
                    found.append(f"{name}:/{path}: attributes differ ({', '.join(keys)})")
                if isinstance(x, h5py.Dataset) and isinstance(y, h5py.Dataset):
                    u, v = x[()], y[()]
                    if (
                        u.dtype != v.dtype
                        or u.shape != v.shape
                        or not np.array_equal(u, v, equal_nan=u.dtype.kind in "fc")
                    ):
                        found.append(f"{name}:/{path}: values differ")
    except OSError as exc:
        found.append(f"{name}: does not read back ({exc})")
    return found
