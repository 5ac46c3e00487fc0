"""The API's search weights default to the CLI's, by kind of query: the request model filled in
0.25 / 0.75 (the text weights) whenever ``weights`` was left out, so "more like this" (a whole
library image) ranked the image itself first for 8 of 154 images in a real-world-like library
(the CLI: all but exact pixel ties), and a drawn box was ranked partly by whole-image scores."""

from __future__ import annotations

import pytest
from _serve_data import make_client, serve_library_fixture  # noqa: F401  (the fixture serve_library)

from fgsearch.search import FusionWeights

pytest.importorskip("fastapi")


def test_more_like_this_and_drawn_boxes_use_the_cli_weights(serve_library) -> None:
    client, service = make_client(serve_library[0])
    try:
        ids = sorted(service.lib.catalog.filter_contents())
        assert len(ids) == 13
        for cid in ids:
            body = client.post("/api/search", json={"image_id": cid, "k": 3}).json()
            assert body["results"][0]["image_id"] == cid, (cid, body["results"])
        cid, box = ids[2], [0.0, 0.0, 0.5, 0.5]
        api = client.post("/api/search", json={"image_id": cid, "box": box, "k": 5}).json()["results"]
        path = service.lib.catalog.contents_by_ids([cid])[0].path
        cli = service.lib.search(image=path, box=box, k=5)
        assert [r["image_id"] for r in api] == [h.image_id for h in cli]
        weighted = client.post(
            "/api/search", json={"image_id": cid, "k": 5, "weights": {"global": 0.25, "region": 0.75}}
        )
        direct = service.lib.search(image=path, k=5, weights=FusionWeights(global_=0.25, region=0.75))
        assert [r["image_id"] for r in weighted.json()["results"]] == [h.image_id for h in direct]
    finally:
        service.close()
