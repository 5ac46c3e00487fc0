"""Throughput and latency of ``fgsearch serve`` under N concurrent clients on loopback.

    python bench/bench_serve.py [--images 100000] [--regions-per-image 8] [--clients 1,8,32]
                                [--duration 60] [--words 20] [--unbatched]

The library is built once in --work by bench_query.py's builder: a real catalog with --images
images and --regions-per-image boxes each, and FAISS indexes of synthetic CLIP-like unit vectors
(no image is embedded). The model is the fg-clip-base architecture with random weights (only the
text tower runs). A real server process is started (``fgsearch serve`` through run_server) and,
for each client count, that many threads in this process post --words-word queries back to back
over keep-alive connections for --duration seconds. Printed per level: requests/s, p50/p95
latency, errors, the server's anonymous RSS at the start, half-time and end of the level and its
maximum (memory flat over a run: no growth from half-time to the end, after the level's warm-up), its
file-backed RSS (memory-mapped vectors) at the end, how many texts the server encoded per forward
pass, and the CPU time per request of the server process and of the client threads (this
process): load from other programs changes latency far more than it. As a yardstick measured in
the same run, the same queries first go through ``Library.search`` in this process (no HTTP, one
at a time). --unbatched also runs every level against a server whose text batching is off (max_batch=1): the ratio shows
what batching buys on this machine.
The clients share the CPU with the server: on a 2-core machine that costs the server some time.
"""

from __future__ import annotations

import argparse
import atexit
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

WORDS = (
    "red ceramic mug left of an open silver laptop next to a potted cactus on a wooden desk under a window "
    "with white curtains and a striped towel beside a blue bicycle leaning on a brick wall"
).split()


