"""Search: the fusion rule (weights by query kind, standardised channels, --not), filters that
list only matching paths, and JSON output that is strict JSON."""

from __future__ import annotations

import json
import shutil
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from _library_data import demo_cli_library, make_folder, png_bomb_header, scene
from typer.testing import CliRunner

from fgsearch.console.cli import app
from fgsearch.errors import InputError, LibraryError
from fgsearch.library import Library
from fgsearch.regions import RegionSettings
from fgsearch.search import (
    DEFAULT_WEIGHTS,
    Filters,
    FusionWeights,
    LibrarySample,
    SearchQuery,
    best_regions,
    fused_scores,
    query_kind,
)

TEXT = "a red circle on a grey background"


def _strict_json(text: str) -> object:
    def refuse(name: str) -> object:
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path):
    """Eight scenes in a/ and b/; b/copy.png has the same bytes as a/0.png."""
    root = tmp_path_factory.mktemp("search")
    for i in range(8):
        folder = root / "photos" / ("a" if i % 2 == 0 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        scene(i).save(folder / f"{i}.png")
    shutil.copyfile(root / "photos" / "a" / "0.png", root / "photos" / "b" / "copy.png")
    lib_dir = root / "lib"
    with Library.open(
        lib_dir, model=str(tiny_model_dir), regions=RegionSettings(proposer="grid", max_regions=4)
    ) as lib:
        lib.index(str(root / "photos"))
    lib = Library.open(lib_dir, read_only=True)
    yield root / "photos", lib_dir, lib
    lib.close()


def test_weights_follow_the_query_kind_unless_given() -> None:
    assert query_kind(SearchQuery(text="x")) == "text"
    assert query_kind(SearchQuery(image="x.png")) == "image"
    assert query_kind(SearchQuery(image="x.png", box=object())) == "box"  # type: ignore[arg-type]
    assert query_kind(SearchQuery(text="x", image="x.png")) == "text"
    assert FusionWeights().resolve("image") == DEFAULT_WEIGHTS["image"] == (1.0, 0.0)
    assert FusionWeights(region=0.5).resolve("image") == (1.0, 0.5)
    assert FusionWeights(global_=0.1, region=0.2).resolve("box") == (0.1, 0.2)
    for bad, match, field in (  # the library names its own parameters, never the CLI's flags
        (FusionWeights(global_=-1), "^global_ must be a number >= 0", "weights.global_"),
        (FusionWeights(region=float("nan")), "^region must be a number >= 0", "weights.region"),
        (FusionWeights(global_=0, region=0), "^global_ and region are both 0", "weights.global_"),
        (FusionWeights(negative=float("inf")), "^negative must be a number >= 0", "weights.negative"),
    ):
        with pytest.raises(InputError, match=match) as caught:
            bad.resolve("text")
        assert caught.value.field == field


def test_fusion_does_not_depend_on_a_channels_scale() -> None:
    """Scores standardised against the sample: moving one channel's cosines from 0 +- 0.5 to
    0.999 +- 0.0005 (as a random model's global head does) leaves the ranking unchanged."""
    rng = np.random.default_rng(0)
    d, n = 16, 40
    q = np.zeros(d, np.float32)
    q[0] = 1.0
    t = rng.uniform(-1, 1, n)

    def with_cosines(cos: np.ndarray) -> np.ndarray:  # unit vectors with exactly these cosines to q
        rest = rng.normal(size=(len(cos), d))
        rest[:, 0] = 0
        rest /= np.linalg.norm(rest, axis=1, keepdims=True)
        return (cos[:, None] * q + np.sqrt(1 - cos[:, None] ** 2) * rest).astype(np.float32)

    regions = with_cosines(rng.uniform(-0.5, 0.5, 2 * n))
    counts = np.full(n, 2)
    orders, raw = [], []
    for a, b in ((0.0, 0.5), (0.999, 0.0005)):
        images = with_cosines(a + b * t)
        sample = LibrarySample((n, 2 * n), images, regions, counts)
        fused, g, r, _ = fused_scores(q, images, regions, counts, sample, (0.5, 0.5))
        orders.append(np.argsort(-fused))
        raw.append(np.argsort(-(0.5 * g + 0.5 * r)))
    np.testing.assert_array_equal(orders[0], orders[1])
    assert not np.array_equal(raw[0], raw[1])  # what a fixed weighting of raw cosines does


def test_negative_subtracts_the_fused_score_of_the_not_text(library) -> None:
    _, _, lib = library
    n = lib.catalog.counts()["images"]
    pos = {h.image_id: h.score for h in lib.search(TEXT, k=n)}
    other = {h.image_id: h.score for h in lib.search("a blue square", k=n)}
    both = lib.search(TEXT, negative="a blue square", k=n)
    assert len(both) == len(pos) == 8
    for h in both:
        assert h.score == pytest.approx(pos[h.image_id] - 0.5 * other[h.image_id], abs=1e-5)
    assert [h.score for h in both] == sorted((h.score for h in both), reverse=True)


def test_filtered_hits_list_only_paths_that_pass_the_filter(library) -> None:
    """Regression (issue 11.8): a/0.png and b/copy.png hold the same bytes; --under a must not print b/copy.png."""
    photos, _, lib = library
    a, b = str(photos / "a"), str(photos / "b")
    for by in ("image", "region"):
        everything = lib.search(image=str(photos / "a" / "0.png"), k=40, by=by)  # all 32 regions
        assert any(set(h.paths) == {f"{a}/0.png", f"{b}/copy.png"} for h in everything)
        for filters, inside in ((Filters(path_prefix=a), a), (Filters(path_glob=f"{b}/*"), b)):
            hits = lib.search(image=str(photos / "a" / "0.png"), k=40, by=by, filters=filters)
            assert hits
            for h in hits:
                assert h.path.startswith(inside + "/") and all(p.startswith(inside + "/") for p in h.paths), (by, h)
    future = Filters(modified_after=datetime(2200, 1, 1))
    assert lib.search(TEXT, k=8, filters=future) == []


def test_cli_json_is_strict_json_for_images_and_regions(library) -> None:
    """Regression (issue 11.9): --by region --json wrote NaN for global_score."""
    from fgsearch.console.cli import app

    photos, lib_dir, _ = library
    runner = CliRunner()
    for args in (
        [TEXT],
        [TEXT, "--by", "region"],
        ["--image", str(photos / "a" / "0.png")],
        ["--image", str(photos / "a" / "0.png"), "--box", "0,0,0.5,0.5", "--by", "region"],
        [TEXT, "--not", "a blue square", "--under", str(photos / "b")],
    ):
        r = runner.invoke(app, ["query", *args, "--library", str(lib_dir), "--json", "-k", "5"])
        assert r.exit_code == 0, r.output
        doc = _strict_json(r.stdout)
        assert isinstance(doc, dict) and doc["results"], args
        for res in doc["results"]:
            assert isinstance(res["score"], float)
            if "region" in args:
                assert res["global_score"] is None and res["region_score"] == res["score"]
            else:
                assert isinstance(res["global_score"], float)


def test_cli_weights_are_checked_before_any_model_runs(library) -> None:
    from fgsearch.console.cli import app

    _, lib_dir, _ = library
    r = CliRunner().invoke(app, ["query", TEXT, "--library", str(lib_dir), "--w-global", "0", "--w-region", "0"])
    assert r.exit_code == 1 and "both 0" in r.output


def test_best_regions_matches_a_loop_over_images() -> None:
    rng = np.random.default_rng(0)
    for trial in range(200):
        counts = rng.integers(0, 4, rng.integers(1, 12))
        rscore = rng.normal(size=counts.sum()).astype(np.float32)
        if trial % 3 == 0 and len(rscore):
            rscore[rng.integers(0, len(rscore))] = rscore.max()  # a tie: the first row wins
        gscore = rng.normal(size=len(counts)).astype(np.float32)
        best, arg = best_regions(gscore, rscore, counts)
        start = 0
        for i, n in enumerate(counts.tolist()):
            if n:
                j = start + int(np.argmax(rscore[start : start + n]))
                assert (arg[i], best[i]) == (j, rscore[j])
                start += n
            else:
                assert (arg[i], best[i]) == (-1, gscore[i])


def test_a_damaged_vector_is_an_error_not_a_nan_score(library, monkeypatch: pytest.MonkeyPatch) -> None:
    _, _, lib = library
    good = lib.global_index.get

    def with_nan(ids: np.ndarray) -> np.ndarray:
        out = good(ids).copy()
        out[0, 0] = np.nan
        return out

    monkeypatch.setattr(lib.global_index, "get", with_nan)
    with pytest.raises(LibraryError, match=r"non-finite vectors for .*fgsearch doctor --repair"):
        lib.search(TEXT, k=3)


def test_results_read_on_past_images_the_catalog_no_longer_lists(library, monkeypatch: pytest.MonkeyPatch) -> None:
    """A search reads the rows (paths) of its results only, in rank order. An image dropped from the
    catalog after it was ranked is skipped and the next ones fill the k places, with their boxes."""
    _, _, lib = library
    full = lib.search(TEXT, k=6)
    gone = {full[0].image_id, full[2].image_id}
    real = lib.catalog.contents_by_ids
    monkeypatch.setattr(lib.catalog, "contents_by_ids", lambda ids: [r for r in real(ids) if r.id not in gone])
    hits = lib.search(TEXT, k=4)
    kept = [h for h in full if h.image_id not in gone]
    assert [h.image_id for h in hits] == [h.image_id for h in kept]
    assert [h.rank for h in hits] == [1, 2, 3, 4]
    assert [(h.box, h.region_id, h.score) for h in hits] == [(h.box, h.region_id, h.score) for h in kept]
    assert all(h.box is not None for h in hits)


def test_a_bomb_query_image_names_no_flag_query_lacks(tmp_path: Path) -> None:
    lib = demo_cli_library(tmp_path, n_good=2)
    runner = CliRunner()
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_bomb_header(30000, 30000))
    r = runner.invoke(app, ["query", "--image", str(bomb), "--library", lib])
    assert r.exit_code == 1
    assert (
        r.output.startswith(f"error: cannot read query image {bomb}: image is ")
        and "over the 100 megapixel limit" in r.output
    )
    assert "--max-megapixels" not in r.output, r.output


