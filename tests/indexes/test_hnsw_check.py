"""What fgsearch checks in an HNSW graph before FAISS's search walks it (fgsearch.indexes.hnsw.check).

Each damage below is one FAISS (1.14.2+) reads without complaint, and its search does not bound:
a low entry point or a link down to a lower node makes it read past that node's lists (past the
link array at the last node), a top level past the level table reads past that table, and NaN
value ranges make every score NaN: FAISS 1.15's search then returns no result at all, silently
(tried: 50 of 50 queries came back as -1 ids). The index must refuse each when it opens the
snapshot, in one line naming the file; the library turns that into the line naming
``fgsearch doctor --repair`` in the API, the CLI and the server.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest
from _indexes_data import unit_vectors

from fgsearch.indexes import FaissConfig, IndexCorruptError, create_index, open_index
from fgsearch.indexes.hnsw.check import check_graph


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A FAISS index with an HNSW graph of 3,000 vectors (built once; each test damages a copy)."""
    x = unit_vectors(3000, 32, seed=5, clusters=30)
    ids = np.arange(x.shape[0], dtype=np.int64) * 3 + 2
    folder = tmp_path_factory.mktemp("graph") / "f"
    with create_index("faiss", folder, 32, config=FaissConfig(flat_threshold=1000)) as idx:
        idx.add(ids, x)
        idx.save()
        assert idx.tier == "hnsw"
    return folder, ids


def _built(tmp_path: Path, pristine: tuple[Path, np.ndarray]) -> tuple[Path, Path, np.ndarray]:
    folder = tmp_path / "f"
    shutil.copytree(pristine[0], folder)
    extra = json.loads((folder / "manifest.json").read_text())["extra"]
    return folder, folder / extra["faiss_file"], pristine[1]


def _rewrite(path: Path, change: Callable[[Any, Any, Any], None]) -> None:
    """Read the FAISS file, change it in memory, write it back at the same size (FAISS accepts it)."""
    ann = faiss.read_index(str(path))
    inner = faiss.downcast_index(ann.index)
    change(ann, inner.hnsw, faiss.downcast_index(inner.storage))
    size = path.stat().st_size
    faiss.write_index(ann, str(path))
    assert path.stat().st_size == size
    faiss.read_index(str(path))  # FAISS itself reads it


def _low_entry(ann: Any, h: Any, st: Any) -> None:
    levels = faiss.vector_to_array(h.levels)
    h.entry_point = int(np.flatnonzero(levels == 1)[0])  # a base-layer node as the top's entry


def _upper_link_down(ann: Any, h: Any, st: Any) -> None:
    levels = faiss.vector_to_array(h.levels)
    cum = faiss.vector_to_array(h.cum_nneighbor_per_level)
    node = int(np.flatnonzero(levels >= 2)[0])
    off = int(faiss.vector_to_array(h.offsets)[node])
    nb = faiss.vector_to_array(h.neighbors)
    nb[off + cum[1]] = int(np.flatnonzero(levels == 1)[-1])  # a level-1 link to a base-layer node
    faiss.copy_array_to_vector(nb, h.neighbors)


def _top_past_table(ann: Any, h: Any, st: Any) -> None:
    h.max_level = int(h.cum_nneighbor_per_level.size()) - 1  # FAISS checks max_level < size only


def _nan_ranges(ann: Any, h: Any, st: Any) -> None:
    t = faiss.vector_to_array(st.sq.trained)
    t[-1] = np.nan
    faiss.copy_array_to_vector(t, st.sq.trained)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (_low_entry, "the entry point's level 0 is not the top"),
        (_upper_link_down, "a link on level 1 points to a node below it"),
        (_top_past_table, "top level .* out of range"),
        (_nan_ranges, "the codes' value ranges"),
    ],
)
def test_a_graph_faiss_accepts_but_its_search_must_not_walk_is_refused_on_open(
    tmp_path: Path, pristine: tuple[Path, np.ndarray], damage: Callable[..., None], reason: str
) -> None:
    folder, fpath, _ = _built(tmp_path, pristine)
    _rewrite(fpath, damage)
    with pytest.raises(IndexCorruptError) as err:
        open_index("faiss", folder, read_only=True)
    msg = str(err.value)
    assert "\n" not in msg and "faiss::" not in msg
    head = rf"cannot read the backend files of generation \d+: {re.escape(str(fpath))} is damaged "
    assert re.fullmatch(head + rf"\(HNSW graph: {reason}.*\)", msg), msg


def test_ids_that_are_not_the_snapshots_open_but_a_search_meeting_them_is_an_error(tmp_path: Path, pristine) -> None:
    """Safe for FAISS's search (it only hands them back), so the snapshot opens and `verify()` can name
    the damaged file; a search whose candidates include one is a one-line error."""
    folder, fpath, _ = _built(tmp_path, pristine)

    def foreign(ann: Any, h: Any, st: Any) -> None:
        ids = faiss.vector_to_array(ann.id_map)
        ids[:] = ids + 10**9
        faiss.copy_array_to_vector(ids, ann.id_map)

    _rewrite(fpath, foreign)
    with open_index("faiss", folder, read_only=True) as ro:
        assert fpath.name in ro.verify()[0]
        with pytest.raises(IndexCorruptError, match=r"returned ids missing from the snapshot") as err:
            ro.search(unit_vectors(3, 32, seed=2), 10)
        assert "\n" not in str(err.value)


def test_an_intact_graph_passes_and_so_does_one_with_tombstones(tmp_path: Path, pristine) -> None:
    folder, fpath, ids = _built(tmp_path, pristine)
    check_graph(faiss.read_index(str(fpath)))
    with open_index("faiss", folder) as idx:
        idx.remove(ids[::20])
        idx.save()  # the removed ids stay in the graph as tombstones
    with open_index("faiss", folder, read_only=True) as ro:
        assert ro.stats().params["tombstones"] == 150
        assert not np.isin(ro.search(unit_vectors(5, 32, seed=1), 10).ids, ids[::20]).any()


def test_the_library_api_cli_and_server_name_the_repair(tmp_path: Path, tiny_model_dir: Path) -> None:
    from _library_data import build_hnsw_library
    from _serve_data import make_client
    from typer.testing import CliRunner

    from fgsearch.console.cli import app
    from fgsearch.errors import LibraryError
    from fgsearch.library import Library

    lib_dir, _, fpath = build_hnsw_library(tmp_path, tiny_model_dir)
    _rewrite(fpath, _low_entry)
    want = re.escape(f"library {lib_dir}: the regions vector index is damaged (cannot read the backend files ")
    tail = (
        re.escape(f"run `fgsearch doctor --repair --library {lib_dir}`, then `fgsearch index ")
        + r"\S+"
        + re.escape(f" --library {lib_dir}`")
    )  # the library's own folders (its rebuild record)
    with pytest.raises(LibraryError) as err:  # the API
        Library.open(lib_dir, read_only=True)
    assert re.fullmatch(want + r".*entry point.*\); " + tail, str(err.value)), err.value
    r = CliRunner().invoke(app, ["query", "a red square", "--library", str(lib_dir)])  # the CLI
    assert r.exit_code == 1 and r.output.strip() == f"error: {err.value}", r.output
    with pytest.raises(LibraryError, match=r"regions vector index is damaged .*entry point.*doctor --repair"):
        make_client(lib_dir)  # the server refuses to start on it with the same line
