"""``--fast-decode`` on 12 MP photos: decode time, its share of the index run, and what it costs in agreement.

    python bench/bench_fast_decode.py [--n 16] [--size 4000x3000] [--model fg-clip-base-random|demo|PATH]
    python bench/bench_fast_decode.py --smoke

Generates N photo-like JPEGs (gradients, shapes, sensor-like noise; quality 90) of --size, then:

1. per image, on one thread: read + decode + preprocess with a full decode and with JPEG DCT-domain
   downscaling (Pillow ``Image.draft`` to no less than twice the model's input: what
   ``--fast-decode`` does), medians;
2. ``fgsearch index`` with and without ``--fast-decode`` (``--pipeline overlap --workers 1``, so the
   decode worker's busy time is measured beside the wall time; ``--regions auto``, whose boxes come
   from the model's dense map, so a smaller decode changes nothing else), alternated ``--repeats``
   times: images/s and the share of decode in wall time;
3. agreement of the fast run's vectors with the full run's: cosine of each image's global vector,
   and top-10 overlap of text queries (text->image) and of image->image neighbours.

The default model is fg-clip-base's architecture with random weights: the timing is that of the
real model; the agreement figures are a weak proxy (trained weights respond to the fine detail a
reduced decode smooths away; rerun with the real weights, --model fg-clip-base, where you have them).
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gpu import _top, _vectors  # the same vectors-by-hash and top-10 as the GPU bench

QUERIES = ("a red circle", "a blue square", "two shapes on a gradient", "a green ellipse", "an orange rectangle")


def make_big_photos(folder: Path, n: int, size: tuple[int, int], seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for i in range(n):
        c0, c1 = rng.uniform(0, 255, 3).astype(np.float32), rng.uniform(0, 255, 3).astype(np.float32)
        t = ((xx / w * rng.uniform(0.2, 1) + yy / h * rng.uniform(0.2, 1)) / 2)[..., None]
        arr = c0 * (1 - t) + c1 * t
        arr += rng.normal(0, 6, (h, w, 1)).astype(np.float32)  # luminance noise, like a sensor's
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        d = ImageDraw.Draw(img)
        for _ in range(8):
            x, y = int(rng.integers(0, w * 7 // 8)), int(rng.integers(0, h * 7 // 8))
            sw, sh = (int(v) for v in rng.integers(w // 20, w // 4, 2))
            fill = tuple(int(v) for v in rng.integers(0, 255, 3))
            (d.ellipse if rng.random() < 0.5 else d.rectangle)([x, y, x + sw, y + sh], fill=fill)
        img.save(folder / f"big_{i:04d}.jpg", quality=90)


def decode_times(files: list[Path], transform: Any) -> dict[str, float]:
    """Median seconds per image: read + decode + preprocess, full and draft (one thread)."""
    from fgsearch.decode import load_image

    out: dict[str, list[float]] = {"full": [], "fast": [], "diff": []}
    for f in files:
        pixels = {}
        for name, draft in (("full", None), ("fast", transform.image_size)):
            t0 = time.perf_counter()
            loaded = load_image(io.BytesIO(f.read_bytes()), draft=draft)
            pixels[name] = transform.item(loaded.image).pixels
            out[name].append(time.perf_counter() - t0)
        out["diff"].append(float(np.abs(pixels["full"] - pixels["fast"]).mean()))  # model input, normalised
    return {k: float(np.median(v)) for k, v in out.items()}


def index_runs(photos: Path, model: str, work: Path, repeats: int) -> dict[str, Any]:
    from fgsearch.library import Library
    from fgsearch.model import load_encoder
    from fgsearch.regions import RegionSettings

    enc = load_encoder(model, device="cpu")
    runs: dict[str, Any] = {}
    with Library.open(work / "lib-warm-up", model=model, reindex=True, encoder=enc) as lib:
        lib.index(str(photos), pipeline="overlap", workers=1, fast_decode=True)  # first-use costs, untimed
    for r in range(repeats):
        for name, fast in (("full", False), ("fast", True)):
            with Library.open(
                work / f"lib-{name}", model=model, regions=RegionSettings(proposer="auto"), reindex=True, encoder=enc
            ) as lib:
                rep = lib.index(str(photos), fast_decode=fast, pipeline="overlap", workers=1)
                share = rep.stage_seconds.get("prepare", 0.0) / rep.seconds
                print(
                    f"[{r + 1}/{repeats}] {name:4s} decode: {rep.indexed} images in {rep.seconds:.1f}s = "
                    f"{rep.images_per_second:.2f} images/s; decode busy {100 * share:.0f}% of wall time "
                    f"(forward {100 * rep.stage_seconds.get('forward', 0) / rep.seconds:.0f}%)"
                )
                runs.setdefault(name, []).append((rep.images_per_second, share))
                runs[name + "-lib"] = _vectors(lib), {q: _top(lib, q) for q in QUERIES}
    return runs


def agreement(full: Any, fast: Any) -> None:
    (vf, tf), (vq, tq) = full, fast
    keys = sorted(set(vf) & set(vq))
    cos = np.asarray([float(np.dot(vf[k], vq[k])) for k in keys])
    text = [len(set(tf[q]) & set(tq[q])) / max(1, len(tf[q])) for q in tf]
    a, b = np.stack([vf[k] for k in keys]), np.stack([vq[k] for k in keys])
    k = min(10, len(keys) - 1)
    nn = []
    for i in range(len(keys)):
        sa, sb = a @ a[i], b @ b[i]
        sa[i] = sb[i] = -np.inf
        nn.append(len(set(np.argsort(-sa)[:k]) & set(np.argsort(-sb)[:k])) / max(1, k))
    print(f"fast vs full decode: global cosine min {cos.min():.5f} mean {cos.mean():.5f} over {len(keys)} images")
    print(f"fast vs full decode: text->image top-10 overlap {np.mean(text):.3f} ({len(text)} queries)")
    print(f"fast vs full decode: image->image top-{k} overlap {np.mean(nn):.3f}")


def main(argv: list[str] | None = None) -> None:
    from bench_gpu import random_base

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--size", default="4000x3000")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--model", default="fg-clip-base-random")
    ap.add_argument("--keep", type=Path, default=None, help="reuse/keep the photos and model here")
    ap.add_argument("--smoke", action="store_true", help="3 photos of 1600x1200, demo model, one round")
    args = ap.parse_args(argv)
    if args.smoke:
        args.n, args.size, args.repeats, args.model = 3, "1600x1200", 1, "demo"
    size = tuple(int(v) for v in args.size.lower().split("x"))
    with tempfile.TemporaryDirectory(prefix="fgsearch-bench-decode-") as tmp:
        work = args.keep or Path(tmp)
        photos = work / f"photos-{args.n}-{args.size}"
        if not photos.exists() or len(list(photos.glob("*.jpg"))) != args.n:
            photos.mkdir(parents=True, exist_ok=True)
            t0 = time.perf_counter()
            make_big_photos(photos, args.n, (size[0], size[1]))
            print(f"generated {args.n} JPEGs {args.size} in {time.perf_counter() - t0:.1f}s")
        model = str(random_base(work / "model")) if args.model == "fg-clip-base-random" else args.model
        from fgsearch.model import load_encoder

        transform = load_encoder(model, device="cpu").transform
        per = decode_times(sorted(photos.glob("*.jpg")), transform)
        print(
            f"read+decode+preprocess per image, one thread ({args.size} -> {transform.image_size}): "
            f"full {1000 * per['full']:.0f} ms, fast {1000 * per['fast']:.0f} ms ({per['full'] / per['fast']:.1f}x); "
            f"model input mean |full - fast| {per['diff']:.4f} (normalised units, weights-independent)"
        )
        runs = index_runs(photos, model, work, args.repeats)
        for name in ("full", "fast"):
            rate = float(np.median([r for r, _ in runs[name]]))
            share = float(np.median([s for _, s in runs[name]]))
            print(f"median {name} decode: {rate:.2f} images/s, decode {100 * share:.0f}% of wall time")
        agreement(runs["full-lib"], runs["fast-lib"])


if __name__ == "__main__":
    main()
