"""Cold ``fgsearch query`` wall time: torch path vs fast text path vs asking a running server.

    python bench/bench_cold.py [--runs 7] [--model fg-clip-base-random|demo|PATH]
    python bench/bench_cold.py --smoke

Builds a library of a few generated photos with the model (default: fg-clip-base's architecture
with random weights; the timing does not depend on the weights), prepares the fast text tower
(``fgsearch index --fast-text``), starts ``fgsearch serve`` on it, then runs ``fgsearch query``
as a fresh process, alternating the three ways, ``--runs`` times each:

* ``torch``: no fast text tower in the data home: torch is imported and the checkpoint read;
* ``fast``: the ONNX text tower (``onnx-text`` runtime), no torch;
* ``via-server``: ``--via-server``, answered by the running server (no model in the process).

Prints each way's median and min wall seconds, the ratios to torch, and the load average (the
machine these figures come from is shared: compare the ways within one run).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

FGSEARCH = [sys.executable, "-m", "fgsearch"]


def _env(home: Path) -> dict[str, str]:
    return {**os.environ, "FGSEARCH_HOME": str(home)}


def _query(lib: Path, home: Path, extra: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(
        [*FGSEARCH, "query", "a red circle on grey", "--library", str(lib), "--top", "5", *extra],
        env=_env(home),
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - t0


def _start_server(lib: Path, home: Path, port: int) -> subprocess.Popen[bytes]:
    import urllib.request

    proc = subprocess.Popen(
        [*FGSEARCH, "serve", "--library", str(lib), "--port", str(port)],
        env=_env(home),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).read()
            return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError("fgsearch serve exited before answering") from None
            time.sleep(0.5)
    proc.terminate()
    raise RuntimeError("fgsearch serve did not start in 180 s")


def main(argv: list[str] | None = None) -> None:
    from bench_gpu import random_base
    from bench_index import make_photos

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--model", default="fg-clip-base-random")
    ap.add_argument("--photos", type=int, default=8)
    ap.add_argument("--port", type=int, default=7893)
    ap.add_argument("--smoke", action="store_true", help="demo model, 2 photos, 1 run each")
    args = ap.parse_args(argv)
    if args.smoke:
        args.runs, args.model, args.photos = 1, "demo", 2
    with tempfile.TemporaryDirectory(prefix="fgsearch-bench-cold-") as tmp:
        work = Path(tmp)
        photos, lib = work / "photos", work / "lib"
        home_fast, home_torch = work / "home-fast", work / "home-torch"
        photos.mkdir()
        make_photos(photos, args.photos)
        model = str(random_base(work / "model")) if args.model == "fg-clip-base-random" else args.model
        subprocess.run(
            [*FGSEARCH, "index", str(photos), "--library", str(lib), "--model", model, "--fast-text", "-q"],
            env=_env(home_fast),
            check=True,
            stdout=subprocess.DEVNULL,
        )
        home_torch.mkdir()
        server = _start_server(lib, home_fast, args.port)
        ways = {
            "torch": (home_torch, []),
            "fast": (home_fast, []),
            "via-server": (home_fast, ["--via-server"]),
        }
        times: dict[str, list[float]] = {k: [] for k in ways}
        try:
            for home, extra in ways.values():
                _query(lib, home, extra)  # first use: page cache, .pyc files
            for _ in range(args.runs):
                for name, (home, extra) in ways.items():
                    times[name].append(_query(lib, home, extra))
        finally:
            server.terminate()
            server.wait(timeout=60)
        shutil.rmtree(work / "model", ignore_errors=True)
    base = float(np.median(times["torch"]))
    print(f"cold `fgsearch query`, {args.runs} fresh processes per way, model {args.model}")
    print(f"load average during the run: {' '.join(f'{x:.1f}' for x in os.getloadavg())} ({os.cpu_count()} CPUs)")
    for name, t in times.items():
        med = float(np.median(t))
        print(f"  {name:11s} median {med:6.2f} s  min {min(t):6.2f} s  ({base / med:.1f}x faster than torch)")


if __name__ == "__main__":
    main()
