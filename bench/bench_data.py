"""Synthetic vector data for the index benchmarks (bench_indexes.py, bench_query.py, bench_serve.py).

``generate_clip_like`` (``--data clip``): unit vectors with a shared direction, a decaying spectrum
and topic/scene/photo structure, as CLIP image embeddings have; ``generate`` (``--data isotropic``):
round 1's Zipf-sized clusters with isotropic noise; query sets near the data (image-like) and far
from it (text-like, best match cosine ~0.3); the demo model's real embeddings of generated photos.
Vectors are written to ``.npy`` files in chunks and memory-mapped, so a million fit in little memory.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

CHUNK = 50_000
SEED = 1234


def proc_status() -> dict[str, int]:
    """This process's ``VmRSS``, ``RssAnon``, ``RssFile`` and ``VmHWM`` (peak) in bytes, from
    ``/proc/self/status`` (Linux): what the benchmarks report as resident and peak memory."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, val = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                out[key] = int(val.split()[0]) * 1024
    return out


def _write_vectors(
    path: Path, n: int, dim: int, seed: int, chunk: Callable[[np.random.Generator, int], np.ndarray]
) -> np.ndarray:
    """``path`` (.npy) as a memmap: reused when it holds ``n x dim`` already, else written chunk by
    chunk, ``chunk(rng, rows)`` giving the unnormalised rows of chunk ``c`` from ``rng([seed, c])``."""
    if path.exists():
        arr = np.load(path, mmap_mode="r")
        if arr.shape == (n, dim):
            return arr
    out = np.lib.format.open_memmap(path.with_suffix(".tmp.npy"), mode="w+", dtype=np.float32, shape=(n, dim))
    for c, s in enumerate(range(0, n, CHUNK)):
        e = min(s + CHUNK, n)
        x = chunk(np.random.default_rng([seed, c]), e - s)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[s:e] = x.astype(np.float32)
    out.flush()
    del out
    os.replace(path.with_suffix(".tmp.npy"), path)
    return np.load(path, mmap_mode="r")


