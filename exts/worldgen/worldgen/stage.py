"""Compile a manifest and one seed's sample into a USD stage that uses standard schemas only.

Layout of the stage (metersPerUnit 1, upAxis Z, default prim /World):

    /World/PhysicsScene          UsdPhysics.Scene (gravity, physics rate)
    /World/Ground                static box collider, top at z = 0
    /World/Table/Top             static box collider; legs are visual only
    /World/Robot                 ArticulationRootAPI; links panda_link0..7, panda_hand, fingers;
    /World/Robot/joints/*        fixed base, 7 revolute + 2 prismatic joints with DriveAPI
    /World/Objects/<name>        rigid body Xform (or static for bins) with a child geom collider
    /World/Regions/<name>        flat visual goal markers
    /World/Distractors/<name>    kinematic, collision-free bodies with their motion as attributes
    /World/Cameras/<name>        UsdGeom.Camera (wrist cameras live under /World/Robot/panda_hand)
    /World/Lights/{Key,Ambient}  UsdLux distant + dome lights

Every object, link and distractor carries a UsdSemantics class label. The layer's customLayerData
holds the manifest hash, the seed and the sampled scene, so a stage names what it was built from.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from pxr import Gf, Sdf, Usd, UsdGeom, UsdLux, UsdPhysics, UsdSemantics, UsdShade

from . import __version__
from .assets import panda
from .errors import ArgumentError
from .files import write_atomically
from .geometry import look_at_matrix, quat_from_matrix
from .manifest import CameraSpec, Manifest, ObjectSpec
from .scene import SceneSample, sample_scene

ROBOT_PATH = "/World/Robot"
HAND_PATH = f"{ROBOT_PATH}/panda_hand"
OBJECTS_PATH = "/World/Objects"
CAMERAS_PATH = "/World/Cameras"
SEMANTIC_INSTANCE = "class"


def _quat(m: np.ndarray) -> Gf.Quatf:
    w, x, y, z = (float(v) for v in quat_from_matrix(m))
    return Gf.Quatf(w, x, y, z)


def _vec3(v) -> Gf.Vec3f:
    return Gf.Vec3f(*(float(x) for x in v))


def _set_pose(xformable: UsdGeom.Xformable, position, quat: Gf.Quatf | None = None, scale=None) -> None:
    xformable.AddTranslateOp().Set(Gf.Vec3d(*(float(x) for x in position)))
    if quat is not None:
        xformable.AddOrientOp().Set(quat)
    if scale is not None:
        xformable.AddScaleOp().Set(_vec3(scale))


def _yaw_quat(yaw: float) -> Gf.Quatf:
    return Gf.Quatf(math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2))


def _label(prim: Usd.Prim, label: str) -> None:
    UsdSemantics.LabelsAPI.Apply(prim, SEMANTIC_INSTANCE).CreateLabelsAttr([label])


def _color(gprim: UsdGeom.Gprim, rgb) -> None:
    gprim.CreateDisplayColorAttr([_vec3(rgb)])


def _box(stage: Usd.Stage, path: str, size, position=(0, 0, 0), quat=None, rgb=(0.5, 0.5, 0.5), collide=True):
    cube = UsdGeom.Cube.Define(stage, path)
    cube.CreateSizeAttr(1.0)
    _set_pose(cube, position, quat, size)
    _color(cube, rgb)
    if collide:
        UsdPhysics.CollisionAPI.Apply(cube.GetPrim())
    return cube


def _geom(stage: Usd.Stage, path: str, shape: str, size, rgb, collide: bool) -> UsdGeom.Gprim:
    """A primitive centred at its parent's origin; ``size`` is the full x/y/z extent."""
    if shape == "box":
        return _box(stage, path, size, rgb=rgb, collide=collide)
    if shape == "sphere":
        geom = UsdGeom.Sphere.Define(stage, path)
        geom.CreateRadiusAttr(size[0] / 2)
    else:
        geom = UsdGeom.Cylinder.Define(stage, path)
        geom.CreateRadiusAttr(size[0] / 2)
        geom.CreateHeightAttr(size[2])
        geom.CreateAxisAttr(UsdGeom.Tokens.z)
    _color(geom, rgb)
    if collide:
        UsdPhysics.CollisionAPI.Apply(geom.GetPrim())
    return geom


