"""The HTTP API of ``fgsearch serve`` through FastAPI's test client, on a demo-model library:
every route, every error status, limits, CORS and the page's security headers."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
from _library_data import png_bomb_header
from _serve_data import make_client, png_bytes, serve_library_fixture  # noqa: F401  (the fixture serve_library)
from PIL import Image

from fgsearch.boxes import Box
from fgsearch.indexes import IndexBackendError
from fgsearch.search import FusionWeights

pytest.importorskip("fastapi")


@pytest.fixture(scope="module")
def served(serve_library):
    lib_dir, images = serve_library
    client, service = make_client(lib_dir)
    yield client, service, images
    service.close()


def _search(client, **body):
    return client.post("/api/search", json=body)


def _error(resp, status: int) -> str:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["status"] == status and isinstance(body["error"], str) and "\n" not in body["error"]
    return body["error"]


# ---- search ---------------------------------------------------------------------------------
def test_search_returns_the_libraries_ranking_in_the_cli_schema(served) -> None:
    client, service, _ = served
    resp = _search(client, text="a big red circle", k=5)
    assert resp.status_code == 200
    body = resp.json()
    assert set(body["query"]) >= {"text", "image", "box", "not", "by", "k", "text_path"}
    assert body["query"]["text_path"] == "short"
    assert body["more"] is True
    direct = service.lib.search("a big red circle", k=5)
    assert [set(h) for h in body["results"]] == [set(direct[0].to_dict())] * 5
    assert [h["image_id"] for h in body["results"]] == [h.image_id for h in direct]
    assert body["results"][0] == json.loads(json.dumps(direct[0].to_dict()))


def test_pages_join_into_the_full_ranking(served) -> None:
    client, _, _ = served
    whole = _search(client, text="a small green star", k=9).json()["results"]
    first = _search(client, text="a small green star", k=4).json()
    second = _search(client, text="a small green star", k=5, offset=4).json()
    assert [h["image_id"] for h in first["results"] + second["results"]] == [h["image_id"] for h in whole]
    assert [h["rank"] for h in second["results"]] == [5, 6, 7, 8, 9]
    last = _search(client, text="a small green star", k=10, offset=10).json()
    assert last["more"] is False and len(last["results"]) == 3  # 13 images in all


def test_negative_text_weights_and_filters_reach_the_search(served) -> None:
    client, service, _ = served
    body = _search(client, text="a red circle", negative="a green star", weights={"negative": 0.9}, k=13).json()
    direct = service.lib.search("a red circle", negative="a green star", k=13, weights=FusionWeights(negative=0.9))
    assert [(h["image_id"], h["score"]) for h in body["results"]] == [(h.image_id, round(h.score, 6)) for h in direct]
    assert body["query"]["not"] == "a green star"
    globbed = _search(client, text="a red circle", k=20, filters={"path": "*/00000[0-4].png"}).json()["results"]
    assert sorted(Path(h["path"]).name for h in globbed) == [f"00000{i}.png" for i in range(5)]
    assert _search(client, text="a red circle", filters={"taken_after": "2020-01-01"}).json()["results"] == []
    assert (
        len(_search(client, text="a red circle", k=50, filters={"modified_after": "2020-01-01"}).json()["results"])
        == 13
    )


def test_region_ranking_has_null_global_score(served) -> None:
    client, _, _ = served
    resp = _search(client, text="a yellow square", by="region", k=3)
    assert resp.status_code == 200, resp.text
    results = resp.json()["results"]
    assert len(results) == 3  # the library has far more than 3 regions: every row below is checked
    assert all(h["global_score"] is None and h["box"] is not None for h in results)


def test_more_like_this_and_a_drawn_box_query_by_image_id(served) -> None:
    client, _, _ = served
    like = _search(client, image_id=3, k=3).json()
    assert like["results"][0]["image_id"] == 3  # an image is most like itself
    region = _search(client, image_id=3, box=[0.0, 0.0, 0.6, 0.6], k=3)
    assert region.status_code == 200 and region.json()["query"]["box"] == [0.0, 0.0, 0.6, 0.6]


def test_upload_query_goes_through_the_guarded_decoder(served) -> None:
    client, _, images = served
    data = png_bytes(images / "000004.png")
    resp = client.post(
        "/api/search", files={"image": ("q.png", data, "image/png")}, data={"query": json.dumps({"k": 2})}
    )
    assert resp.status_code == 200, resp.text
    assert Path(resp.json()["results"][0]["path"]).name == "000004.png"
    assert resp.json()["query"]["image"] == "upload"
    with_text = client.post(
        "/api/search", files={"image": ("q.png", data, "image/png")}, data={"query": json.dumps({"text": "a star"})}
    )
    assert with_text.status_code == 200


@pytest.mark.parametrize(
    ("body", "needle", "field"),
    [
        ({"k": 0, "text": "x"}, "k must be between 1 and 200", "k"),
        ({"k": 201, "text": "x"}, "k must be between 1 and 200", "k"),
        ({"k": 100, "offset": 950, "text": "x"}, "offset + k must stay within the first 1000 results", "offset"),
        ({}, "empty query: give text, image, or both", "text"),
        ({"text": "   "}, "empty query: give text, image, or both", "text"),
        ({"text": "x" * 4001}, "text is 4001 characters; at most 4000", "text"),
        ({"text": "x", "box": [0.1, 0.1, 0.5, 0.5]}, "box needs image (the box is a region", "box"),
        ({"image_id": 1, "box": [0.5, 0.5, 0.1, 0.1]}, "empty or inverted", None),
        (
            {"text": "x", "filters": {"taken_after": "last week"}},
            "filters.taken_after 'last week' is not a date",
            "filters.taken_after",
        ),
        ({"text": "x", "weights": {"global": -1}}, "weights.global must be a number >= 0", "weights.global"),
        (
            {"text": "x", "weights": {"global": 0, "region": 0}},
            "weights.global and weights.region are both 0",
            "weights.global",
        ),
    ],
)
def test_bad_searches_are_400_naming_the_request_field(served, body, needle, field) -> None:
    """Errors are worded with the request's JSON fields (never the CLI's flags) and name the field."""
    client, _, _ = served
    resp = _search(client, **body)
    assert needle in _error(resp, 400)
    assert "--" not in resp.json()["error"] and resp.json().get("field") == field


def test_a_bad_request_is_refused_before_its_upload_is_decoded(served) -> None:
    """An upload that is not an image, with k=0: the k error, not the image's (nothing decoded)."""
    client, _, _ = served
    resp = client.post(
        "/api/search", files={"image": ("q.png", b"not an image", "image/png")}, data={"query": json.dumps({"k": 0})}
    )
    assert resp.status_code == 400 and resp.json()["field"] == "k", resp.text


