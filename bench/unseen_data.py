"""A data set and queries the FAISS default was never tuned on (``bench_indexes.py --data unseen``).

Written separately from ``bench_data.py`` (the ``clip``/``isotropic`` generators) and from the
index's own synthetic calibration sets (``fgsearch.indexes.faiss.calibration_queries``), with other
choices for each property that decides how hard a search is:

* **cone**: a weaker common direction (weight 0.7 against ``clip``'s 1.2: mean pairwise cosine
  ~0.2, not ~0.46);
* **structure**: ``domains`` (default 400) of lognormal sizes (not Zipf), each a random
  24-dimensional subspace with its own centre (local manifolds, not one global spectrum), and
  heavy-tailed coordinates inside it (Student-t, 4 degrees of freedom: a few far-out photos per
  domain), plus 0.25 of isotropic noise;
* **image queries**: new photos drawn from the same process (out of sample), not stored vectors
  plus noise;
* **text queries**: a modality gap of weight 0.9 (calibration's is 0.6) along a text direction, plus
  a text-side structure the images do not share (an 8-dimensional text subspace, weight 0.3), and a
  meaning drawn from a domain's centre and subspace (a concept, not a stored vector and its
  neighbours); the meaning's weight is chosen (bisection on a 20k sample) so that the median best
  match has cosine 0.26 (calibration aims at 0.30).

``python bench/unseen_data.py --n 20000`` prints the cosines of ranks 1, 10, 100 for both query sets.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

SEED = 20261207
SUBSPACE = 24
CHUNK = 50_000


def _normalize(x: np.ndarray) -> np.ndarray:
    return np.asarray(x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12), dtype=np.float32)


class _Process:
    """The generator's fixed parameters (a function of dim, domains and the seed only)."""

    def __init__(self, dim: int, domains: int, seed: int = SEED) -> None:
        r = np.random.default_rng(seed)
        self.dim, self.domains = dim, domains
        self.common = _normalize(r.standard_normal(dim))
        self.centres = r.standard_normal((domains, dim)).astype(np.float32) * (0.9 / np.sqrt(dim))
        self.bases = np.stack([np.linalg.qr(r.standard_normal((dim, SUBSPACE)))[0].T for _ in range(domains)])
        self.bases = (self.bases * (0.8 / np.sqrt(SUBSPACE))).astype(np.float32)  # [domains, SUBSPACE, dim]
        sizes = r.lognormal(0.0, 1.0, domains)
        self.weights = sizes / sizes.sum()
        text = r.standard_normal(dim)
        self.text = _normalize(text - (text @ self.common) * self.common)
        self.text_basis = np.linalg.qr(r.standard_normal((dim, 8)))[0].T.astype(np.float32)

    def project(self, coef: np.ndarray, dom: np.ndarray) -> np.ndarray:
        """``coef[i] @ bases[dom[i]]``, one matrix product per domain (no [n, 24, dim] temporary)."""
        out = np.empty((coef.shape[0], self.dim), dtype=np.float32)
        for d in np.unique(dom):
            at = np.flatnonzero(dom == d)
            out[at] = coef[at] @ self.bases[d]
        return out

    def photos(self, r: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        dom = r.choice(self.domains, size=n, p=self.weights)
        coef = r.standard_t(4, size=(n, SUBSPACE)).astype(np.float32) * 0.7
        x = 0.7 * self.common + self.centres[dom] + self.project(coef, dom)
        x += r.standard_normal((n, self.dim)).astype(np.float32) * (0.25 / np.sqrt(self.dim))
        return _normalize(x), dom


def generate_unseen(path: Path, n: int, dim: int, domains: int, seed: int = SEED) -> np.ndarray:
    """``n`` stored vectors written to ``path`` (``.npy``) in chunks; returns them memory-mapped."""
    proc = _Process(dim, domains, seed)
    r = np.random.default_rng(seed + 1)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, dim))
    for s in range(0, n, CHUNK):
        out[s : s + CHUNK] = proc.photos(r, min(CHUNK, n - s))[0]
    out.flush()
    del out
    return np.load(path, mmap_mode="r")


def image_queries(data: np.ndarray, nq: int, domains: int, seed: int = SEED) -> np.ndarray:
    """New photos from the same process (none of them stored)."""
    proc = _Process(data.shape[1], domains, seed)
    return proc.photos(np.random.default_rng(seed + 2), nq)[0]


def text_queries(
    data: np.ndarray, nq: int, domains: int, seed: int = SEED, target_cos: float = 0.26, draw: int | None = None
) -> np.ndarray:
    """Captions: a text direction and text-side structure, and a concept's meaning (see the module).
    ``seed``: the process that made ``data``; ``draw``: another draw of captions from it (default
    ``seed + 3``), e.g. the queries a library served before the measured ones."""
    proc = _Process(data.shape[1], domains, seed)
    r = np.random.default_rng(seed + 3 if draw is None else draw)
    dom = r.choice(proc.domains, size=nq, p=proc.weights)
    coef = r.standard_normal((nq, SUBSPACE)).astype(np.float32) * 0.5
    meaning = proc.centres[dom] + proc.project(coef, dom)
    meaning -= (meaning @ proc.common)[:, None] * proc.common  # captions share little of the image cone
    meaning = _normalize(meaning)
    side = (r.standard_normal((nq, 8)).astype(np.float32) @ proc.text_basis) * (0.3 / np.sqrt(8))
    noise = r.standard_normal((nq, data.shape[1])).astype(np.float32) * (0.4 / np.sqrt(data.shape[1]))
    rows = np.sort(r.choice(data.shape[0], size=min(20_000, data.shape[0]), replace=False))
    sample = np.asarray(data[rows])

    def make(b: float) -> np.ndarray:
        return _normalize(0.9 * proc.text + side + noise + b * meaning)

    lo, hi = 0.0, 4.0
    probe = slice(0, min(nq, 200))
    for _ in range(20):  # the median best match in the sample reaches target_cos
        mid = (lo + hi) / 2
        best = float(np.median((make(mid)[probe] @ sample.T).max(axis=1)))
        lo, hi = (mid, hi) if best < target_cos else (lo, mid)
    return make((lo + hi) / 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--domains", type=int, default=400)
    ap.add_argument("--out", type=Path, default=Path("/tmp/unseen.npy"))
    args = ap.parse_args()
    data = generate_unseen(args.out, args.n, args.dim, args.domains)
    x = np.asarray(data)
    print(f"mean pairwise cosine {float(np.mean(x[:2000] @ x[2000:4000].T)):.3f}")
    for name, q in (("image", image_queries(data, 200, args.domains)), ("text", text_queries(data, 200, args.domains))):
        s = -np.sort(-(q @ x.T), axis=1)
        r1, r10, r100 = np.median(s[:, [0, 9, 99]], axis=0)
        print(f"{name}: best match cosine {r1:.3f}, 10th {r10:.3f}, 100th {r100:.3f}")


if __name__ == "__main__":
    main()
