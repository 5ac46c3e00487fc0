"""``Library.search`` takes its arguments in the forms a Python caller naturally writes."""

from __future__ import annotations

from pathlib import Path

import pytest
from _library_data import make_folder

from fgsearch.boxes import Box
from fgsearch.errors import InputError
from fgsearch.library import Library
from fgsearch.regions import RegionSettings


def test_a_box_given_as_a_list_a_tuple_or_text_is_the_same_box(tmp_path: Path, tiny_model_dir: Path) -> None:
    """A list ``[x1, y1, x2, y2]`` (what JSON gives) failed with AttributeError: 'list' object has
    no attribute 'as_tuple'."""
    root = tmp_path / "photos"
    make_folder(root, n_good=6, bad=False)
    target = str(root / "sub" / "good_3.bmp")
    with Library.open(tmp_path / "lib", model=str(tiny_model_dir), regions=RegionSettings(proposer="grid")) as lib:
        lib.index(root)
        want = [(h.image_id, h.box) for h in lib.search(image=target, box=Box(0.0, 0.0, 0.5, 0.5), k=3)]
        for box in ([0, 0, 0.5, 0.5], (0.0, 0.0, 0.5, 0.5), "0,0,0.5,0.5"):
            assert [(h.image_id, h.box) for h in lib.search(image=target, box=box, k=3)] == want
        for bad in ([0, 0, 0.5], "a,b,c,d", 3, [0.5, 0.5, 0.1, 0.1]):
            with pytest.raises(InputError, match="box"):
                lib.search(image=target, box=bad, k=3)
