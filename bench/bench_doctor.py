"""How long ``fgsearch doctor``'s catalog checks and ``doctor --repair``'s salvage take, on a
synthetic catalog of N images (default 1M, 16 regions and one file each: the shapes the index run
writes, built straight into SQLite so that no model runs).

Figures, side by side in one run on the same file: SQLite's ``quick_check`` (what ``fgsearch
doctor`` runs) and ``integrity_check`` (``--full``), each twice (the file is in the page cache:
the second is the warm figure), the catalog counts ``status`` shows, and then a salvage of the same
catalog with one page of its ``files`` table overwritten by random bytes (rows recovered, time,
peak memory of this process).

    python bench/bench_doctor.py [--images 1000000] [--regions-per 16] [--work DIR] [--checks-only]
    python bench/bench_doctor.py --smoke        # 2,000 images in a temporary folder, seconds
"""

from __future__ import annotations

import argparse
import hashlib
import random
import resource
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from fgsearch.catalog import Catalog, ModelInfo
from fgsearch.catalog.health import check_catalog
from fgsearch.catalog.salvage import salvage_catalog

CHUNK = 50_000


def build(path: Path, n: int, per: int) -> float:
    """A catalog of ``n`` confirmed images with ``per`` regions and one file each; seconds taken."""
    t0 = time.perf_counter()
    cat = Catalog.open(path, create=True)
    cat.init_library(
        ModelInfo("bench", "ref", 512, (224, 224)), regions={"proposer": "auto"}, backend={"kind": "faiss"}
    )
    run = cat.begin_run()
    cat.close()
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=OFF")
    stamp = "2026-12-07 12:00:00.000000"
    rnd = random.Random(0)
    for start in range(1, n + 1, CHUNK):
        ids = range(start, min(n, start + CHUNK - 1) + 1)
        con.executemany(
            "INSERT INTO contents (id, sha256, width, height, captured_at, state, created_at) VALUES (?,?,?,?,?,?,?)",
            [(i, hashlib.sha256(i.to_bytes(8, "little")).hexdigest(), 4032, 3024, stamp, "ok", stamp) for i in ids],
        )
        con.executemany(
            "INSERT INTO regions (id, content_id, x1, y1, x2, y2, proposer, rank, score) VALUES (?,?,?,?,?,?,?,?,?)",
            [
                (
                    (i - 1) * per + k + 1,
                    i,
                    rnd.random() * 0.5,
                    rnd.random() * 0.5,
                    0.5 + rnd.random() * 0.5,
                    0.5 + rnd.random() * 0.5,
                    "auto",
                    k,
                    rnd.random(),
                )
                for i in ids
                for k in range(per)
            ],
        )
        rows = []
        for i in ids:
            p = f"/home/user/Pictures/{2000 + i % 26}/album_{i // 400:05d}/IMG_{i:07d}.jpg"
            rows.append((i, p.encode(), p, 2_000_000 + i, 1_700_000_000_000_000_000 + i, i, "ok", None, run, stamp))
        con.executemany(
            "INSERT INTO files (id, raw_path, path, size, mtime_ns, content_id, status, reason, seen_run, updated_at) "
            "VALUES (?,?,?,?,?,?,?,?,?,?)",
            rows,
        )
        con.commit()
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    return time.perf_counter() - t0


def garble_a_files_page(path: Path) -> tuple[int, int]:
    """Overwrite the middle leaf page of the files table with random bytes: (page, rows on it)."""
    con = sqlite3.connect(path)
    page_size = con.execute("PRAGMA page_size").fetchone()[0]
    pages = con.execute(
        "SELECT pageno, ncell FROM dbstat WHERE name = 'files' AND pagetype = 'leaf' ORDER BY pageno"
    ).fetchall()
    con.close()
    pageno, cells = pages[len(pages) // 2]
    with open(path, "r+b") as f:
        f.seek((pageno - 1) * page_size)
        f.write(random.Random(1).randbytes(page_size))
    return int(pageno), int(cells)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=1_000_000)
    ap.add_argument("--regions-per", type=int, default=16)
    ap.add_argument("--work", type=Path, default=None, help="folder for the catalog (default: a temporary one)")
    ap.add_argument("--smoke", action="store_true", help="2,000 images, 4 regions each, in a temporary folder")
    ap.add_argument(
        "--checks-only", action="store_true", help="time the two checks only (on the catalog in --work if there)"
    )
    args = ap.parse_args()
    if args.smoke:
        args.images, args.regions_per, args.work = 2_000, 4, None
    with tempfile.TemporaryDirectory(prefix="bench-doctor-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        path = work / "lib" / "catalog.sqlite"
        if path.exists() and not args.checks_only:
            sys.exit(f"{path} exists; give --work a new folder (or --checks-only to time the checks on it)")
        secs = 0.0 if path.exists() else build(path, args.images, args.regions_per)
        size = path.stat().st_size
        print(f"catalog: {args.images:,} images, {args.images * args.regions_per:,} regions, {args.images:,} files")
        where = f"python {sys.version.split()[0]}, SQLite {sqlite3.sqlite_version}"
        print(f"  {size / 2**20:,.0f} MiB, built in {secs:.1f} s ({where})")
        for full in (False, True):
            times, cpu = [], 0.0
            for _ in range(2):
                c0 = time.process_time()
                chk = check_catalog(path, full=full)
                cpu = time.process_time() - c0
                assert chk.ok, chk.problems
                times.append(chk.seconds)
            rate = size / 2**20 / times[1]
            print(
                f"{chk.method:<16} first {times[0]:7.2f} s   again {times[1]:7.2f} s (CPU {cpu:.2f} s)   "
                f"({rate:,.0f} MiB/s)"
            )
        if args.checks_only:
            return
        with Catalog.open(path, read_only=True) as cat:
            t0 = time.perf_counter()
            counts = cat.counts()
            print(f"{'status counts':<16} {time.perf_counter() - t0:7.2f} s   images {counts['images']:,}")
        pageno, cells = garble_a_files_page(path)
        chk = check_catalog(path)
        print(f"{'quick_check':<16} {chk.seconds:7.2f} s   after garbling page {pageno}: {chk.problems[0][:60]!r}")
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        rep = salvage_catalog(path)
        rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        lost = args.images - rep.recovered["files"]
        print(
            f"{'salvage':<16} {rep.seconds:7.2f} s   files recovered {rep.recovered['files']:,} (lost {lost}, "
            f"{cells} on the page), images {rep.recovered['contents']:,}, regions {rep.recovered['regions']:,}"
        )
        print(f"{'':<16} peak RSS of this process {rss1 / 1024:,.0f} MiB (before the salvage {rss0 / 1024:,.0f} MiB)")
        assert lost == cells, (lost, cells)


if __name__ == "__main__":
    main()
