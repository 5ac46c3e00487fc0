"""A decompression bomb's reason says how big it is, whatever Pillow's global limit is at the time:
with Pillow's default limit (a process where nothing raised it), an image over twice that limit
was refused as "image is over the 50 megapixel limit", without its size (and the serve test that
checks the size passed or failed depending on which tests ran before it)."""

from __future__ import annotations

import pytest
from _library_data import png_bomb_header
from PIL import Image

from fgsearch.decode import load_image
from fgsearch.errors import ImageError


@pytest.mark.parametrize("pillow_limit", [Image.MAX_IMAGE_PIXELS, 89_478_485, 500_000_000])
def test_a_bomb_is_refused_with_its_size(pillow_limit: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pillow_limit)
    with pytest.raises(ImageError, match=r"\(400 megapixels\), over the 50 megapixel limit"):
        load_image(png_bomb_header(20000, 20000), max_megapixels=50)
