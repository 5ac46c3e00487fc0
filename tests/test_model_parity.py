"""The model reproduces the original FG-CLIP code's outputs (oracle fixture), via check_parity.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import ORACLE

ROOT = Path(__file__).resolve().parent.parent


def test_check_parity_passes_everything() -> None:
    proc = subprocess.run(
        [sys.executable, str(ORACLE / "check_parity.py"), "tests/oracle_adapter.py:load"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    lines = [ln for ln in out.splitlines() if ln[:4] in ("PASS", "FAIL", "SKIP")]
    assert len(lines) == 9, out
    assert all(ln.startswith("PASS") for ln in lines), out
    assert "parity: 9 passed, 0 failed" in out
