"""Security of ``fgsearch serve``: binding, bearer auth on every API and file route, files only
by catalog id (no path traversal, no symlink escape), and the missing-extra message."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from _serve_data import build_library, make_client, serve_library_fixture  # noqa: F401  (the fixture serve_library)
from typer.testing import CliRunner

from fgsearch.errors import InputError
from fgsearch.serve import check_bind, require_extra

pytest.importorskip("fastapi")

TOKEN = "correct-horse-battery"
SECRET = "top secret: never served\n"


def test_only_loopback_binds_without_a_token() -> None:
    for host in ("127.0.0.1", "localhost", "::1"):
        check_bind(host, None)
    with pytest.raises(InputError, match=r"^host 0.0.0.0 makes the library reachable.*token TOKEN") as caught:
        check_bind("0.0.0.0", None)
    from fgsearch.cli_options import flag_of

    assert caught.value.worded(flag_of).startswith("--host 0.0.0.0 makes the library reachable")
    assert "give --token TOKEN" in caught.value.worded(flag_of)
    with pytest.raises(InputError, match="at least 8 characters"):
        check_bind("0.0.0.0", "short")
    check_bind("0.0.0.0", TOKEN)


def test_cli_refuses_a_public_bind_before_loading_anything(tmp_path: Path) -> None:
    from fgsearch.console.cli import app

    result = CliRunner().invoke(app, ["serve", "--library", str(tmp_path / "none"), "--host", "0.0.0.0"])
    assert result.exit_code == 1
    assert "error: --host 0.0.0.0 makes the library reachable" in result.output
    env_token = CliRunner().invoke(
        app, ["serve", "--library", str(tmp_path / "none"), "--host", "0.0.0.0"], env={"FGSEARCH_TOKEN": TOKEN}
    )
    assert "no library at" in env_token.output  # the token from the environment passed the bind check


def test_cli_passes_the_decode_budget_and_refuses_a_bad_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fgsearch.serve
    from fgsearch.console.cli import app
    from fgsearch.serve.engine import ServeSettings

    seen: list[ServeSettings] = []
    monkeypatch.setattr(fgsearch.serve, "run_server", seen.append)
    ok = CliRunner().invoke(app, ["serve", "--library", str(tmp_path / "none"), "--decode-megapixels", "250"])
    assert ok.exit_code == 0, ok.output
    assert seen[0].decode_megapixels == 250 and seen[0].decode_wait_s == 5
    bad = CliRunner().invoke(app, ["serve", "--library", str(tmp_path / "none"), "--decode-megapixels", "0"])
    assert bad.exit_code == 1 and "error: --decode-megapixels must be positive, got 0" in bad.output
    assert len(seen) == 1


def test_missing_extra_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    with pytest.raises(InputError, match=r"uvicorn is missing\): pip install 'fgsearch\[serve\]'"):
        require_extra()


@pytest.fixture(scope="module")
def guarded(serve_library):
    lib_dir, _ = serve_library
    client, service = make_client(lib_dir, token=TOKEN)
    yield client
    service.close()


ROUTES = [
    ("GET", "/api/status"),
    ("POST", "/api/search"),
    ("GET", "/api/images/1"),
    ("GET", "/api/images/1/file"),
    ("GET", "/api/images/1/thumb"),
    ("GET", "/api/images/999/file"),
    ("GET", "/api/nothing"),
]


@pytest.mark.parametrize(("method", "url"), ROUTES)
def test_every_api_and_file_route_needs_the_token(guarded, method: str, url: str) -> None:
    wrong = [{"Authorization": v} for v in ("Bearer wrong-token-value", TOKEN, f"Basic {TOKEN}", f"Bearer {TOKEN}x")]
    wrong.append({})
    for headers in wrong:
        resp = guarded.request(method, url, headers=headers, json={"text": "a red circle"})
        assert resp.status_code == 401, (url, headers)
        assert resp.headers["www-authenticate"] == "Bearer"
        assert "Authorization: Bearer TOKEN" in resp.json()["error"]
    ok = guarded.request(method, url, headers={"Authorization": f"Bearer {TOKEN}"}, json={"text": "a red circle"})
    assert ok.status_code != 401


def test_with_the_token_everything_works_and_the_page_loads_without_it(guarded) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert guarded.post("/api/search", json={"text": "a red circle"}, headers=auth).status_code == 200
    assert guarded.get("/api/images/1/thumb", headers=auth).status_code == 200
    assert guarded.get("/", headers={}).status_code == 200  # the page asks for the token itself
    assert guarded.get("/static/app.js").status_code == 200
    assert guarded.get("/healthz").status_code == 200


def test_without_a_token_no_auth_is_asked(serve_library) -> None:
    client, service = make_client(serve_library[0])
    try:
        assert client.get("/api/images/1/file").status_code == 200
    finally:
        service.close()


@pytest.fixture
def own_library(tmp_path: Path):
    """A library this test may damage, and a secret file beside it."""
    lib_dir, images = build_library(tmp_path, n=3)
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    client, service = make_client(lib_dir)
    yield client, service, images, secret
    service.close()


TRAVERSALS = [
    "/api/images/../../../../etc/passwd",
    "/api/images/..%2F..%2F..%2Fetc%2Fpasswd/file",
    "/api/images/%2Fetc%2Fpasswd/file",
    "/api/images/1%2F..%2F..%2Fsecret.txt/file",
    "/api/images/1/../../secret.txt",
    "/api/images/%2e%2e/%2e%2e/secret.txt",
    "/api/images/-1/file",
    "/api/images/1.5/file",
    "/static/../catalog.sqlite",
    "/static/%2e%2e/%2e%2e/%2e%2e/catalog.sqlite",
    "/static/..%2F..%2F..%2Fsecret.txt",
    "/static//etc/passwd",
    "/static/%2Fetc%2Fpasswd",
]


@pytest.mark.parametrize("raw", TRAVERSALS)
def test_path_traversal_reaches_nothing(own_library, raw: str) -> None:
    client, _, _, secret = own_library
    for url in (raw, raw.replace("secret.txt", str(secret).lstrip("/"))):
        resp = client.get(url)
        assert resp.status_code in (404, 405, 422), (url, resp.status_code)
        assert SECRET not in resp.text and "root:" not in resp.text and b"SQLite" not in resp.content
        assert resp.json()["status"] == resp.status_code


def test_a_file_replaced_by_a_symlink_is_not_served(own_library) -> None:
    client, service, images, secret = own_library
    target = images / "000001.png"
    image_id = next(h.image_id for h in service.lib.search("a shape", k=5) if h.path == str(target))
    assert client.get(f"/api/images/{image_id}/file").status_code == 200
    target.unlink()
    target.symlink_to(secret)
    for url in (f"/api/images/{image_id}/file", f"/api/images/{image_id}/thumb?size=512"):
        resp = client.get(url)
        assert resp.status_code == 404
        assert SECRET not in resp.text
        assert "changed since it was indexed" in resp.json()["error"]
    # a more-like-this query on it cannot read the secret either
    assert client.post("/api/search", json={"image_id": image_id}).status_code == 404


def test_a_symlinked_folder_indexed_as_such_is_served(tmp_path: Path) -> None:
    """Symlinks are fine when they point at what was indexed: the bytes must hash to the content."""
    lib_dir, images = build_library(tmp_path, n=3)
    moved = tmp_path / "elsewhere"
    shutil.move(str(images), moved)
    images.symlink_to(moved, target_is_directory=True)
    client, service = make_client(lib_dir)
    try:
        resp = client.get("/api/images/1/file")
        assert resp.status_code == 200 and resp.content == (moved / "000000.png").read_bytes()
    finally:
        service.close()


def test_a_changed_file_is_not_served(own_library) -> None:
    client, service, images, _ = own_library
    target = images / "000002.png"
    image_id = next(h.image_id for h in service.lib.search("a shape", k=5) if h.path == str(target))
    target.write_bytes(target.read_bytes() + b"appended")
    assert client.get(f"/api/images/{image_id}/file").status_code == 404


def test_a_file_replaced_by_a_fifo_is_refused_without_blocking(own_library) -> None:
    """A plain open() of a FIFO waits for a writer forever: the request would hang a worker thread."""
    import os
    import threading

    client, service, images, _ = own_library
    target = images / "000000.png"
    image_id = next(h.image_id for h in service.lib.search("a shape", k=5) if h.path == str(target))
    target.unlink()
    os.mkfifo(target)
    answer: list[int] = []
    worker = threading.Thread(target=lambda: answer.append(client.get(f"/api/images/{image_id}/file").status_code))
    worker.daemon = True
    worker.start()
    worker.join(timeout=20)
    if worker.is_alive():  # unblock the open so the test run can finish, then fail
        with open(target, "wb"):
            pass
        pytest.fail("the file route blocked on a FIFO")
    assert answer == [404]
