"""Durability of the file-backed backends (exact, faiss, usearch): journal, snapshots, kill -9, readers.

A subprocess (tests/_indexes_crash_worker.py) is SIGKILLed in the middle of a save and in the
middle of a stream of add/remove/upsert + flush; the index on disk must open and hold exactly the
state of the last completed flush (or of a flush/save that completed just before the kill).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from _indexes_crash_worker import DIM, apply_batch, config, expected_state
from _indexes_data import small_journal, unit_vectors

from fgsearch.indexes import (
    ExactConfig,
    IndexCorruptError,
    IndexNotFoundError,
    VectorIndex,
    create_index,
    open_index,
)

WORKER = Path(__file__).with_name("_indexes_crash_worker.py")
FILE_BACKENDS = ("exact", "faiss")


def _spawn(*args: str, pg_url: str | None = None) -> subprocess.Popen[str]:
    extra = {"FGSEARCH_TEST_PG_URL": pg_url} if pg_url else {}
    return subprocess.Popen(
        [sys.executable, str(WORKER), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=WORKER.parent,
        env={**os.environ, **extra, "PYTHONPATH": str(WORKER.parent.parent)},  # the shared test data modules
    )


def _wait_for(proc: subprocess.Popen[str], prefix: str, timeout_lines: int = 10_000) -> str:
    assert proc.stdout is not None
    for _ in range(timeout_lines):
        line = proc.stdout.readline()
        if not line:
            err = proc.stderr.read() if proc.stderr else ""
            raise AssertionError(f"worker exited before {prefix!r}: {err[-2000:]}")
        if line.startswith(prefix):
            return line.strip()
    raise AssertionError(f"worker never printed {prefix!r}")


def _kill(proc: subprocess.Popen[str]) -> str:
    """SIGKILL the worker; return what it printed that was not read yet."""
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    rest = proc.stdout.read() if proc.stdout is not None else ""
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
    return rest


def _assert_state(index: VectorIndex, state: dict[int, np.ndarray]) -> None:
    want = np.array(sorted(state), dtype=np.int64)
    np.testing.assert_array_equal(index.ids(), want)
    assert len(index) == want.size
    np.testing.assert_array_equal(index.get(want), np.stack([state[i] for i in want.tolist()]))
    res = index.search(index.get(want[-3:]), 1)
    assert res.ids[:, 0].tolist() == want[-3:].tolist()


def _matches_any(path: Path | None, kind: str, candidates: list[dict[int, np.ndarray]], cfg: Any = None) -> int:
    """Open the index (read-only, then as writer) and return which candidate state it holds."""
    found = -1
    for read_only in (True, False):
        with open_index(kind, path, read_only=read_only, config=cfg) as index:
            ids = index.ids()
            for n, state in enumerate(candidates):
                if np.array_equal(ids, np.array(sorted(state), dtype=np.int64)):
                    _assert_state(index, state)
                    assert found in (-1, n)
                    found = n
                    break
            else:
                raise AssertionError(f"index holds {ids.size} ids, matching no acceptable state")
    return found


@pytest.mark.parametrize(
    ("kind", "stop_after"), [(k, s) for k in FILE_BACKENDS for s in (2, 5, 9)] + [("usearch", 9)]
)  # usearch: the store's machinery (tested above) around its graph, built past 1,000 vectors
def test_kill_during_add_flush_stream(tmp_path: Path, kind: str, stop_after: int) -> None:
    path = tmp_path / "idx"
    proc = _spawn("stream", kind, str(path))
    rest = ""
    try:
        _wait_for(proc, f"flushed {stop_after}")
    finally:
        rest = _kill(proc)  # somewhere in a later batch: adding, flushing or compacting
    last = max([stop_after] + [int(line.split()[1]) for line in rest.splitlines() if line.startswith("flushed")])
    # the last acknowledged flush is durable; the one in progress may or may not have landed
    got = _matches_any(path, kind, [expected_state(last + 1), expected_state(last + 2)])
    assert got in (0, 1)


def test_pgvector_kill_during_add_flush_stream(tmp_path: Path, postgres_url: str) -> None:
    """A writer killed between (or inside) flushes: the table holds the last committed flush."""
    proc = _spawn("stream", "pgvector", str(tmp_path / "unused"), pg_url=postgres_url)
    try:
        _wait_for(proc, "flushed 4")
    finally:
        rest = _kill(proc)  # a later batch: adding, committing, or building + calibrating the graph
    last = max([4] + [int(line.split()[1]) for line in rest.splitlines() if line.startswith("flushed")])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FGSEARCH_TEST_PG_URL", postgres_url)
        cfg = config("pgvector")
    assert _matches_any(None, "pgvector", [expected_state(last + 1), expected_state(last + 2)], cfg) in (0, 1)


def test_pgvector_kill_while_the_index_build_commits(tmp_path: Path, postgres_url: str) -> None:
    """Killed with the HNSW build in its uncommitted transaction: the rows stay, the index is gone
    (rolled back), searches are exact, and the next save builds it."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FGSEARCH_TEST_PG_URL", postgres_url)
        cfg = dataclasses.replace(config("pgvector"), flat_threshold=5000)
        with create_index("pgvector", None, DIM, config=cfg) as index:
            for i in range(7):  # 1,050 vectors: below this flat_threshold, no graph yet
                apply_batch(index, i)
                index.flush()
        cfg = config("pgvector")  # the worker's: flat_threshold 1,000, so its save builds
    proc = _spawn("save", "pgvector", str(tmp_path / "unused"), "build", "7", pg_url=postgres_url)
    try:
        _wait_for(proc, "at build")
    finally:
        _kill(proc)
    assert _matches_any(None, "pgvector", [expected_state(8)], dataclasses.replace(cfg, flat_threshold=5000)) == 0
    with open_index("pgvector", None, config=cfg, read_only=True) as reader:
        assert reader.stats().params["tier"] == "exact"
    with psycopg.connect(postgres_url.replace("+psycopg", ""), autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM pg_indexes WHERE indexname = 'crash_hnsw'").fetchone() == (0,)
    with open_index("pgvector", None, config=cfg) as index:
        index.save()
        assert index.stats().params["tier"] == "hnsw"
    assert _matches_any(None, "pgvector", [expected_state(8)], cfg) == 0


def _prepare(path: Path, kind: str, n_batches: int) -> None:
    with create_index(kind, path, DIM, config=config(kind)) as index:
        for i in range(n_batches):
            apply_batch(index, i)
            index.flush()


SAVE_STAGES = (
    [("exact", s) for s in ("vectors", "manifest", "after")]
    + [("faiss", s) for s in ("vectors", "faiss", "manifest", "after")]
    + [("usearch", s) for s in ("usearch", "manifest", "after")]
)


@pytest.mark.parametrize(("kind", "stage"), SAVE_STAGES)
def test_kill_in_the_middle_of_save(tmp_path: Path, kind: str, stage: str) -> None:
    path = tmp_path / "idx"
    _prepare(path, kind, 8)  # faiss: past flat_threshold, so the save rebuilds the IVF file
    gen = json.loads((path / "manifest.json").read_text())["generation"]
    proc = _spawn("save", kind, str(path), stage, "8")
    try:
        _wait_for(proc, f"at {stage}")
    finally:
        _kill(proc)
    # save() first flushes the journal (so batch 8 is durable either way), then writes the new
    # snapshot beside the old one; only the manifest rename commits it
    new_gen = json.loads((path / "manifest.json").read_text())["generation"]
    assert new_gen == (gen + 1 if stage == "after" else gen)
    assert _matches_any(path, kind, [expected_state(9)]) == 0
    leftovers = [p.name for p in path.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []  # the writer's open cleaned up the interrupted save
    with open_index(kind, path) as index:  # and the index keeps working: save again, reopen
        index.save()
    assert _matches_any(path, kind, [expected_state(9)]) == 0


@pytest.mark.slow
@pytest.mark.parametrize("kind", FILE_BACKENDS)
def test_kill_at_random_points_of_save(tmp_path: Path, kind: str) -> None:
    rng = np.random.default_rng(0)
    states = [expected_state(8), expected_state(9)]
    for round_ in range(3):
        path = tmp_path / f"idx{round_}"
        _prepare(path, kind, 8)
        proc = _spawn("save", kind, str(path), "none", "8")
        try:
            _wait_for(proc, "saving")
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=float(rng.uniform(0.0, 0.05)))
        finally:
            _kill(proc)
        _matches_any(path, kind, states)


# ---------------------------------------------------------------------------- journal details
def _journal(path: Path) -> Path:
    (j,) = sorted(path.glob("journal.*.log"))
    return j


@pytest.mark.parametrize("kind", FILE_BACKENDS)
def test_torn_journal_tail_is_ignored_and_truncated(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "idx"
    x = unit_vectors(20, DIM)
    with create_index(kind, path, DIM) as index:
        index.add(np.arange(10), x[:10])
        index.flush()
        good = _journal(path).stat().st_size
        index.add(np.arange(10, 20), x[10:])
        index.flush()
        full = _journal(path).stat().st_size
        # simulate kill -9 halfway through writing the second record
        os.truncate(_journal(path), good + (full - good) // 2)
    with open_index(kind, path, read_only=True) as reader:
        np.testing.assert_array_equal(reader.ids(), np.arange(10))
    with open_index(kind, path) as writer:  # truncates the torn tail, then appends cleanly
        assert _journal(path).stat().st_size == good
        writer.add([50], x[15])
        writer.flush()
    with open_index(kind, path) as index:
        np.testing.assert_array_equal(index.ids(), [*range(10), 50])


def test_corrupt_record_stops_replay(tmp_path: Path) -> None:
    path = tmp_path / "idx"
    x = unit_vectors(3, DIM)
    with create_index("exact", path, DIM) as index:
        for i in range(3):
            index.add([i], x[i])
            index.flush()
    data = bytearray(_journal(path).read_bytes())
    data[-5] ^= 0xFF  # flip a byte in the last record's vector: checksum no longer matches
    _journal(path).write_bytes(bytes(data))
    with open_index("exact", path, read_only=True) as index:
        np.testing.assert_array_equal(index.ids(), [0, 1])


def test_flush_cost_is_proportional_to_changes(tmp_path: Path) -> None:
    path = tmp_path / "idx"
    with create_index("exact", path, DIM) as index:
        index.add(np.arange(5000), unit_vectors(5000, DIM))
        index.save()
        vec_file = next(path.glob("vectors.*.npy"))
        stat0 = vec_file.stat()
        j0 = _journal(path).stat().st_size
        index.add([10_000, 10_001], unit_vectors(2, DIM, seed=4))
        index.flush()
        grown = _journal(path).stat().st_size - j0
        assert grown < 4 * (DIM * 4 + 8) + 64  # two vectors' worth, not the 5,000-vector snapshot
        assert vec_file.stat().st_mtime_ns == stat0.st_mtime_ns and vec_file.stat().st_ino == stat0.st_ino


def test_auto_compaction_and_garbage_collection(tmp_path: Path) -> None:
    path = tmp_path / "idx"
    cfg = ExactConfig(journal=small_journal())
    with create_index("exact", path, DIM, config=cfg) as index:
        gens = set()
        for i in range(10):
            index.add(np.arange(i * 50, (i + 1) * 50), unit_vectors(50, DIM, seed=i))
            index.flush()
            gens.add(index.stats().params["generation"])
        assert len(gens) > 2  # the journal threshold triggered several snapshots
        names = {p.name for p in path.iterdir()}
        g = index.stats().params["generation"]
        assert names == {"manifest.json", "LOCK", f"journal.{g}.log", f"vectors.{g}.npy", f"ids.{g}.npy"}
    (path / f"vectors.{g + 7}.npy.tmp").write_bytes(b"junk from a crashed save")
    with open_index("exact", path) as index:
        assert len(index) == 500
    assert not list(path.glob("*.tmp"))


@pytest.mark.parametrize("kind", FILE_BACKENDS)
def test_reader_alongside_writer(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "idx"
    x = unit_vectors(300, DIM)
    writer = create_index(kind, path, DIM)
    writer.add(np.arange(100), x[:100])
    writer.flush()
    writer.add(np.arange(100, 150), x[100:150])  # not flushed: invisible to readers
    reader = open_index(kind, path, read_only=True)
    assert len(reader) == 100 and not reader.has_updates()  # the unflushed adds are not an update
    writer.flush()
    assert len(reader) == 100 and reader.has_updates()  # journal records past the ones replayed
    reader.reload()
    assert len(reader) == 150 and not reader.has_updates()
    writer.remove(np.arange(10))
    writer.save()  # new generation; the old files are deleted under the reader
    assert reader.has_updates()
    assert reader.search(x[20], 1).ids[0, 0] == 20  # still answers from what it mapped
    reader.reload()
    assert len(reader) == 140 and not reader.contains([5])[0] and not reader.has_updates()
    writer.add(np.arange(150, 300), x[150:])
    writer.close()
    assert reader.has_updates()
    reader.reload()
    assert len(reader) == 290 and not reader.has_updates()
    np.testing.assert_allclose(reader.get([299]), x[299:300])
    reader.close()


def test_missing_or_corrupt_manifest(tmp_path: Path) -> None:
    path = tmp_path / "idx"
    create_index("exact", path, DIM).close()
    (path / "manifest.json").write_text("{not json")
    with pytest.raises(IndexCorruptError, match=r"manifest\.json"):
        open_index("exact", path, read_only=True)
    (path / "manifest.json").unlink()
    with pytest.raises(IndexNotFoundError):
        open_index("exact", path, read_only=True)


def test_snapshot_files_are_checksummed_and_damage_is_localised(tmp_path: Path) -> None:
    """Every file of a generation (vectors, ids, the FAISS IVF file) is in the manifest with its
    size and SHA-256; verify() names a damaged file and the ids it makes untrustworthy."""
    from fgsearch.indexes import FaissConfig

    n, dim = 9000, 16
    vecs = unit_vectors(n, dim)
    index = create_index("faiss", tmp_path / "ix", dim, config=FaissConfig(flat_threshold=1000))
    index.add(np.arange(n), vecs)
    index.save()
    manifest = json.loads((tmp_path / "ix" / "manifest.json").read_text())
    files = set(manifest["checksums"])
    assert {manifest["vectors"], manifest["ids"], *manifest["extra"]["files"]} == files
    assert manifest["extra"]["files"], "the IVF tier writes a backend file"
    assert index.verify()[0] == []
    index.close()
    vpath = tmp_path / "ix" / manifest["vectors"]
    arr = np.load(vpath, mmap_mode="r+")
    arr[5000] = -arr[5000]  # one row in the second block of 4096 rows
    arr.flush()
    del arr
    with open_index("faiss", tmp_path / "ix", read_only=True) as reader:
        bad, ids = reader.verify()
        assert bad == [manifest["vectors"]] and ids.tolist() == list(range(4096, 8192))
    ivf = tmp_path / "ix" / manifest["extra"]["files"][0]
    raw = bytearray(ivf.read_bytes())
    raw[-10] ^= 0xFF
    ivf.write_bytes(bytes(raw))
    with open_index("faiss", tmp_path / "ix", read_only=True) as reader:
        bad, ids = reader.verify()
        assert ivf.name in bad and ids.size == n  # derived from every row: all are re-embedded
    ivf.write_bytes(b"\x00" * len(raw))  # same size, nothing FAISS can read: refused on open, by name
    with pytest.raises(IndexCorruptError, match="cannot read the backend files"):
        open_index("faiss", tmp_path / "ix", read_only=True)


@pytest.mark.parametrize("damage", ["truncate", "unsorted"])
def test_a_damaged_snapshot_is_refused_on_open(tmp_path: Path, damage: str) -> None:
    index = create_index("exact", tmp_path / "ix", 8)
    index.add(np.arange(10), unit_vectors(10, 8))
    index.save()
    index.close()
    manifest = json.loads((tmp_path / "ix" / "manifest.json").read_text())
    if damage == "truncate":
        p = tmp_path / "ix" / manifest["vectors"]
        p.write_bytes(p.read_bytes()[:-4])
    else:
        ids = np.load(tmp_path / "ix" / manifest["ids"], mmap_mode="r+")
        ids[[2, 3]] = ids[[3, 2]]
        ids.flush()
        del ids
    for read_only in (True, False):
        with pytest.raises(IndexCorruptError, match=r"truncated or damaged|not ascending"):
            open_index("exact", tmp_path / "ix", read_only=read_only)