def rss_mb(pid: int) -> tuple[float, float]:
    """(anonymous, file-backed) resident MB: file pages are the memory-mapped vectors, which grow as
    searches touch them and are bounded by the index files; anonymous memory is the process's own."""
    out = {"RssAnon:": float("nan"), "RssFile:": float("nan")}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key = line.split(":")[0] + ":"
            if key in out:
                out[key] = int(line.split()[1]) / 1024
    return out["RssAnon:"], out["RssFile:"]


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) the process has used: per request, a figure that other load on
    the machine changes far less than latency."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start(lib_dir: Path, port: int, max_batch: int, home: Path | None = None) -> subprocess.Popen[bytes]:
    """A server process; ``home``: its FGSEARCH_HOME (where a prepared fast text tower is found)."""
    env = {**os.environ, **({"FGSEARCH_HOME": str(home)} if home is not None else {})}
    code = (
        "from fgsearch.serve import run_server; from fgsearch.serve.engine import ServeSettings; "
        f"run_server(ServeSettings(library={str(lib_dir)!r}, device='cpu', port={port}, max_batch={max_batch}))"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/healthz")
            if c.getresponse().status == 200:
                return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("the server did not start")


def post(conn: http.client.HTTPConnection, body: dict) -> int:
    conn.request("POST", "/api/search", body=json.dumps(body), headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    resp.read()
    return resp.status


def server_stats(port: int) -> dict:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("GET", "/api/status")
    return json.loads(c.getresponse().read())["server"]


def level(port: int, pid: int, clients: int, duration: float, words: int) -> dict:
    lat: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients  # HTTP statuses other than 200
    timeouts = [0] * clients  # no answer within the client's 60 s (or the connection dropped)
    stop = threading.Event()

    def client(i: int) -> None:
        rng = np.random.default_rng(1000 + i)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while not stop.is_set():
            text = " ".join(rng.choice(WORDS, words))
            t0 = time.perf_counter()
            try:
                status = post(conn, {"text": text, "k": 20})
            except OSError:
                timeouts[i] += 1
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                continue
            if status == 200:
                lat[i].append(time.perf_counter() - t0)
            else:
                errors[i] += 1

    before = server_stats(port)
    rss = [rss_mb(pid)]
    cpu0, own0 = cpu_s(pid), time.process_time()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    while time.perf_counter() - t0 < duration:
        time.sleep(1)
        rss.append(rss_mb(pid))
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    cpu1, own1 = cpu_s(pid), time.process_time()
    after = server_stats(port)
    flat = np.asarray([x for xs in lat for x in xs]) * 1000
    texts = after["batched_texts"] - before["batched_texts"]
    forwards = after["text_batches"] - before["text_batches"]
    return {
        "clients": clients,
        "requests": len(flat),
        "rps": len(flat) / elapsed,
        "p50": float(np.percentile(flat, 50)) if len(flat) else float("nan"),
        "p95": float(np.percentile(flat, 95)) if len(flat) else float("nan"),
        "errors": sum(errors),
        "timeouts": sum(timeouts),
        "anon_start": rss[0][0],
        "anon_mid": rss[len(rss) // 2][0],  # after the warm-up of this level (threads, buffers)
        "anon_end": rss[-1][0],
        "anon_max": max(a for a, _ in rss),
        "file_end": rss[-1][1],
        "texts_per_forward": texts / forwards if forwards else float("nan"),
        "server_cpu_ms": (cpu1 - cpu0) * 1000 / len(flat) if len(flat) else float("nan"),
        "client_cpu_ms": (own1 - own0) * 1000 / len(flat) if len(flat) else float("nan"),
    }


def direct(lib_dir: Path, words: int, n: int = 30) -> float:
    """p50 (ms) of the same queries through Library.search in this process: no HTTP, one at a time."""
    from fgsearch.library import Library
    from fgsearch.search import SearchQuery

    rng = np.random.default_rng(7)
    times = []
    with Library.open(lib_dir, read_only=True, device="cpu") as lib:
        for i in range(n + 3):
            t0 = time.perf_counter()
            lib.search(query=SearchQuery(text=" ".join(rng.choice(WORDS, words)), k=21))
            if i >= 3:
                times.append((time.perf_counter() - t0) * 1000)
    return float(np.percentile(times, 50))


def run(
    lib_dir: Path, port: int, max_batch: int, levels: list[int], duration: float, words: int, home: Path | None = None
) -> list[dict]:
    proc = start(lib_dir, port, max_batch, home)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        for _ in range(5):  # warm up: first forwards, page cache of the indexes
            post(conn, {"text": " ".join(WORDS[:words]), "k": 20})
        out = []
        for n in levels:
            r = level(port, proc.pid, n, duration, words)
            r["batching"] = "on" if max_batch > 1 else "off"
            r["text"] = server_stats(port).get("text_runtime", "torch")
            print(
                f"batching {r['batching']:>3}, text {r['text']:>9} | {n:>2} clients: {r['rps']:6.2f} req/s, "
                f"p50 {r['p50']:7.1f} ms, "
                f"p95 {r['p95']:7.1f} ms, errors {r['errors']}, timeouts {r['timeouts']}, "
                f"anon RSS {r['anon_start']:.0f} -> {r['anon_mid']:.0f} (half-time) -> {r['anon_end']:.0f} MB "
                f"(max {r['anon_max']:.0f}), mapped {r['file_end']:.0f} MB, "
                f"{r['texts_per_forward']:.2f} texts/forward, "
                f"CPU per request: server {r['server_cpu_ms']:.1f} ms, clients {r['client_cpu_ms']:.1f} ms",
                flush=True,
            )
            out.append(r)
        return out
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fast_vs_torch(lib_dir: Path, model_dir: Path, args: argparse.Namespace, levels: list[int]) -> None:
    """The same levels against a server whose texts run on torch and one on the fast text tower
    (each with its own FGSEARCH_HOME), alternated twice; p50 side by side."""
    from fgsearch.model import load_encoder
    from fgsearch.model.fast_text import prepare_fast_text

    homes = {"torch": args.work / "home-torch", "fast": args.work / "home-fast"}
    for h in homes.values():
        h.mkdir(exist_ok=True)
    os.environ["FGSEARCH_HOME"] = str(homes["fast"])
    meta = prepare_fast_text(load_encoder(str(model_dir), device="cpu"))
    print(f"fast text tower: cosine to torch >= {meta['cosine_min']}, top-10 overlap {meta['top10']}")
    p50: dict[str, list[list[float]]] = {"torch": [], "fast": []}
    for rnd in range(2):
        for name, home in homes.items():
            port = args.port + 2 * rnd + (name == "fast")
            p50[name].append([r["p50"] for r in run(lib_dir, port, 32, levels, args.duration, args.words, home)])
    for i, n in enumerate(levels):
        t, f = float(np.median([r[i] for r in p50["torch"]])), float(np.median([r[i] for r in p50["fast"]]))
        print(f"{n:>2} clients: p50 torch text {t:.0f} ms, fast text {f:.0f} ms: {t / f:.2f}x lower")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=100_000)
    ap.add_argument("--regions-per-image", type=int, default=8)
    ap.add_argument("--clients", default="1,8,32", help="comma-separated client counts")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds per client count")
    ap.add_argument("--words", type=int, default=20)
    ap.add_argument("--port", type=int, default=7861)
    ap.add_argument("--unbatched", action="store_true", help="also run against a server without text batching")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "fgsearch-bench-serve")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, seconds, in a temporary folder (tests)")
    ap.add_argument(
        "--fast-text", action="store_true", help="torch text tower vs the fast (ONNX) one, servers alternated"
    )
    args = ap.parse_args()
    if args.smoke:
        args.images, args.regions_per_image, args.clients, args.duration, args.words = 300, 2, "1,2", 2.0, 5
        args.work, args.port = Path(tempfile.mkdtemp(prefix="fgsearch-bench-serve-")), free_port()
        atexit.register(shutil.rmtree, args.work, ignore_errors=True)

    import torch

    from fgsearch.model import FGCLIP, FGCLIPConfig, save_model

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_query import build

    args.work.mkdir(parents=True, exist_ok=True)
    model_dir = args.work / "model"
    if not (model_dir / "model.safetensors").exists():
        torch.manual_seed(0)
        save_model(FGCLIP(FGCLIPConfig.tiny() if args.smoke else FGCLIPConfig.base()), model_dir)
    dim = FGCLIPConfig.tiny().projection_dim if args.smoke else 512  # the model's
    lib_dir = build(
        args.work / f"{args.images}x{args.regions_per_image}", args.images, args.regions_per_image, dim, model_dir
    )
    levels = [int(x) for x in args.clients.split(",")]
    print(
        f"library: {args.images} images, {args.images * args.regions_per_image} region vectors; "
        f"{args.words}-word queries, k=20; {os.cpu_count()} CPUs; {args.duration:.0f} s per level"
    )
    print(
        "peer: the same queries through Library.search in-process, one at a time: "
        f"p50 {direct(lib_dir, args.words):.1f} ms"
    )
    if args.fast_text:
        fast_vs_torch(lib_dir, model_dir, args, levels)
        return
    results = run(lib_dir, args.port, 32, levels, args.duration, args.words)
    if args.unbatched:
        plain = run(lib_dir, args.port + 1, 1, levels, args.duration, args.words)
        for a, b in zip(results, plain, strict=True):
            print(
                f"{a['clients']:>2} clients: batching gives {a['rps'] / b['rps']:.2f}x the requests/s, "
                f"p50 {a['p50']:.0f} vs {b['p50']:.0f} ms"
            )
    print("target: p50 <= 200 ms at 8 clients for 20-word queries, no errors, memory flat over the run")


if __name__ == "__main__":
    main()