def test_a_nan_min_score_names_its_field(served) -> None:
    client, _, _ = served
    raw = '{"text": "x", "filters": {"min_score": NaN}}'  # Python's JSON reads NaN
    resp = client.post("/api/search", content=raw, headers={"content-type": "application/json"})
    assert _error(resp, 400) == "filters.min_score must be a finite number, got nan"
    assert resp.json()["field"] == "filters.min_score"


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"text": "x", "kk": 1}, "kk: Extra inputs are not permitted"),
        ({"text": "x", "by": "pixel"}, "by:"),
        ({"text": "x", "box": [0.1, 0.2]}, "box:"),
        ({"text": "x", "k": "many"}, "k:"),
        ({"text": "x", "offset": -1}, "offset:"),
    ],
)
def test_malformed_searches_are_422(served, body, needle) -> None:
    client, _, _ = served
    assert needle in _error(_search(client, **body), 422)


def test_not_json_and_other_content_types(served) -> None:
    client, _, _ = served
    bad = client.post("/api/search", content=b"{text", headers={"content-type": "application/json"})
    assert "not JSON" in _error(bad, 422)
    assert "unsupported content type" in _error(
        client.post("/api/search", content=b"text=x", headers={"content-type": "text/plain"}), 400
    )


def test_multipart_without_a_file_and_with_both_image_sources(served) -> None:
    client, _, images = served
    assert "'image' file" in _error(client.post("/api/search", data={"query": "{}"}, files={"x": ("a", b"1")}), 400)
    data = png_bytes(images / "000001.png")
    resp = client.post("/api/search", files={"image": ("q.png", data)}, data={"query": json.dumps({"image_id": 1})})
    assert "not both" in _error(resp, 400)


def test_corrupt_and_bomb_uploads_are_refused_before_decoding(served) -> None:
    client, _, _ = served
    garbage = client.post("/api/search", files={"image": ("q.png", b"\x89PNG not really")})
    assert "uploaded image: not an image" in _error(garbage, 400)
    bomb = client.post("/api/search", files={"image": ("b.png", png_bomb_header(20000, 20000))})
    msg = _error(bomb, 400)
    assert "(400 megapixels), over the 50 megapixel limit" in msg
    assert "--max-megapixels" not in msg  # the indexer's flag is no fix for a client


