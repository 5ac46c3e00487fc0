"""The quality gate (fgsearch.model.gate): top-k overlap with ties, the figures, the verdict."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fgsearch.library.settings import CALIBRATION_CAPTIONS
from fgsearch.model import load_encoder
from fgsearch.model.gate import GateBounds, GateReport, run_gate, topk_overlap


def _images(n: int = 10) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (48 + 8 * (i % 3), 64, 3), dtype=np.uint8)) for i in range(n)]


def test_topk_overlap_counts_shared_items_and_ties() -> None:
    ref = np.array([[0.9, 0.8, 0.7, 0.1, 0.0]])
    assert topk_overlap(ref, ref, 2) == 1.0
    assert topk_overlap(-ref, ref, 2) == 0.0  # the fast path ranks fp32's bottom two first
    swapped = np.array([[0.9, 0.1, 0.7, 0.8, 0.0]])  # item 1 left the top 2, item 2 came in
    assert topk_overlap(swapped, ref, 2) == 0.5
    # fp32 scores item 2 within the tie tolerance of its 2nd: the swap is among ties
    near = np.array([[0.9, 0.8, 0.7995, 0.1, 0.0]])
    assert topk_overlap(np.array([[0.9, 0.1, 0.85, 0.0, 0.0]]), near, 2, tie=0.001) == 1.0
    assert topk_overlap(np.array([[0.9, 0.1, 0.85, 0.0, 0.0]]), near, 2, tie=0.0) == 0.5
    assert topk_overlap(np.zeros((0, 3)), np.zeros((0, 3)), 10) == 1.0


class _Noisy:
    """A fast path that damages vectors the way a broken quantisation does (a test's own encoder)."""

    def __init__(self, inner: object, scale: float) -> None:
        self.inner, self.scale = inner, scale
        self.rng = np.random.default_rng(1)

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def _hurt(self, x: np.ndarray) -> np.ndarray:
        y = x + self.scale * self.rng.standard_normal(x.shape).astype(np.float32)
        return y / np.linalg.norm(y, axis=-1, keepdims=True)

    def encode_images(self, images, boxes=None, batch_size=32):  # type: ignore[no-untyped-def]
        out = self.inner.encode_images(images, boxes, batch_size)  # type: ignore[attr-defined]
        out.image = self._hurt(out.image)
        out.regions = [self._hurt(r) for r in out.regions]
        return out

    def encode_texts(self, texts, path=None, batch_size=64):  # type: ignore[no-untyped-def]
        return self.inner.encode_texts(texts, path, batch_size)  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def demo_fp32():  # type: ignore[no-untyped-def]
    return load_encoder("demo", device="cpu", precision="fp32")


def test_bf16_passes_the_gate_and_a_damaged_path_is_refused(demo_fp32, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("FGSEARCH_CPU_FLAGS", "avx512_bf16")
    bf16 = load_encoder("demo", device="cpu", precision="bf16")
    caps = CALIBRATION_CAPTIONS[::5]
    good = run_gate("torch bf16", bf16, demo_fp32, _images(), caps)
    assert good.passed, good.line()
    assert good.image_cosine > 0.999 and good.region_cosine > 0.999 and good.text_cosine > 0.999
    assert good.images == 10 and good.regions == 60 and good.captions == len(caps)
    bad = run_gate("broken int8", _Noisy(demo_fp32, 0.05), demo_fp32, _images(), caps)
    assert not bad.passed
    line = bad.line()
    assert line.startswith("broken int8: REFUSED: image cosine") and "\n" not in line
    assert GateReport.from_dict(bad.to_dict()) == bad


def test_no_images_is_no_pass(demo_fp32) -> None:  # type: ignore[no-untyped-def]
    rep = run_gate("torch fp32", demo_fp32, demo_fp32, [], CALIBRATION_CAPTIONS[:3], GateBounds())
    assert not rep.passed and "no sample images" in rep.line()
