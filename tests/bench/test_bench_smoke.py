"""Every benchmark script starts on a fresh machine and prints its figures (issue 30.5:
`python bench/bench_serve.py` failed on a fresh clone with FileNotFoundError, and no test ran the
scripts). Each ``bench/bench_*.py`` (found by name, so a new script is covered without editing this
file; ``bench_data.py`` is their helper module) runs with ``--smoke``: tiny sizes, seconds, in a
temporary folder of its own (its working directory and TMPDIR), writing nothing in the repository."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
HELPERS = {"bench_data.py"}  # imported by the scripts, not run
SCRIPTS = sorted(p for p in BENCH.glob("bench_*.py") if p.name not in HELPERS)
FIGURE = re.compile(r"\d+\.\d+|\d+ ?(ms|s|MB|images/s)\b")


def test_the_scripts_are_found() -> None:
    assert len(SCRIPTS) >= 7, [p.name for p in SCRIPTS]


def _tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if "__pycache__" not in p.parts}


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_bench_script_smoke(script: Path, tmp_path: Path) -> None:
    before = _tree(BENCH)
    env = {**os.environ, "TMPDIR": str(tmp_path), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [sys.executable, str(script), "--smoke"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240
    )
    assert r.returncode == 0, f"{script.name} --smoke exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    figures = [line for line in r.stdout.splitlines() if FIGURE.search(line)]
    assert len(figures) >= 2, f"{script.name} --smoke printed no figures:\n{r.stdout[-3000:]}"
    assert _tree(BENCH) == before, f"{script.name} --smoke wrote into bench/"
