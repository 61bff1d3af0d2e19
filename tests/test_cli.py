from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from worldgen.apps.cli import main

from .conftest import ROOT

PICK = (ROOT / "scenarios" / "pick_cube.yaml").read_text()
ONE_LINE = re.compile(r"^[^\n:]+\.yaml:\d+: \S+: [^\n]+\n$")

BAD_MANIFESTS = {
    "malformed_yaml": PICK.replace("horizon: 160", "horizon: [160"),
    "unknown_key": PICK.replace("horizon: 160", "horizon: 160\nhorizonn: 3"),
    "wrong_type": PICK.replace("control_hz: 20", "control_hz: fast"),
    "out_of_range": PICK.replace("horizon: 160", "horizon: 999999"),
    "missing_field": PICK.replace("horizon: 160\n", ""),
    "escaping_path": PICK.replace("      mass: 0.08", "      asset: ../../etc/x.usda\n      mass: 0.08"),
    "python_tag": PICK.replace("horizon: 160", "horizon: !!python/object/apply:os.getcwd []"),
}


@pytest.mark.parametrize("case", sorted(BAD_MANIFESTS))
def test_bad_manifest_one_line_exit_2_nothing_written(case, tmp_path, capsys):
    manifest = tmp_path / f"{case}.yaml"
    manifest.write_text(BAD_MANIFESTS[case])
    out = tmp_path / "out.usda"
    code = main(["compile", str(manifest), "--seed", "1", "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert ONE_LINE.match(err), err
    assert err.startswith(f"{manifest}:")
    assert "Traceback" not in err
    assert not out.exists() and list(tmp_path.iterdir()) == [manifest]
    assert main(["validate", str(manifest)]) == 2


def test_validate_and_compile_cli_in_a_subprocess(tmp_path):
    # The installed console script: exit codes and output as a user sees them.
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    exe = Path(sys.executable).with_name("worldgen")
    ok = subprocess.run(
        [exe, "validate", *map(str, sorted((ROOT / "scenarios").glob("*.yaml")))],
        capture_output=True,
        text=True,
        env=env,
    )
    assert ok.returncode == 0 and ok.stdout.count(": ok") == 3
    out = tmp_path / "stage.usda"
    done = subprocess.run(
        [exe, "compile", str(ROOT / "scenarios" / "push_to_target.yaml"), "--seed", "2", "-o", str(out)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert out.is_file() and out.read_text().startswith("#usda 1.0")
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_MANIFESTS["wrong_type"])
    fail = subprocess.run([exe, "compile", str(bad)], capture_output=True, text=True, env=env)
    assert fail.returncode == 2 and "Traceback" not in fail.stderr and ONE_LINE.match(fail.stderr)


def test_help_reads_well(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert "validate" in text and "compile" in text


def test_compile_rejects_non_usda_output(tmp_path, capsys):
    code = main(["compile", str(ROOT / "scenarios" / "pick_cube.yaml"), "-o", str(tmp_path / "x.usd")])
    assert code == 2 and "usda" in capsys.readouterr().err
    assert not (tmp_path / "x.usd").exists()


# -- every command given bad input: one line, exit 2, no traceback, nothing written --------------------

PUSH = ROOT / "scenarios" / "push_to_target.yaml"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Read-only inputs beside the bad ones: a real one-demo dataset (no cameras), a text file posing as
    a dataset, a truncated copy of the dataset, a folder that is no checkpoint, a file posing as a
    folder."""
    from worldgen.pipeline import run_seed_stage

    root = tmp_path_factory.mktemp("inputs")
    dataset = root / "seeds.hdf5"
    run_seed_stage(PUSH, dataset, n=1, cameras=False)
    (root / "notes.hdf5").write_text("not HDF5\n")
    data = dataset.read_bytes()
    (root / "truncated.hdf5").write_bytes(data[: len(data) // 2])
    (root / "empty_folder").mkdir()
    (root / "a_file").write_text("x\n")
    return root


def _cases(d: Path) -> dict[str, list[str]]:
    ds, text, cut, folder, file = (
        str(d / n) for n in ("seeds.hdf5", "notes.hdf5", "truncated.hdf5", "empty_folder", "a_file")
    )
    missing, push = str(d / "missing.hdf5"), str(PUSH)
    blocked = f"{file}/out"  # its folder would be a regular file: cannot be created
    return {
        # missing, non-HDF5 and truncated datasets
        "inspect missing": ["inspect", missing],
        "inspect not hdf5": ["inspect", text],
        "inspect truncated": ["inspect", cut],
        "check not hdf5": ["check", text],
        "check truncated": ["check", cut],
        "train-wm missing": ["train-wm", missing, "-o", "{out}/ckpt"],
        "train-wm not hdf5": ["train-wm", text, "-o", "{out}/ckpt"],
        "generate truncated": ["generate", cut, folder, "-o", "{out}/synth.hdf5"],
        "generate missing": ["generate", missing, "--in-simulator", "-o", "{out}/synth.hdf5"],
        "eval-wm not hdf5": ["eval-wm", text],
        "train-policy missing": ["train-policy", missing, "--algo", "bc-mlp", "-o", "{out}/policy"],
        "seed missing manifest": ["seed", str(d / "missing.yaml"), "-o", "{out}/s.hdf5"],
        "eval missing manifest": ["eval", folder, str(d / "missing.yaml")],
        "train-wm without camera images": ["train-wm", ds, "-o", "{out}/ckpt"],
        # names that do not exist
        "inspect wrong mask": ["inspect", ds, "--mask", "trian"],
        "check wrong camera": ["check", ds, "--camera", "nope"],
        "check wrong mask": ["check", ds, "--calibrate-mask", "nope"],
        "train-policy wrong algo": ["train-policy", ds, "--algo", "bc-lstm", "-o", "{out}/policy"],
        "train-policy wrong mask": ["train-policy", ds, "--algo", "bc-mlp", "--mask", "x", "-o", "{out}/p"],
        "compare wrong algo": ["compare", push, "-o", "{out}/cmp", "--algo", "ppo2"],
        "compare wrong row": ["compare", push, "-o", "{out}/cmp", "--rows", "seeds", "+dream (WM)"],
        "train-policy wrong obs key": [
            "train-policy",
            ds,
            "--algo",
            "bc-mlp",
            "--obs-keys",
            "robot0_eef_pos,nope",
            "-o",
            "{out}/p",
        ],
        "train-policy ppo with images": [
            "train-policy",
            "--algo",
            "ppo",
            "--manifest",
            push,
            "--image-keys",
            "front_rgb",
            "-o",
            "{out}/p",
        ],
        # folders that are not checkpoints
        "generate not a checkpoint": ["generate", ds, folder, "-o", "{out}/synth.hdf5"],
        "eval-wm not a checkpoint": ["eval-wm", ds, folder, "--open-loop"],
        "train-policy not a world model": [
            "train-policy",
            ds,
            "--algo",
            "ppo",
            "--world-model",
            folder,
            "-o",
            "{out}/p",
        ],
        "eval not a policy": ["eval", folder, push, "--episodes", "1"],
        "generate without a world model": ["generate", ds, "-o", "{out}/synth.hdf5"],
        "generate unknown recipe": ["generate", ds, folder, "--recipe", "nope", "-o", "{out}/synth.hdf5"],
        # malformed lists and values
        "generate malformed steps": ["generate", ds, folder, "--starts", "10,x", "-o", "{out}/s.hdf5"],
        "generate malformed starts": ["generate", ds, "--in-simulator", "--starts", "0,,-1", "-o", "{out}/s"],
        "generate retarget into the seed range": [
            "generate",
            ds,
            "--in-simulator",
            "--recipe",
            "retarget",
            "--scene-seed",
            "3",
            "-o",
            "{out}/s.hdf5",
        ],
        "train-policy malformed keys": [
            "train-policy",
            ds,
            "--algo",
            "bc-mlp",
            "--obs-keys",
            "a,,b",
            "-o",
            "{out}/p",
        ],
        "generate noise out of range": [
            "generate",
            ds,
            folder,
            "--action-noise",
            "-0.5",
            "-o",
            "{out}/s.hdf5",
        ],
        # negative and zero counts, negative seeds
        "seed negative count": ["seed", push, "--n", "-3", "-o", "{out}/s.hdf5"],
        "train-wm zero steps": ["train-wm", ds, "--steps", "0", "-o", "{out}/ckpt"],
        "generate zero per seed": ["generate", ds, folder, "--per-seed", "0", "-o", "{out}/s.hdf5"],
        "eval negative episodes": ["eval", folder, push, "--episodes", "-1"],
        "train-wm negative seed": ["train-wm", ds, "--seed", "-1", "-o", "{out}/ckpt"],
        "compile negative seed": ["compile", push, "--seed", "-2", "-o", "{out}/x.usda"],
        # exports
        "export unknown format": ["export", ds, "--format", "lerobot2", "-o", "{out}/x.hdf5"],
        "export empty mask": [
            "export",
            ds,
            "--format",
            "robomimic",
            "--mask",
            "synthetic",
            "-o",
            "{out}/x.hdf5",
        ],
        "export over an existing file": ["export", ds, "--format", "robomimic", "-o", file],
        "export unwritable": ["export", ds, "--format", "robomimic", "-o", f"{blocked}/x.hdf5"],
        # Permission bits say yes to root, the file system says no: refused before any simulation.
        "seed into /proc": ["seed", push, "-o", "/proc/forbidden.hdf5", "--n", "1", "--no-cameras"],
        "export not hdf5": ["export", text, "--format", "robomimic", "-o", "{out}/x.hdf5"],
        "export lerobot over a folder": ["export", ds, "--format", "lerobot", "-o", folder],
        "export isaaclab over a file": ["export", ds, "--format", "isaaclab", "-o", file],
        "export isaaclab unwritable": ["export", ds, "--format", "isaaclab", "-o", f"{blocked}/x.hdf5"],
        "export lerobot unwritable": ["export", ds, "--format", "lerobot", "-o", f"{blocked}/ds"],
        "export lerobot empty mask": [
            "export",
            ds,
            "--format",
            "lerobot",
            "--mask",
            "play",
            "-o",
            "{out}/ds",
        ],
        "export videos not lerobot": ["export", ds, "--format", "isaaclab", "--videos", "-o", "{out}/x.hdf5"],
        # outputs that cannot be written
        "compile unwritable": ["compile", push, "-o", f"{blocked}/x.usda"],
        "compile output not usda": ["compile", push, "-o", "{out}/x.usd"],
        "seed unwritable": ["seed", push, "--n", "1", "-o", f"{blocked}/s.hdf5"],
        "seed output is a folder": ["seed", push, "--n", "1", "-o", folder],
        "train-wm unwritable": ["train-wm", ds, "-o", f"{blocked}/ckpt"],
        "train-wm output is a file": ["train-wm", ds, "-o", file],
        "generate unwritable": ["generate", ds, folder, "-o", f"{blocked}/s.hdf5"],
        "eval-wm unwritable": ["eval-wm", ds, "-o", f"{blocked}/r.json"],
        "train-policy unwritable": ["train-policy", ds, "--algo", "bc-mlp", "-o", f"{blocked}/p"],
        "check unwritable heat map": ["check", ds, "--heatmap", f"{blocked}/h.png"],
        "compare unwritable": ["compare", push, "-o", f"{blocked}/cmp"],
    }


CASES = sorted(_cases(Path("/x")))


@pytest.mark.parametrize("case", CASES)
def test_bad_input_one_line_exit_2_nothing_written(case, inputs, tmp_path, capsys):
    argv = [a.replace("{out}", str(tmp_path)) for a in _cases(inputs)[case]]
    before = sorted(p.relative_to(inputs) for p in inputs.rglob("*"))
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, (argv, out, err)
    assert "Traceback" not in err and err.endswith("\n") and err.count("\n") == 1, err
    name = argv[0]
    assert err.startswith((f"worldgen {name}: ", str(inputs))), err
    assert list(tmp_path.iterdir()) == [], f"{case} wrote {list(tmp_path.iterdir())}"
    assert sorted(p.relative_to(inputs) for p in inputs.rglob("*")) == before


def test_a_bug_keeps_its_traceback(monkeypatch):
    """Only the user-error family is bad input; any other exception leaves main with its traceback."""
    import worldgen.apps.cli as cli

    def broken(args):
        raise ValueError("a bug, not bad input")

    monkeypatch.setattr(cli, "_cmd_validate", broken)
    with pytest.raises(ValueError, match="a bug"):
        main(["validate", str(PUSH)])


def test_hostile_nesting_is_one_line(tmp_path, capsys):
    deep = tmp_path / "deep.yaml"
    deep.write_text("name: " + "[" * 5000 + "]" * 5000 + "\n")
    assert main(["validate", str(deep)]) == 2
    err = capsys.readouterr().err
    assert err == f"{deep}:1: <yaml>: nested deeper than 32 levels\n"
