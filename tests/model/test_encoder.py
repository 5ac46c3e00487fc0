"""The Encoder protocol and the runtime registry (fgsearch.model.protocol, fgsearch.model.runtime):
a toy numpy runtime added from this module alone, the torch runtime, the serving wrapper."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from fgsearch.errors import InputError
from fgsearch.model import (
    REGISTRY,
    EncodedImages,
    Encoder,
    ModelSpec,
    ScoreCalibration,
    TextPath,
    TorchEncoder,
    load_encoder,
    register_runtime,
    runtime_names,
)
from fgsearch.model.protocol import DenseProposer, ImagePreprocessor
from fgsearch.regions import RegionSettings, make_proposer

DIM = 8


class ToyTransform:
    """Images -> ``[3]`` mean colours; a batch is ``[B, 3]``."""

    image_size = (4, 4)

    def item(self, image: Image.Image) -> np.ndarray:
        return np.asarray(image.convert("RGB").resize(self.image_size), np.float32).mean(axis=(0, 1)) / 255.0

    def collate(self, items: Sequence[np.ndarray]) -> np.ndarray:
        return np.stack(list(items))


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


class NumpyEncoder:
    """A non-torch runtime: numpy only, a fixed random projection of mean colours and text hashes."""

    def __init__(self, model: str, device: str, precision: str) -> None:
        self._spec = ModelSpec(name=model, family="toy")
        self.device_name, self.precision = device, precision
        self._proj = np.random.default_rng(0).normal(size=(3, DIM)).astype(np.float32)
        self.transform: ImagePreprocessor = ToyTransform()

    dim = DIM
    family_name = "toy"
    walks = ("short", "long")
    on_accelerator = False

    @property
    def spec(self) -> ModelSpec:
        return self._spec

    @property
    def calibration(self) -> ScoreCalibration | None:
        return ScoreCalibration("sigmoid", 10.0, -5.0)

    def _dense(self, colour: np.ndarray) -> np.ndarray:
        grid = np.zeros((4, 5, DIM), np.float32) + colour @ self._proj
        grid[1:3, 1:4] += np.eye(DIM, dtype=np.float32)[0] * 3  # an "object"
        return grid

    def encode_pixels(self, pixels: Any, boxes: Sequence[np.ndarray] | None) -> EncodedImages:
        image = _unit(np.asarray(pixels) @ self._proj)
        regions = [np.repeat(image[i : i + 1], len(b), axis=0) for i, b in enumerate(boxes)] if boxes else []
        return EncodedImages(image=image, regions=regions)

    def encode_proposed(self, pixels: Any, propose: DenseProposer) -> tuple[EncodedImages, list[np.ndarray]]:
        boxes = propose([self._dense(p) for p in np.asarray(pixels)])
        return self.encode_pixels(pixels, boxes), boxes

    def encode_images(
        self, images: Sequence[Image.Image], boxes: Sequence[np.ndarray] | None = None, batch_size: int = 32
    ) -> EncodedImages:
        return self.encode_pixels(self.transform.collate([self.transform.item(im) for im in images]), boxes)

    def text_path(self, text: str) -> TextPath:
        return TextPath.SHORT if len(text) < 40 else TextPath.LONG

    def region_walk(self, text: str) -> TextPath:
        return self.text_path(text)

    def encode_texts(
        self, texts: Sequence[str], path: TextPath | str | None = None, batch_size: int = 64
    ) -> np.ndarray:
        rows = [np.random.default_rng(zlib.crc32(t.encode())).normal(size=DIM) for t in texts]
        return _unit(np.asarray(rows, np.float32).reshape(-1, DIM))


def load_numpy(model: str, *, device: str, precision: str) -> Encoder:
    return NumpyEncoder(model, device, precision)


def _images() -> list[Image.Image]:
    return [Image.new("RGB", (16, 12), c) for c in ((200, 10, 10), (10, 200, 10))]


def test_a_numpy_runtime_satisfies_the_protocol_and_loads_by_name() -> None:
    register_runtime("numpy-toy", load_numpy, replace=True)
    assert "numpy-toy" in runtime_names() and runtime_names()[0] == "torch"
    enc = load_encoder("toy-model", device="cpu", precision="fp32", runtime="numpy-toy")
    assert isinstance(enc, NumpyEncoder) and isinstance(enc, Encoder)
    assert enc.spec.name == "toy-model" and enc.family_name == "toy" and not enc.on_accelerator
    out = enc.encode_images(_images())
    assert out.image.shape == (2, DIM) and out.image.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out.image, axis=1), 1.0, rtol=1e-5)
    texts = enc.encode_texts(["a red square", "a green square"])
    assert texts.shape == (2, DIM)
    with pytest.raises(InputError, match="registered already"):
        register_runtime("numpy-toy", load_numpy)


def test_the_auto_proposer_works_with_a_non_torch_runtime() -> None:
    """The dense maps reach the proposer as numpy arrays: regions need no torch."""
    register_runtime("numpy-toy", load_numpy, replace=True)
    enc = load_encoder("toy", runtime="numpy-toy")
    proposer = make_proposer(RegionSettings(max_regions=4))
    pixels = enc.transform.collate([enc.transform.item(im) for im in _images()])
    out, boxes = enc.encode_proposed(pixels, proposer.after)
    assert len(boxes) == 2 and all(b.shape[1] == 4 and len(b) >= 1 for b in boxes)
    assert [len(r) for r in out.regions] == [len(b) for b in boxes]


def test_unknown_runtime_names_the_known_ones() -> None:
    with pytest.raises(InputError, match=r"unknown encoder runtime 'onnx'; known runtimes: torch"):
        load_encoder("demo", runtime="onnx")


def test_the_torch_runtime_is_an_encoder(tiny_model_dir: Path) -> None:
    enc = load_encoder(str(tiny_model_dir), device="cpu")
    assert isinstance(enc, TorchEncoder) and isinstance(enc, Encoder)
    assert enc.family_name == "fgclip" and enc.walks == ("short", "long")
    assert enc.device_name == "cpu" and enc.precision == "fp32" and enc.on_accelerator is False
    seen: list[tuple[type, tuple[int, ...], Any]] = []

    def propose(maps: list[np.ndarray]) -> list[np.ndarray]:
        seen.extend((type(m), m.shape, m.dtype) for m in maps)
        return [np.array([[0.0, 0.0, 0.5, 0.5]], np.float32) for _ in maps]

    pixels = enc.transform.collate([enc.transform.item(im) for im in _images()])
    out, boxes = enc.encode_proposed(pixels, propose)
    assert [(t, d) for t, _, d in seen] == [(np.ndarray, np.float32)] * 2 and len(seen[0][1]) == 3
    direct = enc.encode_pixels(pixels, boxes)
    np.testing.assert_allclose(out.regions[0], direct.regions[0], atol=1e-5)
    with pytest.raises(InputError, match="box lists for 1 images, not 2"):
        enc.encode_proposed(pixels, lambda maps: maps[:1])


def test_the_serving_wrapper_is_an_encoder(tiny_model_dir: Path) -> None:
    from fgsearch.serve.engine import BatchingEncoder

    base = load_encoder(str(tiny_model_dir), device="cpu")
    wrapped = BatchingEncoder(base, window_ms=1, max_batch=4)
    try:
        enc: Encoder = wrapped  # typed as the protocol, checked by mypy
        assert isinstance(enc, Encoder)
        assert (enc.dim, enc.family_name, enc.spec, enc.walks) == (base.dim, "fgclip", base.spec, base.walks)
        np.testing.assert_allclose(enc.encode_texts(["a cat"]), base.encode_texts(["a cat"]), atol=1e-6)
        np.testing.assert_allclose(enc.encode_images(_images()).image, base.encode_images(_images()).image, atol=1e-6)
    finally:
        wrapped.close()


def test_registry_names_stay_loadable() -> None:
    assert "fg-clip-base" in REGISTRY
