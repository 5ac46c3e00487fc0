"""Object-store URLs as index roots (fgsearch.ingest.sources), on fsspec's in-memory store: listed
like a folder, read by the same guarded decoder, failures recorded, incremental and pruned."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from _library_data import scene
from typer.testing import CliRunner

from fgsearch.errors import InputError
from fgsearch.library import Library


def _jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    scene(seed).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture
def bucket() -> Iterator[str]:
    import fsspec

    fs = fsspec.filesystem("memory")
    root = "/bucket-test/photos"
    for i in range(5):
        fs.pipe(f"{root}/{'sub/' if i % 2 else ''}p{i}.jpg", _jpeg(i))
    fs.pipe(f"{root}/copy.jpg", _jpeg(2))
    fs.pipe(f"{root}/broken.jpg", b"\xff\xd8\xff not a jpeg")
    fs.pipe(f"{root}/notes.txt", b"not an image file: never listed")
    fs.pipe(f"{root}/.hidden/p9.jpg", _jpeg(9))
    yield "memory://" + root
    fs.rm("/bucket-test", recursive=True)


def test_memory_urls_index_like_a_folder(bucket: str, tmp_path: Path) -> None:
    import fsspec

    with Library.open(tmp_path / "lib", model="demo") as lib:
        r = lib.index(bucket)
        assert (r.scanned, r.indexed, r.reused, r.failed) == (7, 5, 1, 1)
        reason = "not an image Pillow can read (unknown format or corrupt header)"  # as for a local file
        assert r.failures == [(bucket + "/broken.jpg", reason)]
        hits = lib.search("a red circle", k=10)
        assert {h.path for h in hits} <= {f"{bucket}/p0.jpg", f"{bucket}/sub/p1.jpg", f"{bucket}/p2.jpg",
                                          f"{bucket}/sub/p3.jpg", f"{bucket}/p4.jpg", f"{bucket}/copy.jpg"}  # fmt: skip
        again = lib.index(bucket)  # nothing changed: nothing read
        assert (again.indexed, again.unchanged, again.failed_unchanged) == (0, 6, 1)
        fs = fsspec.filesystem("memory")
        fs.rm(bucket.removeprefix("memory://") + "/p4.jpg")
        fs.pipe(bucket.removeprefix("memory://") + "/p5.jpg", _jpeg(5))
        third = lib.index(bucket, exclude=("sub",))  # sub/ left out: kept, not pruned
        assert (third.indexed, third.pruned) == (1, 1)
        assert lib.catalog.counts()["images"] == 5  # p0..p3 + p5 (copy shares p2's vectors)
        assert lib.catalog.content_of_path(f"{bucket}/sub/p1.jpg") is not None


def test_bad_urls_are_one_line_errors(bucket: str, tmp_path: Path) -> None:
    with Library.open(tmp_path / "lib", model="demo") as lib:
        with pytest.raises(InputError, match=r"nosuchproto://x/photos: no fsspec filesystem for nosuchproto://"):
            lib.index("nosuchproto://x/photos")
        r = lib.index(bucket + "-missing")
        assert r.scanned == 0
        assert r.warnings == [f"no image objects under {bucket}-missing; give a URL prefix that holds images"]


def test_cli_takes_urls(bucket: str, tmp_path: Path) -> None:
    from fgsearch.console.cli import app

    res = CliRunner().invoke(app, ["index", bucket, "--library", str(tmp_path / "lib"), "--model", "demo", "--quiet"])
    assert res.exit_code == 3, res.output  # 3: some files failed (broken.jpg), as for a folder
    with Library.open(tmp_path / "lib", read_only=True) as lib:
        assert lib.catalog.content_of_path(bucket + "/sub/p3.jpg") is not None  # the URL kept its '//'
