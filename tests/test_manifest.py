from __future__ import annotations

import math
import re

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from worldgen.manifest import (
    ManifestError,
    Normal,
    Uniform,
    as_manifest,
    load_manifest,
    manifest_text,
    parse_manifest,
    sample,
    support,
)
from worldgen.scene import sample_scene

from .conftest import ROOT, SCENARIOS

PICK = (ROOT / "scenarios" / "pick_cube.yaml").read_text()
LINE_FORMAT = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+): (?P<path>\S+): (?P<msg>.+)$")


def test_shipped_scenarios_validate(scenario_path):
    manifest = load_manifest(scenario_path)
    assert manifest.name == scenario_path.stem
    assert 2 <= len(manifest.cameras) <= 3
    assert manifest.physics_hz % manifest.control_hz == 0


def test_hash_ignores_formatting_but_not_content():
    a = parse_manifest(PICK)
    reformatted = yaml.safe_dump(yaml.safe_load(PICK), sort_keys=True)
    assert parse_manifest("# a comment\n" + reformatted).content_hash() == a.content_hash()
    changed = parse_manifest(PICK.replace("horizon: 160", "horizon: 161"))
    assert changed.content_hash() != a.content_hash()
    assert re.fullmatch(r"[0-9a-f]{64}", a.content_hash())


def _error(text: str) -> tuple[str, int, str, str]:
    with pytest.raises(ManifestError) as info:
        parse_manifest(text, file="bad.yaml")
    assert len(info.value.lines) >= 1
    m = LINE_FORMAT.match(info.value.lines[0])
    assert m, info.value.lines[0]
    return m["file"], int(m["line"]), m["path"], m["msg"]


def _line_of(text: str, needle: str) -> int:
    return next(i + 1 for i, line in enumerate(text.splitlines()) if needle in line)


def test_unknown_key_names_line_and_path():
    text = PICK.replace("  max_rotation: 0.1\n", "  max_rotation: 0.1\n  max_rotaton: 0.2\n")
    file, line, path, msg = _error(text)
    assert (file, path, msg) == ("bad.yaml", "embodiment.max_rotaton", "unknown key")
    assert line == _line_of(text, "max_rotaton")


def test_wrong_type_in_list_item():
    text = PICK.replace("    resolution: [64, 64]\n    fov: 75", "    resolution: [64, sixty]\n    fov: 75")
    _, line, path, _ = _error(text)
    assert path == "cameras[2].resolution[1]"
    assert line == _line_of(text, "sixty")


def test_out_of_range_distribution_is_rejected():
    text = PICK.replace(
        "mass_scale: {type: uniform, low: 0.7, high: 1.5}", "mass_scale: {type: uniform, low: 0.7, high: 50}"
    )
    _, line, path, msg = _error(text)
    assert path == "stressors.mass_scale"
    assert "within" in msg and line == _line_of(text, "mass_scale")


def test_unbounded_normal_needs_clip():
    text = PICK.replace(
        "mass_scale: {type: uniform, low: 0.7, high: 1.5}", "mass_scale: {type: normal, mean: 1, std: 0.1}"
    )
    _, _, path, msg = _error(text)
    assert path == "stressors.mass_scale" and "unbounded" in msg


def test_missing_field_points_at_parent():
    text = PICK.replace("horizon: 160\n", "")
    _, line, path, msg = _error(text)
    assert (path, msg, line) == ("horizon", "required field is missing", _line_of(text, "name: pick_cube"))


def test_cross_field_errors():
    _, _, _, msg = _error(PICK.replace("physics_hz: 500", "physics_hz: 510"))
    assert "multiple of control_hz" in msg
    _, _, path, msg = _error(PICK.replace("    object: cube\n    region", "    object: cuboid\n    region"))
    assert path == "task" and "cuboid" in msg
    _, _, _, msg = _error(PICK.replace("held_out_base_seed: 1000000", "held_out_base_seed: 5"))
    assert "overlap" in msg


def test_world_model_shape_is_checked_at_load():
    """The U-Net's constraints on its channels and the frame size are refused when the manifest loads,
    naming the field, not when training starts."""
    at = "world_model:\n"
    assert at in PICK
    _, _, path, msg = _error(PICK.replace(at, at + "  channels: [48, 96]\n"))
    assert path == "world_model" and "channels [48, 96]" in msg and "divide by 32" in msg
    deep = PICK.replace(at, at + "  channels: [32, 32, 32, 32, 32]\n")
    _, _, path, msg = _error(
        deep.replace("front_left\n  resolution: [64, 64]", "front_left\n  resolution: [48, 48]")
    )
    assert path == "world_model" and "[48, 48] must divide by 32 for 5 U-Net levels" in msg
    small = parse_manifest(PICK.replace(at, at + "  channels: [32, 64, 64]\n"))
    assert (
        small.world_model.channels == (32, 64, 64)
        and small.content_hash() != parse_manifest(PICK).content_hash()
    )


