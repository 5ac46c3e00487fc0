"""Generated photo folders (good and broken files) and a tiny model for library tests."""

from __future__ import annotations

import os
import sqlite3
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (30, 60, 220), "yellow": (240, 220, 30)}


def scene(seed: int, size: tuple[int, int] = (160, 120)) -> Image.Image:
    """A background with two coloured shapes, deterministic per seed."""
    rng = np.random.default_rng(seed)
    w, h = size
    img = Image.new("RGB", size, tuple(int(v) for v in rng.integers(90, 170, 3)))
    d = ImageDraw.Draw(img)
    for _ in range(2):
        x, y = int(rng.integers(0, w - 40)), int(rng.integers(0, h - 40))
        s = int(rng.integers(25, 40))
        colour = list(COLOURS.values())[int(rng.integers(0, 4))]
        (d.ellipse if rng.random() < 0.5 else d.rectangle)([x, y, x + s, y + s], fill=colour)
    return img


def png_bomb_header(width: int = 50000, height: int = 50000) -> bytes:
    """A tiny PNG file whose header claims a huge image (no pixel memory allocated)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    )


def make_folder(root: Path, n_good: int = 6, bad: bool = True, seed: int = 0) -> dict[str, list[Path]]:
    """Good images in several formats and sub-folders, plus every kind of bad file."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "sub").mkdir(exist_ok=True)
    good: list[Path] = []
    exts = ["jpg", "png", "webp", "bmp", "gif", "tiff"]
    for i in range(n_good):
        ext = exts[i % len(exts)]
        p = (root / "sub" if i % 2 else root) / f"good_{i}.{ext}"
        scene(seed * 1000 + i).save(p)
        good.append(p)
    out: dict[str, list[Path]] = {"good": good, "bad": []}
    if not bad:
        return out
    bad_files = []
    trunc = root / "truncated.jpg"
    buf = scene(99)
    buf.save(trunc, quality=95)
    trunc.write_bytes(trunc.read_bytes()[: len(trunc.read_bytes()) // 2])
    bad_files.append(trunc)
    (root / "garbage.png").write_bytes(os.urandom(2048))
    bad_files.append(root / "garbage.png")
    (root / "empty.jpg").write_bytes(b"")
    bad_files.append(root / "empty.jpg")
    (root / "bomb.png").write_bytes(png_bomb_header())
    bad_files.append(root / "bomb.png")
    Image.new("RGB", (4, 4), (1, 2, 3)).save(root / "tiny.png")
    bad_files.append(root / "tiny.png")
    out["bad"] = bad_files
    (root / "notes.txt").write_text("not an image, ignored")
    (root / ".hidden").mkdir(exist_ok=True)
    scene(5).save(root / ".hidden" / "secret.jpg")
    return out


def demo_cli_library(tmp_path: Path, n_good: int) -> str:
    """``fgsearch index`` of ``n_good`` generated photos with the shipped demo model, global
    vectors only, through the CLI; returns the library path."""
    from typer.testing import CliRunner

    from fgsearch.console.cli import app
    from fgsearch.model import REGISTRY

    make_folder(tmp_path / "photos", n_good=n_good, bad=False)
    lib = str(tmp_path / "lib")
    demo = str(REGISTRY["demo"].local_dir)
    r = CliRunner().invoke(
        app, ["index", str(tmp_path / "photos"), "--library", lib, "--model", demo, "--regions", "none", "--quiet"]
    )
    assert r.exit_code == 0, r.output
    return lib


def build_hnsw_library(root: Path, model_dir: Path) -> tuple[Path, Path, Path]:
    """``(library, photos, FAISS file)``: a library whose region index has an HNSW graph (56 images
    x 18 grid regions = 1,008 vectors; FAISS builds its approximate structure from 1,000 vectors
    when ``flat_threshold`` is below that, where a real library waits for 50,000)."""
    import json

    from fgsearch.library import BackendSettings, Library
    from fgsearch.regions import RegionSettings

    photos = root / "photos"
    make_folder(photos, n_good=56, bad=False)
    backend = BackendSettings("faiss", {"flat_threshold": 2, "calibration_queries": 4})
    regions = RegionSettings(proposer="grid", max_regions=18)
    with Library.open(root / "lib", model=str(model_dir), regions=regions, backend=backend) as lib:
        lib.index(photos)
    folder = root / "lib" / "index" / "regions"
    extra = json.loads((folder / "manifest.json").read_text())["extra"]
    assert extra["tier"] == "hnsw", extra
    return root / "lib", photos, folder / extra["faiss_file"]


def garble_hnsw_graph(path: Path) -> None:
    """Flip bytes inside a FAISS HNSW file, keeping its size: FAISS refuses it with its C++ text."""
    b = bytearray(path.read_bytes())
    for i in range(200, len(b) - 200, 7):
        b[i] ^= 0xFF
    path.write_bytes(bytes(b))


_V2_FILES = (  # the files table of schema v2 (fgsearch before issue 23.3): keyed by its text path
    "CREATE TABLE files (id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, path TEXT NOT NULL UNIQUE, "
    "size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, content_id INTEGER REFERENCES contents (id) "
    "ON DELETE SET NULL, status VARCHAR(8) NOT NULL, reason TEXT, seen_run INTEGER NOT NULL, "
    "updated_at DATETIME NOT NULL)"
)
V2_NOT_UTF8 = "file name is not valid UTF-8; rename the file"  # what v2 recorded for such a name


def catalog_as_v2(db: Path) -> None:
    """Rebuild a catalog's files table as schema v2 had it (text paths only) and say v2."""
    con = sqlite3.connect(db)
    con.executescript(
        "CREATE TABLE files_old AS SELECT * FROM files; DROP TABLE files; "
        + _V2_FILES
        + "; INSERT INTO files (id, path, size, mtime_ns, content_id, status, reason, seen_run, updated_at) "
        "SELECT id, path, size, mtime_ns, content_id, status, reason, seen_run, updated_at FROM files_old; "
        "DROP TABLE files_old; CREATE INDEX ix_files_content ON files (content_id); "
        "UPDATE meta SET value='2' WHERE key='schema_version';"
    )
    con.close()
