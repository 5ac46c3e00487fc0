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
    with pytest.raises(InputError, match="--sidecar"):
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
