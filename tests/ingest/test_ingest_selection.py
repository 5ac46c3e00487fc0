"""Which files a run takes and keeps: symbolic links stay inside the roots (issue 11.5), overlapping
roots count each file once (11.15), a narrower --include prunes only files gone from disk (12.9),
and a run that finds nothing says so (12.7)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from _library_data import scene
from typer.testing import CliRunner

from fgsearch.library import Library
from fgsearch.regions import RegionSettings


def _photos(root: Path, names: list[str], seed: int = 0) -> list[Path]:
    out = []
    for i, name in enumerate(names):
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        scene(seed * 100 + i).save(p)
        out.append(p)
    return out


def _cli(*args: str) -> dict:
    from fgsearch.console.cli import app

    r = CliRunner().invoke(app, ["index", *args, "--json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


@pytest.fixture
def lib_args(tmp_path: Path, tiny_model_dir: Path) -> list[str]:
    return ["--library", str(tmp_path / "lib"), "--model", str(tiny_model_dir), "--regions", "none"]


def test_links_leading_out_of_the_roots_are_not_followed_unless_asked(tmp_path: Path, lib_args: list[str]) -> None:
    photos = tmp_path / "photos"
    _photos(photos, ["a.jpg", "sub/b.jpg"])
    _photos(tmp_path / "elsewhere", ["x.jpg", "y.jpg"], seed=1)
    os.symlink(tmp_path / "elsewhere", photos / "linked")
    os.symlink("..", photos / "up")  # the folder above: photos, elsewhere and the library again
    os.symlink(photos / "sub" / "b.jpg", photos / "c.jpg")  # stays inside: followed (a copy)
    rep = _cli(str(photos), *lib_args)
    assert (rep["scanned"], rep["indexed"], rep["reused"]) == (3, 2, 1)
    (warning,) = rep["warnings"]
    assert "2 symbolic link(s) leading outside" in warning and "--follow-links" in warning
    rep = _cli(str(photos), *lib_args, "--follow-links", "--exclude", "up/**")
    assert (rep["indexed"], rep["warnings"]) == (2, [])  # elsewhere/ through the link


def test_overlapping_roots_count_each_file_once(tmp_path: Path, lib_args: list[str]) -> None:
    photos = tmp_path / "photos"
    _photos(photos, ["a.jpg", "sub/b.jpg", "sub/c.jpg"])
    for roots in ([photos, photos / "sub"], [photos / "sub", photos]):
        rep = _cli(*map(str, roots), *lib_args)
        assert rep["scanned"] == 3 and rep["indexed"] + rep["unchanged"] == 3 and rep["reused"] == 0


def test_a_narrower_include_prunes_only_files_gone_from_disk(tmp_path: Path, tiny_model_dir: Path) -> None:
    photos = tmp_path / "photos"
    jpgs = _photos(photos, ["a.jpg", "b.jpg"])
    pngs = _photos(photos, ["c.png", "sub/d.png"], seed=1)
    with Library.open(tmp_path / "lib", model=str(tiny_model_dir), regions=RegionSettings(proposer="none")) as lib:
        assert lib.index(photos).indexed == 4
        rep = lib.index(photos, include=("*.jpg",))
        assert (rep.scanned, rep.pruned, lib.catalog.counts()["files_ok"]) == (2, 0, 4)
        pngs[0].unlink()
        jpgs[0].unlink()
        rep = lib.index(photos, include=("*.jpg",))
        assert (rep.pruned, lib.catalog.counts()["files_ok"]) == (2, 2)  # gone from disk: both
        rep = lib.index(photos, include=("*.jpg",), prune_unselected=True)
        assert (rep.pruned, lib.catalog.counts()["files_ok"]) == (1, 1)  # sub/d.png, asked for
        assert lib.global_index.count() == 1


def test_a_run_that_finds_nothing_says_why(tmp_path: Path, lib_args: list[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no pictures here")
    photos = tmp_path / "photos"
    _photos(photos, ["a.jpg"])
    rep = _cli(str(empty), str(photos), *lib_args, "--include", "*.png")
    assert rep["warnings"] == [
        f"no image files in {empty}; give a folder that holds images",
        f"--include/--exclude left no image in {photos} (1 image files there did not match)",
    ]
    from fgsearch.console.cli import app

    r = CliRunner().invoke(app, ["index", str(empty), *lib_args, "--quiet"])
    assert r.exit_code == 0 and f"warning: no image files in {empty}" in " ".join(r.output.split())


def test_a_repaired_disagreement_is_a_warning_of_the_run(
    tmp_path: Path, tiny_model_dir: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    import shutil

    photos = tmp_path / "photos"
    _photos(photos, ["a.jpg", "b.jpg"])
    regions = RegionSettings(proposer="grid", max_regions=2)
    with Library.open(tmp_path / "lib", model=str(tiny_model_dir), regions=regions) as lib:
        lib.index(photos)
    shutil.rmtree(tmp_path / "lib" / "index" / "regions")  # e.g. a partial restore from a backup
    capfd.readouterr()
    with Library.open(tmp_path / "lib", model=str(tiny_model_dir)) as lib:
        rep = lib.index(photos)
    assert rep.indexed == 2 and rep.warnings == [
        "catalog and vector indexes disagreed (4 vectors missing, 0 unknown): repaired; "
        "images without vectors are embedded again by this run"
    ]
    assert "disagreed" not in capfd.readouterr().err  # not a log line through the progress bar
