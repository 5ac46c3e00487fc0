"""The usearch backend (``--backend usearch``): what the congruence suite does not show.

Snapshots that update the graph in place (removals deleted with usearch's ``remove``, adds
reusing their slots) instead of rebuilding it, re-calibration on growth, the checks of a graph
file (:mod:`fgsearch.indexes.usearch.check`), its options and its missing extra.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from _indexes_data import near_queries, recall, text_like_queries, unit_vectors

from fgsearch.indexes import (
    BackendUnavailableError,
    IndexCorruptError,
    IndexInputError,
    UsearchConfig,
    create_index,
    get_backend,
    open_index,
)
from fgsearch.indexes.usearch.check import check_graph_file

DIM = 24


def _exact(data: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int = 10) -> np.ndarray:
    return ids[np.argsort(-(q @ data.T), axis=1)[:, :k]]


def _cfg(**kw: object) -> UsearchConfig:
    return UsearchConfig(**{"flat_threshold": 1000, "calibration_queries": 60, **kw})  # type: ignore[arg-type]


@pytest.mark.parametrize("dtype", ["i8", "f16"])
def test_a_snapshot_deletes_removed_ids_from_the_graph_and_adds_into_it(tmp_path: Path, dtype: str) -> None:
    data = unit_vectors(1700, DIM, seed=1)
    ids = np.arange(1530, dtype=np.int64) * 7 + 1
    with create_index("usearch", tmp_path / "u", DIM, config=_cfg(dtype=dtype)) as idx:
        idx.add(ids[:1500], data[:1500])
        idx.save()
        p = idx.stats().params
        assert p["tier"] == "hnsw" and p["dtype"] == dtype and p["trained_n"] == 1500 and p["deleted_nodes"] == 0
        gone = ids[:60]
        idx.remove(gone)  # between snapshots: excluded at search time
        idx.add(ids[60:70], data[1500:1510], upsert=True)  # replaced: the old vectors are excluded too
        idx.add(ids[1500:], data[1510:1540])  # 40 adds into 70 freed slots: 30 stay deleted
        held_ids = ids[60:]
        held = np.concatenate([data[1500:1510], data[70:1500], data[1510:1540]])
        order = np.argsort(held_ids)
        held_ids, held = held_ids[order], held[order]
        q = np.concatenate([near_queries(held, 30), text_like_queries(held, 30)])
        for when in ("journal", "snapshot"):
            got = idx.search(q, 10)
            assert not np.isin(got.ids, gone).any(), when
            np.testing.assert_allclose(
                got.scores, np.einsum("ijk,ik->ij", idx.get(got.ids.ravel()).reshape(*got.ids.shape, DIM), q), atol=1e-5
            )  # exact scores of the stored (new) vectors
            assert recall(got.ids, _exact(held, held_ids, q)) >= 0.95, when
            idx.save()  # the graph is updated in place, not rebuilt
            p = idx.stats().params
            assert p["trained_n"] == 1500 and p["deleted_nodes"] == 30, p
        assert idx.count() == held_ids.size
    with open_index("usearch", tmp_path / "u", read_only=True) as reader:
        assert reader.stats().params["mmap"] is True
        assert recall(reader.search(q, 10).ids, _exact(held, held_ids, q)) >= 0.95


def test_the_search_is_calibrated_again_when_the_collection_grows(tmp_path: Path) -> None:
    data = unit_vectors(1400, DIM, seed=2)
    with create_index("usearch", tmp_path / "u", DIM, config=_cfg()) as idx:
        idx.add(np.arange(1000), data[:1000])
        idx.save()
        p = idx.stats().params
        assert p["calibrated_n"] == 1000 and p["calibration"]["breadth_name"] == "expansion_search"
        assert p["calibration"]["reached"] and p["expansion_search"] == p["calibration"]["breadth"]
        assert set(p["calibration"]["sets"]) == {"image", "text", "text-far", "text-near"}
        idx.add(np.arange(1000, 1200), data[1000:1200])
        idx.save()  # 1.2x: below recalibrate_growth (1.25)
        assert idx.stats().params["calibrated_n"] == 1000
        idx.add(np.arange(1200, 1400), data[1200:1400])
        idx.save()
        assert idx.stats().params["calibrated_n"] == 1400 and idx.stats().params["trained_n"] == 1000


def test_a_configured_expansion_is_kept_and_the_caller_s_text_queries_are_a_calibration_set(tmp_path: Path) -> None:
    data = unit_vectors(1100, DIM, seed=3)
    with create_index("usearch", tmp_path / "u", DIM, config=_cfg(expansion_search=40)) as idx:
        idx.set_calibration_queries({"text": text_like_queries(data, 40, seed=9)})
        idx.add(np.arange(1100), data)
        idx.save()
        p = idx.stats().params
        assert p["expansion_search"] == 40 and p["calibration"]["breadth"] == 40
        assert p["calibration"]["sets"]["text"]["source"] == "given by caller"


def test_filters_take_the_exact_path_or_the_widened_graph(tmp_path: Path) -> None:
    data = unit_vectors(1500, DIM, seed=4)
    ids = np.arange(1500)
    q = text_like_queries(data, 20)
    with create_index("usearch", tmp_path / "u", DIM, config=_cfg()) as idx:
        idx.add(ids, data)
        idx.save()
        for allowed in (ids[::2], ids[:50]):  # the graph (half the rows), exact (50 rows)
            got = idx.search(q, 10, allowed_ids=allowed)
            assert np.isin(got.ids, allowed).all()
            assert recall(got.ids, _exact(data[allowed], allowed, q)) >= 0.95


def test_the_graph_check_accepts_a_good_file_and_names_what_is_wrong(tmp_path: Path) -> None:
    data = unit_vectors(1100, DIM, seed=5)
    ids = np.arange(1100) * 3
    with create_index("usearch", tmp_path / "u", DIM, config=_cfg(connectivity=8)) as idx:
        idx.add(ids, data)
        idx.save()
        graph = tmp_path / "u" / idx._extra["graph_file"]  # type: ignore[attr-defined]
    good = {"dim": DIM, "dtype": "i8", "connectivity": 8, "ids": ids, "deleted": 0}
    check_graph_file(graph, **good)  # type: ignore[arg-type]
    for wrong, match in (
        ({"dim": DIM + 1}, "dimensions"),
        ({"dtype": "f16"}, "bytes"),
        ({"connectivity": 16}, "connectivity"),
        ({"ids": ids + 1}, "keys are not the snapshot's ids"),
        ({"ids": ids[:-1]}, "present"),
        ({"deleted": 1}, "deleted"),
    ):
        with pytest.raises(IndexCorruptError, match=match):
            check_graph_file(graph, **{**good, **wrong})  # type: ignore[arg-type]
    pristine = graph.read_bytes()
    first_node = 8 + ids.size * DIM + 64 + 40 + 2 * ids.size  # matrix, headers, level table
    for at, match in ((first_node + 10, "a neighbour list of"), (first_node + 14, "points past the last node")):
        raw = bytearray(pristine)  # the first node's base-layer link count, then its first link
        raw[at : at + 4] = (2**31).to_bytes(4, "little")
        graph.write_bytes(bytes(raw))
        with pytest.raises(IndexCorruptError, match=match) as e:
            check_graph_file(graph, **good)  # type: ignore[arg-type]
        assert "\n" not in str(e.value)
    with pytest.raises(IndexCorruptError, match=r"cannot read the backend files of generation .* is damaged"):
        open_index("usearch", tmp_path / "u", read_only=True)


@pytest.mark.parametrize(
    ("option", "value", "match"),
    [
        ("dtype", "f32", "dtype must be"),
        ("connectivity", 1, "connectivity must be in"),
        ("expansion_add", 0, "expansion_add must be in"),
        ("expansion_search", 0, "expansion_search must be in"),
        ("threads", -1, "threads must be >= 0"),
        ("max_tombstones", 1.0, "max_tombstones"),
    ],
)
def test_bad_options_are_one_line_errors(option: str, value: object, match: str) -> None:
    with pytest.raises(IndexInputError, match=match) as e:
        UsearchConfig(**{option: value})  # type: ignore[arg-type]
    assert "\n" not in str(e.value)
    with pytest.raises(IndexInputError, match=match):
        get_backend("usearch").parse_options({option: str(value)})


def test_the_backend_is_registered_with_its_capabilities() -> None:
    b = get_backend("usearch")
    assert b.capabilities == {"files", "tunable_breadth", "calibration"} and b.config_type is UsearchConfig
    assert get_backend("usearch").parse_options({"connectivity": "24", "dtype": "f16"}) == {
        "connectivity": 24,
        "dtype": "f16",
    }


def test_a_missing_usearch_is_one_line_naming_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "usearch.index", None)  # import usearch.index -> ImportError
    with pytest.raises(BackendUnavailableError, match=r"pip install 'fgsearch\[usearch\]'") as e:
        create_index("usearch", tmp_path / "u", DIM)
    assert "\n" not in str(e.value)


def test_the_manifest_records_the_graph(tmp_path: Path) -> None:
    data = unit_vectors(1000, DIM, seed=6)
    with create_index("usearch", tmp_path / "u", DIM, config=_cfg()) as idx:
        idx.add(np.arange(1000), data)
        idx.save()
    extra = json.loads((tmp_path / "u" / "manifest.json").read_text())["extra"]
    assert extra["tier"] == "hnsw" and extra["graph_file"].startswith("usearch.") and extra["count"] == 1000
    assert {"dtype", "connectivity", "expansion_add", "expansion_search", "rerank_factor", "calibration"} <= set(extra)