def _physics_material(
    stage: Usd.Stage, path: str, friction: float, restitution: float = 0.0
) -> UsdShade.Material:
    material = UsdShade.Material.Define(stage, path)
    api = UsdPhysics.MaterialAPI.Apply(material.GetPrim())
    api.CreateStaticFrictionAttr(friction)
    api.CreateDynamicFrictionAttr(friction)
    api.CreateRestitutionAttr(restitution)
    return material


def _bind_physics_material(prim: Usd.Prim, material: UsdShade.Material) -> None:
    UsdShade.MaterialBindingAPI.Apply(prim).Bind(material, UsdShade.Tokens.weakerThanDescendants, "physics")


def _look_at_quat(position, target) -> Gf.Quatf:
    return _quat(look_at_matrix(position, target))


def camera_apertures(spec: CameraSpec, focal_length: float = 24.0) -> tuple[float, float]:
    """Horizontal and vertical aperture (mm) that give the spec's vertical fov at its aspect ratio."""
    vertical = 2.0 * focal_length * math.tan(math.radians(spec.fov) / 2)
    width, height = spec.resolution
    return vertical * width / height, vertical


def _camera(stage: Usd.Stage, path: str, spec: CameraSpec, position, look_at) -> UsdGeom.Camera:
    cam = UsdGeom.Camera.Define(stage, path)
    _set_pose(cam, position, _look_at_quat(position, look_at))
    focal = 24.0
    horizontal, vertical = camera_apertures(spec, focal)
    cam.CreateFocalLengthAttr(focal)
    cam.CreateHorizontalApertureAttr(horizontal)
    cam.CreateVerticalApertureAttr(vertical)
    cam.CreateClippingRangeAttr(Gf.Vec2f(spec.near, spec.far))
    cam.CreateProjectionAttr(UsdGeom.Tokens.perspective)
    prim = cam.GetPrim()
    prim.CreateAttribute("worldgen:resolution", Sdf.ValueTypeNames.Int2).Set(Gf.Vec2i(*spec.resolution))
    prim.CreateAttribute("worldgen:outputs", Sdf.ValueTypeNames.TokenArray).Set(list(spec.outputs))
    return cam


def _mass(prim: Usd.Prim, mass: float, inertia_radius: float, com=(0.0, 0.0, 0.0)) -> None:
    api = UsdPhysics.MassAPI.Apply(prim)
    api.CreateMassAttr(float(mass))
    inertia = 0.4 * mass * inertia_radius**2
    api.CreateDiagonalInertiaAttr(_vec3((inertia, inertia, inertia)))
    api.CreateCenterOfMassAttr(_vec3(com))


def _rigid_body(stage: Usd.Stage, path: str, position, quat=None, kinematic: bool = False) -> UsdGeom.Xform:
    xform = UsdGeom.Xform.Define(stage, path)
    _set_pose(xform, position, quat if quat is not None else Gf.Quatf(1.0))
    body = UsdPhysics.RigidBodyAPI.Apply(xform.GetPrim())
    if kinematic:
        body.CreateKinematicEnabledAttr(True)
    return xform


def _capsule_between(stage: Usd.Stage, path: str, tip: np.ndarray, radius: float, rgb) -> None:
    """A collider capsule from the parent origin to ``tip`` (or a sphere when they coincide)."""
    length = float(np.linalg.norm(tip))
    if length < 1e-6:
        geom = UsdGeom.Sphere.Define(stage, path)
        geom.CreateRadiusAttr(radius)
    else:
        geom = UsdGeom.Capsule.Define(stage, path)
        geom.CreateRadiusAttr(radius)
        geom.CreateHeightAttr(length)
        geom.CreateAxisAttr(UsdGeom.Tokens.z)
        axis = tip / length
        rot = Gf.Rotation(Gf.Vec3d(0, 0, 1), Gf.Vec3d(*axis.tolist())).GetQuat()
        _set_pose(geom, tip / 2, Gf.Quatf(rot.GetReal(), *rot.GetImaginary()))
    _color(geom, rgb)
    UsdPhysics.CollisionAPI.Apply(geom.GetPrim())


