"""Sidecar boxes in an index run (issues 12.12 and 12.7): a bad box skips that box with a reason
naming the sidecar file, never the image; a COCO image of width 0 says so; a sidecar that
matches no image is a warning."""

from __future__ import annotations

import json
from pathlib import Path

from _library_data import scene

from fgsearch.ingest import IndexReport
from fgsearch.library import Library
from fgsearch.regions import RegionSettings


def _index(tmp_path: Path, model: Path, sidecar: str, photos: Path) -> tuple[Library, IndexReport]:
    lib = Library.open(tmp_path / "lib", model=str(model), regions=RegionSettings(proposer="sidecar", sidecar=sidecar))
    return lib, lib.index(photos)


def test_an_inverted_or_empty_box_skips_that_box_not_the_image(tmp_path: Path, tiny_model_dir: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    scene(1).save(photos / "cat.jpg")
    side = photos / "cat.jpg.json"
    side.write_text(json.dumps({"boxes": [[0, 0, 0.5, 0.5], [0.6, 0.6, 0.2, 0.9], [0.3, 0.3, 0.3, 0.5], [1, 2]]}))
    lib, rep = _index(tmp_path, tiny_model_dir, "per-image", photos)
    with lib:
        assert (rep.indexed, rep.failed, rep.regions) == (1, 0, 1)
        warnings = rep.warnings
    assert len(warnings) == 3
    assert warnings[0].startswith(f"sidecar {side}: box 2 skipped: box (0.6, 0.6, 0.2, 0.9) is empty or inverted")
    assert warnings[1].startswith(f"sidecar {side}: box 3 skipped")
    assert warnings[2] == f"sidecar {side}: box 4 skipped: [1, 2] is not four numbers"


def test_a_coco_image_of_width_zero_says_so(tmp_path: Path, tiny_model_dir: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    scene(1).save(photos / "a.jpg")
    scene(2).save(photos / "b.jpg")
    coco = tmp_path / "instances.json"
    images = [{"id": 1, "file_name": "a.jpg", "width": 0, "height": 120}]
    images.append({"id": 2, "file_name": "b.jpg", "width": 160, "height": 120})
    annotations = [{"image_id": 1, "bbox": [1, 1, 20, 20]}, {"image_id": 2, "bbox": [10, 10, 0, 30]}]
    annotations.append({"image_id": 2, "bbox": [10, 10, 80, 60]})
    coco.write_text(json.dumps({"images": images, "annotations": annotations}))
    lib, rep = _index(tmp_path, tiny_model_dir, str(coco), photos)
    with lib:
        assert (rep.indexed, rep.failed, rep.regions) == (2, 0, 1)
        warnings = rep.warnings
    assert warnings == [
        f"sidecar {coco}: image 'a.jpg' has width 0 and height 120; its 1 box(es) skipped "
        "(fix its entry in the COCO file)",
        f"sidecar {coco}: box 1 skipped: box (0.0625, 0.08333333333333333, 0.0625, 0.3333333333333333) "
        "is empty or inverted: need x1 < x2 and y1 < y2 (normalised x1,y1,x2,y2)",
    ]


def test_a_sidecar_that_matches_no_image_is_a_warning(tmp_path: Path, tiny_model_dir: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    scene(1).save(photos / "a.jpg")
    lib, rep = _index(tmp_path, tiny_model_dir, "per-image", photos)
    with lib:
        assert rep.warnings == [
            "--regions sidecar: no IMAGE.json file beside any image; the 1 new images have no region vectors"
        ]
        scene(2).save(photos / "b.jpg")
        (photos / "b.jpg.json").write_text('{"boxes": []}')  # a sidecar with no boxes is a sidecar
        assert lib.index(photos).warnings == []
