"""The proposer registry and the built-in proposers behind make_proposer (fgsearch.regions.base)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from fgsearch.errors import DataError, InputError
from fgsearch.regions import (
    ImageBoxes,
    Proposer,
    RegionSettings,
    auto_boxes,
    grid_boxes,
    make_proposer,
    proposer_names,
    register_proposer,
)
from fgsearch.regions.base import PROPOSER_REGISTRY


class CentreProposer:
    """A toy third-party proposer: the centre box of every image, defined in the test module alone."""

    name = "centre"
    uses_dense = False
    wants_regions = True

    def __init__(self, settings: RegionSettings) -> None:
        self.settings = settings

    def before(self, path: str, root: str | None, width: int, height: int) -> ImageBoxes:
        return ImageBoxes(np.array([[0.25, 0.25, 0.75, 0.75]], np.float32)[: self.settings.max_regions])

    def after(self, dense: list[np.ndarray]) -> list[np.ndarray]:
        raise AssertionError("not a dense proposer")

    def run_warnings(self, seen: Sequence[ImageBoxes]) -> list[str]:
        return [f"centre boxes for {len(seen)} images"]


def test_a_toy_proposer_registers_from_outside_the_package() -> None:
    register_proposer("centre", CentreProposer, replace=True)
    assert "centre" in proposer_names()
    prop = make_proposer(RegionSettings(proposer="centre", max_regions=3))
    assert isinstance(prop, Proposer)
    got = prop.before("x.jpg", None, 10, 20)
    np.testing.assert_array_equal(got.boxes, [[0.25, 0.25, 0.75, 0.75]])
    assert prop.run_warnings([got, got]) == ["centre boxes for 2 images"]
    with pytest.raises(InputError, match="registered already"):
        register_proposer("centre", CentreProposer)


def test_unknown_proposer_names_the_known_ones() -> None:
    with pytest.raises(InputError, match=r"unknown region proposer 'magic'; choose one of auto, grid, none, sidecar"):
        RegionSettings(proposer="magic")
    with pytest.raises(InputError, match="unknown region proposer"):
        PROPOSER_REGISTRY.get("magic")


def test_builtins_satisfy_the_protocol() -> None:
    for name, extra in (("auto", {}), ("grid", {}), ("none", {}), ("sidecar", {"sidecar": "per-image"})):
        prop = make_proposer(RegionSettings(proposer=name, **extra))  # type: ignore[arg-type]
        assert isinstance(prop, Proposer) and prop.name == name
        assert prop.wants_regions is (name != "none")
        assert prop.uses_dense is (name == "auto")


def test_grid_and_none_boxes() -> None:
    grid = make_proposer(RegionSettings(proposer="grid", max_regions=5)).before("a.jpg", None, 640, 480)
    want = np.array([b.as_tuple() for b in grid_boxes(5)], np.float32)
    np.testing.assert_array_equal(grid.boxes, want)
    assert grid.boxes.dtype == np.float32 and grid.source is None and grid.skipped == ()
    assert make_proposer(RegionSettings(proposer="grid", max_regions=0)).wants_regions is False
    none = make_proposer(RegionSettings(proposer="none")).before("a.jpg", None, 640, 480)
    assert none.boxes.shape == (0, 4)


def test_auto_proposes_from_numpy_maps_of_several_shapes() -> None:
    rng = np.random.default_rng(5)
    maps = [rng.normal(size=(h, w, 16)).astype(np.float32) for h, w in ((6, 8), (9, 9), (6, 8))]
    settings = RegionSettings(max_regions=5)
    got = make_proposer(settings).after(maps)
    assert len(got) == 3
    for dense, boxes in zip(maps, got, strict=True):
        np.testing.assert_array_equal(boxes, auto_boxes(dense, settings)[0])


def test_sidecar_proposer_truncates_and_reports(tmp_path: Path) -> None:
    img = tmp_path / "cat.jpg"
    img.write_bytes(b"")
    boxes = [[0.1, 0.1, 0.4, 0.5], [0.5, 0.5, 0.2, 0.9], [0.0, 0.0, 1.0, 1.0], [0.2, 0.2, 0.3, 0.3]]
    (tmp_path / "cat.jpg.json").write_text(json.dumps({"boxes": boxes}))
    prop = make_proposer(RegionSettings(proposer="sidecar", sidecar="per-image", max_regions=2))
    got = prop.before(str(img), str(tmp_path), 100, 100)
    np.testing.assert_allclose(got.boxes, [[0.1, 0.1, 0.4, 0.5], [0.0, 0.0, 1.0, 1.0]])
    assert got.source == str(img) + ".json"
    assert len(got.skipped) == 1 and "box 2 skipped" in got.skipped[0]
    assert prop.run_warnings([got]) == list(got.skipped)
    many = ImageBoxes(np.zeros((0, 4), np.float32), source="s", skipped=tuple(f"skip {i}" for i in range(12)))
    assert prop.run_warnings([many])[-1] == "... 12 sidecar boxes skipped in all"
    nothing = prop.before(str(tmp_path / "dog.jpg"), str(tmp_path), 100, 100)
    assert nothing.source is None and nothing.boxes.shape == (0, 4)
    assert prop.run_warnings([nothing, nothing]) == [
        "--regions sidecar: no IMAGE.json file beside any image; the 2 new images have no region vectors"
    ]


def test_a_missing_sidecar_file_fails_when_the_proposer_is_made(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        make_proposer(RegionSettings(proposer="sidecar", sidecar=str(tmp_path / "missing.json")))