def generate(path: Path, n: int, dim: int, clusters: int, seed: int = SEED) -> np.ndarray:
    """Write ``n`` clustered unit vectors (``isotropic``, see the module docstring) to ``path``."""
    rng = np.random.default_rng(seed)
    shared = rng.standard_normal(dim)
    shared /= np.linalg.norm(shared)
    centres = rng.standard_normal((clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    spread = rng.uniform(0.8, 1.6, clusters)
    weights = 1.0 / np.arange(1, clusters + 1) ** 0.8
    weights /= weights.sum()

    def chunk(r: np.random.Generator, rows: int) -> np.ndarray:
        lab = r.choice(clusters, size=rows, p=weights)
        return 0.5 * shared + centres[lab] + spread[lab, None] * r.standard_normal((rows, dim)) / math.sqrt(dim)

    return _write_vectors(path, n, dim, seed, chunk)


def generate_clip_like(path: Path, n: int, dim: int, topics: int, seed: int = SEED) -> np.ndarray:
    """Write ``n`` CLIP-like unit vectors (see the module docstring) to ``path``; return a memmap."""
    rng = np.random.default_rng(seed)
    shared = rng.standard_normal(dim)
    shared /= np.linalg.norm(shared)
    rotation, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    spectrum = np.arange(1, dim + 1) ** -0.5  # standard deviations: eigenvalue i ~ 1/i
    basis = (rotation * (spectrum / np.linalg.norm(spectrum))).astype(np.float32)  # E|basis @ g|^2 = 1
    scenes = 20
    weights = 1.0 / np.arange(1, topics + 1) ** 0.8
    weights /= weights.sum()
    topic_c = rng.standard_normal((topics, dim)).astype(np.float32) @ basis.T
    scene_c = (rng.standard_normal((topics * scenes, dim)).astype(np.float32) @ basis.T).reshape(topics, scenes, dim)

    def chunk(r: np.random.Generator, rows: int) -> np.ndarray:
        t = r.choice(topics, size=rows, p=weights)
        sc = r.integers(0, scenes, size=rows)
        photo = r.standard_normal((rows, dim)).astype(np.float32) @ basis.T
        return 1.2 * shared + topic_c[t] + 0.6 * scene_c[t, sc] + 0.6 * photo

    return _write_vectors(path, n, dim, seed, chunk)


GENERATORS = {"clip": generate_clip_like, "isotropic": generate}


def make_queries(data: np.ndarray, nq: int, seed: int = SEED + 1) -> np.ndarray:
    from fgsearch.indexes.faiss.calibration_queries import in_distribution_queries

    return in_distribution_queries(data, nq, seed)


def make_text_queries(data: np.ndarray, nq: int, seed: int = SEED + 3) -> np.ndarray:
    from fgsearch.indexes.faiss.calibration_queries import cross_modal_queries

    return cross_modal_queries(data, nq, seed)


def demo_dataset(work: Path, n_images: int, nq: int) -> tuple[Path, dict[str, Path]]:
    """Demo-model embeddings of generated FineShapes-like photos (one global vector and region vectors
    for each shape's box and a 2x2 grid, as a library stores them) and of their varied captions
    (whole-image captions, short and long referring expressions) as text queries."""
    import random

    from PIL import Image

    from fgsearch.model import load_encoder
    from fgsearch.trainer.fineshapes import make_record

    data_path = work / f"demo-{n_images}.npy"
    text_path = work / f"demo-{n_images}-text.npy"
    if not (data_path.exists() and text_path.exists()):
        enc = load_encoder("demo", device="cpu")
        img_dir = work / "demo-images"
        img_dir.mkdir(exist_ok=True)
        grid = [(x, y, x + 0.5, y + 0.5) for x in (0.0, 0.5) for y in (0.0, 0.5)]
        vecs: list[np.ndarray] = []
        captions: list[str] = []
        for s in range(0, n_images, 32):
            recs = [make_record(i, SEED, img_dir, "")[0] for i in range(s, min(s + 32, n_images))]
            images = [Image.open(img_dir / r["f_path"]).convert("RGB") for r in recs]
            boxes = [np.asarray([b["bbox"] for b in r["bbox_info"]] + grid, np.float32) for r in recs]
            out = enc.encode_images(images, boxes=boxes)
            vecs.append(np.concatenate([out.image, *out.regions]))
            for r in recs:
                captions += [r["caption"], r["short_caption"]]
                captions += [t for b in r["bbox_info"] for t in (b["short_expr"], b["long_expr"])]
            print(f"\r  demo: embedded {min(s + 32, n_images)}/{n_images} photos", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
        np.save(data_path, np.concatenate(vecs).astype(np.float32))
        picked = random.Random(SEED).sample(captions, min(nq, len(captions)))
        np.save(text_path, np.asarray(enc.encode_texts(picked), dtype=np.float32))
    data = np.load(data_path, mmap_mode="r")
    image_path = work / f"demo-{n_images}-image.npy"
    np.save(image_path, make_queries(data, nq))
    return data_path, {"image": image_path, "text": text_path}


def make_photos(folder: Path, n: int, seed: int = 0) -> None:
    """``n`` 1024x768 JPEG photos (gradients, noise, a few shapes) in ``folder``."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:768, 0:1024].astype(np.float32)
    for i in range(n):
        c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        t = (xx / 1024 * rng.uniform(0.2, 1) + yy / 768 * rng.uniform(0.2, 1))[..., None] / 2
        arr = c0 * (1 - t) + c1 * t + rng.normal(0, 8, (768, 1024, 3))
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        d = ImageDraw.Draw(img)
        for _ in range(6):
            x, y = rng.integers(0, 900), rng.integers(0, 650)
            w, h = rng.integers(60, 300, 2)
            fill = tuple(int(v) for v in rng.integers(0, 255, 3))
            (d.ellipse if rng.random() < 0.5 else d.rectangle)([x, y, x + w, y + h], fill=fill)
        img.save(folder / f"photo_{i:05d}.jpg", quality=90)
