"""The wheel is part of the product: it holds the `fgsearch` package and nothing else, and a clone of
the repository (a folder named `fgsearch` holding `cli.py`) never shadows the installed package."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _source_files() -> set[str]:
    """Every file the wheel must hold, named as installed, derived from the source tree (pure
    Python since issue 24 removed the C search kernel: no compiled file, no C source)."""
    expected = {"fgsearch/console/cli.py"}
    for src, dest in (("fgsearch", "fgsearch"), ("indexes", "fgsearch/indexes"), ("trainer", "fgsearch/trainer")):
        for f in (ROOT / src).rglob("*"):
            if f.is_file() and "__pycache__" not in f.parts and f.suffix not in (".pyc", ".so", ".pyd"):
                expected.add(f"{dest}/{f.relative_to(ROOT / src).as_posix()}")
    return expected


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    src = tmp_path_factory.mktemp("src")  # a fresh copy: no stale build/ and no race with other runs
    for name in ("pyproject.toml", "README.md", "cli.py"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("fgsearch", "indexes", "trainer"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.so"))
    # offline: no build isolation, the environment's setuptools and wheel (dev extra) build it
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(src)],
        capture_output=True,
        text=True,
        env={**os.environ, "PIP_NO_INDEX": "1"},
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    (whl,) = out.glob("fgsearch-*.whl")
    return whl


def test_wheel_holds_exactly_the_package(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    dist_info = {n for n in names if n.split("/")[0].endswith(".dist-info")}
    assert {n.split("/")[0] for n in dist_info} == {"-".join(wheel.name.split("-")[:2]) + ".dist-info"}
    assert set(names) - dist_info == _source_files()


def test_installed_wheel_is_not_shadowed_by_a_clone(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    clone = tmp_path / "work" / "fgsearch"  # a clone named like the package, run from its parent
    clone.mkdir(parents=True)
    for f in ROOT.iterdir():  # the root's files as they are (cli.py, pyproject.toml, README.md ...)
        if f.is_file():
            (clone / f.name).write_bytes(f.read_bytes())
    code = (
        "import fgsearch, fgsearch.console.cli as c\nfrom fgsearch import Library\n"
        "from fgsearch.indexes import hnsw\nassert hnsw.check_graph\n"
        "print(fgsearch.__file__, c.__file__)"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        cwd=clone.parent,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(site), "PYTHONNOUSERSITE": "1"},
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    pkg, cli = r.stdout.split()
    assert Path(pkg) == site / "fgsearch" / "__init__.py"
    assert Path(cli) == site / "fgsearch" / "console" / "cli.py"
