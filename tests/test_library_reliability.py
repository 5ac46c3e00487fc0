"""A library folder is never mixed with the user's files; --reindex keeps the library's settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from _library_data import make_folder, scene
from typer.testing import CliRunner

from fgsearch.errors import LibraryError
from fgsearch.library import BackendSettings, Library
from fgsearch.regions import RegionSettings


def test_a_folder_of_the_users_files_is_refused_and_nothing_is_written(tmp_path: Path, tiny_model_dir: Path) -> None:
    home = tmp_path / "home"
    (home / "index").mkdir(parents=True)
    (home / "index" / "thesis.txt").write_text("years of work")
    scene(1).save(home / "holiday.jpg")
    before = sorted(p.relative_to(home) for p in home.rglob("*"))
    with pytest.raises(LibraryError, match=r"is not empty \(holiday.jpg, index\) and is not an fgsearch library"):
        Library.open(home, model=str(tiny_model_dir))
    with pytest.raises(LibraryError, match="not an fgsearch library"):
        Library.open(home, model=str(tiny_model_dir), reindex=True)
    assert sorted(p.relative_to(home) for p in home.rglob("*")) == before  # no lock, no catalog
    assert (home / "index" / "thesis.txt").read_text() == "years of work"


def test_an_empty_folder_or_the_lock_of_a_failed_creation_is_fine(tmp_path: Path, tiny_model_dir: Path) -> None:
    for name in ("empty", "after-failure"):
        (tmp_path / name).mkdir()
    (tmp_path / "after-failure" / "lock").write_text("")
    for name in ("empty", "after-failure"):
        with Library.open(tmp_path / name, model=str(tiny_model_dir), regions=RegionSettings(proposer="none")) as lib:
            assert lib.catalog.counts()["images"] == 0


def test_reindex_deletes_only_what_the_library_created(tmp_path: Path, tiny_model_dir: Path) -> None:
    root = tmp_path / "photos"
    make_folder(root, n_good=3, bad=False)
    lib_dir = tmp_path / "lib"
    with Library.open(lib_dir, model=str(tiny_model_dir), regions=RegionSettings(proposer="none")) as lib:
        lib.index(root)
    # files the user put into the library folder later, inside and beside the index folder
    (lib_dir / "index" / "notes").mkdir()
    (lib_dir / "index" / "notes" / "keep.txt").write_text("mine")
    (lib_dir / "index" / "keep.txt").write_text("mine too")
    (lib_dir / "qdrant").mkdir()
    (lib_dir / "qdrant" / "keep.txt").write_text("not a qdrant store")
    with Library.open(lib_dir, reindex=True) as lib:
        assert lib.catalog.counts()["images"] == 0 and lib.global_index.count() == 0
        assert lib.index(root).indexed == 3
    assert (lib_dir / "index" / "notes" / "keep.txt").read_text() == "mine"
    assert (lib_dir / "index" / "keep.txt").read_text() == "mine too"
    assert (lib_dir / "qdrant" / "keep.txt").read_text() == "not a qdrant store"


def test_reindex_keeps_the_backend_and_region_settings_unless_new_ones_are_given(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    root = tmp_path / "photos"
    make_folder(root, n_good=2, bad=False)
    lib_dir = tmp_path / "lib"
    grid = RegionSettings(proposer="grid", max_regions=3)
    with Library.open(lib_dir, model=str(tiny_model_dir), backend="exact", regions=grid) as lib:
        lib.index(root)
    with Library.open(lib_dir, reindex=True) as lib:
        assert lib.backend == BackendSettings(kind="exact") and lib.region_settings == grid
        assert lib.index(root).regions == 6
    with Library.open(lib_dir, read_only=True) as lib:  # recorded, not only used
        assert lib.backend.kind == "exact" and lib.region_settings == grid
        assert lib.global_index.kind == "exact"
    none = RegionSettings(proposer="none")
    with Library.open(lib_dir, reindex=True, backend="faiss", regions=none) as lib:  # new ones given: used
        assert lib.backend.kind == "faiss" and lib.region_settings == none


def test_doctor_on_a_folder_without_a_library_refuses_and_writes_nothing(tmp_path: Path) -> None:
    from fgsearch.console.cli import app

    empty = tmp_path / "nothing-here"
    empty.mkdir()
    for args in (["doctor", "--repair"], ["doctor"]):
        r = CliRunner().invoke(app, [*args, "--library", str(empty)])
        assert r.exit_code == 1 and f"no library at {empty}" in r.output, r.output
        assert "Traceback" not in r.output
    assert list(empty.iterdir()) == []  # no lock file, no catalog
