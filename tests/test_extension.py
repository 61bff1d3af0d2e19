"""The Kit extension's structure: its manifest, its imports, its refusals outside Isaac Sim, the Replicator
frame conversion, and the window's lifecycle against stand-ins of the Kit modules (``kit_standins/``).

The lifecycle test is structural: it checks that ``on_shutdown`` undoes ``on_startup`` and that the
callbacks reach the controller; it is no proof that the window renders inside Isaac Sim, which cannot
be installed here."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest
from worldgen.manifest import load_manifest
from worldgen.sim.base import instance_table
from worldgen.sim.isaac import replicator_frame

from .conftest import PUSH, ROOT

EXT_ROOT = ROOT / "exts" / "worldgen"
STANDINS = Path(__file__).parent / "kit_standins"
KIT_MODULES = ("omni", "carb")


def _extension_toml() -> dict:
    return tomllib.loads((EXT_ROOT / "config" / "extension.toml").read_text())


def test_extension_manifest_is_one_file_with_complete_package_keys():
    link = EXT_ROOT / "config" / "extension.toml"
    assert link.is_symlink() and not os.path.isabs(os.readlink(link))
    assert link.read_bytes() == (ROOT / "extension.toml").read_bytes()
    data = _extension_toml()
    package = data["package"]
    for key in ("title", "version", "description", "category", "keywords", "readme", "changelog", "icon"):
        assert package.get(key), key
    assert package["version"] == __import__("worldgen").__version__
    for key in ("readme", "changelog", "icon", "preview_image"):  # relative to the extension root
        assert (EXT_ROOT / package[key]).is_file(), package[key]
    for key in ("icon", "preview_image"):
        assert (EXT_ROOT / package[key]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "## [0.1.0]" in (EXT_ROOT / package["changelog"]).read_text()
    assert {"omni.ui", "omni.usd", "omni.kit.menu.utils", "omni.replicator.core"} <= set(data["dependencies"])


def test_every_python_module_and_test_module_resolves_to_a_file():
    data = _extension_toml()
    for module in [m["name"] for m in data["python"]["module"]]:
        path = EXT_ROOT.joinpath(*module.split("."))
        assert path.with_suffix(".py").is_file() or (path / "__init__.py").is_file(), module
    for test in data["test"]:
        for pattern in test["pythonTests"]["include"]:
            package = EXT_ROOT.joinpath(*pattern.removesuffix(".*").split("."))
            assert (package / "__init__.py").is_file(), pattern
    settings = data["settings"]["exts"]["worldgen"]
    assert set(settings) == {"default_scenario", "output_dir", "default_backend", "python"}
    assert (EXT_ROOT / settings["default_scenario"]).is_file()
    assert settings["default_backend"] in ("newton", "isaac")
    requirements = " ".join(data["python"]["pipapi"]["requirements"])
    assert "ruamel.yaml" in requirements and "pydantic" in requirements


def test_import_worldgen_pulls_in_no_kit():
    code = (
        "import sys, worldgen, worldgen.apps.cli, worldgen.stage, worldgen.apps.window, worldgen.apps.jobs,"
        " worldgen.apps.manifest_editor, worldgen.preview, worldgen.manifest, worldgen.envs,"
        " worldgen.dataset, worldgen.pipeline, worldgen.sim.newton, worldgen.sim.isaac;"
        "bad=[m for m in sys.modules if m.split('.')[0] in ('omni','isaacsim','carb')];"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


@pytest.mark.parametrize(
    "module", ["worldgen.kit", "worldgen.kit.extension", "worldgen.kit.replicator_writer"]
)
def test_kit_layer_refuses_outside_kit_in_one_sentence(module):
    out = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True)
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-1]
    assert (
        last.startswith("ImportError: worldgen.kit runs inside Isaac Sim") and "isaacsim --ext-folder" in last
    )
    assert "During handling" not in out.stderr  # one exception, not a chain


def test_seed_with_the_isaac_backend_refuses_outside_isaac_sim(tmp_path):
    exe = shutil.which("worldgen", path=str(Path(sys.executable).parent))
    out = subprocess.run(
        [exe, "seed", str(PUSH), "-o", str(tmp_path / "d.hdf5"), "--backend", "isaac"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and "needs Isaac Sim" in out.stderr and "python.sh" in out.stderr
    assert list(tmp_path.iterdir()) == []


def test_isaac_backend_fails_clearly_outside_kit():
    from worldgen.sim.isaac import IsaacBackend

    with pytest.raises(RuntimeError, match="inside Isaac Sim"):
        IsaacBackend(load_manifest(PUSH))


def test_replicator_outputs_become_worldgen_frames():
    manifest = load_manifest(PUSH)
    table = instance_table(manifest)
    spec = manifest.cameras[0]
    block = next(r["id"] for r in table if r["name"] == "block")
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 255
    depth = np.full((4, 5), 1.0, np.float32)
    depth[0, 0], depth[0, 1] = np.inf, spec.near  # nothing hit; the near plane
    ids = np.zeros((4, 5), np.uint32)
    ids[1, :2], ids[2, 2], ids[3, 3] = 7, 9, 42  # the block's mesh, the table, an id with no label
    labels = {"7": "/World/Objects/block/mesh", 9: "/World/Table", "3": "/Replicator/Ref"}
    legacy = {"rgb": rgba, "depth": depth, "segmentation": {"data": ids, "info": {"idToLabels": labels}}}
    frame = replicator_frame(spec, legacy, table)
    assert frame.rgb.shape == (4, 5, 3) and frame.rgb.dtype == np.uint8 and (frame.rgb[..., 0] == 200).all()
    assert frame.depth.shape == (4, 5, 1) and frame.depth[0, 0, 0] == 1.0 and frame.depth[0, 1, 0] == 0.0
    expected = (1.0 - spec.near) / (spec.far - spec.near)
    assert np.isclose(frame.depth[2, 2, 0], expected)
    seg = frame.seg[..., 0]
    assert (seg[1, :2] == block).all() and seg[2, 2] == 2 and seg[3, 3] == 0 and seg[0, 0] == 0
    flattened = {"segmentation": {"data": ids, "idToLabels": labels}}  # the renderProduct layout
    assert np.array_equal(replicator_frame(spec, flattened, table).seg, frame.seg)


@pytest.fixture
def kit_standins(monkeypatch):
    """The stand-in Kit modules on the path; every module they and worldgen.kit load is dropped after."""
    monkeypatch.syspath_prepend(str(STANDINS))
    yield
    for name in list(sys.modules):
        if name.split(".")[0] in KIT_MODULES or name.startswith("worldgen.kit"):
            del sys.modules[name]


def test_window_lifecycle_is_symmetric_against_standins(kit_standins, tmp_path):
    import carb.eventdispatcher
    import carb.settings
    import omni.kit.app
    import omni.kit.menu.utils
    import omni.ui as ui
    import omni.usd
    from worldgen.apps.jobs import CANCELLED, RUNNING
    from worldgen.kit.extension import WorldgenExtension

    root = tmp_path / "ext"
    (root / "worldgen").mkdir(parents=True)
    shutil.copy(PUSH, root / "worldgen" / "push.yaml")
    omni.kit.app.EXTENSION_PATHS["worldgen-0.1.0"] = str(root)
    carb.settings.VALUES.update(
        {
            "/exts/worldgen/default_scenario": "worldgen/push.yaml",
            "/exts/worldgen/output_dir": str(tmp_path / "out"),
        }
    )

    extension = WorldgenExtension()
    extension.on_startup("worldgen-0.1.0")
    window = ui.WINDOWS[-1]
    assert window.title == "worldgen" and window.visible and not window.destroyed
    assert [item.name for item in omni.kit.menu.utils.MENUS["Window"]] == ["worldgen"]
    assert len(carb.eventdispatcher.OBSERVERS) == 1
    assert "valid, hash" in extension._status.text  # the default scenario opened

    omni.kit.menu.utils.MENUS["Window"][0].onclick_fn()  # the menu entry toggles the window
    assert not window.visible
    omni.kit.menu.utils.MENUS["Window"][0].onclick_fn()

    mass = extension._field_models["task.objects[0].mass"]
    mass.set_value("-1")
    mass.end_edit()  # an edit reaches the controller; its problem is drawn under the field
    assert "problem" in extension._status.text
    assert any("greater than 0" in label.text for label in ui.LABELS)
    ui.BUTTONS["Undo"][-1]()
    assert "valid, hash" in extension._status.text

    ui.BUTTONS["Compile and open"][-1]()
    assert omni.usd.OPENED and omni.usd.OPENED[-1].endswith("push_to_target_seed0.usda")

    extension._preview_seeds.model.set_value("0-1")
    ui.BUTTONS["Preview"][-1]()
    job = extension._app.jobs["preview"]
    deadline = time.monotonic() + 120
    while job.state == RUNNING and time.monotonic() < deadline:
        carb.eventdispatcher.get_eventdispatcher().dispatch(omni.kit.app.GLOBAL_EVENT_UPDATE)
        time.sleep(0.6)
    carb.eventdispatcher.get_eventdispatcher().dispatch(omni.kit.app.GLOBAL_EVENT_UPDATE)
    provider = extension._preview_provider
    assert provider.size is not None and len(provider.data) == provider.size[0] * provider.size[1] * 4

    extension._seed_count.model.set_value(20)
    ui.BUTTONS["Record seeds"][-1]()
    recording = extension._app.jobs["seeds"]
    assert recording.state == RUNNING

    extension.on_shutdown()  # undoes on_startup item by item
    assert window.destroyed and extension._window is None
    assert "Window" not in omni.kit.menu.utils.MENUS
    assert len(carb.eventdispatcher.OBSERVERS) == 0
    assert recording.state == CANCELLED and not recording.work_folder.exists()


def _replicator_payload(manifest, table, obs, t):
    """Frame ``t`` of a recorded demo as Replicator's annotators hand it to a writer (renderProduct layout):
    RGBA, metric depth (inf where nothing is hit) and instance ids of Replicator's own numbering with
    ``idToLabels`` naming a prim under each worldgen instance."""
    products = {}
    for spec in manifest.cameras:
        rgb = obs[f"{spec.name}_rgb"][t]
        depth = obs[f"{spec.name}_depth"][t][..., 0].astype(np.float64)
        seg = obs[f"{spec.name}_seg"][t][..., 0].astype(np.uint32)
        metric = np.where(depth >= 1.0, np.inf, spec.near + depth * (spec.far - spec.near)).astype(np.float32)
        labels = {str(row["id"] + 100): f"{row['prim']}/geometry" if row["prim"] else "" for row in table}
        products[spec.name] = {
            "rgb": {"data": np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=-1)},
            "distance_to_image_plane": {"data": metric},
            "instance_segmentation": {"data": seg + 100, "idToLabels": labels},
        }
    return {"renderProducts": products}


def test_replicator_writer_writes_the_layout_the_newton_path_writes(kit_standins, tmp_path):
    import omni.replicator.core as rep
    from worldgen.dataset import DatasetReader, DatasetWriter, dataset_header, read_obs
    from worldgen.envs import WorldgenEnv
    from worldgen.kit.replicator_writer import WorldgenWriter
    from worldgen.manifest import manifest_text
    from worldgen.pipeline import record_expert_episode

    assert rep.WriterRegistry.get("WorldgenWriter") is WorldgenWriter
    manifest = load_manifest(PUSH).model_copy(update={"horizon": 32})  # perturb branches start at 10 and 30
    env = WorldgenEnv(manifest, cameras=True)
    demo = record_expert_episode(env, 0).demo
    table = instance_table(manifest)
    newton = DatasetWriter(tmp_path / "newton.hdf5", dataset_header(manifest, table, manifest_text(manifest)))
    newton.append(demo, name="demo_0")
    newton.finalize()

    manifest_file = tmp_path / "push.yaml"
    manifest_file.write_text(manifest_text(manifest))
    writer = WorldgenWriter(output=str(tmp_path / "replicator.hdf5"), manifest=str(manifest_file))
    names = {a.name: a.init_params for a in writer.annotators}
    assert names == {"rgb": {}, "distance_to_image_plane": {}, "instance_segmentation": {"colorize": False}}
    writer.write(_replicator_payload(manifest, table, demo.obs, 0))  # before begin_demo: not recorded
    writer.begin_demo(0, env.backend.scene)
    for t in range(demo.num_samples + 1):
        writer.write(_replicator_payload(manifest, table, demo.obs, t))
    low_dim = {k: v for k, v in demo.obs.items() if not k.endswith(("_rgb", "_depth", "_seg"))}
    success = bool(demo.attrs["success"])
    assert writer.end_demo(demo.actions, demo.states, low_dim, demo.rewards, demo.dones, success) == "demo_0"
    writer.on_final_frame()

    with DatasetReader(tmp_path / "newton.hdf5") as a, DatasetReader(tmp_path / "replicator.hdf5") as b:
        (_, expected), (_, written) = next(a.iter_demos()), next(b.iter_demos())
        obs_a, obs_b = read_obs(expected), read_obs(written)
        assert sorted(obs_a) == sorted(obs_b)
        for key in obs_a:
            if key.endswith("_depth"):
                np.testing.assert_allclose(obs_b[key], obs_a[key], atol=1e-6)
            else:
                np.testing.assert_array_equal(obs_b[key], obs_a[key], err_msg=key)
        for key in ("actions", "states", "rewards", "dones"):
            np.testing.assert_array_equal(written[key][()], expected[key][()])
        for attr in ("seed", "success", "source", "scene"):
            assert written.attrs[attr] == expected.attrs[attr], attr
        assert b.summary()["demos"] == 1
