"""Preprocessing: the reference pipeline for every Pillow mode, after EXIF orientation."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fgsearch.model import ImageTransform, to_rgb
from fgsearch.model.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

T = ImageTransform((32, 32))


def _reference(img: Image.Image) -> np.ndarray:
    arr = np.asarray(img.convert("RGB").resize((32, 32)), np.uint8) / 255.0
    return ((arr - OPENAI_CLIP_MEAN) / OPENAI_CLIP_STD).astype(np.float32).transpose(2, 0, 1)


def _rgb() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (30, 50, 3), dtype=np.uint8))


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "LA", "L", "P", "CMYK", "1", "YCbCr"])
def test_modes_match_reference(mode: str) -> None:
    img = _rgb().convert(mode)
    np.testing.assert_allclose(T.to_array(img), _reference(img), atol=1e-5)


def test_wide_modes_keep_their_range() -> None:
    ramp = (np.arange(64 * 16).reshape(16, 64) * 64).astype(np.uint16)  # 0..65472
    img = Image.fromarray(ramp)
    assert img.mode == "I;16"
    rgb = np.asarray(to_rgb(img))
    assert rgb.shape == (16, 64, 3)
    assert rgb.min() == 0 and rgb.max() >= 250 and len(np.unique(rgb[..., 0])) > 100
    f = Image.fromarray((ramp / 65535.0).astype(np.float32))
    assert np.asarray(to_rgb(f)).max() >= 250
    i32 = Image.fromarray(ramp.astype(np.int32))
    assert np.asarray(to_rgb(i32)).max() >= 250


def test_exif_orientation_is_applied() -> None:
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 20, 20))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    img.info["exif"] = exif.tobytes()
    img.getexif()[0x0112] = 6
    out = to_rgb(img)
    assert out.size == (20, 40)
    assert out.getpixel((10, 5)) == (0, 0, 255)  # blue is now on top


def test_palette_with_transparency_and_batch() -> None:
    p = _rgb().convert("P")
    p.info["transparency"] = 0
    batch = T.batch([p, _rgb()])
    assert batch.shape == (2, 3, 32, 32) and batch.dtype == np.float32
    assert T.batch([]).shape == (0, 3, 32, 32)
