"""Ranking finds the obvious, on the shipped demo model and on random-weight models (whose global
and region scores live on wildly different scales): a whole indexed image ranks itself (and its
byte-identical copies) first, and an image region finds its own region in its own image."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from fgsearch.boxes import Box
from fgsearch.library import Library
from fgsearch.model import REGISTRY
from fgsearch.search import SearchQuery, search_vector
from fgsearch.trainer.fineshapes import make_fineshapes

N_IMAGES = 300


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = make_fineshapes(tmp_path_factory.mktemp("ranking") / "photos", n=N_IMAGES, seed=4242, heldout=0)
    copies = data / "images" / "copies"
    copies.mkdir()
    shutil.copyfile(data / "images" / "000007.png", copies / "same-bytes.png")
    return data / "images"


@pytest.fixture(scope="module", params=["demo", "random-0", pytest.param("random-1", marks=pytest.mark.slow)])
def library(request: pytest.FixtureRequest, photos: Path, tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp(request.param)
    if request.param == "demo":
        model = str(REGISTRY["demo"].local_dir)
    else:
        import torch

        from fgsearch.model import FGCLIP, FGCLIPConfig, save_model

        torch.manual_seed(int(request.param.split("-")[1]))
        save_model(FGCLIP(FGCLIPConfig.tiny()), work / "model")
        model = str(work / "model")
    lib = Library.open(work / "lib", model=model, device="cpu")
    lib.index(str(photos))
    yield request.param, lib
    lib.close()


def test_every_stored_image_ranks_itself_first(library) -> None:
    """300 trials per model, querying by each image's stored vector (what encoding that image again
    gives, see the next test): no region of another image may outrank the image itself."""
    name, lib = library
    ids = sorted(lib.catalog.filter_contents())
    assert len(ids) == N_IMAGES
    wrong = []
    for cid, vec in zip(ids, lib.global_index.get(np.asarray(ids)), strict=True):
        hits = search_vector(lib.store, SearchQuery(image="stored", k=1), vec)
        if hits[0].image_id != cid:
            wrong.append(cid)
    assert not wrong, f"{name}: {len(wrong)}/{len(ids)} images did not rank themselves first"


def test_query_by_an_indexed_file_returns_it_and_its_copies_first(library, photos: Path) -> None:
    name, lib = library
    for i in range(0, N_IMAGES, 60):
        path = photos / f"{i:06d}.png"
        hits = lib.search(image=str(path), k=2)
        assert hits[0].path == str(path), f"{name}: {path.name} ranked {hits[0].path} first"
    hits = lib.search(image=str(photos / "copies" / "same-bytes.png"), k=1)
    assert set(hits[0].paths) == {str(photos / "000007.png"), str(photos / "copies" / "same-bytes.png")}


def test_every_stored_region_finds_itself_in_its_image(library) -> None:
    """300 stored regions per model as queries (image + box): ranking images, the region's own image
    comes first with that box; ranking regions, that region comes first."""
    name, lib = library
    ids = sorted(lib.catalog.filter_contents())
    regions = lib.catalog.region_arrays(ids)
    owned = [
        (cid, int(rid), Box(*map(float, box)))
        for cid, (rids, boxes) in regions.items()
        for rid, box in zip(rids, boxes, strict=True)
    ]
    assert len(owned) >= N_IMAGES
    trials = [owned[int(i)] for i in np.linspace(0, len(owned) - 1, N_IMAGES).round()]
    vecs = lib.region_index.get(np.asarray([rid for _, rid, _ in trials]))
    wrong_image, wrong_region = [], []
    for (cid, rid, box), vec in zip(trials, vecs, strict=True):
        q = SearchQuery(image="stored", box=box, k=1)
        hit = search_vector(lib.store, q, vec)[0]
        if hit.image_id != cid or hit.box is None or hit.box.iou(box) < 0.99:
            wrong_image.append(rid)
        hit = search_vector(lib.store, SearchQuery(image="stored", box=box, k=1, by="region"), vec)[0]
        if hit.image_id != cid or hit.box is None or hit.box.iou(box) < 0.99:
            wrong_region.append(rid)
    assert not wrong_image, f"{name}: {len(wrong_image)}/{len(trials)} regions did not rank their image first"
    assert not wrong_region, f"{name}: {len(wrong_region)}/{len(trials)} regions did not rank first themselves"


def test_query_by_an_image_box_returns_regions_overlapping_it(library, photos: Path) -> None:
    """Through the encoder: an image with one of its stored boxes gives back that box of that image
    among the first results, whether images or regions are ranked."""
    name, lib = library
    ids = sorted(lib.catalog.filter_contents())[::60]
    regions = lib.catalog.region_arrays(ids)
    checked = 0
    for row in lib.catalog.contents_by_ids(ids):
        if row.id not in regions:
            continue
        checked += 1
        box = Box(*map(float, regions[row.id][1][0]))
        for by in ("image", "region"):
            hits = lib.search(image=row.path, box=box, k=3, by=by)
            mine = [h for h in hits if h.image_id == row.id and h.box is not None and h.box.iou(box) > 0.5]
            assert mine, f"{name}: {row.path} box {box} not among the first {by} results: {hits}"
    assert checked >= max(1, len(ids) // 2), f"{name}: only {checked} of {len(ids)} sampled images had regions"


def test_a_pixel_identical_copy_ranks_the_query_file_first(tmp_path: Path) -> None:
    """Two files with the same pixels but different bytes are two images with the same vectors: an
    exact tie. A query by either file must return that file first (ids used to decide)."""
    from PIL import Image, PngImagePlugin

    data = make_fineshapes(tmp_path / "photos", n=6, seed=7, heldout=0) / "images"
    meta = PngImagePlugin.PngInfo()
    meta.add_text("comment", "re-saved")
    Image.open(data / "000003.png").save(data / "zz-same-pixels.png", pnginfo=meta)
    assert (data / "zz-same-pixels.png").read_bytes() != (data / "000003.png").read_bytes()
    with Library.open(tmp_path / "lib", model="demo", device="cpu") as lib:
        lib.index(str(data))
        for name in ("zz-same-pixels.png", "000003.png"):
            hits = lib.search(image=str(data / name), k=2)
            assert hits[0].path == str(data / name) and hits[0].score == hits[1].score


def _same_pixels(tmp_path: Path) -> tuple[Path, list[str]]:
    """Six photos, and photo 3's pixels again as BMP and lossless WebP, each also as a byte copy
    whose name sorts first (byte copies share one image; the image is shown by its first path)."""
    from PIL import Image

    data = make_fineshapes(tmp_path / "photos", n=6, seed=7, heldout=0) / "images"
    with Image.open(data / "000003.png") as im:
        im.load()
        im.save(data / "000003.bmp")
        im.save(data / "000003.webp", lossless=True)
    for name in ("000003.png", "000003.bmp", "000003.webp"):
        shutil.copyfile(data / name, data / f"0-copy-of-{name}")
    return data, sorted(p.name for p in data.iterdir() if "000003" in p.name)


def test_a_query_file_comes_first_among_pixel_identical_files(tmp_path: Path) -> None:
    """Issue 23.4: a query by a file that has a byte copy named before it returned the copy's
    path first (the image's first path), not the query's own file. Now the query's file comes
    first, then the other images with the same pixels (PNG, BMP, lossless WebP)."""
    data, same = _same_pixels(tmp_path)
    with Library.open(tmp_path / "lib", model="demo", device="cpu") as lib:
        lib.index(str(data))
        for name in same:
            hits = lib.search(image=str(data / name), k=4)
            assert hits[0].path == str(data / name), f"query {name}: {[h.path for h in hits]}"
            assert str(data / name) in hits[0].paths
            copies = {Path(p).name for h in hits[:3] for p in h.paths}
            assert copies == set(same) and hits[3].score < hits[2].score


def test_a_query_file_wins_a_tie_broken_in_the_last_bits(tmp_path: Path) -> None:
    """Pixel-identical files embedded in different batches (or at reduced precision) may get vectors
    that differ in the last bits; a copy scoring 1e-6 above the query's own file must not come first."""
    data, _ = _same_pixels(tmp_path)
    with Library.open(tmp_path / "lib", model="demo", device="cpu") as lib:
        lib.index(str(data))
        own = lib.catalog.content_of_path(str(data / "000003.bmp"))
        copy = lib.catalog.content_of_path(str(data / "000003.png"))
        assert own is not None and copy is not None and own != copy
        ids = np.asarray([own], np.int64)
        vec = lib.global_index.get(ids)[0]
        nudged = vec + 2e-3 * np.roll(vec, 1)  # the stored vector of the query's own file, a little off
        lib.global_index.remove(ids)
        lib.global_index.add(ids, (nudged / np.linalg.norm(nudged))[None].astype(np.float32))
        q = SearchQuery(image=str(data / "000003.bmp"), k=3)
        hits = search_vector(lib.store, q, vec)
        by_id = {h.image_id: h.score for h in hits}
        assert 0 < by_id[copy] - by_id[own] < 1e-4, by_id  # the copy is ahead, in the last bits
        assert hits[0].image_id == own and hits[0].path == str(data / "000003.bmp")