def _joint_frames(joint: UsdPhysics.Joint, body0: str | None, body1: str, rel: np.ndarray) -> None:
    """Joint frame = ``rel`` in body0's frame and identity in body1's frame."""
    if body0 is not None:
        joint.CreateBody0Rel().SetTargets([Sdf.Path(body0)])
    joint.CreateBody1Rel().SetTargets([Sdf.Path(body1)])
    joint.CreateLocalPos0Attr(_vec3(rel[:3, 3]))
    joint.CreateLocalRot0Attr(_quat(rel))
    joint.CreateLocalPos1Attr(Gf.Vec3f(0.0))
    joint.CreateLocalRot1Attr(Gf.Quatf(1.0))


def _drive(
    prim: Usd.Prim, kind: str, stiffness: float, damping: float, max_force: float, target: float
) -> None:
    drive = UsdPhysics.DriveAPI.Apply(prim, kind)
    drive.CreateTypeAttr("force")
    drive.CreateStiffnessAttr(float(stiffness))
    drive.CreateDampingAttr(float(damping))
    drive.CreateMaxForceAttr(float(max_force))
    drive.CreateTargetPositionAttr(float(target))


def _author_robot(stage: Usd.Stage, base_position) -> None:
    root = UsdGeom.Xform.Define(stage, ROBOT_PATH)
    _set_pose(root, base_position)
    UsdPhysics.ArticulationRootAPI.Apply(root.GetPrim())
    # PhysX attribute Isaac Sim reads; Newton is told the same through its importer options.
    root.GetPrim().CreateAttribute("physxArticulation:enabledSelfCollisions", Sdf.ValueTypeNames.Bool).Set(
        False
    )
    _label(root.GetPrim(), "robot")
    UsdGeom.Scope.Define(stage, f"{ROBOT_PATH}/joints")

    frames = panda.link_frames(np.zeros(7))  # bodies at q = 0, where joint frame pairs coincide
    geometry = panda.link_geometry()
    link_rgb = (0.92, 0.92, 0.92)
    for i, name in enumerate(panda.LINK_NAMES):
        path = f"{ROBOT_PATH}/{name}"
        _rigid_body(stage, path, frames[i][:3, 3], _quat(frames[i]))
        geo = geometry[i]
        _capsule_between(
            stage, f"{path}/collision", geo.tip, geo.radius, link_rgb if i % 2 else (0.3, 0.3, 0.3)
        )
        _mass(stage.GetPrimAtPath(path), geo.mass, max(geo.radius, np.linalg.norm(geo.tip) / 2), geo.tip / 2)

    base = UsdPhysics.FixedJoint.Define(stage, f"{ROBOT_PATH}/joints/fixed_base")
    _joint_frames(base, None, f"{ROBOT_PATH}/panda_link0", np.eye(4))
    base.CreateLocalPos0Attr(_vec3(base_position))

    for i, name in enumerate(panda.JOINT_NAMES):
        joint = UsdPhysics.RevoluteJoint.Define(stage, f"{ROBOT_PATH}/joints/{name}")
        rel = np.linalg.inv(frames[i]) @ frames[i + 1]
        _joint_frames(
            joint, f"{ROBOT_PATH}/{panda.LINK_NAMES[i]}", f"{ROBOT_PATH}/{panda.LINK_NAMES[i + 1]}", rel
        )
        joint.CreateAxisAttr(UsdPhysics.Tokens.z)
        # UsdPhysics angular units are degrees: limits, targets, and gains per degree.
        joint.CreateLowerLimitAttr(math.degrees(panda.JOINT_LOWER[i]))
        joint.CreateUpperLimitAttr(math.degrees(panda.JOINT_UPPER[i]))
        per_degree = math.pi / 180.0
        _drive(
            joint.GetPrim(),
            "angular",
            panda.STIFFNESS[i] * per_degree,
            panda.DAMPING[i] * per_degree,
            panda.MAX_EFFORT[i],
            math.degrees(panda.HOME_Q[i]),
        )
        prim = joint.GetPrim()
        prim.CreateAttribute("physxJoint:armature", Sdf.ValueTypeNames.Float).Set(panda.ARMATURE)
        prim.CreateAttribute("state:angular:physics:position", Sdf.ValueTypeNames.Float).Set(
            math.degrees(panda.HOME_Q[i])
        )

    hand_pose = frames[9]
    _rigid_body(stage, HAND_PATH, hand_pose[:3, 3], _quat(hand_pose))
    _box(stage, f"{HAND_PATH}/collision", (0.04, 0.18, 0.05), (0.0, 0.0, 0.025), rgb=(0.85, 0.85, 0.85))
    _mass(stage.GetPrimAtPath(HAND_PATH), panda.HAND_MASS, 0.05, (0.0, 0.0, 0.03))
    hand_joint = UsdPhysics.FixedJoint.Define(stage, f"{ROBOT_PATH}/joints/panda_hand_joint")
    _joint_frames(hand_joint, f"{ROBOT_PATH}/panda_link7", HAND_PATH, np.linalg.inv(frames[7]) @ hand_pose)

    for side, (name, sign) in enumerate(zip(panda.FINGER_JOINT_NAMES, (1.0, -1.0), strict=True)):
        finger = f"{ROBOT_PATH}/panda_{'left' if side == 0 else 'right'}finger"
        # Rotating the right finger's joint frame by pi about z makes +Y open both fingers.
        rel = np.eye(4)
        rel[:3, 3] = (0.0, 0.0, panda.FINGER_ORIGIN_Z)
        if sign < 0:
            rel[:2, :2] = [[-1.0, 0.0], [0.0, -1.0]]
        pose = hand_pose @ rel
        _rigid_body(stage, finger, pose[:3, 3], _quat(pose))
        _box(stage, f"{finger}/collision", (0.02, 0.012, 0.04), (0.0, 0.006, 0.045), rgb=(0.2, 0.2, 0.2))
        _mass(stage.GetPrimAtPath(finger), panda.FINGER_MASS, 0.02, (0.0, 0.006, 0.045))
        joint = UsdPhysics.PrismaticJoint.Define(stage, f"{ROBOT_PATH}/joints/{name}")
        _joint_frames(joint, HAND_PATH, finger, rel)
        joint.CreateAxisAttr(UsdPhysics.Tokens.y)
        joint.CreateLowerLimitAttr(0.0)
        joint.CreateUpperLimitAttr(panda.FINGER_MAX)
        _drive(
            joint.GetPrim(),
            "linear",
            panda.FINGER_STIFFNESS,
            panda.FINGER_DAMPING,
            panda.FINGER_MAX_FORCE,
            0.04,
        )
        prim = joint.GetPrim()
        prim.CreateAttribute("physxJoint:armature", Sdf.ValueTypeNames.Float).Set(panda.ARMATURE)
        prim.CreateAttribute("state:linear:physics:position", Sdf.ValueTypeNames.Float).Set(panda.FINGER_MAX)


