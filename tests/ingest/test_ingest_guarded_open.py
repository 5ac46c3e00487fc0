"""Every file fgsearch opens from an untrusted folder goes through the same guards (issue 11.3,
11.6): query images and thumbnails use the indexer's format allow-list (never Ghostscript), and
FIFOs, devices and oversized sidecars are refused without blocking or reading without end."""

from __future__ import annotations

import contextlib
import io
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _library_data import scene

from fgsearch.decode import UnsafeFileError, open_image, read_small_file
from fgsearch.errors import ImageError
from fgsearch.library import Library
from fgsearch.regions import SIDECAR_MAX_BYTES, RegionSettings


def _finishes(fn: Callable[[], Any], fifos: list[Path], seconds: float = 20.0) -> Any:
    """``fn()``'s result, failing the test if it blocks; the FIFOs get a writer afterwards so a
    blocked reader (the old behaviour) is released instead of holding the process."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as e:  # handed to the test thread
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    blocked = t.is_alive()
    for fifo in fifos:
        with contextlib.suppress(OSError):  # ENXIO: nobody was waiting on it
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert not blocked, f"blocked for {seconds}s on a FIFO"
    if "error" in out:
        raise out["error"]
    return out["value"]


@pytest.fixture
def ghostscript(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[object]]:
    from PIL import EpsImagePlugin

    calls: list[object] = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *a, **k: calls.append(a))
    yield calls


def _postscript(path: Path) -> Path:
    eps = io.BytesIO()
    scene(3).save(eps, format="EPS")
    path.write_bytes(eps.getvalue())
    return path


@pytest.fixture
def library(tmp_path: Path, tiny_model_dir: Path) -> Iterator[Library]:
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        scene(i).save(photos / f"{i}.jpg")
    with Library.open(tmp_path / "lib", model=str(tiny_model_dir), regions=RegionSettings(proposer="none")) as lib:
        lib.index(photos)
        yield lib


def test_query_image_that_is_postscript_never_reaches_ghostscript(
    tmp_path: Path, library: Library, ghostscript: list[object]
) -> None:
    with pytest.raises(ImageError, match="not an image Pillow can read"):
        library.search(image=_postscript(tmp_path / "query.jpg"))
    assert ghostscript == []


def test_thumbnails_of_postscript_never_reach_ghostscript(tmp_path: Path, ghostscript: list[object]) -> None:
    from fgsearch.render import RenderItem, contact_sheet, html_page

    item = RenderItem(str(_postscript(tmp_path / "hit.jpg")), "1")
    contact_sheet([item], tmp_path / "sheet.png")
    html_page([item], tmp_path / "page.html")
    assert ghostscript == []


def test_query_image_that_is_a_fifo_fails_at_once(tmp_path: Path, library: Library) -> None:
    fifo = tmp_path / "fifo.jpg"
    os.mkfifo(fifo)
    with pytest.raises(ImageError, match="not a regular file"):
        _finishes(lambda: library.search(image=fifo), [fifo])


def test_open_image_refuses_devices_and_folders(tmp_path: Path) -> None:
    for path in ("/dev/zero", tmp_path):
        with pytest.raises(ImageError, match="not a regular file"):
            open_image(path)
    with pytest.raises(ImageError, match="does not exist"):
        open_image(tmp_path / "nothing.jpg")


def test_small_files_are_capped_and_regular(tmp_path: Path) -> None:
    p = tmp_path / "a.json"
    p.write_bytes(b"x" * 11)
    assert read_small_file(p, 11) == b"x" * 11
    with pytest.raises(UnsafeFileError, match="bigger than 10 bytes"):
        read_small_file(p, 10)
    with pytest.raises(UnsafeFileError, match="pipe, device"):
        read_small_file("/dev/zero", 10)


def test_sidecars_that_are_fifos_devices_or_huge_fail_their_image_only(tmp_path: Path, tiny_model_dir: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, name in enumerate(("fifo", "zero", "huge", "good")):
        scene(i).save(photos / f"{name}.jpg")
    os.mkfifo(photos / "fifo.jpg.json")
    os.symlink("/dev/zero", photos / "zero.jpg.json")
    (photos / "huge.jpg.json").write_bytes(b'{"boxes": []}' + b" " * SIDECAR_MAX_BYTES)  # valid JSON, too big
    (photos / "good.jpg.json").write_text('{"boxes": [[0, 0, 0.5, 0.5]]}')
    regions = RegionSettings(proposer="sidecar", sidecar="per-image")
    with Library.open(tmp_path / "lib", model=str(tiny_model_dir), regions=regions) as lib:
        rep = _finishes(lambda: lib.index(photos, workers=1), [photos / "fifo.jpg.json"])
        assert (rep.indexed, rep.regions, rep.failed) == (1, 1, 3)
        reasons = dict(lib.failures())
    for name in ("fifo", "zero", "huge"):
        assert f"sidecar {photos / name}.jpg.json cannot be read" in reasons[str(photos / f"{name}.jpg")]