def test_empty_library_is_409(tmp_path: Path) -> None:
    from _serve_data import DEMO_DIR

    from fgsearch.library import Library

    (tmp_path / "none").mkdir()
    with Library.open(tmp_path / "lib", model=DEMO_DIR, device="cpu") as lib:
        lib.index(str(tmp_path / "none"))
    client, service = make_client(tmp_path / "lib")
    try:
        assert "is empty" in _error(_search(client, text="a red circle"), 409)
    finally:
        service.close()


class _FailingSearch:
    """The served service with a search that raises ``error``; ``create_app`` takes the service it
    serves, which is the injection point for faults."""

    def __init__(self, inner, error: Exception) -> None:
        self._inner, self._error = inner, error

    def __getattr__(self, name: str):
        return getattr(self._inner, name)

    def search(self, *a, **k):
        raise self._error


def _client_failing_with(service, error: Exception):
    from fastapi.testclient import TestClient

    from fgsearch.serve.app import create_app

    return TestClient(create_app(_FailingSearch(service, error)), raise_server_exceptions=False)


def test_unexpected_faults_are_500_json_without_details(served) -> None:
    _, service, _ = served
    client = _client_failing_with(service, RuntimeError("secret internals"))
    msg = _error(_search(client, text="x"), 500)
    assert "RuntimeError" in msg and "secret" not in msg

    down = IndexBackendError("qdrant server at http://localhost:6333 is unreachable; start it or check --qdrant-url")
    client = _client_failing_with(service, down)
    assert "unreachable; start it" in _error(_search(client, text="x"), 503)


# ---- images ---------------------------------------------------------------------------------
def test_image_metadata_lists_every_region(served) -> None:
    client, service, _ = served
    body = client.get("/api/images/2").json()
    assert body["image_id"] == 2 and Path(body["path"]).name == "000001.png"
    regions = service.lib.catalog.regions_for_contents([2])[2]
    assert [r["region_id"] for r in body["regions"]] == [rid for rid, _ in regions]
    assert all(len(r["box"]) == 4 for r in body["regions"])
    assert "not in the library" in _error(client.get("/api/images/999999"), 404)
    assert "not in the library" in _error(client.get("/api/images/0/file"), 404)
    assert "image_id" in _error(client.get("/api/images/abc"), 422)


def test_file_is_the_original_bytes_with_its_type(served) -> None:
    client, _, images = served
    resp = client.get("/api/images/2/file")
    assert resp.status_code == 200
    assert resp.content == (images / "000001.png").read_bytes()
    assert resp.headers["content-type"] == "image/png"
    assert resp.headers["content-security-policy"] == "sandbox"
    assert resp.headers["x-content-type-options"] == "nosniff"


def test_thumbnails_are_exif_rotated_sized_and_cached(served) -> None:
    client, service, _ = served
    sideways = next(h for h in service.lib.search("a red square", k=13) if h.path.endswith("sideways.jpg"))
    assert (sideways.width, sideways.height) == (120, 240)  # as displayed
    resp = client.get(f"/api/images/{sideways.image_id}/thumb?size=100")
    assert resp.status_code == 200 and resp.headers["content-type"] == "image/jpeg"
    thumb = Image.open(io.BytesIO(resp.content))
    assert thumb.size == (64, 128)  # rounded up to 128, portrait like the displayed photo
    assert thumb.getpixel((32, 10))[2] > 150  # the blue band is at the top once rotated
    cached = service.lib.path / "thumbs" / "128" / f"{service._content_hash(sideways.image_id)}.jpg"
    assert cached.read_bytes() == resp.content
    assert client.get(f"/api/images/{sideways.image_id}/thumb?size=100").content == resp.content
    assert "size" in _error(client.get("/api/images/1/thumb?size=0"), 422)
    assert "size" in _error(client.get("/api/images/1/thumb?size=99999"), 422)


# ---- server ---------------------------------------------------------------------------------
def test_status_healthz_page_and_openapi(served) -> None:
    client, _, _ = served
    st = client.get("/api/status").json()
    assert st["counts"]["images"] == 13 and st["server"]["max_k"] == 200
    assert client.get("/healthz").json() == {"ok": True}
    page = client.get("/")
    assert page.status_code == 200 and "<textarea" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert client.get("/static/app.js").status_code == 200
    spec = client.get("/openapi.json").json()
    routes = {"/api/search", "/api/images/{image_id}", "/api/images/{image_id}/file", "/api/images/{image_id}/thumb"}
    assert routes | {"/api/status", "/healthz"} <= set(spec["paths"])
    assert client.get("/docs").status_code == 200
    assert "Not Found" in _error(client.get("/api/nothing"), 404)
    assert _error(client.get("/api/search"), 405)