@pytest.fixture()
def linked_library(tmp_path: Path, tiny_model_dir: Path) -> tuple[Path, Path]:
    real = tmp_path / "real"
    make_folder(real, n_good=4, bad=False)
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    with Library.open(tmp_path / "lib", model=str(tiny_model_dir), regions=RegionSettings(proposer="none")) as lib:
        lib.index(str(link))
    return tmp_path / "lib", link


def test_cli_under_a_symlinked_root_finds_its_images(linked_library: tuple[Path, Path]) -> None:
    lib, link = linked_library
    r = CliRunner().invoke(app, ["query", "a photo", "--library", str(lib), "--under", str(link), "--json", "-k", "50"])
    assert r.exit_code == 0, r.output
    paths = [p for hit in json.loads(r.stdout)["results"] for p in hit["paths"]]
    assert len(paths) == 4 and all(p.startswith(str(link) + "/") for p in paths), paths


def test_serve_under_a_symlinked_root_finds_its_images(linked_library: tuple[Path, Path], tiny_model_dir: Path) -> None:
    pytest.importorskip("fastapi")
    from _serve_data import make_client

    lib, link = linked_library
    client, service = make_client(lib)
    try:
        r = client.post("/api/search", json={"text": "a photo", "k": 50, "filters": {"under": str(link)}})
        assert r.status_code == 200, r.text
        assert len(r.json()["results"]) == 4
    finally:
        service.close()
