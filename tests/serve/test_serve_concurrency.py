"""Concurrency of ``fgsearch serve``: searches from many threads while an indexer adds images (new
images appear without a restart), batched text encoding, a slow client that blocks nobody, and a
SIGTERM that lets the request in flight finish before a clean exit (a real uvicorn process)."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from _serve_data import (  # noqa: F401  (serve_library_fixture: the fixture serve_library)
    DEMO_DIR,
    big_png16,
    build_library,
    make_client,
    png_bytes,
    serve_library_fixture,
    start_server,
)

pytest.importorskip("fastapi")

from fgsearch.errors import InputError
from fgsearch.serve.engine import ServeSettings


def _search_while(client, write, threads: int = 4) -> tuple[list[str], list[tuple[float, int]]]:
    """Search from ``threads`` threads while ``write()`` runs and until a search that started after
    it returned has finished; every response is checked. Returns failures and (start, hits) pairs."""
    stop = threading.Event()
    failures: list[str] = []
    done: list[tuple[float, int]] = []

    def searcher(i: int) -> None:
        while not stop.is_set():
            t0 = time.monotonic()
            resp = client.post("/api/search", json={"text": f"a small red circle {i}", "k": 30})
            if resp.status_code != 200:
                failures.append(resp.text)
                return
            hits = resp.json()["results"]
            if len({h["image_id"] for h in hits}) != len(hits) or any(not Path(h["path"]).exists() for h in hits):
                failures.append(f"bad hits: {hits}")
                return
            done.append((t0, len(hits)))

    workers = [threading.Thread(target=searcher, args=(i,)) for i in range(threads)]
    for t in workers:
        t.start()
    try:
        write()
        finished = time.monotonic()
        deadline = finished + 60
        while not failures and not any(t0 > finished for t0, _ in done) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        for t in workers:
            t.join(timeout=60)
    return failures, done


def _check_new_images_appear(client, before: int, more: Path, failures: list[str], done) -> None:
    assert not failures, failures[:3]
    counts = [n for _, n in done]
    assert len(counts) >= 8 and min(counts) == before and max(counts) == before + 12
    # the same server, never restarted, finds the new images
    after = client.post("/api/search", json={"text": "a star", "k": 50, "filters": {"under": str(more)}}).json()
    assert len(after["results"]) == 12
    assert client.get("/api/status").json()["counts"]["images"] == before + 12
    assert client.get(f"/api/images/{after['results'][0]['image_id']}/thumb").status_code == 200


def test_searches_from_threads_while_an_indexer_adds_images(tmp_path: Path) -> None:
    from fgsearch.library import Library
    from fgsearch.trainer.fineshapes import make_fineshapes

    lib_dir, images = build_library(tmp_path / "a", n=6)
    more = make_fineshapes(tmp_path / "b", n=12, seed=99, heldout=0) / "images"
    client, service = make_client(lib_dir)
    before = client.get("/api/status").json()["counts"]["images"]

    def write() -> None:
        with Library.open(lib_dir, model=DEMO_DIR, device="cpu") as writer:
            writer.index([str(images), str(more)], batch_size=4)

    try:
        _check_new_images_appear(client, before, more, *_search_while(client, write))
    finally:
        service.close()


@pytest.mark.slow
def test_searches_while_an_index_process_adds_images(tmp_path: Path) -> None:
    """The same with `fgsearch index` in another process, as a user runs it."""
    import subprocess
    import sys

    from fgsearch.trainer.fineshapes import make_fineshapes

    lib_dir, images = build_library(tmp_path / "a", n=6)
    more = make_fineshapes(tmp_path / "b", n=12, seed=98, heldout=0) / "images"
    client, service = make_client(lib_dir)
    before = client.get("/api/status").json()["counts"]["images"]
    cmd = [sys.executable, "-m", "fgsearch", "index", str(images), str(more), "--library", str(lib_dir)]

    def write() -> None:
        subprocess.run([*cmd, "--device", "cpu", "--batch-size", "4", "--quiet"], check=True, capture_output=True)

    try:
        _check_new_images_appear(client, before, more, *_search_while(client, write, threads=2))
    finally:
        service.close()


def test_concurrent_texts_share_batched_forwards_and_get_their_own_vectors(serve_library) -> None:
    from fgsearch.library import shared_encoder
    from fgsearch.serve.engine import BatchingEncoder

    base = shared_encoder(DEMO_DIR, "cpu")
    # the batch closes when all have arrived (max_batch), not when a timing window ends: one batch
    # however slow the machine (the window is only a bound should a thread never come)
    enc = BatchingEncoder(base, window_ms=60_000, max_batch=8)
    texts = [f"a {size} {colour} square" for size in ("small", "big") for colour in ("red", "green", "blue", "yellow")]
    barrier = threading.Barrier(len(texts))
    out: dict[int, np.ndarray] = {}

    def one(i: int) -> None:
        barrier.wait()
        out[i] = enc.encode_texts([texts[i]], path="short")[0]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(texts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    enc.close()
    assert len(texts) == 8 and enc.batched_texts == len(texts) and enc.batches == 1
    alone = base.encode_texts(texts, path="short")
    for i in range(len(texts)):
        np.testing.assert_allclose(out[i], alone[i], atol=1e-5)


def test_a_truncated_text_gets_its_notice(serve_library) -> None:
    client, service = make_client(serve_library[0])
    try:
        long_text = " ".join(["a big striped red circle left of a small blue square"] * 30)
        body = client.post("/api/search", json={"text": long_text, "k": 1}).json()
        assert body["query"]["text_path"] == "long"
        assert any("truncated" in n for n in body["notices"])
        short = client.post("/api/search", json={"text": "a red circle", "k": 1}).json()
        assert short["notices"] == []
    finally:
        service.close()


def _http(url: str, body: bytes, headers: dict[str, str]) -> tuple[socket.socket, bytes]:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return sock, f"POST /api/search HTTP/1.1\r\nHost: {host}\r\n{head}Content-Length: {len(body)}\r\n\r\n".encode()


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        data = sock.recv(65536)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


@pytest.mark.slow
def test_slow_client_blocks_nobody_and_sigterm_drains_it(serve_library) -> None:
    lib_dir, images = serve_library
    proc, url = start_server(lib_dir)
    try:
        boundary = "fgsearchboundary"
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="query"\r\n\r\n{json.dumps({"k": 3})}\r\n'
                f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="q.png"\r\n'
                "Content-Type: image/png\r\n\r\n"
            ).encode()
            + png_bytes(images / "000002.png")
            + f"\r\n--{boundary}--\r\n".encode()
        )
        sock, head = _http(
            url, body, {"Content-Type": f"multipart/form-data; boundary={boundary}", "Connection": "close"}
        )
        sock.sendall(head + body[:100])  # a slow client: half a request, then nothing for a while
        time.sleep(0.5)
        import urllib.request

        fast = urllib.request.Request(
            url + "/api/search", data=json.dumps({"text": "a red circle"}).encode(), method="POST"
        )
        fast.add_header("Content-Type", "application/json")
        t0 = time.monotonic()
        with urllib.request.urlopen(fast, timeout=20) as r:
            assert r.status == 200
        assert time.monotonic() - t0 < 10  # others are served while the slow upload hangs
        with urllib.request.urlopen(url + "/api/status", timeout=20) as r:  # a core is left to the searches
            assert json.loads(r.read())["server"]["model_threads"] == ServeSettings().model_thread_count()

        proc.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        assert proc.poll() is None  # still draining the request in flight
        with pytest.raises(OSError):
            urllib.request.urlopen(url + "/healthz", timeout=3)  # but no longer accepting
        sock.sendall(body[100:])
        answer = _read_all(sock)
        sock.close()
        status_line, _, rest = answer.partition(b"\r\n")
        assert b" 200 " in status_line, answer[:300]
        payload = json.loads(rest.split(b"\r\n\r\n", 1)[1])
        assert Path(payload["results"][0]["path"]).name == "000002.png"
        assert proc.wait(timeout=30) == 0
        log = proc.stdout.read() if proc.stdout else ""
        assert "Traceback" not in log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_model_leaves_one_core_to_the_searches(monkeypatch) -> None:
    import os

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert ServeSettings().model_thread_count() == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert ServeSettings().model_thread_count() == 1
    assert ServeSettings(model_threads=2).model_thread_count() == 2
    with pytest.raises(InputError, match="model_threads"):
        ServeSettings(model_threads=0).model_thread_count()


def _memory_kb(pid: int, field: str) -> int:
    """``VmRSS`` (resident now) or ``VmHWM`` (the peak resident so far) of a process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


