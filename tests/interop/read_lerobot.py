"""Run by the interop environment (LeRobot 0.6.1 on Python 3.12, ``make test-interop``): load a worldgen
LeRobot export with LeRobot's own ``LeRobotDataset``, offline, and write what it read for the test to
compare with the HDF5 file it came from.

Usage: python read_lerobot.py ROOT OUT.npz INDEX [INDEX ...]
Prints a JSON summary; OUT.npz holds ``<index>/<key>`` for every tensor of each item asked for.
"""

import json
import os
import sys

os.environ["HF_HUB_OFFLINE"] = "1"  # a local folder must load without the hub

import numpy as np  # noqa: E402
from lerobot.datasets.lerobot_dataset import LeRobotDataset  # noqa: E402


def main() -> None:
    root, out, indices = sys.argv[1], sys.argv[2], [int(i) for i in sys.argv[3:]]
    ds = LeRobotDataset(
        "worldgen/export", root=root, video_backend="pyav", return_uint8=True, depth_output_unit="m"
    )
    arrays, tasks = {}, {}
    for i in indices:
        item = ds[i]
        for key, value in item.items():
            if hasattr(value, "numpy"):
                arrays[f"{i}/{key}"] = value.numpy()
        tasks[i] = item["task"]
    np.savez(out, **arrays)
    episodes = ds.meta.episodes
    summary = {
        "len": len(ds),
        "num_episodes": ds.num_episodes,
        "fps": ds.fps,
        "features": sorted(ds.features),
        "camera_keys": ds.meta.camera_keys,
        "video_keys": ds.meta.video_keys,
        "lengths": [int(n) for n in episodes["length"]],
        "demos": list(episodes["worldgen/demo"]),
        "sources": list(episodes["worldgen/source"]),
        "tasks": tasks,
        "stats_keys": sorted(ds.meta.stats),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
