"""fgsearch.scan.walk: order, globs, hidden entries, symlinks, special files and unreadable folders."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from _privileges import run_python_unprivileged, shared_tmp_dir

from fgsearch.errors import InputError
from fgsearch.library import Library
from fgsearch.regions import RegionSettings
from fgsearch.scan import FileEntry, WalkStats, display_path, walk


def _touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _rel(entries: list[FileEntry], root: Path) -> list[str]:
    return [os.path.relpath(e.path, root) for e in entries if not e.error]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    for rel in (
        "b.png",
        "A.jpg",
        "c.JPEG",
        "notes.txt",
        "2020/x.webp",
        "2020/raw/y.tif",
        "2020/raw/z.TIFF",
        "2021/deep/er/w.bmp",
        "2021/anim.gif",
        "node_modules/pkg/icon.png",
        ".cache/thumb.jpg",
        ".hidden.png",
    ):
        _touch(root / rel, b"data-of-" + rel.encode())
    return root


def test_order_extensions_and_stat(tree: Path) -> None:
    entries = list(walk([tree]))
    assert _rel(entries, tree) == [
        "2020/raw/y.tif",
        "2020/raw/z.TIFF",
        "2020/x.webp",
        "2021/anim.gif",
        "2021/deep/er/w.bmp",
        "A.jpg",
        "b.png",
        "c.JPEG",
        "node_modules/pkg/icon.png",
    ]
    assert not [e for e in entries if e.error]
    first = entries[0]
    st = os.stat(first.path)
    assert os.path.isabs(first.path) and (first.size, first.mtime_ns) == (st.st_size, st.st_mtime_ns)
    assert list(walk([tree])) == entries  # deterministic
    only_png = walk([tree], extensions=frozenset({".png"}))
    assert _rel(list(only_png), tree) == ["b.png", "node_modules/pkg/icon.png"]


def test_hidden_entries(tree: Path) -> None:
    names = _rel(list(walk([tree], hidden=True)), tree)
    assert ".cache/thumb.jpg" in names and ".hidden.png" in names and len(names) == 11


@pytest.mark.parametrize(
    ("include", "exclude", "expected"),
    [
        (["*.png"], [], ["b.png", "node_modules/pkg/icon.png"]),
        (["2020/**"], [], ["2020/raw/y.tif", "2020/raw/z.TIFF", "2020/x.webp"]),
        (["**/*.bmp"], [], ["2021/deep/er/w.bmp"]),
        (["*.jpg", "*.JPEG"], [], ["A.jpg", "c.JPEG"]),
        (
            [],
            ["node_modules", "raw"],
            ["2020/x.webp", "2021/anim.gif", "2021/deep/er/w.bmp", "A.jpg", "b.png", "c.JPEG"],
        ),
        ([], ["2021/**", "*.png"], ["2020/raw/y.tif", "2020/raw/z.TIFF", "2020/x.webp", "A.jpg", "c.JPEG"]),
        (["2020/**"], ["**/raw/**"], ["2020/x.webp"]),
    ],
)
def test_globs_match_the_path_relative_to_the_root(
    tree: Path, include: list[str], exclude: list[str], expected: list[str]
) -> None:
    assert _rel(list(walk([tree], include=include, exclude=exclude)), tree) == expected


def test_globs_are_relative_to_the_root_not_absolute(tree: Path) -> None:
    # the root's own name must not match an exclude pattern meant for folders inside it
    assert _rel(list(walk([tree], exclude=["photos/**"])), tree) == _rel(list(walk([tree])), tree)


def test_symlinked_folders_inside_the_roots_are_walked_and_cycles_end(tmp_path: Path) -> None:
    root = tmp_path / "r"
    _touch(root / "a" / "one.jpg")
    other = tmp_path / "elsewhere"
    _touch(other / "two.jpg")
    os.symlink(other, root / "linked")
    os.symlink(root, root / "a" / "back-to-root")
    os.symlink(root / "a", root / "a" / "self")
    os.symlink("..", root / "up")  # the folder above the root: never walked by default
    stats = WalkStats()
    assert _rel(list(walk([root], stats=stats)), root) == ["a/one.jpg"]
    assert sorted(stats.links_outside) == [str(root / "linked"), str(root / "up")]
    assert _rel(list(walk([root], within=[other])), root) == ["a/one.jpg", "linked/two.jpg"]
    followed = _rel(list(walk([root], follow_links=True, exclude=["up/**"])), root)
    assert followed == ["a/one.jpg", "linked/two.jpg"]


def test_symlinked_files_outside_the_roots_are_skipped_unless_followed(tmp_path: Path) -> None:
    root = tmp_path / "r"
    target = _touch(tmp_path / "outside" / "t.png", b"12345")
    inner = _touch(root / "in.png", b"123")
    os.symlink(target, root / "l.png")
    os.symlink(inner, root / "m.png")
    stats = WalkStats()
    assert _rel(list(walk([root], stats=stats)), root) == ["in.png", "m.png"]
    assert stats.links_outside == [str(root / "l.png")]
    entries = {e.path: e for e in walk([root], follow_links=True)}
    entry = entries[str(root / "l.png")]
    assert entry.error is None and entry.size == 5  # the target's size


def test_broken_symlink_is_a_failure_not_a_crash(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    os.symlink(root / "gone.jpg", root / "dangling.jpg")
    os.symlink(root / "gone-dir", root / "dangling-dir")  # no image extension: ignored
    (entry,) = list(walk([root]))
    assert entry.path.endswith("dangling.jpg") and "broken symbolic link" in (entry.error or "")


def test_special_files_with_image_names_are_skipped(tmp_path: Path) -> None:
    root = tmp_path / "r"
    _touch(root / "ok.jpg")
    os.mkfifo(root / "pipe.jpg")  # opening it would block the whole run
    assert _rel(list(walk([root])), root) == ["ok.jpg"]


def test_single_file_root_and_missing_root(tmp_path: Path) -> None:
    f = _touch(tmp_path / "one.png")
    assert [e.path for e in walk([f])] == [str(f)]
    with pytest.raises(InputError, match="does not exist"):
        list(walk([tmp_path / "missing"]))
    os.symlink(tmp_path / "missing", tmp_path / "broken-root")
    with pytest.raises(InputError, match="does not exist"):
        list(walk([tmp_path / "broken-root"]))


def test_non_utf8_names_are_walked_with_their_exact_bytes(tmp_path: Path) -> None:
    """Issue 23.3: a name that is not UTF-8 is a file like any other, its path the ``os.fsdecode``
    form of its bytes (it used to be a failure shown, and stored, as its ``\\xNN`` escape)."""
    root = tmp_path / "r"
    root.mkdir()
    raw = os.fsencode(root) + b"/caf\xe9.jpg"  # Latin-1 name, not valid UTF-8
    with open(raw, "wb") as f:
        f.write(b"x")
    os.makedirs(os.fsencode(root) + b"/dir-\xff")
    inside = os.fsencode(root) + b"/dir-\xff/inside.png"
    with open(inside, "wb") as f:
        f.write(b"x")
    entries = list(walk([root]))
    assert [(os.fsencode(e.path), e.size, e.error) for e in entries] == [(raw, 1, None), (inside, 1, None)]
    assert display_path(entries[0].path).endswith("caf\\xe9.jpg")
    assert display_path(entries[1].path).endswith("dir-\\xff/inside.png")
    assert display_path("plain/ascii.png") == "plain/ascii.png"


def test_folder_that_cannot_be_listed_is_a_storable_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Simulated EACCES (works as root too), on a folder whose name is not valid UTF-8."""
    root = tmp_path / "r"
    _touch(root / "open" / "fine.jpg")
    bad = os.fsencode(root) + b"/locked-\xff"
    os.makedirs(bad)
    real_scandir = os.scandir

    def scandir(path: str) -> object:
        if os.fsencode(path) == bad:
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    entries = list(walk([root]))
    assert _rel(entries, root) == ["open/fine.jpg"]
    (err,) = [e for e in entries if e.error]
    assert "permission denied" in (err.error or "") and os.fsencode(err.path) == bad  # its exact name


