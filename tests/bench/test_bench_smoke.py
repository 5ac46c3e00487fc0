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


def _smoke(script: Path, tmp: Path) -> str:
    """Run ``script --smoke`` in its own temporary folder; what went wrong, or "" when it printed figures."""
    work = tmp / script.stem
    work.mkdir()
    env = {**os.environ, "TMPDIR": str(work), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(script), "--smoke"]
    try:
        r = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        return f"{script.name} --smoke ran over 300 s"
    if r.returncode != 0:
        return f"{script.name} --smoke exited {r.returncode}:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    figures = [line for line in r.stdout.splitlines() if FIGURE.search(line)]
    if len(figures) < 2:
        return f"{script.name} --smoke printed no figures:\n{r.stdout[-2000:]}"
    return ""


@pytest.mark.slow
def test_every_bench_script_runs_with_smoke(tmp_path: Path) -> None:
    """All of them, two at a time (the scripts are mostly one-threaded: on two cores this halves the
    wall time); every failure is reported, each naming its script."""
    from concurrent.futures import ThreadPoolExecutor

    before = _tree(BENCH)
    with ThreadPoolExecutor(max_workers=2) as pool:
        problems = [p for p in pool.map(lambda script: _smoke(script, tmp_path), SCRIPTS) if p]
    assert not problems, "\n\n".join(problems)
    assert _tree(BENCH) == before, "a bench script wrote into bench/ (--smoke writes only in its temporary folder)"