def test_generation_block_and_the_old_branching_spelling():
    manifest = parse_manifest(PICK)
    assert manifest.generation.perturb.at_steps == [20, 60]
    assert manifest.generation.recover.labeler == "expert"
    # Manifests written before generation: (datasets keep theirs) read branching: as generation.perturb.
    generation = PICK[PICK.index("generation:") : PICK.index("policy:")]
    old = PICK.replace(generation, "branching: {per_seed: 3, at_steps: [20], action_noise: 0.05}\n")
    assert parse_manifest(old).generation.perturb.per_seed == 3
    assert parse_manifest(old).generation.recover == manifest.generation.recover
    assert parse_manifest(old).scene_hash() == manifest.scene_hash()  # not part of what a seed's episode is
    _, _, _, msg = _error(PICK.replace("generation:", "branching: {per_seed: 3}\ngeneration:"))
    assert "generation.perturb's old name" in msg
    _, _, _, msg = _error(PICK.replace("scene_base_seed: 500000", "scene_base_seed: 10"))
    assert "generation.retarget scene seeds [10, 50) overlap the seed range" in msg
    _, _, _, msg = _error(PICK.replace("scene_base_seed: 500000", "scene_base_seed: 999990"))
    assert "overlap the evaluation seeds" in msg
    _, _, path, _ = _error(PICK.replace("recover: {", "recover: {labeler: teacher, "))
    assert path == "generation.recover.labeler"
    assert manifest.generation.success_margin == 0.02
    assert parse_manifest(old).generation.success_margin == 0.0  # the manifest's predicate as it is
    _, _, path, _ = _error(PICK.replace("success_margin: 0.02", "success_margin: 0.5"))
    assert path == "generation.success_margin"


def test_malformed_yaml_reports_line():
    text = PICK.replace("horizon: 160", "horizon: [160")
    _, line, path, _ = _error(text)
    assert path == "<yaml>" and line >= _line_of(text, "horizon: [160")


def test_python_tags_are_refused():
    text = PICK.replace('version: "1.0"', "version: !!python/object/apply:os.system ['echo pwned']")
    _, line, path, msg = _error(text)
    assert path == "<yaml>" and line == _line_of(text, "python/object") and "python" in msg


def test_duplicate_keys_are_refused():
    _, line, path, msg = _error(PICK + "horizon: 10\n")
    assert path == "<yaml>" and "duplicate key 'horizon'" in msg


def test_non_mapping_document():
    assert _error("- 1\n- 2\n")[2:] == ("<root>", "expected a mapping of manifest fields, got list")


def test_asset_path_may_not_escape(tmp_path):
    (tmp_path / "inside.usda").write_text("#usda 1.0\n")
    good = PICK.replace("      mass: 0.08", "      asset: inside.usda\n      mass: 0.08")
    parse_manifest(good, file="m.yaml", base_dir=tmp_path)
    for escape in ("../outside.usda", "/etc/passwd.usda", "sub/../../x.usda"):
        text = PICK.replace("      mass: 0.08", f"      asset: {escape}\n      mass: 0.08")
        with pytest.raises(ManifestError) as info:
            parse_manifest(text, file="m.yaml", base_dir=tmp_path)
        assert "task.objects[0].asset" in info.value.lines[0]


def test_distribution_support_and_sampling():
    rng = np.random.default_rng(0)
    u = Uniform(type="uniform", low=1.0, high=2.0)
    assert all(1.0 <= sample(u, rng) <= 2.0 for _ in range(100))
    n = Normal(type="normal", mean=0.0, std=10.0, low=-1.0, high=1.0)
    assert support(n) == (-1.0, 1.0)
    assert all(-1.0 <= sample(n, rng) <= 1.0 for _ in range(100))
    assert support(Normal(type="normal", mean=0.0, std=1.0)) == (-math.inf, math.inf)


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_scene_sample_is_deterministic_and_in_bounds(path):
    manifest = load_manifest(path)
    a, b = sample_scene(manifest, 7), sample_scene(manifest, 7)
    assert a == b
    assert sample_scene(manifest, 8) != a
    for obj in manifest.task.objects:
        s = a.object(obj.name)
        assert s.mass > 0 and s.friction >= 0
        if obj.support == "table":
            assert s.position[2] == pytest.approx(manifest.task.table.height + obj.size[2] / 2)


# --- property-based: random mutations of a valid manifest never crash the loader -------------------

BASE = yaml.safe_load(PICK)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=True),
    st.text(max_size=8),
    st.lists(st.integers(-5, 5), max_size=4),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


ALL_PATHS = [p for p in _paths(BASE) if p]


def _mutate(doc, path, op, value):
    import copy

    doc = copy.deepcopy(doc)
    parent = doc
    for part in path[:-1]:
        parent = parent[part]
    key = path[-1]
    if op == "replace":
        parent[key] = value
    elif op == "delete":
        del parent[key]
    elif op == "add" and isinstance(parent, dict):
        parent[f"extra_{key}"] = value
    return doc


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    path=st.sampled_from(ALL_PATHS),
    op=st.sampled_from(["replace", "delete", "add"]),
    value=scalars,
)
def test_mutations_only_raise_manifest_errors(path, op, value):
    text = yaml.safe_dump(_mutate(BASE, path, op, value), allow_unicode=True)
    try:
        manifest = parse_manifest(text, file="mut.yaml")
    except ManifestError as exc:
        assert exc.lines and all(LINE_FORMAT.match(line) for line in exc.lines), exc.lines
    else:  # what parses is a manifest that its own text gives back unchanged
        assert (
            parse_manifest(manifest_text(manifest), file="again.yaml").content_hash()
            == manifest.content_hash()
        )


def test_a_manifest_carries_its_text_and_folder_through_pickling():
    """Parsed once at the edge, the object is all later stages need: datasets store its text, stages
    resolve assets against its folder, Ray workers receive it pickled."""
    import pickle

    path = ROOT / "scenarios" / "push_to_target.yaml"
    manifest = load_manifest(path)
    assert manifest.source_text == path.read_text(encoding="utf-8")
    assert manifest.base_dir == path.resolve().parent
    again = pickle.loads(pickle.dumps(manifest))
    assert (again.source_text, again.base_dir, again.content_hash()) == (
        manifest.source_text,
        manifest.base_dir,
        manifest.content_hash(),
    )
    assert as_manifest(manifest) is manifest and as_manifest(path).content_hash() == manifest.content_hash()
