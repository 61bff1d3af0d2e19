from __future__ import annotations

import subprocess
import sys
import tomllib

import pytest
from worldgen.apps.window import AppState, WorldgenApp

from .conftest import ROOT


def test_extension_manifest_parses_and_names_kit_dependencies():
    link = ROOT / "exts" / "worldgen" / "config" / "extension.toml"
    assert link.is_symlink() and not Path_is_absolute(link)
    assert link.resolve() == (ROOT / "extension.toml").resolve()
    data = tomllib.loads(link.read_text())
    deps = set(data["dependencies"])
    assert {
        "omni.kit.uiapp",
        "omni.ui",
        "omni.usd",
        "omni.replicator.core",
        "omni.warp.core",
        "isaacsim.core.api",
    } <= deps
    assert {m["name"] for m in data["python"]["module"]} >= {"worldgen", "worldgen.kit"}


def Path_is_absolute(link):  # noqa: N802
    import os

    return os.path.isabs(os.readlink(link))


def test_import_worldgen_pulls_in_no_kit():
    code = (
        "import sys, worldgen, worldgen.apps.cli, worldgen.stage, worldgen.apps.window, worldgen.manifest,"
        " worldgen.envs, worldgen.dataset, worldgen.pipeline, worldgen.sim.newton, worldgen.sim.isaac;"
        "bad=[m for m in sys.modules if m.split('.')[0] in ('omni','isaacsim','carb')];"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_kit_layer_fails_clearly_outside_kit():
    with pytest.raises(ImportError, match="inside Isaac Sim"):
        import worldgen.kit  # noqa: F401


def test_app_controller_validates_and_compiles(tmp_path):
    app = WorldgenApp(
        AppState(manifest_path=str(ROOT / "scenarios" / "pick_cube.yaml"), seed=2, output_dir=str(tmp_path))
    )
    assert app.validate() and "valid" in app.state.status
    path = app.compile()
    assert path is not None and path.endswith("pick_cube_seed2.usda")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\n")
    app.state.manifest_path = str(bad)
    assert not app.validate() and app.state.errors and app.compile() is None


def test_isaac_backend_fails_clearly_outside_kit():
    from worldgen.manifest import load_manifest
    from worldgen.sim.isaac import IsaacBackend

    with pytest.raises(RuntimeError, match="inside Isaac Sim"):
        IsaacBackend(load_manifest(ROOT / "scenarios" / "pick_cube.yaml"))
