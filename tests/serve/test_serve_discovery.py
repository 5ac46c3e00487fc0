"""fgsearch.serve.discovery: `fgsearch query --via-server` asks a live server of the same library,
and ignores a dead, stale or silent one (the query then runs here, with a notice)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from _library_data import scene
from typer.testing import CliRunner

from fgsearch.catalog import peek_library_id
from fgsearch.console.cli import app
from fgsearch.serve.discovery import announce, find_server, record_path

HIT = {
    "rank": 1, "score": 2.5, "global_score": 0.31, "region_score": None, "path": "/srv/photos/from-the-server.jpg",
    "paths": ["/srv/photos/from-the-server.jpg"], "box": None, "region_id": None, "image_id": 7, "width": 64,
    "height": 48, "captured_at": None, "probability": None, "region_probability": None,
}  # fmt: skip


class _Toy(BaseHTTPRequestHandler):
    library_id = ""
    asked: ClassVar[list[dict[str, Any]]] = []

    def _send(self, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._send({"server": {"library_id": type(self).library_id}})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).asked.append(body)
        self._send({"query": {"text_path": "short"}, "results": [HIT], "notices": []})

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def library(tmp_path: Path, tiny_model_dir: Path) -> Path:
    photos = tmp_path / "photos"
    photos.mkdir()
    scene(1).save(photos / "a.png")
    lib = tmp_path / "lib"
    out = CliRunner().invoke(app, ["index", str(photos), "--library", str(lib), "--model", str(tiny_model_dir), "-q"])
    assert out.exit_code == 0, out.output
    return lib


@pytest.fixture
def toy_server() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Toy)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield server
    server.shutdown()
    server.server_close()


def _query(lib: Path) -> Any:
    return CliRunner().invoke(app, ["query", "a red circle", "--library", str(lib), "--via-server", "--json"])


def test_a_live_server_of_the_same_library_answers(library: Path, toy_server: ThreadingHTTPServer) -> None:
    lib_id = peek_library_id(library / "catalog.sqlite")
    assert lib_id
    _Toy.library_id, _Toy.asked = lib_id, []
    with announce(lib_id, "127.0.0.1", toy_server.server_address[1], token=False) as rec:
        assert find_server(library)[0] == f"http://127.0.0.1:{toy_server.server_address[1]}"
        out = _query(library)
        assert out.exit_code == 0, out.output
        assert [h["path"] for h in json.loads(out.stdout)["results"]] == [HIT["path"]]
        assert _Toy.asked[0]["text"] == "a red circle" and _Toy.asked[0]["k"] == 10
    assert not rec.exists()  # removed when the server stops


def test_a_stale_server_is_ignored_and_the_query_runs_here(library: Path, toy_server: ThreadingHTTPServer) -> None:
    lib_id = peek_library_id(library / "catalog.sqlite")
    assert lib_id
    _Toy.library_id = "another-build"  # e.g. a server still holding the library from before --reindex
    with announce(lib_id, "127.0.0.1", toy_server.server_address[1], token=False):
        url, why = find_server(library)
        assert url is None and "another build" in why
        out = _query(library)
        assert out.exit_code == 0 and "searching here" in out.stderr
        assert [h["path"] for h in json.loads(out.stdout)["results"]] == [str(library.parent / "photos" / "a.png")]


def test_a_dead_or_silent_server_is_ignored_quickly(library: Path) -> None:
    import time

    lib_id = peek_library_id(library / "catalog.sqlite")
    assert lib_id
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    rec = record_path(lib_id)
    rec.parent.mkdir(parents=True, exist_ok=True)
    rec.write_text(json.dumps({"url": "http://127.0.0.1:9", "pid": int(dead.stdout), "library_id": lib_id}))
    url, why = find_server(library)
    assert url is None and "not running" in why and not rec.exists()  # the record of a dead server is removed
    import socket

    silent = socket.socket()  # accepts connections, never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    rec.write_text(json.dumps({"url": f"http://127.0.0.1:{silent.getsockname()[1]}", "pid": os.getpid()}))
    t0 = time.perf_counter()
    url, why = find_server(library)
    assert url is None and "did not answer" in why and time.perf_counter() - t0 < 3
    silent.close()