def _author_object(stage: Usd.Stage, obj: ObjectSpec, sampled, base_dir: Path | None) -> None:
    path = f"{OBJECTS_PATH}/{obj.name}"
    quat = _yaw_quat(sampled.yaw)
    material = _physics_material(stage, f"/World/Materials/{obj.name}_physics", sampled.friction)
    if obj.shape == "bin":
        xform = UsdGeom.Xform.Define(stage, path)
        _set_pose(xform, sampled.position, quat)
        sx, sy, sz = obj.size
        t = obj.wall_thickness
        parts = {
            "floor": ((sx, sy, t), (0.0, 0.0, -sz / 2 + t / 2)),
            "wall_px": ((t, sy, sz), (sx / 2 - t / 2, 0.0, 0.0)),
            "wall_nx": ((t, sy, sz), (-sx / 2 + t / 2, 0.0, 0.0)),
            "wall_py": ((sx - 2 * t, t, sz), (0.0, sy / 2 - t / 2, 0.0)),
            "wall_ny": ((sx - 2 * t, t, sz), (0.0, -sy / 2 + t / 2, 0.0)),
        }
        for part, (size, offset) in parts.items():
            geom = _box(stage, f"{path}/{part}", size, offset, rgb=sampled.color)
            _bind_physics_material(geom.GetPrim(), material)
    else:
        xform = (
            UsdGeom.Xform.Define(stage, path)
            if obj.static
            else _rigid_body(stage, path, sampled.position, quat)
        )
        if obj.static:
            _set_pose(xform, sampled.position, quat)
        geom = _geom(stage, f"{path}/geom", obj.shape, obj.size, sampled.color, collide=True)
        _bind_physics_material(geom.GetPrim(), material)
        if not obj.static:
            api = UsdPhysics.MassAPI.Apply(xform.GetPrim())
            api.CreateMassAttr(sampled.mass)
    if obj.asset is not None:
        # Validation guaranteed the file exists under the manifest's folder or the asset folder.
        roots = ([base_dir] if base_dir is not None else []) + [Path(__file__).parent / "assets"]
        asset = next(r / obj.asset for r in roots if (r / obj.asset).is_file())
        visual = UsdGeom.Xform.Define(stage, f"{path}/asset")
        visual.GetPrim().GetReferences().AddReference(str(asset.resolve()))
    _label(xform.GetPrim(), obj.semantic_label)


