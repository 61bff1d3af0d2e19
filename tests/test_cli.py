from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from worldgen.cli import main

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
