"""End to end with the shipped demo model: a query describing an object ranks an image containing
it first, and the returned box overlaps that object (IoU >= 0.5)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fgsearch.boxes import Box
from fgsearch.library import Library
from fgsearch.model import REGISTRY, is_cached
from fgsearch.trainer.fineshapes import make_fineshapes

DEMO = REGISTRY["demo"]


def test_demo_model_ships_in_the_package() -> None:
    assert is_cached(DEMO), "fgsearch/assets/demo-model is missing: train it with the recipe in docs/training.md"
    size = sum(f.stat().st_size for f in Path(DEMO.local_dir).iterdir())
    assert size <= 10 * 1024 * 1024


@pytest.fixture(scope="module")
def demo_library(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("demo")
    data = make_fineshapes(work / "photos", n=40, seed=777, heldout=0)
    objects = json.loads((data / "objects.json").read_text())
    lib = Library.open(work / "lib", model=str(DEMO.local_dir), device="cpu")
    lib.index(str(data / "images"))
    yield lib, data, objects
    lib.close()


def test_object_queries_find_the_object_and_its_box(demo_library) -> None:
    """Every (size, colour, shape) in the folder is a query. A random ranking would put an image
    containing the object first with probability (images containing it) / (images); the demo model
    must do several times better, and the box it returns must overlap the object."""
    lib, data, objects = demo_library
    described: dict[tuple[str, str, str], list[tuple[str, Box]]] = {}  # (size, colour, shape) -> objects
    for rel, objs in objects.items():
        for o in objs:
            described.setdefault((o["size"], o["colour"], o["shape"]), []).append((str(data / rel), Box(*o["box"])))
    queries = sorted(described)
    assert len(queries) >= 15
    top1 = boxes_ok = 0
    chance = 0.0
    for size, colour, shape in queries:
        chance += len({p for p, _ in described[(size, colour, shape)]}) / len(objects)
        hits = lib.search(f"a {size} {colour} {shape}", k=1)
        matching = [box for path, box in described[(size, colour, shape)] if path == hits[0].path]
        if matching:
            top1 += 1
            if hits[0].box is not None and max(hits[0].box.iou(b) for b in matching) >= 0.5:
                boxes_ok += 1
    n = len(queries)
    chance /= n
    print(
        f"demo: {top1}/{n} queries rank an image with the object first (chance {chance:.2f}); "
        f"{boxes_ok}/{top1} boxes have IoU >= 0.5"
    )
    assert top1 / n >= 4 * chance, f"{top1}/{n} object queries ranked a right image first; chance is {chance:.2f}"
    assert boxes_ok / max(top1, 1) >= 0.5, f"only {boxes_ok}/{top1} returned boxes overlap the object (IoU >= 0.5)"


def test_cli_demo_runs(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fgsearch.console.cli import app

    r = CliRunner().invoke(app, ["demo", str(tmp_path / "d"), "--n", "12"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "d" / "query1.png").exists() and (tmp_path / "d" / "query1.html").exists()
    assert "query: a large red circle" in r.output


def test_one_name_for_the_demo_model(demo_library) -> None:
    """Issue 30.2: a library built from the demo model's folder said "demo-model", one built with
    `--model demo` said "demo", for the same weights. The registry's name is shown for both, and
    for a library that recorded "demo-model" before (found by its weights' fingerprint)."""
    lib, _, _ = demo_library
    assert lib.status()["model"] == "demo"  # built from str(DEMO.local_dir), as `fgsearch demo` did
    fingerprint = lib.status()["model_ref"]
    lib.catalog.set_meta(model_name="demo-model")  # as such a library recorded it
    try:
        assert lib.status()["model"] == "demo"
        lib.catalog.set_meta(model_ref="0" * 16)  # other weights under that folder name: its own name
        assert lib.status()["model"] == "demo-model"
    finally:
        lib.catalog.set_meta(model_name="demo", model_ref=fingerprint)