def test_body_over_the_cap_is_413(serve_library) -> None:
    lib_dir, _ = serve_library
    client, service = make_client(lib_dir, max_upload_bytes=10_000)
    try:
        big = b"\0" * (service.settings.max_body_bytes + 1)
        assert "byte limit" in _error(client.post("/api/search", files={"image": ("big.png", big)}), 413)

        # a body that does not announce its length is counted as it arrives
        def chunks():
            for _ in range(40):
                yield b"\0" * 10_000

        resp = client.post("/api/search", content=chunks(), headers={"content-type": "application/json"})
        assert "byte limit" in _error(resp, 413)
        # under the body cap but over the upload cap: the decoder is never reached
        mid = b"\0" * 20_000
        assert "over the 10000 byte limit" in _error(client.post("/api/search", files={"image": ("m.png", mid)}), 400)
    finally:
        service.close()


def test_cors_is_off_unless_an_origin_is_given(served, serve_library) -> None:
    client, _, _ = served
    resp = client.get("/api/status", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in resp.headers
    lib_dir, _ = serve_library
    with_cors, service = make_client(lib_dir, cors="https://app.example")
    try:
        ok = with_cors.get("/api/status", headers={"Origin": "https://app.example"})
        assert ok.headers["access-control-allow-origin"] == "https://app.example"
        other = with_cors.get("/api/status", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
        pre = with_cors.options(
            "/api/search",
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type",
            },
        )
        assert pre.status_code == 200
    finally:
        service.close()


def test_a_library_folder_that_cannot_be_written_still_serves_thumbnails(serve_library, monkeypatch) -> None:
    client, service = make_client(serve_library[0])
    try:
        monkeypatch.setattr(service, "thumb_dir", serve_library[0] / "catalog.sqlite" / "thumbs")  # not a folder
        first = client.get("/api/images/1/thumb?size=512")
        second = client.get("/api/images/1/thumb?size=512")
        assert first.status_code == second.status_code == 200 and first.content == second.content
        assert not service._thumb_cache_ok  # gave up caching after the first failure, said so once in the log
    finally:
        service.close()


def test_default_weights_follow_the_query_kind_like_the_library(served) -> None:
    """No weights given: an image query (more like this) and a region query (a drawn box) rank as
    Library.search ranks them with its defaults for that kind, not with the text defaults."""
    client, service, _ = served
    image = service.image_for_query(4)
    for extra in ({}, {"box": [0.0, 0.0, 0.6, 0.6]}):
        body = _search(client, image_id=4, k=6, **extra).json()
        box = Box(*extra["box"]) if extra else None
        direct = service.lib.search(image=image, box=box, k=6)
        want = [(h.image_id, round(h.score, 6)) for h in direct]
        assert [(h["image_id"], h["score"]) for h in body["results"]] == want


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


def test_a_faiss_file_damaged_under_a_running_server_is_409_in_one_line_naming_the_repair(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    from _library_data import build_hnsw_library, garble_hnsw_graph, scene

    from fgsearch.errors import LibraryError
    from fgsearch.library import Library

    lib_dir, photos, _ = build_hnsw_library(tmp_path, tiny_model_dir)
    client, service = make_client(lib_dir)
    try:
        assert _search(client, text="a red square").status_code == 200
        scene(99).save(photos / "new.png")
        with Library.open(lib_dir) as lib:  # the writer: a new snapshot with a new FAISS file
            lib.index(photos)
        folder = lib_dir / "index" / "regions"
        manifest = json.loads((folder / "manifest.json").read_text())
        faiss_file = folder / manifest["extra"]["faiss_file"]
        garble_hnsw_graph(faiss_file)
        msg = _error(_search(client, text="a red square"), 409)  # the server reloads the new snapshot
        assert msg == (
            f"library {lib_dir}: a vector index is damaged (cannot read the backend files of generation "
            f"{manifest['generation']}: FAISS cannot read {faiss_file}); "
            f"run `fgsearch doctor --repair --library {lib_dir}`, then `fgsearch index {photos} --library {lib_dir}`"
        )
    finally:
        service.close()
    with pytest.raises(LibraryError, match=r"regions vector index is damaged \(.*FAISS cannot read .*doctor --repair"):
        make_client(lib_dir)  # a server starting on it: the same line (fgsearch serve prints it)


def test_the_docs_page_loads_swagger_ui_from_the_server_not_a_cdn(served) -> None:
    import re

    client, _, _ = served
    page = client.get("/docs")
    assert page.status_code == 200 and "SwaggerUIBundle" in page.text
    urls = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert urls and all(u.startswith("/docs-assets/") for u in urls), urls
    for u in urls:
        assert client.get(u).status_code == 200, u
    assert "'/openapi.json'" in page.text
    assert client.get("/redoc").status_code == 404  # FastAPI's ReDoc page would load from a CDN too


def test_a_non_utf8_name_and_its_escape_are_served_as_two_files(tmp_path: Path) -> None:
    """Issue 23.3: `caf<e9>.png` and a file literally called `caf\\xe9.png` are two images; each
    image's file route sends that file's bytes (the catalog gives the server each exact name), and
    the JSON shows both names as text."""
    from _library_data import scene
    from _serve_data import DEMO_DIR

    from fgsearch.library import Library
    from fgsearch.regions import RegionSettings

    photos = tmp_path / "photos"
    photos.mkdir()
    files = {os.fsencode(photos / "caf\\xe9.png"): 1, os.fsencode(photos) + b"/caf\xe9.png": 2}
    for name, i in files.items():
        with open(name, "wb") as f:
            scene(i).save(f, format="PNG")
    with Library.open(tmp_path / "lib", model=DEMO_DIR, regions=RegionSettings("none"), device="cpu") as lib:
        assert lib.index(str(photos)).indexed == 2
    client, service = make_client(tmp_path / "lib")
    try:
        resp = _search(client, text="a red circle", k=5)
        assert resp.status_code == 200, resp.text
        results = resp.json()["results"]
        assert [h["path"] for h in results] == [str(photos / "caf\\xe9.png")] * 2
        sent = set()
        for h in results:
            assert client.get(f"/api/images/{h['image_id']}").json()["path"] == str(photos / "caf\\xe9.png")
            body = client.get(f"/api/images/{h['image_id']}/file")
            assert body.status_code == 200, body.text
            sent.add(body.content)
            assert client.get(f"/api/images/{h['image_id']}/thumb?size=64").status_code == 200
        on_disk = set()
        for name in files:
            with open(name, "rb") as f:
                on_disk.add(f.read())
        assert sent == on_disk
    finally:
        service.close()


def test_image_decodes_wait_for_the_pixel_budget_then_answer_503_with_retry_after(serve_library) -> None:
    """Uploads, queries by image id and thumbnails share one decoded-pixel budget: while another
    request holds all of it, each waits ``decode_wait_s``, then is a one-line 503 with Retry-After;
    once it is free they succeed, and every request (refused or not) gives its pixels back."""
    import shutil
    import threading
    import time

    lib_dir, images = serve_library
    client, service = make_client(lib_dir, decode_megapixels=0.001, decode_wait_s=0.3)
    try:
        upload = {"files": {"image": ("q.png", png_bytes(images / "000004.png"), "image/png")}}
        shutil.rmtree(lib_dir / "thumbs", ignore_errors=True)  # a cached thumbnail decodes nothing
        assert service.status()["server"]["decode_megapixels"] == 0.001
        with service.pixels.hold() as reserve:
            reserve(service.pixels.total)  # another request holds the whole budget
            t0 = time.monotonic()
            for resp in (
                client.post("/api/search", **upload),
                _search(client, image_id=1),
                _search(client, image_id=1, box=[0.1, 0.1, 0.6, 0.6]),
                client.get("/api/images/1/thumb?size=1024"),
            ):
                assert "busy decoding other images" in _error(resp, 503)
                assert resp.headers["Retry-After"] == "1"
            assert time.monotonic() - t0 >= 4 * 0.25  # each waited before giving up
            assert _search(client, text="a star").status_code == 200  # a text search needs no pixels
            assert service.pixels.free == 0
            # a request that starts waiting gets the budget when it is given back in time
            late: list[int] = []
            waiter = threading.Thread(target=lambda: late.append(client.post("/api/search", **upload).status_code))
            waiter.start()
            time.sleep(0.05)
        waiter.join(30)
        assert late == [200]
        assert client.post("/api/search", **upload).status_code == 200
        assert _search(client, image_id=1).status_code == 200
        assert client.get("/api/images/1/thumb?size=1024").status_code == 200
        assert service.pixels.free == service.pixels.total
    finally:
        service.close()
