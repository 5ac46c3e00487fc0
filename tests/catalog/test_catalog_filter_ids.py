"""The allowed sets of a filtered search: ``--under`` reads a range of the path index (names that
sort right beside the folder are not in it), and :meth:`region_id_array` gives the same ids as
:meth:`region_ids_of`, over more contents than one ``IN`` list holds."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from test_catalog import _item, _new

from fgsearch.catalog import connect


def test_under_is_exactly_the_folder(catalog_dir: Any) -> None:
    cat = _new(catalog_dir)
    names = [
        "/p/a/x.jpg",  # in
        "/p/a/sub/y.jpg",  # in (a subfolder)
        "/p/a.b/z.jpg",  # "." (0x2e) sorts before "/": outside the range, and not under /p/a
        "/p/a0/w.jpg",  # "0" (0x30) is the range's upper bound: excluded
        "/p/a-/v.jpg",
        "/p/ab.jpg",
        "/p/" + os.fsdecode(b"a\xff") + "/u.jpg",  # a name that is not UTF-8 sorts after "/"
        "/p/a",  # a file named like the folder
    ]
    cids, _ = cat.reserve_contents([_item(f"{i:064x}") for i in range(len(names))])
    run = cat.begin_run()
    cat.confirm_contents(cids, [(n, 1, 10) for n in names], run)
    for under in ("/p/a", "/p/a/"):
        assert sorted(cat.filter_contents(path_prefix=under)) == cids[:2]
        assert cat.matching_paths(cids, path_prefix=under) == {cids[0]: [names[0]], cids[1]: [names[1]]}
    assert cat.filter_contents(path_prefix="/p/" + os.fsdecode(b"a\xff")) == [cids[6]]


def test_region_id_array_matches_region_ids_of(catalog_dir: Any, monkeypatch: Any) -> None:
    cat = _new(catalog_dir)
    cids, rids = cat.reserve_contents([_item(f"{i:064x}", n_boxes=1 + i % 3) for i in range(40)])
    monkeypatch.setattr(connect, "CHUNK", 7)  # several IN lists
    monkeypatch.setattr(connect.chunks, "__defaults__", (7,))
    some = [*cids[::3], 10_000]  # an unknown content has no regions
    got = cat.region_id_array(some)
    assert got.dtype == np.int64
    assert (
        sorted(got.tolist())
        == sorted(cat.region_ids_of(some))
        == sorted(r for c, rr in zip(cids, rids, strict=True) if c in some for r in rr)
    )
    assert cat.region_id_array([]).size == 0 and cat.region_id_array([10_000]).size == 0