def build_stage(manifest: Manifest, scene: SceneSample, base_dir: Path | None = None) -> Usd.Stage:
    """Author the stage in memory (anonymous layer). Relative asset paths resolve against ``base_dir``,
    by default the manifest's own folder (so the simulator backends find them too)."""
    base_dir = base_dir if base_dir is not None else manifest.base_dir
    stage = _new_stage(manifest, scene)
    table = manifest.task.table
    _author_table(stage, table, scene)
    base = manifest.embodiment.base_position
    _author_robot(stage, (base[0], base[1], table.height))
    UsdGeom.Scope.Define(stage, "/World/Materials")
    UsdGeom.Xform.Define(stage, OBJECTS_PATH)
    for obj in manifest.task.objects:
        _author_object(stage, obj, scene.object(obj.name), base_dir)
    _author_regions(stage, manifest.task.regions, table.height)
    _author_distractors(stage, manifest, scene)
    UsdGeom.Xform.Define(stage, CAMERAS_PATH)
    for spec, cam in zip(manifest.cameras, scene.cameras, strict=True):
        parent = HAND_PATH if spec.mount == "wrist" else CAMERAS_PATH
        _camera(stage, f"{parent}/{spec.name}", spec, cam.position, cam.look_at)
    _author_lights(stage, scene)
    return stage


def _new_stage(manifest: Manifest, scene: SceneSample) -> Usd.Stage:
    """An empty Z-up metre/kilogram stage with the physics scene, the ground and worldgen's provenance."""
    stage = Usd.Stage.CreateInMemory()
    UsdGeom.SetStageMetersPerUnit(stage, 1.0)
    UsdGeom.SetStageUpAxis(stage, UsdGeom.Tokens.z)
    UsdPhysics.SetStageKilogramsPerUnit(stage, 1.0)
    world = UsdGeom.Xform.Define(stage, "/World")
    stage.SetDefaultPrim(world.GetPrim())
    stage.SetStartTimeCode(0)
    stage.SetEndTimeCode(manifest.horizon)
    stage.SetTimeCodesPerSecond(manifest.control_hz)
    stage.GetRootLayer().customLayerData = {
        "worldgen": {
            "manifest_name": manifest.name,
            "manifest_hash": manifest.content_hash(),
            "seed": scene.seed,
            "code_version": __version__,
            "scene": json.dumps(scene.to_dict(), sort_keys=True),
        }
    }

    physics = UsdPhysics.Scene.Define(stage, "/World/PhysicsScene")
    physics.CreateGravityDirectionAttr(Gf.Vec3f(0.0, 0.0, -1.0))
    physics.CreateGravityMagnitudeAttr(9.81)
    physics.GetPrim().CreateAttribute("physxScene:timeStepsPerSecond", Sdf.ValueTypeNames.UInt).Set(
        manifest.physics_hz
    )

    _box(stage, "/World/Ground", (20.0, 20.0, 0.1), (0.0, 0.0, -0.05), rgb=(0.35, 0.36, 0.38))
    _label(stage.GetPrimAtPath("/World/Ground"), "ground")
    return stage


