"""Libraries and clients for the tests of ``fgsearch serve`` (demo model, generated photos)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from fgsearch.model import REGISTRY

DEMO_DIR = str(REGISTRY["demo"].local_dir)


def rotated_jpeg(path: Path) -> None:
    """A 240x120 JPEG stored sideways with EXIF orientation 6: it displays as 120x240 (portrait)."""
    img = Image.new("RGB", (240, 120), (200, 40, 40))
    img.paste((40, 40, 200), (0, 0, 60, 120))
    exif = Image.Exif()
    exif[0x0112] = 6
    img.save(path, "JPEG", exif=exif.tobytes())


def build_library(root: Path, n: int = 12, seed: int = 5, hostile_name: str | None = None) -> tuple[Path, Path]:
    """A library of ``n`` FineShapes photos plus one EXIF-rotated JPEG (and, with ``hostile_name``,
    a copy of the first photo under that name), indexed with the demo model."""
    from fgsearch.library import Library
    from fgsearch.trainer.fineshapes import make_fineshapes

    data = make_fineshapes(root / "photos", n=n, seed=seed, heldout=0)
    images = data / "images"
    rotated_jpeg(images / "sideways.jpg")
    if hostile_name:
        with Image.open(images / "000000.png") as im:
            im.rotate(90, expand=True).save(images / hostile_name)  # other bytes: a content of its own
    with Library.open(root / "lib", model=DEMO_DIR, device="cpu") as lib:
        lib.index(str(images))
    return root / "lib", images


def png_bytes(path: Path) -> bytes:
    buf = io.BytesIO()
    with Image.open(path) as im:
        im.convert("RGB").save(buf, "PNG")
    return buf.getvalue()


def make_client(lib_dir: Path, **settings: Any) -> Any:
    """A TestClient on a fresh service over ``lib_dir`` (the demo model is loaded once per process)."""
    from fastapi.testclient import TestClient

    from fgsearch.serve.app import create_app
    from fgsearch.serve.engine import SearchService, ServeSettings

    service = SearchService(ServeSettings(library=str(lib_dir), device="cpu", **settings))
    return TestClient(create_app(service), raise_server_exceptions=False), service


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(lib_dir: Path, *args: str, timeout: float = 90.0) -> tuple[Any, str]:
    """A real ``fgsearch serve`` process (uvicorn) on a free loopback port, once /healthz answers."""
    import subprocess
    import sys
    import time
    import urllib.request

    port = free_port()
    cmd = [sys.executable, "-m", "fgsearch", "serve", "--library", str(lib_dir), "--port", str(port), "--device", "cpu"]
    proc = subprocess.Popen([*cmd, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise RuntimeError(f"fgsearch serve exited with {proc.returncode}:\n{out}")
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"fgsearch serve did not answer on {url} within {timeout:.0f} s")


@pytest.fixture(scope="session", name="serve_library")
def serve_library_fixture(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One library for every serve test that only reads (13 images: 12 photos + sideways.jpg)."""
    return build_library(tmp_path_factory.mktemp("serve"))


def build_large_library(root: Path, n: int) -> Path:
    """A library of ``n`` real tiny PNG files whose vectors are random (nothing is embedded): big
    enough to page through, quick to make. Catalog rows are written the way the indexer writes them."""
    import hashlib

    import numpy as np

    from fgsearch.library import Library
    from fgsearch.regions import RegionSettings

    photos = root / "photos"
    photos.mkdir(parents=True)
    rng = np.random.default_rng(0)
    with Library.open(root / "lib", model=DEMO_DIR, device="cpu", regions=RegionSettings("grid", max_regions=2)) as lib:
        dim = lib.encoder.dim
        items, files = [], []
        for i in range(n):
            path = photos / f"{i // 1000:02d}" / f"p{i:05d}.png"
            path.parent.mkdir(exist_ok=True)
            Image.new("RGB", (48, 36), (i % 256, (i // 256) % 256, 160)).save(path)
            data = path.read_bytes()
            st = path.stat()
            boxes = [(0.1, 0.1, 0.6, 0.6), (0.4, 0.3, 0.9, 0.9)]
            items.append({"sha256": hashlib.sha256(data).hexdigest(), "width": 48, "height": 36, "boxes": boxes})
            items[-1]["proposer"] = "grid"
            files.append((str(path), st.st_size, st.st_mtime_ns))
        cids, rids = lib.catalog.reserve_contents(items)

        def unit(k: int) -> np.ndarray:
            v = rng.normal(size=(k, dim)).astype(np.float32)
            return v / np.linalg.norm(v, axis=1, keepdims=True)

        lib.global_index.add(np.asarray(cids, np.int64), unit(len(cids)))
        flat = np.asarray([r for rr in rids for r in rr], np.int64)
        lib.region_index.add(flat, unit(len(flat)))
        lib.global_index.flush()
        lib.region_index.flush()
        lib.catalog.confirm_contents(cids, files, lib.catalog.begin_run())
        lib.global_index.save()
        lib.region_index.save()
    return root / "lib"


def big_png16(width: int = 7071, height: int = 7071) -> bytes:
    """A PNG of ``width`` x ``height`` RGBA pixels, 16 bits a channel, that compresses to about
    1 MB (repeated stripes): small to send, 0.5-0.6 GB while a server holds it decoded."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    stripes = bytes(range(0, 256, 8)) * (width * 8 // 32 + 1)
    row = b"\x00" + stripes[: width * 8]  # filter "none", then the pixels
    z = zlib.compressobj(9)
    data = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    header = struct.pack(">IIBBBBB", width, height, 16, 6, 0, 0, 0)  # 16-bit, RGBA
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