WALK = """
import json, sys
from fgsearch.scan import walk
print(json.dumps([[e.path, e.error, e.size] for e in walk([sys.argv[1]])]))
"""


def _walk_unprivileged(root: Path) -> list[FileEntry]:
    """``walk([root])`` as a user without root's right to read everything (entries rebuilt from JSON)."""
    r = run_python_unprivileged(WALK, str(root), cwd=root.parent)
    assert r.returncode == 0, r.stderr
    return [FileEntry(path=p, size=size, mtime_ns=0, error=err) for p, err, size in json.loads(r.stdout)]


def test_unreadable_folder_is_one_failure_and_the_rest_is_walked() -> None:
    with shared_tmp_dir() as base:
        root = base / "r"
        _touch(root / "locked" / "secret.jpg")
        _touch(root / "open" / "fine.jpg")
        raw_locked = os.fsencode(root) + b"/locked-\xff"
        os.makedirs(raw_locked)
        os.chmod(root / "locked", 0)
        os.chmod(raw_locked, 0)
        entries = _walk_unprivileged(root)
    assert _rel(entries, root) == ["open/fine.jpg"]
    errors = [e for e in entries if e.error]
    assert len(errors) == 2 and all("permission denied" in (e.error or "") for e in errors)
    assert sorted(os.fsencode(e.path) for e in errors) == [os.fsencode(root / "locked"), raw_locked]


