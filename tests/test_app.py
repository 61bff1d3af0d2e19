"""The window's controller on real manifests, real stages, real renders and real background jobs."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from worldgen.apps.cli import main
from worldgen.apps.jobs import CANCELLED, RUNNING, SUCCEEDED
from worldgen.apps.manifest_editor import ManifestDocument, split_field_path
from worldgen.apps.window import AppState, WorldgenApp
from worldgen.errors import ArgumentError
from worldgen.manifest import ManifestError, load_manifest
from worldgen.preview import render_variants, variant_grid

from .conftest import PUSH, SCENARIOS


@pytest.fixture
def manifest_copy(tmp_path):
    path = tmp_path / "push.yaml"
    shutil.copy(PUSH, path)
    return path


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_unchanged_document_saves_byte_identical_with_the_same_hash(path, tmp_path):
    document = ManifestDocument.open(path)
    assert document.valid and document.content_hash == load_manifest(path).content_hash()
    saved = document.save(tmp_path / path.name)
    assert saved.read_text() == path.read_text()
    assert load_manifest(saved).content_hash() == document.content_hash


def test_edit_puts_the_problem_on_its_field_then_the_fix_validates(manifest_copy):
    app = WorldgenApp()
    assert app.open(manifest_copy) and "valid" in app.state.status
    before = app.document.content_hash

    assert not app.edit("task.objects[0].mass", "-0.2")
    assert (
        app.field_problems("task.objects[0].mass")
        and "greater than 0" in app.field_problems("task.objects[0].mass")[0]
    )
    assert not app.field_problems("task.objects[0].friction")
    assert "1 problem" in app.state.status and app.document.content_hash is None
    assert not app.save()  # an invalid document never overwrites the file
    assert load_manifest(manifest_copy).content_hash() == before

    # a distribution is one field; its bound check lands under it
    assert not app.edit("task.objects[0].placement.x", "{type: uniform, low: 0.5, high: 0.4}")
    assert any("must not exceed" in p for p in app.field_problems("task.objects[0].placement.x"))
    assert app.undo() and app.undo()  # both edits gone: the hash the file had
    assert app.document.valid and app.document.content_hash == before and not app.modified

    assert app.edit("task.objects[0].mass", "0.35")
    assert app.document.content_hash not in (None, before) and "(edited)" in app.state.status
    assert app.save() and not app.modified
    assert app.undo() and app.modified  # back to the original text, which the file no longer holds
    assert app.edit("task.objects[0].mass", "0.35") and not app.modified
    assert app.save()
    text = manifest_copy.read_text()
    assert "# Push a block along the table into a goal region." in text  # comments kept
    assert "mass: 0.35" in text and "x: {type: uniform, low: 0.40, high: 0.48}" in text  # style kept
    assert load_manifest(manifest_copy).task.objects[0].mass == 0.35


def test_edits_create_sections_append_and_refuse_bad_paths(manifest_copy):
    document = ManifestDocument.open(manifest_copy)
    assert document.set_text("stressors.textures.table_colors", "[[0.8, 0.2, 0.2], [0.2, 0.8, 0.2]]")
    assert document.set_text(
        "stressors.distractors[0]",
        "{name: ball, shape: sphere, size: [0.03, 0.03, 0.03], start: [0.3, -0.3, 0.45],"
        " end: [0.3, 0.3, 0.45], speed: 0.2}",
    )
    manifest = document.manifest
    assert manifest.stressors.distractors[0].name == "ball"
    assert len(manifest.stressors.textures.table_colors) == 2
    assert not document.set_text("stressors.distractors[0].speed", "-1")
    assert "stressors.distractors[0].speed" in document.problems
    assert document.delete("stressors.distractors") and document.valid
    with pytest.raises(ArgumentError, match="not a YAML value"):
        document.set_text("horizon", "[oops")
    with pytest.raises(ArgumentError, match="past the end"):
        document.set("cameras[5].fov", 40)
    with pytest.raises(ArgumentError, match="expected names"):
        split_field_path("task..objects")
    before = document.text
    with pytest.raises(ArgumentError, match="past the end"):
        document.set("extras.items[3]", 1)  # refused whole: no section is left half-made
    assert document.text == before and document.valid
    assert document.get("name[0]") is None and document.get("cameras[9]") is None
    assert "task.objects[0].placement.x" in document.main_fields()
    assert "cameras[1].position" in document.main_fields() and "horizon" in document.main_fields()


def test_unreadable_yaml_is_refused_with_the_file_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    app = WorldgenApp()
    assert not app.open(bad) and app.document is None and str(bad) in app.state.status
    with pytest.raises(ManifestError):
        ManifestDocument.open(tmp_path / "missing.yaml")


def test_compile_hands_over_the_edited_stage(manifest_copy, tmp_path):
    app = WorldgenApp(AppState(output_dir=str(tmp_path / "out")))
    app.open(manifest_copy)
    app.edit("task.objects[0].size", "[0.05, 0.05, 0.04]")
    path = app.compile(seed=3)
    assert path.endswith("push_to_target_seed3.usda") and "0.025" in Path(path).read_text()  # new half size
    app.edit("cameras[0].fov", "500")
    assert app.compile() is None and "fix the manifest" in app.state.status


def test_variant_grid_varies_where_stressors_vary_and_nowhere_else(manifest_copy):
    seeds = [0, 1, 2, 3]
    varied = render_variants(load_manifest(PUSH), seeds, ["front"])
    document = ManifestDocument.open(manifest_copy)
    for axis, value in (("x", 0.44), ("y", 0.0), ("yaw", 0.0)):
        assert document.set(f"task.objects[0].placement.{axis}", value)
    assert document.delete("stressors") and document.valid
    fixed = render_variants(document.manifest, seeds, ["front"])

    def stats(frames):
        return [(float(f.mean()), float(f.std())) for f in (frames[(s, "front")] for s in seeds)]

    assert len(set(stats(varied))) == 4  # every seed looks different: lighting, jitter, placement
    assert all(np.array_equal(fixed[(0, "front")], fixed[(s, "front")]) for s in seeds)
    grid = variant_grid(varied)
    assert grid.size == (64 + 96, 14 + 4 * 96)


def test_preview_command_refuses_bad_input_in_one_line(tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert main(["preview", str(PUSH), "--seeds", "3-1", "-o", str(out)]) == 2
    assert main(["preview", str(PUSH), "--camera", "top", "-o", str(out)]) == 2
    assert main(["preview", str(PUSH), "-o", str(tmp_path / "grid.jpg")]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3 and "no RGB camera" in errors[1] and ".png" in errors[2]
    assert not out.exists()


def _wait(app, job, until, timeout=240.0):
    deadline = time.monotonic() + timeout
    finished = []
    while time.monotonic() < deadline:
        finished += app.poll()
        if until(job):
            return finished
        time.sleep(0.5)
    raise AssertionError(f"{job.describe()}: {job.log_tail()}")


def test_background_jobs_report_progress_finish_and_cancel_without_partial_output(manifest_copy, tmp_path):
    app = WorldgenApp(AppState(output_dir=str(tmp_path / "out")))
    app.open(manifest_copy)
    assert app.edit("task.objects[0].friction", "0.6")  # edited: saved before the job starts

    preview = app.start_preview([0, 1], ["front"], scale=1)
    finished = _wait(app, preview, lambda j: j.state != RUNNING)
    assert preview.state == SUCCEEDED and any(line.startswith("preview: succeeded") for line in finished)
    assert not app.modified and load_manifest(manifest_copy).task.objects[0].friction == 0.6
    rgba, width, height = app.preview_image()
    assert (width, height) == (64 + 96, 14 + 2 * 96) and len(rgba) == width * height * 4

    seeds = app.start_seeds(count=1)
    finished = _wait(app, seeds, lambda j: j.state != RUNNING)
    assert seeds.state == SUCCEEDED and seeds.output.exists() and "1 demos" in finished[0]
    recorded = seeds.output.read_bytes()

    longer = app.start_seeds(count=30)
    assert app.start_seeds(count=2) is None and "already running" in app.state.status
    _wait(app, longer, lambda j: j.progress is not None and j.progress[0] >= 1)
    assert longer.progress[1] == 30
    lines = app.job_lines()
    assert lines[0].startswith("preview: succeeded") and re.match(r"seeds: running \d+/30", lines[1])
    assert lines[2].startswith("    ")  # the running job's log tail, under it
    longer.cancel()
    assert longer.state == CANCELLED and app.poll() == []
    assert not longer.work_folder.exists() and not longer.output.exists()  # nothing partial
    assert seeds.output.read_bytes() == recorded  # the complete recording beside it is untouched
    expected = {seeds.output.name, seeds.log_path.name, longer.log_path.name}  # logs are the jobs' records
    assert {p.name for p in seeds.output.parent.iterdir()} == expected
