"""The quality gate a fast path (bf16, OpenVINO fp32 or int8) passes before it is used.

The fast encoder and the fp32 PyTorch encoder of the same checkpoint embed the same sample of the
library's own images (global vectors, and region vectors for a fixed set of boxes per image) and
the same captions. The gate measures:

* the LOWEST cosine between the two encoders' global, region and text vectors;
* the MEAN top-k overlap (k = 10) of text->image and text->region rankings, the fraction of the
  fp32 top-k that the fast path also ranks in its top-k.

Bounds (:class:`GateBounds`) and why: cosine >= 0.995 and overlap >= 0.95. The reference figures
for a CLIP ViT-B/16 on this kind of CPU (docs/runtimes.md) put bf16 at a minimum cosine of 0.99995
and NNCF static int8 with 160 calibration images at 0.99907 (images) / 0.99774 (texts); 0.995
lets a well-calibrated int8 through with margin while a broken quantisation (dynamic int8 on CLIP
has given cosines of 0.9 and wrong search results elsewhere) fails by orders of magnitude. An
overlap of 0.95 allows, on average, one swap in the top 20: rank changes among near-ties, never a
different result list. Items fp32 scores within 0.001 of its own k-th score count as ties
(:func:`topk_overlap`): bf16 moves a cosine by ~1e-3 at most, so a tighter order is noise.
Below either bound the fast path is refused and fp32 is used, with a one-line message naming the
figure that failed.

Random-weight models are a weak proxy: their embeddings are nearly isotropic, so cosines between
runtimes are high and rankings among random images are near-ties (overlap is then the harder
test). Trained weights have larger activations and outliers (what int8 clips); the gate is what
measures them, on the user's own images, before any vector is stored.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

    from fgsearch.model.protocol import Encoder

#: Boxes every sample image is cut into for the region check (normalised x1, y1, x2, y2).
GATE_BOXES = np.asarray(
    [[0, 0, 1, 1], [0, 0, 0.5, 0.5], [0.5, 0, 1, 0.5], [0, 0.5, 0.5, 1], [0.5, 0.5, 1, 1], [0.25, 0.25, 0.75, 0.75]],
    np.float32,
)
GATE_IMAGES = 32  # sample images (fg-clip-base fp32: ~7 s on 2 cores, once per library and fast path)


@dataclass(frozen=True)
class GateBounds:
    """What a fast path must reach against fp32 PyTorch (see the module docstring for the reasons)."""

    cosine: float = 0.995  # lowest cosine of any global, region or text vector
    overlap: float = 0.95  # mean top-k overlap of text->image and text->region rankings
    k: int = 10
    tie: float = 0.001  # fp32 scores closer than this are ties (see topk_overlap)


@dataclass(frozen=True)
class GateReport:
    """One fast path's figures against fp32 PyTorch, and the verdict."""

    path: str  # e.g. "torch bf16", "openvino int8"
    images: int
    regions: int
    captions: int
    image_cosine: float
    region_cosine: float
    text_cosine: float
    image_overlap: float
    region_overlap: float
    seconds: float
    bounds: GateBounds = field(default_factory=GateBounds)

    @property
    def failures(self) -> list[str]:
        b = self.bounds
        cosines = (("image", self.image_cosine), ("region", self.region_cosine), ("text", self.text_cosine))
        out = [f"{name} cosine {value:.5f} < {b.cosine}" for name, value in cosines if value < b.cosine]
        out += [
            f"text->{name} top-{b.k} overlap {value:.3f} < {b.overlap}"
            for name, value in (("image", self.image_overlap), ("region", self.region_overlap))
            if value < b.overlap
        ]
        return out

    @property
    def passed(self) -> bool:
        return self.images > 0 and not self.failures

    def line(self) -> str:
        """One line: the path, its figures and the verdict."""
        figures = (
            f"cosine min image {self.image_cosine:.5f} region {self.region_cosine:.5f} text {self.text_cosine:.5f}, "
            f"top-{self.bounds.k} overlap image {self.image_overlap:.3f} region {self.region_overlap:.3f} "
            f"({self.images} images, {self.regions} regions, {self.captions} captions)"
        )
        verdict = "passed" if self.passed else "REFUSED: " + "; ".join(self.failures or ["no sample images"])
        return f"{self.path}: {verdict} [{figures}]"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["passed"] = self.passed
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GateReport:
        fields = {k: v for k, v in d.items() if k not in ("passed", "bounds")}
        return cls(**fields, bounds=GateBounds(**d.get("bounds", {})))


def topk_overlap(fast: np.ndarray, ref: np.ndarray, k: int, tie: float = 0.0) -> float:
    """Mean over rows of the share of the fast path's top-k that fp32 also ranks in its top-k, for
    two ``[queries, items]`` score arrays. An item counts when fp32 scores it within ``tie`` of
    fp32's own k-th score: fp32 itself cannot order items closer than that (a swap among ties is
    no change a user can see, and random-weight models are full of such ties)."""
    if fast.size == 0:
        return 1.0
    k = min(k, fast.shape[1])
    top = np.argpartition(-fast, k - 1, axis=1)[:, :k]
    kth = -np.partition(-ref, k - 1, axis=1)[:, k - 1 : k]
    agree = np.take_along_axis(ref, top, axis=1) >= kth - tie
    return float(agree.mean())


def _min_cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.min(np.sum(a * b, axis=-1))) if len(a) else 1.0


def _by_walk(enc: Encoder, texts: list[str], walks: list[Any]) -> np.ndarray:
    """Texts encoded each on its given walk (one call per walk)."""
    out = np.zeros((len(texts), enc.dim), np.float32)
    for w in dict.fromkeys(walks):
        idx = [i for i, x in enumerate(walks) if x == w]
        out[idx] = enc.encode_texts([texts[i] for i in idx], path=w)
    return out


def run_gate(
    path: str,
    fast: Encoder,
    reference: Encoder,
    images: Sequence[Image.Image],
    captions: Sequence[str],
    bounds: GateBounds | None = None,
    batch_size: int = 8,
) -> GateReport:
    """Measure ``fast`` against ``reference`` (fp32 PyTorch) on ``images`` and ``captions``."""
    bounds = bounds or GateBounds()
    t0 = time.perf_counter()
    boxes = [GATE_BOXES] * len(images)
    ef = fast.encode_images(images, boxes, batch_size=batch_size)
    er = reference.encode_images(images, boxes, batch_size=batch_size)
    empty = np.zeros((0, reference.dim), np.float32)
    rf = np.concatenate(ef.regions) if ef.regions else empty
    rr = np.concatenate(er.regions) if er.regions else empty
    caps = list(captions)
    tf, tr = fast.encode_texts(caps), reference.encode_texts(caps)
    walks = [reference.region_walk(c) for c in caps]
    same = all(w == reference.text_path(c) for c, w in zip(caps, walks, strict=True))
    rtf, rtr = (tf, tr) if same else (_by_walk(fast, caps, walks), _by_walk(reference, caps, walks))
    return GateReport(
        path=path,
        images=len(images),
        regions=len(rr),
        captions=len(caps),
        image_cosine=_min_cos(ef.image, er.image),
        region_cosine=_min_cos(rf, rr),
        text_cosine=min(_min_cos(tf, tr), _min_cos(rtf, rtr)),
        image_overlap=topk_overlap(tf @ ef.image.T, tr @ er.image.T, bounds.k, bounds.tie),
        region_overlap=topk_overlap(rtf @ rf.T, rtr @ rr.T, bounds.k, bounds.tie),
        seconds=round(time.perf_counter() - t0, 3),
        bounds=bounds,
    )
