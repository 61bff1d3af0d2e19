from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = sorted((ROOT / "scenarios").glob("*.yaml"))


@pytest.fixture(params=SCENARIOS, ids=lambda p: p.stem)
def scenario_path(request) -> Path:
    return request.param
