"""LeRobot's own reader on worldgen's LeRobot export. LeRobot 0.6.1 needs Python >= 3.12 and a torch that
the main environment does not have, so it runs in its own environment (``make test-interop`` builds
``.venv-interop``) through ``tests/interop/read_lerobot.py``; these tests are marked ``interop`` and
left out of ``make test``."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
from worldgen.apps.cli import main
from worldgen.dataset import demo_names, open_dataset

from .conftest import ROOT
from .test_export import hdf5_frames

pytestmark = pytest.mark.interop
INTEROP_PYTHON = ROOT / ".venv-interop" / "bin" / "python"
READER = ROOT / "tests" / "interop" / "read_lerobot.py"


def read_with_lerobot(root, indices: list[int], tmp_path) -> tuple[dict, dict[str, np.ndarray]]:
    """``LeRobotDataset(repo_id, root=root)`` offline in the interop environment: its summary, and
    every tensor of the items at ``indices``."""
    if not INTEROP_PYTHON.exists():
        pytest.fail(f"{INTEROP_PYTHON} is missing: run `make test-interop`, which builds it")
    out = tmp_path / "read.npz"
    cmd = [str(INTEROP_PYTHON), str(READER), str(root), str(out), *map(str, indices)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    print("LeRobotDataset read:", json.dumps({k: v for k, v in summary.items() if k != "tasks"}))
    return summary, dict(np.load(out))


@pytest.mark.parametrize("videos", [False, True], ids=["images", "videos"])
def test_lerobot_reads_the_export(recovered, tmp_path, videos):
    out = tmp_path / "push"
    args = ["export", str(recovered), "--format", "lerobot", "-o", str(out)]
    assert main(args + (["--videos"] if videos else [])) == 0
    with open_dataset(recovered) as f:
        names = demo_names(f)
        lengths = {n: int(f["data"][n].attrs["num_samples"]) for n in names}
        synthetic = set(demo_names(f, "synthetic"))
    summary, _ = read_with_lerobot(out, [0], tmp_path)
    assert summary["len"] == sum(lengths.values())
    assert summary["num_episodes"] == len(names) and sorted(summary["demos"]) == sorted(names)
    assert summary["lengths"] == [lengths[n] for n in summary["demos"]]
    assert summary["tasks"]["0"] == "Push a blue block into the goal region with the closed gripper."
    assert summary["video_keys"] == (["observation.images.front"] if videos else [])
    starts = np.cumsum([0, *summary["lengths"]])
    # First and last frame of the first two episodes and of the first world-model episode.
    picks = {}  # global index -> (demo, frame)
    first_synthetic = next(i for i, n in enumerate(summary["demos"]) if n in synthetic)
    for e in (0, 1, first_synthetic):
        name = summary["demos"][e]
        for t in (0, lengths[name] - 1):
            picks[int(starts[e] + t)] = (name, t)
    _, items = read_with_lerobot(out, sorted(picks), tmp_path)
    for index, (name, t) in picks.items():
        expected = hdf5_frames(recovered, name)
        for key in ("observation.state", "observation.environment_state", "action"):
            np.testing.assert_array_equal(items[f"{index}/{key}"], expected[key][t])
        assert float(items[f"{index}/next.reward"]) == expected["next.reward"][t]
        assert int(items[f"{index}/frame_index"]) == t and int(items[f"{index}/index"]) == index
        # Depth in metres and segmentation ids come back exactly (channel first).
        np.testing.assert_array_equal(
            items[f"{index}/observation.images.front_depth"][0],
            expected["observation.images.front_depth"][t][..., 0],
        )
        np.testing.assert_array_equal(
            items[f"{index}/observation.images.front_segmentation"][0],
            expected["observation.images.front_segmentation"][t][..., 0],
        )
        rgb = items[f"{index}/observation.images.front"].transpose(1, 2, 0).astype(np.float64)
        if not videos:  # PNG: floats in [0, 1] of the exact bytes
            np.testing.assert_array_equal(
                np.round(rgb * 255).astype(np.uint8), expected["observation.images.front"][t]
            )
        elif name not in synthetic:  # AV1 is lossy; the frame is the same picture (a simulator render)
            mse = np.mean((rgb - expected["observation.images.front"][t]) ** 2)
            assert 10 * np.log10(255**2 / mse) > 30, (name, t)
