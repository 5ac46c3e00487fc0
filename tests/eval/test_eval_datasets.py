"""Each benchmark reader on tiny files written in the real formats, and its missing-data errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _eval_data import (
    write_coco_captions,
    write_coco_instances,
    write_dci,
    write_fgovd,
    write_fineshapes,
    write_karpathy,
    write_sharegpt4v,
    write_urban1k,
)

from fgsearch.errors import DataError
from fgsearch.eval import datasets as ds

CAPS = [["a c0", "b c0", "c c0", "d c0", "e c0", "sixth caption dropped"], ["a c1", "b c1"], ["x c2"]]


def test_karpathy_flickr_test_split_first_five_captions(tmp_path: Path) -> None:
    write_karpathy(tmp_path, "flickr30k", [0, 1, 2], CAPS)
    r = ds.read_karpathy(tmp_path, "flickr30k")
    assert [p.name for p in r.images] == ["0000.jpg", "0001.jpg", "0002.jpg"]  # the train image is not read
    assert r.texts == ("a c0", "b c0", "c c0", "d c0", "e c0", "a c1", "b c1", "x c2")
    assert r.text_images == ((0,), (0,), (0,), (0,), (0,), (1,), (1,), (2,))
    assert all(p.is_file() for p in r.images)
    # the JSON file itself works too, and limit keeps the first images with their captions
    r2 = ds.read_karpathy(tmp_path / "dataset_flickr30k.json", "flickr30k", limit=2)
    assert len(r2.images) == 2 and len(r2.texts) == 7


def test_karpathy_coco_uses_filepath(tmp_path: Path) -> None:
    write_karpathy(tmp_path, "coco", [0, 1], CAPS[:2])
    r = ds.read_coco_retrieval(tmp_path)
    assert [p.parent.name for p in r.images] == ["val2014", "val2014"]
    assert "Karpathy" in r.source


def test_coco_val2017_in_id_order(tmp_path: Path) -> None:
    write_coco_captions(tmp_path, [0, 1, 2], CAPS)
    r = ds.read_coco_retrieval(tmp_path)
    assert [p.name for p in r.images] == [f"{i:012d}.jpg" for i in range(3)]
    assert len(r.texts) == 8 and r.text_images[-1] == (2,)
    assert "val2017" in r.source
    assert len(ds.read_coco_captions(tmp_path, limit=1).images) == 1


def test_long_caption_readers(tmp_path: Path) -> None:
    caps = ["a long caption c0", "another one c1", "third c2"]
    r = ds.read_dci(write_dci(tmp_path / "dci", [0, 1, 2], caps))
    assert r.texts == tuple(caps) and r.text_images == ((0,), (1,), (2,))
    assert [p.parent.name for p in r.images] == ["photos"] * 3

    root = write_sharegpt4v(tmp_path / "share", [0, 1, 2], caps, extra=3)
    r = ds.read_sharegpt4v(root, n=3)  # the first n records only (1000 for the real set)
    assert r.texts == tuple(caps) and len(r.images) == 3
    assert r.images[0] == root / "coco" / "train2017" / "000000000000.jpg"

    r = ds.read_urban1k(write_urban1k(tmp_path / "urban", [0, 1, 2], caps))
    assert r.texts == tuple(caps) and [p.stem for p in r.images] == ["1", "2", "3"]


def test_fgovd_pixel_boxes_become_normalised(tmp_path: Path) -> None:
    f = write_fgovd(tmp_path, [(1, 2, "c1", ["c2", "c3"]), (3, 3, "c3", ["c0"])])
    r = ds.read_fgovd(f)
    assert len(r.images) == 2 and len(r.items) == 2
    it = r.items[0]
    assert it.box == (0.0, 0.0, 0.5, 1.0)  # [0, 0, 24, 32] of a 48 x 32 image
    assert (it.positive, it.negatives, it.subset) == ("c1", ("c2", "c3"), "h_attributes_llava")
    # a folder reads every jsonl file in it (or in its fgovd/), each a subset
    write_fgovd(tmp_path, [(0, 1, "c0", ["c1"])], name="e_attributes_llava")
    both = ds.read_fgovd(tmp_path)
    assert sorted({i.subset for i in both.items}) == ["e_attributes_llava", "h_attributes_llava"]
    assert len(ds.read_fgovd(tmp_path, limit=1).items) == 1


def test_fgovd_bad_record_names_file_and_line(tmp_path: Path) -> None:
    f = write_fgovd(tmp_path, [(1, 2, "c1", ["c2"])])
    f.write_text(f.read_text() + '{"img_path": "val2017/000000000000.jpg"}\n')
    with pytest.raises(DataError, match=r"h_attributes_llava.jsonl:2"):
        ds.read_fgovd(f)


def test_coco_instances_boxes_and_classes(tmp_path: Path) -> None:
    write_coco_instances(
        tmp_path,
        [
            (1, 2, [([0, 0, 24, 32], 20), ([24, 0, 24, 32], 30)]),
            (3, 3, [([10, 10, 0, 5], 40), ([40, 0, 20, 40], 40)]),  # empty box skipped; one clipped
        ],
    )
    r = ds.read_coco_boxes(tmp_path)
    assert r.class_names[:3] == ("c0", "c1", "c2")
    assert [(b.image, b.label) for b in r.boxes] == [(0, 1), (0, 2), (1, 3)]
    assert r.boxes[1].box == (0.5, 0.0, 1.0, 1.0)
    assert r.boxes[2].box == pytest.approx((40 / 48, 0.0, 1.0, 1.0))
    assert r.skipped == 1


def test_fineshapes_reader(tmp_path: Path) -> None:
    write_fineshapes(
        tmp_path,
        [
            (1, 2, "cap c1", [("c1", ["c2", "c3"]), ("c2", [])]),
            (3, 4, "cap c1", [("c3", ["c4"])]),  # same caption as image 0: both images are correct
        ],
    )
    f = ds.read_fineshapes(tmp_path)
    assert f.retrieval.text_images == ((0, 1), (0, 1))
    items = f.regions.items
    assert [(i.image, i.positive, i.negatives) for i in items] == [
        (0, "c1", ("c2", "c3")),
        (0, "c2", ()),
        (1, "c3", ("c4",)),
    ]
    assert items[1].box == (0.5, 0.0, 1.0, 1.0)


def test_fineshapes_reads_make_fineshapes_output(tmp_path: Path) -> None:
    from fgsearch.trainer.fineshapes import make_fineshapes

    make_fineshapes(tmp_path, n=10, seed=1, heldout=0.3)
    f = ds.read_fineshapes(tmp_path)
    assert len(f.retrieval.images) == 3 and all(p.is_file() for p in f.retrieval.images)
    assert all(len(i.negatives) == 10 for i in f.regions.items)
    assert len(f.regions.items) >= 6  # 2-4 shapes per image


@pytest.mark.parametrize(
    ("reader", "needle"),
    [
        (lambda p: ds.read_karpathy(p, "flickr30k"), "dataset_flickr30k.json"),
        (ds.read_coco_retrieval, "captions_val2017.json"),
        (ds.read_dci, "annotations"),
        (ds.read_sharegpt4v, "share-captioner"),
        (ds.read_urban1k, "caption"),
        (ds.read_fgovd, "jsonl"),
        (ds.read_coco_boxes, "instances_val2017.json"),
        (ds.read_fineshapes, "make-data fineshapes"),
    ],
)
def test_missing_data_says_layout_and_source(tmp_path: Path, reader, needle: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(DataError, match=needle) as e:
        reader(tmp_path / "nowhere")
    msg = str(e.value)
    assert "\n" not in msg
    assert "http" in msg or "fgsearch make-data" in msg


def test_missing_images_are_counted(tmp_path: Path) -> None:
    write_karpathy(tmp_path, "flickr30k", [0, 1, 2], CAPS)
    (tmp_path / "flickr30k-images" / "0001.jpg").unlink()
    with pytest.raises(DataError, match=r"1 of 3 images are missing .*0001\.jpg"):
        ds.read_karpathy(tmp_path, "flickr30k")


def test_corrupt_json_is_a_data_error(tmp_path: Path) -> None:
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_val2017.json").write_text("{not json")
    with pytest.raises(DataError, match="cannot read"):
        ds.read_coco_boxes(tmp_path)
    (tmp_path / "jsonfiles").mkdir()
    (tmp_path / "jsonfiles" / "heldout.json").write_text(json.dumps({"not": "a list"}))
    with pytest.raises(DataError, match="JSON array"):
        ds.read_fineshapes(tmp_path)
