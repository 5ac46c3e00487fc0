"""A build's resident memory (issue 24 item 3): rows sampled from a memory-mapped snapshot are read
with ``pread``, never through the mapping, so a calibration holds no copy of the snapshot's vectors.

On Linux 6.x the page cache keeps a file in large folios and a fault maps the whole folio (up to
2 MiB) into the process: 1,024 rows scattered over a 500 MB snapshot made all of it resident, and
each calibration of a build added one float32 copy of the vectors to its peak (2.8 KB per vector
measured at 250k-450k, bench/README.md "The FAISS default's build memory")."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from fgsearch.indexes import FaissConfig, create_index
from fgsearch.indexes.faiss import index as faiss_index
from fgsearch.indexes.store.files import RowReader, load_npy, pread_rows, read_rows

ROWS, DIM = 24_000, 128  # a 12 MB snapshot


def _mapped(path: Path) -> int:
    """Bytes of ``path`` mapped into this process (``Rss`` of its mappings in ``/proc/self/smaps``)."""
    total, ours = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):  # a mapping's first line
                ours = len(head) >= 6 and head[-1] == str(path)
            elif ours and head[0] == "Rss:":
                total += int(head[1]) * 1024
    return total


@pytest.fixture()
def mapped(tmp_path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not Path("/proc/self/smaps").is_file():
        pytest.skip("needs Linux's /proc")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((ROWS, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    np.save(tmp_path / "v.npy", x)
    return x, load_npy(tmp_path / "v.npy", "<f4", (ROWS, DIM))


def test_read_rows_gives_the_rows_without_mapping_them(mapped: tuple[np.ndarray, np.ndarray]) -> None:
    x, v = mapped
    rows = np.random.default_rng(1).integers(0, ROWS, 1024)
    got = read_rows(v, rows)
    assert _mapped(Path(v.filename)) == 0
    np.asarray(v[rows])  # through the mapping: pages (a folio each, on Linux 6.x) stay mapped
    assert _mapped(Path(v.filename)) >= 1024 * 4096 / 4
    np.testing.assert_array_equal(got, x[rows])
    np.testing.assert_array_equal(read_rows(v[100:], rows[:10]), x[100:][rows[:10]])  # a view: its own offset
    np.testing.assert_array_equal(read_rows(x, rows[:10]), x[rows[:10]])  # not mapped: indexed
    assert read_rows(v, np.zeros(0, dtype=np.int64)).shape == (0, DIM)
    pread_rows(0, 0, np.zeros(0, dtype=np.int64), np.zeros((0, DIM), dtype=np.float32))  # nothing to read
    reader = RowReader(v)
    assert reader.shape == (ROWS, DIM) and len(reader) == ROWS
    np.testing.assert_array_equal(reader[np.array([3, 7])], x[[3, 7]])
    np.testing.assert_array_equal(reader[5:8], x[5:8])
    with pytest.raises(IndexError):
        read_rows(v, np.array([ROWS]))


def test_a_calibration_leaves_no_snapshot_pages_resident(
    tmp_path: Path, mapped: tuple[np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The calibration of a snapshot (its synthetic query sets sample 20,000 rows per set, its
    re-ranks read 1,024 rows at a time) leaves no more of the snapshot's file mapped than its exact
    pass's last block. Before, the sets' samples were never released and the re-ranks' rows were
    released after each gather only: with that release gone (as here), the whole file stayed
    (all 12 MiB)."""
    x, v = mapped
    ids = np.arange(ROWS, dtype=np.int64)
    ann = faiss.IndexIDMap(faiss.IndexFlatIP(DIM))  # exact: the first breadth tried reaches the goal
    ann.add_with_ids(x, ids)
    monkeypatch.setattr(faiss_index, "release_pages", lambda arr: None, raising=False)
    with create_index("faiss", tmp_path / "f", DIM, config=FaissConfig(calibration_queries=200)) as idx:
        extra = idx._calibrate(ann, v, ids, "hnsw")
        mapped = _mapped(Path(v.filename))
    assert extra["calibration"]["reached"]
    assert set(extra["calibration"]["sets"]) == {"image", "text", "text-far", "text-near"}
    assert mapped < v.nbytes / 8, f"{mapped / 2**20:.1f} MiB of a {v.nbytes / 2**20:.0f} MiB snapshot stayed mapped"
