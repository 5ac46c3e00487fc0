"""Walker, decoder and catalog inside a real index run: odd names and odd files never stop it."""

from __future__ import annotations

import io
import json
import os
import sqlite3
from pathlib import Path

import pytest
from _library_data import V2_NOT_UTF8, catalog_as_v2, scene

from fgsearch.errors import LibraryError
from fgsearch.library import Library
from fgsearch.regions import RegionSettings
from fgsearch.search import Filters


def test_odd_files_and_odd_library_folder_end_to_end(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    for i, rel in enumerate(("a.jpg", "sub/b.png", "sub/c.webp", "d.ppm", "sub/e.tga")):
        scene(i).save(photos / rel)  # the last two: formats outside the common list that Pillow reads
    os.mkfifo(photos / "pipe.jpg")  # skipped: reading it would block the run
    eps = io.BytesIO()
    scene(9).save(eps, format="EPS")
    (photos / "postscript.jpg").write_bytes(eps.getvalue())  # refused without running Ghostscript
    with open(os.fsencode(photos) + b"/caf\xe9.png", "wb") as f:
        scene(5).save(f, format="PNG")
    locked = os.fsencode(photos) + b"/locked-\xff"
    os.makedirs(locked)
    real_scandir = os.scandir

    def scandir(path: str) -> object:  # EACCES on that folder, also when the tests run as root
        if os.fsencode(path) == locked:
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    lib_dir = tmp_path / "my#lib?100%"
    regions = RegionSettings(proposer="grid", max_regions=2)
    with Library.open(lib_dir, model=str(tiny_model_dir), regions=regions) as lib:
        rep = lib.index(photos, batch_size=2)
        assert rep.indexed == 6 and rep.failed == 2  # caf<e9>.png is indexed (issue 23.3)
        reasons = dict(lib.failures())
        assert "permission denied" in reasons[os.fsdecode(locked)]
        assert "not an image" in reasons[str(photos / "postscript.jpg")]
        again = lib.index(photos, batch_size=2)
        assert again.indexed == 0 and again.unchanged == 6 and again.failed == 2  # the PostScript file stays failed
        assert again.failed_unchanged == 1  # and is counted once, as failed (not also as unchanged)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["photos", lib_dir.name])
    with Library.open(lib_dir, read_only=True) as reader:
        assert len(reader.failures()) == 2


def test_a_non_utf8_name_and_a_file_literally_called_its_escape_are_two_files(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """Issue 23.3: `caf<e9>.png` is shown as `caf\\xe9.png`, which another file may really be called.
    Before, the catalog keyed files by that text: the non-UTF-8 file was a failure ("rename the
    file"), or skipped with a warning when the other existed. Now both are indexed, each under its
    exact name: both are found, a query by either file finds that file first, and each is dropped
    alone when it goes."""
    photos = tmp_path / "photos"
    photos.mkdir()
    scene(1).save(photos / "ok.png")
    escaped = str(photos / "caf\\xe9.png")
    scene(2).save(escaped)  # a backslash, an x, an e and a 9: a valid name
    latin1 = os.fsdecode(os.fsencode(photos) + b"/caf\xe9.png")
    with open(latin1, "wb") as f:
        scene(3).save(f, format="PNG")
    dirs = {os.fsdecode(os.fsencode(photos) + b"/d\xff"): 4, str(photos / "d\\xff"): 5}  # the same, as folders
    for d, i in dirs.items():
        os.mkdir(d)
        scene(i).save(os.path.join(d, "in.png"))
    regions = RegionSettings(proposer="none")
    with Library.open(tmp_path / "lib", model=str(tiny_model_dir), regions=regions) as lib:
        rep = lib.index(photos, batch_size=2)
        assert (rep.indexed, rep.failed, rep.warnings, lib.failures()) == (5, 0, [], [])
        hits = lib.search(text="a photo", k=9)
        inside = [os.path.join(d, "in.png") for d in dirs]
        assert sorted(h.path for h in hits) == sorted([str(photos / "ok.png"), escaped, latin1, *inside])
        assert len({h.image_id for h in hits}) == 5  # five images, none hiding another
        for own in (latin1, escaped, *inside):
            assert lib.search(image=own, k=3)[0].path == own
        for d, own in zip(dirs, inside, strict=True):  # --under compares the exact names
            assert [h.path for h in lib.search(text="a photo", k=9, filters=Filters(path_prefix=d))] == [own]
        again = lib.index(photos, batch_size=2)
        assert (again.unchanged, again.indexed, again.failed, lib.failures()) == (5, 0, 0, [])
        os.remove(latin1)
        gone = lib.index(photos, batch_size=2)
        assert gone.pruned == 1 and len(lib.search(text="a photo", k=9)) == 4
        assert latin1 not in {h.path for h in lib.search(text="a photo", k=9)}


def test_a_library_of_schema_v2_migrates_and_indexes_the_names_it_could_not_keep(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """Issue 23.3: a library whose catalog is schema v2 (files keyed by their text) opens for
    indexing, migrates to v3, keeps its files unchanged, and indexes the names v2 lost: one it
    recorded as a failure ("not valid UTF-8") and one it skipped because a real file had its escape."""
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    scene(1).save(photos / "ok.png")
    scene(2).save(photos / "caf\\xe9.png")
    regions = RegionSettings(proposer="none")
    lib_dir = tmp_path / "lib"
    with Library.open(lib_dir, model=str(tiny_model_dir), regions=regions) as lib:
        assert lib.index(photos).indexed == 2
    catalog_as_v2(lib_dir / "catalog.sqlite")
    con = sqlite3.connect(lib_dir / "catalog.sqlite")
    con.execute(  # what v2 recorded for sub/b<ff>.png
        "INSERT INTO files (path, size, mtime_ns, status, reason, seen_run, updated_at) "
        "VALUES (?, 0, 0, 'failed', ?, 1, '2026-12-01 00:00:00.000000')",
        (str(photos / "sub" / "b\\xff.png"), V2_NOT_UTF8),
    )
    con.commit()
    con.close()
    lost = [os.fsencode(photos) + b"/caf\xe9.png", os.fsencode(photos) + b"/sub/b\xff.png"]
    for i, name in enumerate(lost):
        with open(name, "wb") as f:
            scene(3 + i).save(f, format="PNG")
    with pytest.raises(LibraryError, match="upgrade it to v3"):
        Library.open(lib_dir, read_only=True)
    with Library.open(lib_dir) as lib:
        rep = lib.index(photos)
        assert (rep.unchanged, rep.indexed, rep.failed, lib.failures()) == (2, 2, 0, [])
        assert lib.catalog.get_meta()["schema_version"] == 3
        found = sorted(os.fsencode(h.path) for h in lib.search(text="a photo", k=9))
        assert found == sorted([os.fsencode(photos / "ok.png"), os.fsencode(photos / "caf\\xe9.png"), *lost])


def test_report_counts_partition_the_files_scanned(tmp_path: Path, tiny_model_dir: Path) -> None:
    """Issue 23.2: a re-run counted a file that failed before and did not change both as unchanged
    and as failed (`scanned 5, unchanged 5, failed 2`). Over three runs (first, unchanged, one bad
    file fixed) indexed + reused + unchanged + failed == scanned, in the JSON and the summary."""
    from typer.testing import CliRunner

    from fgsearch.console.cli import app

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        scene(i).save(photos / f"good{i}.png")
    (photos / "bad0.png").write_bytes(b"not an image")
    (photos / "bad1.jpg").write_bytes(b"")
    base = ["index", str(photos), "--library", str(tmp_path / "lib"), "--model", str(tiny_model_dir)]
    base += ["--regions", "none"]

    def run(*extra: str) -> dict:
        r = CliRunner().invoke(app, [*base, "--json", *extra])
        rep = json.loads(r.stdout)
        assert r.exit_code == {"complete": 0, "partial": 3}[rep["outcome"]], r.output  # files failed in the run: 3
        assert rep["scanned"] == rep["indexed"] + rep["reused"] + rep["unchanged"] + rep["failed"], rep
        return rep

    first = run()
    assert (first["scanned"], first["indexed"], first["unchanged"], first["failed"]) == (5, 3, 0, 2)
    assert first["outcome"] == "partial"
    assert first["failed_unchanged"] == 0
    second = run()
    assert (second["scanned"], second["indexed"], second["unchanged"], second["failed"]) == (5, 0, 3, 2)
    assert second["failed_unchanged"] == 2 and second["failures"] == []
    assert second["outcome"] == "complete"  # failed before and unchanged: reported once, not every run
    summary = CliRunner().invoke(app, [*base, "--quiet"])
    assert summary.exit_code == 0, summary.output
    assert "unchanged 3, failed 2 (2 unchanged since they failed: --retry-failed tries them again)" in summary.output
    scene(7).save(photos / "bad0.png")  # fixed: read again, since its size and mtime changed
    third = run()
    assert (third["scanned"], third["indexed"], third["unchanged"], third["failed"]) == (5, 1, 3, 1)
    assert third["failed_unchanged"] == 1 and third["outcome"] == "complete"
    retried = run("--retry-failed")
    assert (retried["unchanged"], retried["failed"], retried["failed_unchanged"]) == (4, 1, 0)
    assert [f["path"] for f in retried["failures"]] == [str(photos / "bad1.jpg")]
    assert retried["outcome"] == "partial"  # tried again and failed again
