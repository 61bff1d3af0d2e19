from __future__ import annotations

import json
import math

import numpy as np
import pytest
from pxr import Usd, UsdGeom, UsdPhysics, UsdSemantics
from worldgen.assets import panda
from worldgen.geometry import quat_from_matrix
from worldgen.manifest import load_manifest
from worldgen.stage import camera_prim_path, compile_stage


@pytest.fixture
def compiled(scenario_path, tmp_path):
    manifest = load_manifest(scenario_path)
    path, scene = compile_stage(manifest, 5, tmp_path / "scene.usda", base_dir=scenario_path.parent)
    return manifest, Usd.Stage.Open(str(path)), scene, path


def test_stage_metadata(compiled):
    manifest, stage, scene, _ = compiled
    assert UsdGeom.GetStageMetersPerUnit(stage) == 1.0
    assert UsdGeom.GetStageUpAxis(stage) == UsdGeom.Tokens.z
    data = stage.GetRootLayer().customLayerData["worldgen"]
    assert data["manifest_hash"] == manifest.content_hash()
    assert data["seed"] == 5
    assert json.loads(data["scene"])["objects"][0]["name"] == manifest.task.objects[0].name


def test_exactly_one_articulation_root_with_panda_joints(compiled):
    _, stage, _, _ = compiled
    roots = [p for p in stage.Traverse() if p.HasAPI(UsdPhysics.ArticulationRootAPI)]
    assert len(roots) == 1
    revolute = [p for p in stage.Traverse() if p.IsA(UsdPhysics.RevoluteJoint)]
    prismatic = [p for p in stage.Traverse() if p.IsA(UsdPhysics.PrismaticJoint)]
    assert len(revolute) == 7 and len(prismatic) == 2
    for prim in revolute + prismatic:
        kind = "angular" if prim.IsA(UsdPhysics.RevoluteJoint) else "linear"
        drive = UsdPhysics.DriveAPI(prim, kind)
        assert drive and drive.GetStiffnessAttr().Get() > 0
    j4 = UsdPhysics.RevoluteJoint(stage.GetPrimAtPath("/World/Robot/joints/panda_joint4"))
    assert j4.GetLowerLimitAttr().Get() == pytest.approx(math.degrees(panda.JOINT_LOWER[3]))


def test_every_task_object_has_mass_and_collision(compiled):
    manifest, stage, _, _ = compiled
    for obj in manifest.task.objects:
        prim = stage.GetPrimAtPath(f"/World/Objects/{obj.name}")
        assert prim.IsValid()
        colliders = [p for p in Usd.PrimRange(prim) if p.HasAPI(UsdPhysics.CollisionAPI)]
        assert colliders, obj.name
        labels = UsdSemantics.LabelsAPI(prim, "class").GetLabelsAttr().Get()
        assert list(labels) == [obj.semantic_label]
        if obj.static:
            assert not prim.HasAPI(UsdPhysics.RigidBodyAPI)
        else:
            assert prim.HasAPI(UsdPhysics.RigidBodyAPI)
            assert UsdPhysics.MassAPI(prim).GetMassAttr().Get() > 0


def test_camera_per_manifest_camera(compiled):
    manifest, stage, scene, _ = compiled
    for spec in manifest.cameras:
        cam = UsdGeom.Camera(stage.GetPrimAtPath(camera_prim_path(manifest, spec.name)))
        assert cam, spec.name
        assert tuple(cam.GetPrim().GetAttribute("worldgen:resolution").Get()) == spec.resolution
        vfov = 2 * math.degrees(
            math.atan(cam.GetVerticalApertureAttr().Get() / (2 * cam.GetFocalLengthAttr().Get()))
        )
        assert vfov == pytest.approx(spec.fov, abs=1e-3)
        hfov_ratio = cam.GetHorizontalApertureAttr().Get() / cam.GetVerticalApertureAttr().Get()
        assert hfov_ratio == pytest.approx(spec.resolution[0] / spec.resolution[1], rel=1e-5)
        if spec.mount == "world":
            # The camera's -Z axis points at the (jittered) look-at point.
            sample = next(c for c in scene.cameras if c.name == spec.name)
            xf = UsdGeom.Xformable(cam).ComputeLocalToWorldTransform(Usd.TimeCode.Default())
            pos = np.array(xf.ExtractTranslation())
            fwd = -np.array(xf.TransformDir((0, 0, 1)))
            want = np.subtract(sample.look_at, sample.position)
            assert np.allclose(pos, sample.position, atol=1e-5)
            assert np.dot(fwd / np.linalg.norm(fwd), want / np.linalg.norm(want)) > 0.9999


def test_same_seed_same_bytes(scenario_path, tmp_path):
    manifest = load_manifest(scenario_path)
    a, _ = compile_stage(manifest, 3, tmp_path / "a.usda")
    b, _ = compile_stage(manifest, 3, tmp_path / "b.usda")
    c, _ = compile_stage(manifest, 4, tmp_path / "c.usda")
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()


def test_robot_links_follow_forward_kinematics(compiled):
    _, stage, _, _ = compiled
    base = np.array(
        UsdGeom.Xformable(stage.GetPrimAtPath("/World/Robot"))
        .ComputeLocalToWorldTransform(0)
        .ExtractTranslation()
    )
    frames = panda.link_frames(np.zeros(7))
    for name, frame in zip([*panda.LINK_NAMES, None, "panda_hand"], frames, strict=True):
        if name is None:
            continue
        xf = UsdGeom.Xformable(stage.GetPrimAtPath(f"/World/Robot/{name}")).ComputeLocalToWorldTransform(0)
        assert np.allclose(np.array(xf.ExtractTranslation()), base + frame[:3, 3], atol=1e-6), name


def test_quat_from_matrix_round_trip():
    rng = np.random.default_rng(0)
    for _ in range(50):
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        w, x, y, z = q
        m = np.array(
            [
                [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
            ]
        )
        got = quat_from_matrix(m)
        assert np.allclose(got, q * np.sign(q[0]), atol=1e-9)


def test_panda_jacobian_matches_finite_differences():
    q = panda.HOME_Q + 0.05
    jac = panda.tcp_jacobian(q)
    eps = 1e-6
    numeric = np.stack(
        [(panda.tcp_pose(q + eps * np.eye(7)[i])[:3, 3] - panda.tcp_pose(q)[:3, 3]) / eps for i in range(7)],
        axis=1,
    )
    assert np.allclose(jac[:3], numeric, atol=1e-5)
    tcp = panda.tcp_pose(panda.HOME_Q)
    assert tcp[2, 2] == pytest.approx(-1.0, abs=1e-6)  # home: gripper points straight down