GIB = 1024 * 1024  # KiB


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads peak memory from /proc (Linux)")
def test_32_concurrent_big_uploads_stay_within_the_pixel_budget(serve_library) -> None:
    """32 simultaneous uploads of a 7,071 x 7,071 RGBA 16-bit PNG (50 MP, under the upload limit;
    0.5-0.6 GB decoded): with the default budget (100 MP: two such images decoded at once) the
    server's peak resident memory stays under its baseline + 1.5 GiB (before the budget: about
    0.5 GB per upload in flight, 16 GB for 32), and every request is answered 200 or 503 with
    Retry-After, at least one 200."""
    import httpx

    lib_dir, images = serve_library
    big = big_png16()
    proc, url = start_server(lib_dir)
    runaway = threading.Event()
    try:
        small = {"image": ("q.png", png_bytes(images / "000004.png"), "image/png")}
        assert httpx.post(url + "/api/search", files=small, timeout=60).status_code == 200  # the model is warm
        baseline = _memory_kb(proc.pid, "VmRSS")
        bound = baseline + int(1.5 * GIB)
        stop = threading.Event()

        def watchdog() -> None:  # without a budget the server would take the machine's memory: stop it early
            while not stop.wait(0.05):
                try:
                    if _memory_kb(proc.pid, "VmRSS") > bound + GIB:
                        runaway.set()
                        proc.kill()
                        return
                except (OSError, AssertionError):
                    return

        answers: list[tuple[int, str | None, str]] = []
        start = threading.Barrier(32)

        def upload() -> None:
            start.wait()
            try:
                r = httpx.post(url + "/api/search", files={"image": ("big.png", big, "image/png")}, timeout=300)
                answers.append((r.status_code, r.headers.get("retry-after"), r.text[:200]))
            except httpx.HTTPError as e:
                answers.append((0, None, repr(e)))

        guard = threading.Thread(target=watchdog, daemon=True)
        guard.start()
        clients = [threading.Thread(target=upload) for _ in range(32)]
        for t in clients:
            t.start()
        for t in clients:
            t.join(600)
        assert not runaway.is_set(), f"resident memory went past {(bound + GIB) / GIB:.1f} GiB: the server was stopped"
        peak = _memory_kb(proc.pid, "VmHWM")
        stop.set()
    finally:
        proc.terminate()
        proc.wait(60)
    codes = [a[0] for a in answers]
    assert len(answers) == 32 and set(codes) <= {200, 503}, answers
    assert 200 in codes
    assert all(a[1] is not None and int(a[1]) >= 1 for a in answers if a[0] == 503)
    assert peak < bound, f"peak {peak / GIB:.2f} GiB over baseline {baseline / GIB:.2f} GiB + 1.5 GiB"
