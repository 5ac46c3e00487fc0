"""Where the FAISS default's build memory goes: resident memory per build step (issue 24 item 3).

Usage::

    python bench/bench_build_memory.py --n 300000      # CLIP-like 300k x 512, as bench_indexes.py builds
    python bench/bench_build_memory.py --smoke         # tiny, seconds

Builds the FAISS default the way ``bench_indexes.py --backends faiss`` and the ingest pipeline do
(adds in batches of ``--batch`` rows, ``flush()`` after each, then ``save()``) over CLIP-like
vectors (``bench_data.generate_clip_like``, generated in a separate process first so that the
build process's peak is the build's), and samples ``/proc/self/status`` every 20 ms in a thread.
It prints, after each flush, ``RssAnon`` (memory the process owns), ``RssFile`` (file pages it has
mapped: the benchmark's memory-mapped input, the snapshot's vectors, the FAISS file) and the peak
``VmHWM``; then, for each step of the build (the store's add, flush and compaction, the FAISS
backend's read, range check, fold, training, calibration, served check and files, the CRC and
SHA-256 passes), the largest ``RssAnon`` and ``RssFile`` sampled while it ran. Figures in
bench/README.md, "The FAISS default's build memory".
"""

from __future__ import annotations

import argparse
import functools
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from bench_data import proc_status

HERE = Path(__file__).resolve().parent
MIB = 2**20


class Sampler:
    """Largest ``RssAnon`` / ``RssFile`` / ``VmRSS`` seen per step (a stack of step names)."""

    def __init__(self) -> None:
        self.steps = ["start"]
        self.peaks: dict[str, tuple[int, int, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            s, step = proc_status(), "/".join(self.steps)
            a, f, t = self.peaks.get(step, (0, 0, 0))
            self.peaks[step] = (max(a, s["RssAnon"]), max(f, s["RssFile"]), max(t, s["VmRSS"]))
            time.sleep(0.02)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def wrap(self, owner: Any, name: str) -> None:
        """Record the time inside ``owner.name`` (a method or module function) as a step."""
        fn: Callable[..., Any] = getattr(owner, name)

        @functools.wraps(fn)
        def step(*a: Any, **k: Any) -> Any:
            self.steps.append(name)
            try:
                return fn(*a, **k)
            finally:
                self.steps.pop()

        setattr(owner, name, step)


def build(data_path: Path, index_dir: Path, batch: int, smoke: bool) -> None:
    """Build the FAISS default over ``data_path`` in ``index_dir``, printing memory as it goes."""
    from fgsearch.indexes import FaissConfig, create_index
    from fgsearch.indexes.faiss import index as faiss_index
    from fgsearch.indexes.store import journaled

    data = np.load(data_path, mmap_mode="r")
    n, dim = data.shape
    cfg = FaissConfig(flat_threshold=1000, calibration_queries=20) if smoke else FaissConfig()
    with Sampler() as sampler:
        for name in ("add", "flush", "compact", "_load"):
            sampler.wrap(journaled.JournaledStore, name)
        for name in ("write_npy", "block_crcs", "file_digest"):
            sampler.wrap(journaled, name)
        for name in (
            "_build_extra",
            "_reopen_for_update",
            "_adds_fit_codes",
            "_fold_delta",
            "_train",
            "_calibrate",
            "_check_served",
            "_write_snapshot_files",
            "_after_load",
        ):
            sampler.wrap(faiss_index.FaissIndex, name)
        s0 = proc_status()
        print(f"# before the build: RssAnon {s0['RssAnon'] / MIB:.0f} MiB, RssFile {s0['RssFile'] / MIB:.0f} MiB")
        index = create_index("faiss", index_dir, dim, config=cfg)
        t0 = time.perf_counter()
        for s in range(0, n, batch):
            e = min(s + batch, n)
            sampler.steps[:] = [f"{e:,}"]
            index.add(np.arange(s, e), np.asarray(data[s:e]))
            index.flush()
            st = proc_status()
            print(
                f"{e:>9,} vectors {time.perf_counter() - t0:7.1f} s: RssAnon {st['RssAnon'] / MIB:6.0f} MiB, "
                f"RssFile {st['RssFile'] / MIB:6.0f} MiB (input {e * dim * 4 / MIB:5.0f}), "
                f"peak so far {st['VmHWM'] / MIB:6.0f} MiB",
                flush=True,
            )
        sampler.steps[:] = ["save"]
        index.save()
        st = proc_status()
        parts = {k: round(v, 1) for k, v in index.build_seconds.items()}
        index.close()
        sampler.steps[:] = ["closed"]
    print(f"{'save':>9} {time.perf_counter() - t0:15.1f} s: peak {st['VmHWM'] / MIB:.0f} MiB; seconds {parts}")
    print("# largest RssAnon / RssFile / RSS sampled in each step (MiB; the input's pages are RssFile)")
    for step, (a, f, t) in sampler.peaks.items():
        print(f"{step:64s} {a / MIB:6.0f} {f / MIB:6.0f} {t / MIB:6.0f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=300_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--batch", type=int, default=50_000, help="rows per add + flush (the ingest pattern)")
    ap.add_argument("--workdir", type=Path, default=None, help="where data and the index go (default: temp dir)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, in seconds (a temp dir)")
    ap.add_argument("--worker", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.smoke:
        args.n, args.dim, args.batch, args.workdir = 2000, 32, 1000, None
    if not Path("/proc/self/status").is_file():
        sys.exit("bench_build_memory.py reads /proc/self/status: Linux only")
    if args.worker:
        build(args.worker[0], args.worker[1], args.batch, args.smoke)
        return
    work = args.workdir or Path(tempfile.mkdtemp(prefix="fgsearch-buildmem-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        data_path = work / f"data-clip{args.n}-{args.dim}.npy"
        if not data_path.is_file():  # generated in another process: its memory is not the build's
            code = (
                f"import sys; sys.path.insert(0, {str(HERE)!r}); from pathlib import Path; "
                "from bench_data import generate_clip_like; "
                f"generate_clip_like(Path({str(data_path)!r}), {args.n}, {args.dim}, {30 if args.smoke else 1000})"
            )
            subprocess.run([sys.executable, "-c", code], check=True)
        index_dir = work / "index"
        shutil.rmtree(index_dir, ignore_errors=True)
        cmd = [sys.executable, __file__, "--worker", str(data_path), str(index_dir), "--batch", str(args.batch)]
        subprocess.run(cmd + (["--smoke"] if args.smoke else []), check=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
