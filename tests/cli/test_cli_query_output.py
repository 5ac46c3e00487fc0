"""What ``fgsearch query --paths`` writes to stdout is paths and nothing else, even when the query
brings notices (a text cut at 248 tokens): a notice on stdout became the first "path" for
``xargs -0``."""

from __future__ import annotations

import os
from pathlib import Path

from _library_data import demo_cli_library
from typer.testing import CliRunner

from fgsearch.console.cli import app

LONG_TEXT = "a large red circle on the left of a small blue square " * 30  # far over 248 tokens


def test_paths_output_holds_only_paths_when_the_text_is_truncated(tmp_path: Path) -> None:
    lib = demo_cli_library(tmp_path, n_good=3)
    runner = CliRunner()
    for extra in (["--paths"], ["--paths", "-0"]):
        r = runner.invoke(app, ["query", LONG_TEXT, "--library", lib, "-k", "3", *extra])
        assert r.exit_code == 0, r.output
        assert "notice: text truncated" in r.stderr
        sep = "\0" if "-0" in extra else "\n"
        printed = [p for p in r.stdout.split(sep) if p]
        assert len(printed) == 3 and all(os.path.isfile(p) for p in printed), printed


def test_under_a_folder_that_does_not_exist_warns(tmp_path: Path) -> None:
    """It answered a bare "no results", as if the folder held nothing that matched."""
    lib = demo_cli_library(tmp_path, n_good=2)
    runner = CliRunner()
    missing = tmp_path / "photoz"
    r = runner.invoke(app, ["query", "a photo", "--library", lib, "--under", str(missing)])
    assert r.exit_code == 0, r.output
    assert f"warning: --under {missing}: no such folder on disk" in r.output
    assert "no results" in r.stdout
    r = runner.invoke(app, ["query", "a photo", "--library", lib, "--under", str(tmp_path / "photos")])
    assert "warning" not in r.output and "no results" not in r.output


def test_the_box_walk_is_refused_in_one_line_by_a_family_without_it(tmp_path: Path) -> None:
    lib = demo_cli_library(tmp_path, n_good=2)
    r = CliRunner().invoke(app, ["query", "a red circle", "--library", lib, "--text-path", "box"])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "has no 'box' text walk" in r.output and len(r.output.strip().splitlines()) == 1, r.output
