"""Result pictures: PNG contact sheet and self-contained HTML hold one box per boxed hit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from fgsearch.boxes import Box
from fgsearch.render import BOX_COLOUR, RenderItem, contact_sheet, html_page


def _images(tmp_path: Path, n: int) -> list[str]:
    out = []
    for i in range(n):
        p = tmp_path / f"im{i}.png"
        Image.new("RGB", (120 + 20 * i, 90), (30 * i % 200, 90, 160)).save(p)
        out.append(str(p))
    return out


def test_contact_sheet_draws_each_box(tmp_path: Path) -> None:
    paths = _images(tmp_path, 5)
    items = [
        RenderItem(p, f"#{i + 1} score 0.5", Box(0.1, 0.2, 0.6, 0.7) if i != 2 else None) for i, p in enumerate(paths)
    ]
    items.append(RenderItem(str(tmp_path / "gone.jpg"), "#6 missing file", Box.FULL))
    out = contact_sheet(items, tmp_path / "sheet.png", thumb=64, columns=3, title="red mug")
    arr = np.asarray(Image.open(out).convert("RGB"))
    red = np.all(arr == BOX_COLOUR, axis=-1)
    pad, text_h, head, thumb = 8, 34, 28, 64
    tiles_with_box = 0
    for i in range(len(items)):
        r, c = divmod(i, 3)
        x0 = pad + c * (thumb + pad)
        y0 = head + pad + r * (thumb + text_h + pad)
        if red[y0 : y0 + thumb, x0 : x0 + thumb].any():
            tiles_with_box += 1
    assert tiles_with_box == 5  # every boxed item, the unreadable one included; not the unboxed one


def test_html_page_is_self_contained(tmp_path: Path) -> None:
    paths = _images(tmp_path, 3)
    items = [RenderItem(p, f"#{i + 1}", Box(0.0, 0.0, 0.5, 0.5)) for i, p in enumerate(paths)]
    items.append(RenderItem(paths[0], "no box <b>", None))
    out = html_page(items, tmp_path / "r.html", title="a <red> mug")
    text = out.read_text()
    assert text.count('class="box"') == 3
    assert text.count("data:image/jpeg;base64,") == 4
    assert "http://" not in text and "https://" not in text
    assert "&lt;red&gt;" in text and "no box &lt;b&gt;" in text
    empty = html_page([], tmp_path / "e.html")
    assert "no results" in empty.read_text()


def test_contact_sheet_names_each_file_and_keeps_the_query_whole(tmp_path: Path, monkeypatch) -> None:
    from PIL import ImageDraw

    drawn: list[str] = []
    real = ImageDraw.ImageDraw.text

    def spy(self, xy, text, *args, **kwargs):  # type: ignore[no-untyped-def]
        drawn.append(text)
        return real(self, xy, text, *args, **kwargs)

    monkeypatch.setattr(ImageDraw.ImageDraw, "text", spy)
    paths = _images(tmp_path, 2)
    long_name = tmp_path / ("a_very_long_file_name_" * 4 + "end.png")
    Image.open(paths[0]).save(long_name)
    items = [RenderItem(p, f"#{i + 1} · score 0.5", None) for i, p in enumerate([*paths, str(long_name)])]
    title = "a small  blue square on the right"
    contact_sheet(items, tmp_path / "sheet.png", thumb=128, columns=3, title=title)
    assert drawn[0] == title  # whole, its spaces kept
    assert {"#1 · score 0.5", "im0.png", "#2 · score 0.5", "im1.png"} <= set(drawn)
    short = [t for t in drawn if t.startswith("a_very") and t.endswith("end.png")]
    assert len(short) == 1 and "…" in short[0]  # a long name is shortened in the middle, keeping its end


def test_sheet_format_follows_the_name_and_bad_targets_are_refused(tmp_path: Path) -> None:
    import pytest

    from fgsearch.errors import InputError

    items = [RenderItem(_images(tmp_path, 1)[0], "#1", None)]
    assert contact_sheet(items, tmp_path / "s.jpeg").read_bytes()[:3] == b"\xff\xd8\xff"
    assert contact_sheet(items, tmp_path / "new" / "s.PNG").read_bytes()[:4] == b"\x89PNG"
    for bad, message in ((tmp_path, "is a folder"), (tmp_path / "s.gif", "must end in .png")):
        with pytest.raises(InputError, match=message):
            contact_sheet(items, bad)
    with pytest.raises(InputError, match="is a folder"):
        html_page(items, tmp_path)
    assert "h1{white-space:pre-wrap}" in html_page(items, tmp_path / "p.html", title="a  b").read_text()
