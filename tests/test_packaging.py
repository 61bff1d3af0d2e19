"""``pip install .`` (not editable): the installed copy alone validates the shipped scenarios, registers
them as gymnasium environments and steps one, with no checkout on the path."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from .conftest import ROOT

INSTALLED_CHECK = """
import pathlib, sys
import gymnasium, worldgen, worldgen.envs
here = pathlib.Path(worldgen.__file__).resolve()
assert here.is_relative_to(pathlib.Path(sys.argv[1]).resolve()), here
env = gymnasium.make("worldgen/push_to_target", cameras=False)
obs, _ = env.reset(seed=3)
obs, reward, terminated, truncated, info = env.step(env.action_space.sample() * 0)
print("stepped", sorted(obs)[:2], float(reward))
"""


def test_a_plain_install_carries_scenarios_and_registers_environments(tmp_path):
    # Built from a copy, as from an sdist: setuptools writes build/ beside the sources it builds.
    source, target = tmp_path / "source", tmp_path / "site"
    source.mkdir()
    for part in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / part, source / part)
    for package in ("exts", "world_models", "policies"):
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation"]
    build = subprocess.run(
        [*pip, "--target", str(target), str(source)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert build.returncode == 0, build.stderr
    assert sorted(p.name for p in (target / "worldgen" / "scenarios").glob("*.yaml")) == [
        "bin_pick_occluded.yaml",
        "pick_cube.yaml",
        "push_to_target.yaml",
    ]
    # The installed copy first on the path; dependencies from this environment; the checkout nowhere.
    env = {**os.environ, "PYTHONPATH": str(target), "PYTHONWARNINGS": "ignore"}
    shipped = sorted(str(p) for p in (target / "worldgen" / "scenarios").glob("*.yaml"))
    validate = subprocess.run(
        [sys.executable, "-m", "worldgen.apps.cli", "validate", *shipped],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert validate.returncode == 0 and validate.stdout.count(": ok") == 3, validate.stderr
    run = subprocess.run(
        [sys.executable, "-c", INSTALLED_CHECK, str(target)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert run.returncode == 0 and "stepped" in run.stdout, run.stderr[-2000:]
