"""Cold ``fgsearch query`` wall time: torch path vs fast text path vs asking a running server.

    python bench/bench_cold.py [--runs 7] [--model fg-clip-base-random,fg-clip2-base-random|demo|PATH]
    python bench/bench_cold.py --smoke

For each model (default: fg-clip-base's and fg-clip2-base's architectures with random weights; the
timing does not depend on the weights; fg-clip2-base-random gets a stand-in tokenizer of Gemma's
size, 256,000 tokens, ~33 MB of tokenizer.json, since parsing it is part of every cold query),
builds a library of a few generated photos, prepares the fast text tower
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


def _check_no_torch(lib: Path, home: Path) -> None:
    """The ``fast`` way must really run without torch (else its figures would be torch's)."""
    child = (
        "import sys\nfrom fgsearch.console.cli import app\n"
        f"sys.argv = ['fgsearch', 'query', 'a red circle', '--library', {str(lib)!r}]\n"
        "try:\n    app()\nexcept SystemExit:\n    pass\nprint('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", child], env=_env(home), capture_output=True, text=True, check=True)
    if out.stdout.strip().splitlines()[-1] != "False":
        raise RuntimeError(f"the fast text tower was not used (torch imported): {out.stderr.strip()[-300:]}")


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


def gemma_sized_tokenizer(folder: Path, size: int = 256_000) -> None:
    """Replace ``folder``'s tokenizer.json by a byte-fallback BPE of ``size`` tokens (Gemma's
    vocabulary size: a file of ~33 MB like the released one; random merges over letters and CJK
    characters, seed 0). The special tokens keep their ids (pad 0, eos 1, bos 2, unk 3)."""
    import random

    import tokenizers as tk

    rng = random.Random(0)
    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    letters = [*"abcdefghijklmnopqrstuvwxyz0123456789.,;:!?'-\u2581", *(chr(0x4E00 + i) for i in range(3000))]
    vocab: dict[str, int] = {}
    for t in [*specials, *(f"<0x{b:02X}>" for b in range(256)), *letters]:
        vocab.setdefault(t, len(vocab))
    pieces, merges = list(letters), []
    while len(vocab) < size:
        a, b = rng.choice(pieces), rng.choice(pieces)
        if a + b in vocab or len(a + b) > 16:
            continue
        vocab[a + b] = len(vocab)
        merges.append((a, b))
        pieces.append(a + b)
    tok = tk.Tokenizer(tk.models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = tk.normalizers.Replace(" ", "\u2581")
    tok.add_special_tokens(specials)
    tok.save(str(folder / "tokenizer.json"))


def random_fgclip2_base(folder: Path, *, tiny: bool = False) -> Path:
    """fg-clip2-base's architecture with the model's own random initialisation, saved once
    (``tiny``: the test-sized model, for --smoke)."""
    if not (folder / "model.safetensors").exists():
        from fgsearch.model.fgclip2 import FGCLIP2Config
        from fgsearch.model.tiny import write_fgclip2

        write_fgclip2(folder, FGCLIP2Config.tiny() if tiny else FGCLIP2Config.base(), weight_std=None)
        if not tiny:
            gemma_sized_tokenizer(folder)
    return folder


def run_model(model_arg: str, args: argparse.Namespace, work: Path) -> dict[str, list[float]]:
    """The three ways for one model, alternated ``args.runs`` times: seconds per way."""
    from bench_data import make_photos
    from bench_gpu import random_base

    photos, lib = work / "photos", work / "lib"
    home_fast, home_torch = work / "home-fast", work / "home-torch"
    photos.mkdir(parents=True)
    make_photos(photos, args.photos)
    makers = {
        "fg-clip-base-random": lambda: random_base(work / "model"),
        "fg-clip2-base-random": lambda: random_fgclip2_base(work / "model", tiny=args.smoke),
    }
    model = str(makers[model_arg]()) if model_arg in makers else model_arg
    subprocess.run(
        [*FGSEARCH, "index", str(photos), "--library", str(lib), "--model", model, "--fast-text", "-q"],
        env=_env(home_fast),
        check=True,
        stdout=subprocess.DEVNULL,
    )
    home_torch.mkdir()
    sizes = [f.stat().st_size for f in (home_fast / "text-runtime").rglob("*") if f.is_file()]
    print(f"{model_arg}: fast text tower cache {sum(sizes) / 1e6:.0f} MB", flush=True)
    _check_no_torch(lib, home_fast)
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
    return times


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument(
        "--model",
        default="fg-clip-base-random,fg-clip2-base-random",
        help="comma-separated: fg-clip-base-random, fg-clip2-base-random, a registry name or a checkpoint directory",
    )
    ap.add_argument("--photos", type=int, default=8)
    ap.add_argument("--port", type=int, default=7893)
    ap.add_argument("--smoke", action="store_true", help="a tiny FG-CLIP 2, 2 photos, 1 run each")
    args = ap.parse_args(argv)
    if args.smoke:
        args.runs, args.model, args.photos = 1, "fg-clip2-base-random", 2
    print(f"cold `fgsearch query`, {args.runs} fresh processes per way", flush=True)
    with tempfile.TemporaryDirectory(prefix="fgsearch-bench-cold-") as tmp:
        for i, model in enumerate(args.model.split(",")):
            times = run_model(model, args, Path(tmp) / f"m{i}")
            load = " ".join(f"{x:.1f}" for x in os.getloadavg())
            tiny = " (tiny)" if args.smoke and model == "fg-clip2-base-random" else ""
            print(f"{model}{tiny}: load average after its runs {load} ({os.cpu_count()} CPUs)")
            base = float(np.median(times["torch"]))
            for name, t in times.items():
                med = float(np.median(t))
                print(f"  {name:11s} median {med:6.2f} s  min {min(t):6.2f} s  ({base / med:.1f}x faster than torch)")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
