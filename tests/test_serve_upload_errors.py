"""An upload the server cannot use gets the one reason that applies: an empty or unreadable file
was told "the server accepts at most 50 megapixels" as if its size were the problem."""

from __future__ import annotations

import pytest
from _library_data import png_bomb_header
from _serve_data import make_client, serve_library_fixture  # noqa: F401  (the fixture serve_library)

pytest.importorskip("fastapi")


def test_upload_errors_name_only_their_own_reason(serve_library) -> None:
    client, service = make_client(serve_library[0])
    try:
        for data, reason in ((b"", "file is empty (zero bytes)"), (b"%!PS-Adobe-3.0\nshowpage\n", "not an image")):
            resp = client.post("/api/search", files={"image": ("q.jpg", data)})
            assert resp.status_code == 400
            msg = resp.json()["error"]
            assert msg.startswith(f"uploaded image: {reason}") and "megapixel" not in msg, msg
        bomb = client.post("/api/search", files={"image": ("b.png", png_bomb_header(20000, 20000))}).json()["error"]
        assert bomb.count("50 megapixel") == 1 and "--max-megapixels" not in bomb, bomb
    finally:
        service.close()
