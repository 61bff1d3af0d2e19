"""One cache rule for ``worldgen run``'s stages, an experiment's stages and compare's cells: reused only when
the recorded inputs (the manifest fields read, the parameters, the upstream keys, the code) match; made
again otherwise, naming what changed. (End to end: tests/test_run.py and tests/test_policies.py.)"""

from __future__ import annotations

import json
from pathlib import Path

from worldgen.apps.cache import Stages
from worldgen.apps.run import PROFILES, STAGES, Run, _stage_keys, run_manifest, stage_inputs
from worldgen.manifest import load_manifest

from .conftest import PUSH


def _keys(manifest) -> dict[str, str]:
    profile = PROFILES["tiny"]
    run = Run(run_manifest(manifest, profile), profile, Path("unused"), lambda text: None)
    return _stage_keys(stage_inputs(run))


def _changed_stages(manifest, edited) -> list[str]:
    before, after = _keys(manifest), _keys(edited)
    return [name for name in STAGES if before[name] != after[name]]


def _with(manifest, section: str, **fields):
    return manifest.model_copy(update={section: getattr(manifest, section).model_copy(update=fields)})


def test_run_stages_rekey_on_the_fields_they_read_and_on_the_code(monkeypatch):
    manifest = load_manifest(PUSH)
    generation = manifest.generation
    # A recipe worldgen run never runs: nothing.
    retarget = generation.retarget.model_copy(update={"count": generation.retarget.count + 1})
    assert _changed_stages(manifest, _with(manifest, "generation", retarget=retarget)) == []
    assert _changed_stages(manifest, manifest.model_copy(update={"description": "another"})) == []
    # The recipe it runs, the margin it reads: generation and what follows.
    recover = generation.recover.model_copy(update={"action_noise": 0.25})
    after_generation = ["synthetic", "checks", "policies", "eval", "report"]
    assert _changed_stages(manifest, _with(manifest, "generation", recover=recover)) == after_generation
    assert _changed_stages(manifest, _with(manifest, "generation", success_margin=0.01)) == after_generation
    # Another recipe named for the run (a variant of the same one): generation and what follows.
    other = _with(manifest, "generation", recipe="recover-parent")
    assert _changed_stages(manifest, other) == after_generation
    # A policy field (the tiny profile sets the step count itself): the policies and what follows.
    share = _with(manifest, "policy", generated_share=0.3)
    assert _changed_stages(manifest, share) == ["policies", "eval", "report"]
    # Other code: every stage.
    before = _keys(manifest)
    monkeypatch.setattr("worldgen.apps.run.code_hash", lambda: "another version")
    after = _keys(manifest)
    assert [name for name in STAGES if before[name] != after[name]] == list(STAGES)


def test_experiment_stages_are_reused_only_on_matching_inputs(tmp_path, monkeypatch):
    calls: list[str] = []
    said: list[str] = []
    made = tmp_path / "made.txt"

    def make_data() -> dict:
        calls.append("data")
        assert not made.exists()  # made again only after its earlier output was removed
        made.write_text("x")
        return {"n": 1}

    def make_model() -> dict:
        calls.append("model")
        return {}

    def both(stages: Stages, size: int) -> None:
        stages("data", make_data, {"size": size}, [made])
        stages("model", make_model, {"data": stages.key("data")})

    both(Stages(tmp_path, said.append), 3)
    both(Stages(tmp_path, said.append), 3)  # a new process, the same inputs: nothing made
    assert calls == ["data", "model"]
    recorded = json.loads((tmp_path / "stages.json").read_text())
    assert recorded["data"]["inputs"]["size"] == 3 and recorded["data"]["n"] == 1
    # Another input: that stage and the one that reads it, each saying why.
    both(Stages(tmp_path, said.append), 4)
    assert calls == ["data", "model", "data", "model"]
    assert any("data: made before from other inputs (size)" in s for s in said)
    assert any("model: made before from other inputs (data)" in s for s in said)
    # Other code: both again, naming it.
    monkeypatch.setattr("worldgen.apps.cache.code_hash", lambda: "another version")
    said.clear()
    both(Stages(tmp_path, said.append), 4)
    assert calls[-2:] == ["data", "model"] and any("(code, " in s or "(code)" in s for s in said)
