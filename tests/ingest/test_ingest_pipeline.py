"""Walker, decoder and catalog inside a real index run: odd names and odd files never stop it."""

from __future__ import annotations

import io
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
        assert again.indexed == 0 and again.unchanged == 6 and again.failed == 3  # the PostScript file stays failed
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
