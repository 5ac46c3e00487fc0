"""Walker, decoder and catalog inside a real index run: odd names and odd files never stop it."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
from _library_data import scene

from fgsearch.library import Library
from fgsearch.regions import RegionSettings


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
        assert rep.indexed == 5 and rep.failed == 3
        reasons = dict(lib.failures())
        assert "not valid UTF-8" in reasons[str(photos / "caf\\xe9.png")]
        assert "permission denied" in reasons[str(photos / "locked-\\xff")]
        assert "not an image" in reasons[str(photos / "postscript.jpg")]
        again = lib.index(photos, batch_size=2)
        assert again.indexed == 0 and again.unchanged == 5 and again.failed == 3  # the PostScript file stays failed
        assert again.failed_unchanged == 1  # and is counted once, as failed (not also as unchanged)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["photos", lib_dir.name])
    with Library.open(lib_dir, read_only=True) as reader:
        assert len(reader.failures()) == 3


def test_a_non_utf8_name_and_a_file_literally_called_its_escape_are_two_files(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """`caf<e9>.png` is shown as `caf\\xe9.png`, which another file may really be called. Before, the
    walk kept one entry per shown path: the non-UTF-8 file vanished without a word (and had it come
    first, the real file would have been dropped). Now the real file is indexed, the other is named
    in a warning, and no failure record claims the real file's path."""
    photos = tmp_path / "photos"
    photos.mkdir()
    scene(1).save(photos / "ok.png")
    scene(2).save(photos / "caf\\xe9.png")  # a backslash, an x, an e and a 9: a valid name
    with open(os.fsencode(photos) + b"/caf\xe9.png", "wb") as f:
        scene(3).save(f, format="PNG")
    regions = RegionSettings(proposer="none")
    with Library.open(tmp_path / "lib", model=str(tiny_model_dir), regions=regions) as lib:
        rep = lib.index(photos, batch_size=2)
        assert rep.indexed == 2 and rep.failed == 0
        assert any("not valid UTF-8" in w and "caf\\xe9.png" in w for w in rep.warnings)
        assert lib.failures() == []
        paths = {h.path for h in lib.search(text="a photo", k=5)}
        assert paths == {str(photos / "ok.png"), str(photos / "caf\\xe9.png")}
        again = lib.index(photos, batch_size=2)
        assert again.unchanged == 2 and again.failed == 0 and lib.failures() == []


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
        assert r.exit_code == 0, r.output
        rep = json.loads(r.stdout)
        assert rep["scanned"] == rep["indexed"] + rep["reused"] + rep["unchanged"] + rep["failed"], rep
        return rep

    first = run()
    assert (first["scanned"], first["indexed"], first["unchanged"], first["failed"]) == (5, 3, 0, 2)
    assert first["failed_unchanged"] == 0
    second = run()
    assert (second["scanned"], second["indexed"], second["unchanged"], second["failed"]) == (5, 0, 3, 2)
    assert second["failed_unchanged"] == 2 and second["failures"] == []
    summary = CliRunner().invoke(app, [*base, "--quiet"])
    assert summary.exit_code == 0, summary.output
    assert "unchanged 3, failed 2 (2 unchanged since they failed: --retry-failed tries them again)" in summary.output
    scene(7).save(photos / "bad0.png")  # fixed: read again, since its size and mtime changed
    third = run()
    assert (third["scanned"], third["indexed"], third["unchanged"], third["failed"]) == (5, 1, 3, 1)
    assert third["failed_unchanged"] == 1
    retried = run("--retry-failed")
    assert (retried["unchanged"], retried["failed"], retried["failed_unchanged"]) == (4, 1, 0)
    assert [f["path"] for f in retried["failures"]] == [str(photos / "bad1.jpg")]
