"""fgsearch doctor on real libraries: damaged catalog pages are found and salvaged (only what was
lost is embedded again), advice works when pasted, what an interrupted run left pending is said,
and a full disk (a real, filled tmpfs) is named as such, never as damage."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shlex
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from _library_data import scene
from typer.testing import CliRunner

from fgsearch.library import Library
from fgsearch.regions import RegionSettings

N = 16  # images, 2 regions each; the catalog is rewritten with 512-byte pages (several leaves per table)
PAGE = 512


def _cli(*args: str) -> tuple[int, str]:
    from fgsearch.console.cli import app

    r = CliRunner().invoke(app, list(args))
    assert "Traceback" not in r.output, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    return r.exit_code, r.output


@pytest.fixture(scope="module")
def built_lib(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("doctor")
    root = base / "photos"
    root.mkdir()
    for i in range(N):
        scene(i).save(root / f"p{i:02d}.png")
    lib_dir = base / "lib"
    with Library.open(
        lib_dir, model=str(tiny_model_dir), regions=RegionSettings(proposer="grid", max_regions=2)
    ) as lib:
        lib.index(root)
    con = sqlite3.connect(lib_dir / "catalog.sqlite")
    con.execute("PRAGMA journal_mode=DELETE")
    con.execute(f"PRAGMA page_size={PAGE}")
    con.execute("VACUUM")
    con.execute("PRAGMA journal_mode=WAL")
    con.close()
    return lib_dir, root


@pytest.fixture()
def lib_copy(built_lib: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path]:
    lib_dir, root = built_lib
    shutil.copytree(lib_dir, tmp_path / "lib")
    return tmp_path / "lib", root


def _leaf(lib_dir: Path, name: str, which: int) -> int:
    """The page number of a leaf page of a table (``which``: its index among the table's leaves)."""
    rows = _rows(
        lib_dir / "catalog.sqlite",
        f"SELECT pageno FROM dbstat WHERE name = '{name}' AND pagetype = 'leaf' ORDER BY pageno",
    )
    return int(rows[which][0])


def _garble(catalog: Path, pageno: int) -> None:
    rnd = random.Random(pageno)
    with open(catalog, "r+b") as f:
        f.seek((pageno - 1) * PAGE)
        f.write(bytes(rnd.randrange(256) for _ in range(PAGE)))


def _rows(catalog: Path, sql: str) -> list[tuple]:
    con = sqlite3.connect(catalog)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


@pytest.mark.parametrize(("table", "which"), [("contents", 0), ("regions", 1), ("files", -1)])
def test_doctor_finds_damaged_pages_and_repair_re_embeds_only_what_was_lost(lib_copy, table: str, which: int) -> None:
    lib_dir, root = lib_copy
    catalog = lib_dir / "catalog.sqlite"
    before = {
        "contents": {r[0] for r in _rows(catalog, "SELECT id FROM contents")},
        "regions": dict(_rows(catalog, "SELECT id, content_id FROM regions")),
        "files": {r[0] for r in _rows(catalog, "SELECT id FROM files")},
    }
    _garble(catalog, _leaf(lib_dir, table, which))

    code, out = _cli("doctor", "--library", str(lib_dir))  # today's doctor said "ok" here
    assert code == 1 and "quick_check DAMAGED" in out and f"fgsearch doctor --repair --library {lib_dir}" in out
    code, out = _cli("doctor", "--full", "--library", str(lib_dir))
    assert code == 1 and "integrity_check DAMAGED" in out

    code, out = _cli("doctor", "--repair", "--library", str(lib_dir))
    assert code == 0 and "salvaged the catalog" in out, out
    aside = list(lib_dir.glob("catalog-damaged-*.sqlite"))
    assert len(aside) == 1  # the damaged catalog is kept
    with Library.open(lib_dir, read_only=True) as lib:
        rep = lib.doctor(full=True)
        assert rep["consistent"] and rep["catalog_check"]["ok"]
        st = lib.status()
        assert st["counts"]["images"] == N and st["vectors"] == {"global": N, "regions": 2 * N}
        assert len(lib.search("a red circle", k=N)) == N
    line = next(ln for ln in out.splitlines() if ln.startswith("images: recovered"))
    recovered, lost, reembedded, relinked = (int(w.strip(",;")) for w in line.split() if w.strip(",;").isdigit())
    lost_rows = _lost_rows(table, before, lib_dir)
    if table == "contents":  # those images lost their rows: exactly they are embedded again
        assert lost == reembedded == len(lost_rows) > 0 and recovered == N - len(lost_rows)
    elif table == "regions":  # images with a region row lost: embedded again (the heuristic may add a neighbour)
        owners = {before["regions"][r] for r in lost_rows}
        assert len(owners) <= reembedded <= len(owners) + 1 and lost == reembedded
    else:  # file rows lost: their images are found again by content hash, nothing is embedded
        assert reembedded == lost == 0 and relinked == len(lost_rows) > 0 and recovered == N
    with Library.open(lib_dir) as lib:  # the repair left nothing to embed
        assert lib.index(root).indexed == 0


def _lost_rows(table: str, before: dict, lib_dir: Path) -> set[int]:
    """The rows of ``table`` that cannot be read from the damaged catalog (kept aside)."""
    aside = next(lib_dir.glob("catalog-damaged-*.sqlite"))
    con = sqlite3.connect(f"file:{aside}?mode=ro", uri=True)
    try:
        from fgsearch.catalog.salvage import scan_table

        readable = {int(r[0]) for r in scan_table(con, table, ["id"])[0]}
    finally:
        con.close()
    return set(before[table]) - readable


def test_lost_settings_come_back_from_the_library_record(lib_copy, tiny_model_dir: Path) -> None:
    lib_dir, _ = lib_copy
    _garble(lib_dir / "catalog.sqlite", _leaf(lib_dir, "meta", 0))
    code, out = _cli("doctor", "--repair", "--library", str(lib_dir))
    assert code == 0 and "settings restored from rebuild.json" in out, out
    with Library.open(lib_dir, read_only=True) as lib:
        assert lib.status()["counts"]["images"] == N and lib.doctor()["consistent"]
        assert lib.model == str(tiny_model_dir)


def test_the_printed_rebuild_command_works_as_pasted(lib_copy, tiny_model_dir: Path) -> None:
    lib_dir, root = lib_copy
    (lib_dir / "catalog.sqlite").write_bytes(b"")
    for f in ("catalog.sqlite-wal", "catalog.sqlite-shm"):
        (lib_dir / f).unlink(missing_ok=True)
    code, out = _cli("status", "--library", str(lib_dir))
    assert code == 1
    command = out[out.index("`fgsearch index") + 1 : out.index("`", out.index("`fgsearch index") + 1)]
    assert str(tiny_model_dir) in command and str(root) in command  # the library's own model and folders
    args = shlex.split(command)
    assert args[0] == "fgsearch"
    code, out = _cli(*args[1:], "-q")  # as printed, offline
    assert code == 0, out
    with Library.open(lib_dir, read_only=True) as lib:
        assert lib.status()["counts"]["images"] == N and lib.model == str(tiny_model_dir)


def test_status_and_doctor_say_what_an_interrupted_run_left_pending(lib_copy, tiny_model_dir: Path) -> None:
    lib_dir, root = lib_copy
    with Library.open(lib_dir) as lib:  # a run that reserved 3 images, wrote their vectors, then died
        items = [
            {"sha256": f"{i:064x}", "width": 8, "height": 8, "proposer": "grid", "boxes": [(0.0, 0.0, 0.5, 0.5)] * 2}
            for i in range(3)
        ]
        cids, rids = lib.catalog.reserve_contents(items)
        vec = np.random.default_rng(0).normal(size=(9, lib.store.global_index.dim)).astype(np.float32)
        vec /= np.linalg.norm(vec, axis=1, keepdims=True)
        lib.global_index.add(np.asarray(cids, np.int64), vec[:3])
        lib.region_index.add(np.asarray([r for rr in rids for r in rr], np.int64), vec[3:])
        lib.global_index.flush()
        lib.region_index.flush()
    code, out = _cli("status", "--json", "--library", str(lib_dir))
    st = json.loads(out)
    assert st["counts"]["images"] == N and st["counts"]["images_pending"] == 3
    assert st["counts"]["regions"] == 2 * N and st["counts"]["regions_pending"] == 6
    assert st["vectors"] == {"global": N + 3, "regions": 2 * N + 6}  # the counts differ, and say why
    assert st["pending"] == {"images": 3, "regions": 6, "writer": None}
    code, out = _cli("status", "--library", str(lib_dir))
    assert "3 images (6 regions) are pending: an interrupted run" in out and "the next `fgsearch index`" in out
    code, out = _cli("doctor", "--library", str(lib_dir))
    assert code == 0 and "3 images (6 regions) are pending: an interrupted run" in out
    code, out = _cli("index", str(root), "--library", str(lib_dir), "-q")
    assert code == 0
    with Library.open(lib_dir, read_only=True) as lib:
        st = lib.status()
        assert st["counts"]["images_pending"] == 0 and st["vectors"] == {"global": N, "regions": 2 * N}


# ---- a real full disk ------------------------------------------------------------------------------
@contextlib.contextmanager
def _tmpfs(where: Path, size: str) -> Iterator[Path]:
    where.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.decode(errors='replace').strip()})")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _fill(folder: Path) -> Path:
    """Fill the file system of ``folder`` to its last byte."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f:
        for block in (1 << 20, 65536, 4096, 512, 1):
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * block)
    return filler


def test_a_full_disk_is_named_with_its_fix_and_never_called_damage(built_lib, tmp_path: Path, tiny_model_dir) -> None:
    lib_dir, root = built_lib
    with _tmpfs(tmp_path / "mnt", "32m") as mnt:
        lib = mnt / "lib"
        lib.mkdir()
        for name in ("catalog.sqlite", "rebuild.json", "index"):  # copied without its -shm (and lock)
            src = lib_dir / name
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, lib / name)
        filler = _fill(mnt)
        assert shutil.disk_usage(mnt).free == 0
        for args in (["status"], ["query", "a red circle"], ["doctor"], ["doctor", "--repair"],
                     ["index", str(root), "--model", str(tiny_model_dir)]):  # fmt: skip
            code, out = _cli(*args, "--library", str(lib))
            assert code == 1, (args, out)
            assert f"the disk holding library {lib} (mounted at {mnt}, 0 bytes free) is full" in out, (args, out)
            assert "free some space and run the same command again" in out and "--reindex" not in out
            assert len(out.strip().splitlines()) == 1, out
        filler.unlink()  # space again: every command works, nothing was damaged
        code, out = _cli("doctor", "--library", str(lib))
        assert code == 0 and "ok: catalog and indexes agree" in out, out
        code, out = _cli("status", "--library", str(lib))
        assert code == 0 and f"images           {N}" in out
        os.sync()


def test_a_full_disk_at_the_library_record_is_one_line_and_the_library_is_kept(
    lib_copy, tmp_path: Path, monkeypatch
) -> None:
    import errno

    from fgsearch.errors import LibraryError

    lib_dir, _ = lib_copy
    real_fsync = os.fsync

    def full(fd: int) -> None:  # the first write of an index run is its folders, into rebuild.json
        raise OSError(errno.ENOSPC, "No space left on device")

    record = (lib_dir / "rebuild.json").read_bytes()
    more = tmp_path / "more-photos"
    more.mkdir()
    with Library.open(lib_dir) as lib:
        monkeypatch.setattr(os, "fsync", full)
        with pytest.raises(LibraryError, match=r"the disk holding library .* is full .*free some space"):
            lib.index(more)
        monkeypatch.setattr(os, "fsync", real_fsync)
    assert (lib_dir / "rebuild.json").read_bytes() == record and not list(lib_dir.glob("*.tmp"))
    with Library.open(lib_dir, read_only=True) as lib:
        assert lib.doctor()["consistent"] and lib.status()["counts"]["images"] == N
