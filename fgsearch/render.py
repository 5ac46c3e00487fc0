"""Pictures of search results: a PNG contact sheet and a self-contained HTML page.

Both draw each hit's thumbnail with its matching region box and its scores. The HTML page embeds
the thumbnails as base64 JPEG and draws boxes with CSS, so it opens in a browser with no server.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from fgsearch.boxes import Box
from fgsearch.errors import InputError
from fgsearch.scan import display_path

logger = logging.getLogger(__name__)

BOX_COLOUR = (255, 0, 255)  # magenta with a black edge: visible on photos and on red objects
SHEET_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}
FONT_SIZE = 13  # Pillow's default font at its own size 10 draws spaces 2 px wide: "#1 0.7" reads "#10.7"


def check_target(out: str | Path, formats: Sequence[str]) -> Path:
    """``out`` as a file this process can write, with one of ``formats`` (suffixes); checked before any
    work so that a bad ``--show``/``--html`` costs nothing. Missing parent folders are created later."""
    out = Path(out).expanduser()
    flag = "--show" if ".png" in formats else "--html"
    if out.is_dir():
        raise InputError(f"{flag} {out} is a folder; give a file name ending in {formats[0]}")
    if out.suffix.lower() not in formats:
        raise InputError(f"{flag} {out}: the file name must end in {' or '.join(formats)}")
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"{flag} {out}: {parent} is not a folder")
    try:  # a real probe: os.access says yes to root on a read-only mount
        with tempfile.TemporaryFile(dir=parent):
            pass
        if out.exists() and not os.access(out, os.W_OK):
            raise PermissionError(out)
    except OSError as e:
        raise InputError(f"{flag} {out}: cannot write there ({e.strerror or 'permission denied'})") from e
    return out


def _fit(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: int) -> str:
    """``text`` shortened in the middle (with an ellipsis) to fit ``width`` pixels."""
    if font.getlength(text) <= width:
        return text
    keep = len(text)
    while keep > 1:
        keep -= 1
        head = (keep + 1) // 2
        short = text[:head] + "…" + text[len(text) - (keep - head) :]
        if font.getlength(short) <= width:
            return short
    return "…"


@dataclass(frozen=True)
class RenderItem:
    """One hit to draw: an image file, an optional box (normalised) and a caption."""

    path: str
    caption: str
    box: Box | None = None


def _thumbnail(path: str, size: int) -> Image.Image:
    from fgsearch.decode import open_image

    try:
        rgb = open_image(path, draft=(size, size)).image  # the indexer's guards: never Ghostscript
        scale = size / max(rgb.size)  # fit the tile: shrink big photos, enlarge small ones
        new = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
        return rgb.resize(new, Image.Resampling.BICUBIC)
    except Exception as e:  # a file that vanished or broke since indexing still gets a tile
        logger.warning("cannot read %s for the picture: %s", path, e)
        tile = Image.new("RGB", (size, size), (60, 60, 60))
        ImageDraw.Draw(tile).text((6, size // 2), "unreadable", fill=(230, 230, 230))
        return tile


def _draw_box(img: Image.Image, box: Box, width: int = 3) -> None:
    x1, y1, x2, y2 = box.to_pixels(*img.size)
    d = ImageDraw.Draw(img)
    for i in range(-1, width + 1):
        colour = (0, 0, 0) if i in (-1, width) else BOX_COLOUR
        d.rectangle([x1 + i, y1 + i, max(x1 + i, x2 - 1 - i), max(y1 + i, y2 - 1 - i)], outline=colour)


def contact_sheet(
    items: Sequence[RenderItem], out: str | Path, *, thumb: int = 256, columns: int = 4, title: str | None = None
) -> Path:
    """Write a grid of thumbnails with boxes drawn, each captioned with its first caption line and
    its file name; PNG, or JPEG for a ``.jpg``/``.jpeg`` name. Names (and a title naming a query
    file) are drawn as text: a byte that is not UTF-8 as its ``\\xNN`` escape."""
    out = check_target(out, tuple(SHEET_FORMATS))
    title = display_path(title) if title else title
    n = max(1, len(items))
    cols = min(columns, n)
    rows = math.ceil(n / cols)
    pad, text_h = 8, 34
    head = 28 if title else 0
    sheet = Image.new("RGB", (cols * (thumb + pad) + pad, head + rows * (thumb + text_h + pad) + pad), (250, 250, 250))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(FONT_SIZE)
    if title:
        draw.text((pad, 6), _fit(title, font, sheet.width - 2 * pad), fill=(0, 0, 0), font=font)
    if not items:
        draw.text((pad, head + pad), "no results", fill=(0, 0, 0), font=font)
    for i, item in enumerate(items):
        r, c = divmod(i, cols)
        x0 = pad + c * (thumb + pad)
        y0 = head + pad + r * (thumb + text_h + pad)
        im = _thumbnail(item.path, thumb)
        if item.box is not None:
            _draw_box(im, item.box)
        sheet.paste(im, (x0 + (thumb - im.width) // 2, y0 + (thumb - im.height) // 2))
        lines = [*item.caption.splitlines()[:1], display_path(Path(item.path).name)]
        for j, line in enumerate(lines):
            draw.text((x0, y0 + thumb + 2 + 15 * j), _fit(line, font, thumb), fill=(0, 0, 0), font=font)
    out.parent.mkdir(parents=True, exist_ok=True)
    fmt = SHEET_FORMATS[out.suffix.lower()]
    sheet.save(out, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return out


def html_page(
    items: Sequence[RenderItem], out: str | Path, *, title: str = "fgsearch results", thumb: int = 320
) -> Path:
    """Write one self-contained HTML file (inline images, CSS boxes, no external resources); paths
    as text (:func:`fgsearch.scan.display_path`)."""
    out = check_target(out, (".html", ".htm"))
    title = display_path(title)
    cards = []
    for item in items:
        im = _thumbnail(item.path, thumb)
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=85)
        data = base64.b64encode(buf.getvalue()).decode("ascii")
        box_html = ""
        if item.box is not None:
            b = item.box
            box_html = (
                f'<div class="box" style="left:{b.x1 * 100:.2f}%;top:{b.y1 * 100:.2f}%;'
                f'width:{(b.x2 - b.x1) * 100:.2f}%;height:{(b.y2 - b.y1) * 100:.2f}%"></div>'
            )
        cards.append(
            f'<figure><div class="pic"><img src="data:image/jpeg;base64,{data}" width="{im.width}" '
            f'height="{im.height}" alt="">{box_html}</div><figcaption>{html.escape(item.caption)}<br>'
            f"<code>{html.escape(display_path(item.path))}</code></figcaption></figure>"
        )
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>"
        + html.escape(title)
        + "</title><style>body{font-family:sans-serif;margin:16px;background:#fafafa}"
        "main{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0;background:#fff;padding:8px;"
        "box-shadow:0 1px 3px #0003;max-width:" + str(thumb) + "px}.pic{position:relative;display:inline-block}"
        ".pic img{display:block}.box{position:absolute;border:3px solid #ff00ff;outline:1px solid #000;"
        "box-sizing:border-box}h1{white-space:pre-wrap}"
        "figcaption{font-size:13px;white-space:pre-line;word-break:break-all}</style></head><body><h1>"
        + html.escape(title)
        + "</h1><main>"
        + ("".join(cards) if cards else "<p>no results</p>")
        + "</main></body></html>\n"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out