def _author_table(stage: Usd.Stage, table, scene: SceneSample) -> None:
    """The table top (colliding, with its friction) and four visual legs."""
    UsdGeom.Xform.Define(stage, "/World/Table")
    cx, cy = table.center
    top = _box(
        stage,
        "/World/Table/Top",
        (table.size[0], table.size[1], table.thickness),
        (cx, cy, table.height - table.thickness / 2),
        rgb=scene.table_color,
    )
    _bind_physics_material(top.GetPrim(), _physics_material(stage, "/World/Materials/table_physics", 0.8))
    leg_height = table.height - table.thickness
    if leg_height > 0:
        for k, (sx, sy) in enumerate(((1, 1), (1, -1), (-1, 1), (-1, -1))):
            pos = (cx + sx * (table.size[0] / 2 - 0.04), cy + sy * (table.size[1] / 2 - 0.04), leg_height / 2)
            _box(
                stage,
                f"/World/Table/Leg{k}",
                (0.04, 0.04, leg_height),
                pos,
                rgb=(0.3, 0.25, 0.2),
                collide=False,
            )
    _label(stage.GetPrimAtPath("/World/Table"), "table")


def _author_regions(stage: Usd.Stage, regions, table_height: float) -> None:
    """Flat, non-colliding markers of the task's regions on the table top."""
    if regions:
        UsdGeom.Xform.Define(stage, "/World/Regions")
    for region in regions:
        size = (2 * region.half_extents[0], 2 * region.half_extents[1], 0.001)
        marker = _box(
            stage,
            f"/World/Regions/{region.name}",
            size,
            (*region.center, table_height + 0.0005),
            rgb=region.color,
            collide=False,
        )
        _label(marker.GetPrim(), region.name)


def _author_distractors(stage: Usd.Stage, manifest: Manifest, scene: SceneSample) -> None:
    """Kinematic, non-colliding distractors with their motion (start, end, speed, phase) as attributes."""
    if scene.distractors:
        UsdGeom.Xform.Define(stage, "/World/Distractors")
    specs = {d.name: d for d in manifest.stressors.distractors}
    for d in scene.distractors:
        spec = specs[d.name]
        path = f"/World/Distractors/{d.name}"
        xform = _rigid_body(stage, path, d.position(0.0), kinematic=True)
        _geom(stage, f"{path}/geom", spec.shape, spec.size, spec.color, collide=False)
        prim = xform.GetPrim()
        prim.CreateAttribute("worldgen:motion:start", Sdf.ValueTypeNames.Float3).Set(_vec3(d.start))
        prim.CreateAttribute("worldgen:motion:end", Sdf.ValueTypeNames.Float3).Set(_vec3(d.end))
        prim.CreateAttribute("worldgen:motion:speed", Sdf.ValueTypeNames.Float).Set(d.speed)
        prim.CreateAttribute("worldgen:motion:phase", Sdf.ValueTypeNames.Float).Set(d.phase)
        _label(prim, "distractor")


def _author_lights(stage: Usd.Stage, scene: SceneSample) -> None:
    """The sampled key light (distant) and the ambient dome."""
    UsdGeom.Xform.Define(stage, "/World/Lights")
    key = UsdLux.DistantLight.Define(stage, "/World/Lights/Key")
    key.CreateIntensityAttr(scene.light.intensity)
    key.CreateColorAttr(_vec3(scene.light.color))
    key.CreateAngleAttr(1.0)
    # A distant light shines along its -Z axis.
    direction = np.asarray(scene.light.direction)
    _set_pose(key, (0.0, 0.0, 3.0), _look_at_quat((0.0, 0.0, 0.0), direction))
    dome = UsdLux.DomeLight.Define(stage, "/World/Lights/Ambient")
    dome.CreateIntensityAttr(scene.light.ambient * 1000.0)


def camera_prim_path(manifest: Manifest, name: str) -> str:
    spec = next(c for c in manifest.cameras if c.name == name)
    return f"{HAND_PATH if spec.mount == 'wrist' else CAMERAS_PATH}/{name}"


def compile_stage(
    manifest: Manifest, seed: int, output: str | Path, base_dir: Path | None = None
) -> tuple[Path, SceneSample]:
    """Sample the manifest for ``seed`` and write the stage as ``.usda``. Same inputs, same bytes."""
    output = Path(output)
    if output.suffix != ".usda":
        raise ArgumentError(f"{output}: the output must be a .usda file")
    scene = sample_scene(manifest, seed)
    stage = build_stage(manifest, scene, base_dir)
    text = stage.GetRootLayer().ExportToString()
    write_atomically(output, text.encode())
    return output, scene