def test_unreadable_file_is_listed_for_the_reader_to_report() -> None:
    with shared_tmp_dir() as base:
        root = base / "r"
        f = _touch(root / "noperm.jpg", b"abc")
        os.chmod(f, 0)
        (entry,) = _walk_unprivileged(root)
    assert entry.error is None and entry.size == 3  # stat works; reading fails later with its own reason


def test_other_formats_pillow_reads_are_walked_and_more_can_be_asked_for(tmp_path: Path) -> None:
    from fgsearch.scan import IMAGE_EXTENSIONS, readable_extensions

    exts = readable_extensions()
    assert exts >= IMAGE_EXTENSIONS and {".ppm", ".jfif", ".ico", ".tga"} <= exts
    assert not {".mpg", ".mpeg", ".eps", ".h5", ".txt"} & exts  # stubs, external programs, not images
    assert readable_extensions(["heic", ".JXL"]) - exts == {".heic", ".jxl"}
    with pytest.raises(InputError, match=r"^ext "):
        readable_extensions(["."])
    root = tmp_path / "photos"
    for rel in ("a.jpg", "b.ppm", "c.jfif", "clip.mpg", "d.heic", "notes.txt"):
        _touch(root / rel)
    assert _rel(list(walk([root], extensions=exts)), root) == ["a.jpg", "b.ppm", "c.jfif"]
    assert _rel(list(walk([root], extensions=readable_extensions([".heic"]))), root) == [
        "a.jpg",
        "b.ppm",
        "c.jfif",
        "d.heic",
    ]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_root_is_a_file_the_decoder_refuses(tmp_path: Path, tiny_model_dir: Path) -> None:
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    entries = list(walk([fifo]))
    assert [e.path for e in entries] == [str(fifo)] and entries[0].error is None
    with Library.open(tmp_path / "lib", model=str(tiny_model_dir), regions=RegionSettings(proposer="none")) as lib:
        report = lib.index(str(fifo))
        assert report.failed == 1
        ((path, reason),) = lib.failures()
    assert path == str(fifo) and reason.startswith("not a regular file"), reason
