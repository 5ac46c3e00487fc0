"""Boxes and region proposers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fgsearch.boxes import Box, iou_matrix, nms
from fgsearch.errors import DataError, InputError
from fgsearch.regions import RegionSettings, SidecarBoxes, auto_boxes, grid_boxes, propose


def test_box_convention_and_conversions() -> None:
    b = Box.parse("0.1, 0.2, 0.5, 0.6")
    assert b.as_tuple() == (0.1, 0.2, 0.5, 0.6)
    assert Box.from_xywh_pixels(10, 20, 40, 40, width=100, height=200) == Box(0.1, 0.1, 0.5, 0.3)
    assert b.to_pixels(200, 100) == (20, 20, 100, 60)
    assert Box.FULL.iou(Box(0, 0, 0.5, 1)) == pytest.approx(0.5)
    with pytest.raises(InputError, match="x1 < x2"):
        Box(0.5, 0.1, 0.2, 0.3)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        Box(0, 0, 2, 1)
    with pytest.raises(InputError, match="four numbers"):
        Box.parse("1,2,3")
    m = iou_matrix(np.array([[0, 0, 1, 1], [0, 0, 0.5, 0.5]]), np.array([[0, 0, 0.5, 0.5]]))
    np.testing.assert_allclose(m[:, 0], [0.25, 1.0])
    keep = nms(np.array([[0, 0, 1, 1], [0, 0, 0.95, 1], [0, 0, 0.2, 0.2]]), [0.5, 0.9, 0.1], iou=0.5)
    assert keep == [1, 2]


def test_grid_is_multiscale_and_capped() -> None:
    boxes = grid_boxes(100)
    assert len(boxes) == len(set(boxes)) >= 14
    areas = {round(b.area, 3) for b in boxes}
    assert len(areas) >= 2  # several scales
    assert len(grid_boxes(5)) == 5


def _planted(seed: int = 0) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    rng = np.random.default_rng(seed)
    d = rng.normal(size=(14, 14, 64)).astype(np.float32) * 0.3 + rng.normal(size=64) * 0.3
    objects = [(2, 3, 6, 7), (8, 9, 13, 13)]  # x1, y1, x2, y2 in cells
    for x1, y1, x2, y2 in objects:
        d[y1:y2, x1:x2] += rng.normal(size=64) * 0.5
    return d, objects


def test_auto_finds_planted_objects_first() -> None:
    dense, objects = _planted()
    boxes, scores = auto_boxes(dense, RegionSettings(max_regions=4))
    assert len(boxes) <= 4 and np.all(np.diff(scores) <= 1e-6)
    truth = np.array(objects, np.float32) / 14
    best = iou_matrix(truth, boxes[:2]).max(axis=1)
    assert np.all(best >= 0.9), (boxes * 14, scores)
    assert np.all(iou_matrix(boxes, boxes)[np.triu_indices(len(boxes), 1)] <= 0.6)  # deduplicated


def test_auto_on_uniform_map_gives_few_boxes() -> None:
    dense = np.ones((7, 7, 16), np.float32)
    boxes, _ = auto_boxes(dense)
    assert len(boxes) <= 1


def test_settings_validation_and_roundtrip() -> None:
    with pytest.raises(InputError, match="unknown region proposer"):
        RegionSettings(proposer="magic")
    with pytest.raises(InputError, match=r"^proposer sidecar needs sidecar PATH"):
        RegionSettings(proposer="sidecar")
    s = RegionSettings(proposer="grid", max_regions=7)
    assert RegionSettings.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    assert propose(RegionSettings(proposer="none"), None)[0].shape == (0, 4)
    assert propose(s, None)[0].shape == (7, 4)


def test_sidecars(tmp_path: Path) -> None:
    img = tmp_path / "a" / "cat.jpg"
    img.parent.mkdir()
    img.write_bytes(b"")
    (tmp_path / "a" / "cat.jpg.json").write_text(json.dumps({"boxes": [[0.1, 0.1, 0.4, 0.5]]}))
    sc = SidecarBoxes("per-image")
    assert sc.boxes_for(str(img), str(tmp_path), 100, 100) == [Box(0.1, 0.1, 0.4, 0.5)]
    coco = tmp_path / "inst.json"
    coco.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "a/cat.jpg", "width": 200, "height": 100}],
                "annotations": [{"image_id": 1, "bbox": [20, 10, 100, 50], "category_id": 3}],
            }
        )
    )
    boxes = SidecarBoxes(str(coco)).boxes_for(str(img), str(tmp_path), 200, 100)
    assert boxes == [Box(0.1, 0.1, 0.6, 0.6)]
    (tmp_path / "a" / "cat.jpg.json").write_text("{broken")
    with pytest.raises(DataError, match=r"cat\.jpg\.json is malformed"):
        sc.boxes_for(str(img), str(tmp_path), 100, 100)
    with pytest.raises(DataError, match="does not exist"):
        SidecarBoxes(str(tmp_path / "missing.json"))


def _random_map(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    d = rng.normal(size=(h, w, 24)).astype(np.float32) * rng.uniform(0.1, 1.0) + rng.normal(size=24)
    for _ in range(int(rng.integers(0, 4))):  # a few blocks of a shared vector: objects
        y0, x0 = int(rng.integers(0, h)), int(rng.integers(0, w))
        d[y0 : y0 + int(rng.integers(1, h + 1)), x0 : x0 + int(rng.integers(1, w + 1))] += rng.normal(size=24)
    return d


@pytest.mark.parametrize("shape", [(14, 14), (7, 9), (24, 24), (1, 5), (2, 3), (16, 12)])
def test_auto_matches_the_loop_reference(shape: tuple[int, int]) -> None:
    """The vectorised proposer computes exactly what the plain-loop specification does."""
    from reference_regions import reference_auto_boxes

    rng = np.random.default_rng(sum(shape))
    for _ in range(12):
        dense = _random_map(rng, *shape)
        settings = RegionSettings(
            max_regions=int(rng.integers(1, 24)),
            min_cells=int(rng.integers(1, 4)),
            thresholds=tuple(sorted(rng.uniform(0.2, 0.95, int(rng.integers(1, 4))).tolist())),
        )
        want_boxes, want_scores = reference_auto_boxes(dense, settings)
        got_boxes, got_scores = auto_boxes(dense, settings)
        assert got_boxes.shape == want_boxes.shape
        np.testing.assert_allclose(got_boxes, want_boxes, atol=1e-5)
        np.testing.assert_allclose(got_scores, want_scores, atol=1e-4)


def _bfs_labels(right: np.ndarray, down: np.ndarray) -> np.ndarray:
    h, w = down.shape[0] + 1, right.shape[1] + 1
    labels = -np.ones(h * w, np.int64)
    for start in range(h * w):
        if labels[start] >= 0:
            continue
        labels[start], stack = start, [start]
        while stack:
            y, x = divmod(stack.pop(), w)
            links = []
            if x + 1 < w and right[y, x]:
                links.append((y, x + 1))
            if x > 0 and right[y, x - 1]:
                links.append((y, x - 1))
            if y + 1 < h and down[y, x]:
                links.append((y + 1, x))
            if y > 0 and down[y - 1, x]:
                links.append((y - 1, x))
            for ny, nx in links:
                if labels[ny * w + nx] < 0:
                    labels[ny * w + nx] = start
                    stack.append(ny * w + nx)
    return labels


def test_component_labels_match_a_plain_search() -> None:
    from fgsearch.regions.auto import _label

    rng = np.random.default_rng(3)
    h, w = 9, 8
    # a one-cell-wide snake through the whole grid: the slowest case for label spreading
    right = np.ones((h, w - 1), bool)
    down = np.zeros((h - 1, w), bool)
    for y in range(h - 1):
        down[y, w - 1 if y % 2 == 0 else 0] = True
    masks = [(right, down)]
    for p in (0.2, 0.5, 0.8, 1.0):
        masks.append((rng.random((h, w - 1)) < p, rng.random((h - 1, w)) < p))
    got = _label(np.stack([r for r, _ in masks]), np.stack([d for _, d in masks]))
    for k, (r, d) in enumerate(masks):
        np.testing.assert_array_equal(got[k], _bfs_labels(r, d))
    assert set(got[0].tolist()) == {0}


@pytest.mark.parametrize(
    "dense",
    [
        np.zeros((5, 5, 8), np.float32),  # zero vectors
        np.ones((1, 2, 8), np.float32),  # two cells
        np.ones((1, 1, 8), np.float32),  # one cell
        np.tile(np.eye(2, dtype=np.float32)[None], (6, 3, 4))[:, :6, :],  # stripes
    ],
)
def test_auto_on_degenerate_maps(dense: np.ndarray) -> None:
    boxes, scores = auto_boxes(dense)
    assert boxes.shape[1] == 4 and len(boxes) == len(scores)
    assert np.all(np.isfinite(boxes)) and np.all(np.isfinite(scores))
    assert np.all((boxes >= 0) & (boxes <= 1)) and np.all(boxes[:, :2] < boxes[:, 2:])


def test_batched_proposals_equal_one_image_at_a_time() -> None:
    """Images of one batch are padded to the batch's largest segment count; that changes nothing."""
    from reference_regions import reference_auto_boxes

    from fgsearch.regions import auto_boxes_batch

    rng = np.random.default_rng(11)
    maps = np.stack([_random_map(rng, 10, 12) for _ in range(9)])
    maps[3] = 1.0  # a uniform map (few or no segments) inside a batch of busy ones
    settings = RegionSettings(max_regions=7)
    batch = auto_boxes_batch(maps, settings)
    assert len(batch) == len(maps)
    for dense, (boxes, scores) in zip(maps, batch, strict=True):
        want_boxes, want_scores = reference_auto_boxes(dense, settings)
        np.testing.assert_allclose(boxes, want_boxes, atol=1e-5)
        np.testing.assert_allclose(scores, want_scores, atol=1e-4)
    assert auto_boxes_batch(np.zeros((0, 4, 4, 8), np.float32), settings) == []
    assert all(len(b) == 0 for b, _ in auto_boxes_batch(maps, RegionSettings(max_regions=0)))
