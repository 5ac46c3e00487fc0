"""Both model families reproduce the original code's outputs (oracle fixtures: FG-CLIP v1 and FG-CLIP 2),
via each fixture's check_parity.py: every check passes and none is skipped."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FIXTURES

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("oracle", "adapter", "checks"),
    [("oracle", "tests/oracle_adapter.py:load", 9), ("oracle2", "tests/oracle2_adapter.py:load", 27)],
    ids=["fgclip", "fgclip2"],
)
def test_check_parity_passes_everything_nothing_skipped(oracle: str, adapter: str, checks: int) -> None:
    proc = subprocess.run(
        [sys.executable, str(FIXTURES / oracle / "check_parity.py"), adapter],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    lines = [ln for ln in out.splitlines() if ln[:4] in ("PASS", "FAIL", "SKIP")]
    assert len(lines) == checks, out
    assert all(ln.startswith("PASS") for ln in lines), out
    assert f"parity: {checks} passed, 0 failed" in out and "skipped" not in out
