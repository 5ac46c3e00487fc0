"""fgsearch.decode.load_image: every bad file is a short ImageError; good files in every mode decode."""

from __future__ import annotations

import io
import random
import struct
import zlib

import pytest
from _library_data import png_bomb_header, scene
from PIL import Image

from fgsearch.decode import load_image
from fgsearch.errors import ImageError


def _bytes(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _gray_png_header(width: int, height: int) -> bytes:
    """A PNG whose 8-bit grey header claims width x height, with (almost) no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00")) + chunk(b"IEND", b"")


# ---- bad files -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (
            b"\xff\xd8\xff" + bytes(random.Random(1).randrange(256) for _ in range(3000)),
            r"corrupt|truncated|not an image",
        ),
        (bytes(random.Random(2).randrange(256) for _ in range(3000)), "not an image"),
        (b"GIF89a", r"not an image|corrupt|truncated"),
    ],
    ids=["zero-bytes", "jpeg-magic-then-noise", "random-bytes", "gif-magic-only"],
)
def test_bad_bytes_are_image_errors(data: bytes, reason: str) -> None:
    with pytest.raises(ImageError, match=reason):
        load_image(data)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "TIFF", "BMP"])
def test_truncated_files_fail_whatever_the_format(fmt: str) -> None:
    data = _bytes(scene(1), fmt)
    assert load_image(data).width == 160  # the intact file decodes
    with pytest.raises(ImageError):
        load_image(data[: len(data) * 2 // 3])


def test_decompression_bomb_is_refused_before_decoding_and_names_the_flag() -> None:
    # 2,500 MP: over twice Pillow's limit, so Pillow itself refuses it while opening; the reason
    # still quotes our limit and flag, never Pillow's internal one (issue 12.6)
    with pytest.raises(ImageError) as bomb:
        load_image(png_bomb_header(50000, 50000))
    assert str(bomb.value) == (
        "image is too large (2500 megapixels), over the 100 megapixel limit (possible decompression bomb); "
        "raise it with --max-megapixels"
    )
    with pytest.raises(ImageError, match=r"1000x2000 \(2 megapixels\), over the 1.5 megapixel limit.*--max-megapix"):
        load_image(_gray_png_header(1000, 2000), max_megapixels=1.5)


def test_max_megapixels_is_the_limit_that_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pillow's own global limit (89 MP by default) must not override a higher --max-megapixels."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5_000)  # stands for Pillow's 89 MP default, scaled down
    data = _bytes(scene(2), "PNG")  # 19,200 px: over Pillow's (scaled) limit, under ours
    out = load_image(data, max_megapixels=0.05)
    assert (out.width, out.height) == (160, 120)
    with pytest.raises(ImageError, match="--max-megapixels"):
        load_image(data, max_megapixels=0.01)
    assert Image.MAX_IMAGE_PIXELS >= 50_000  # raised to ours, never lowered below it


def test_too_small_names_size_and_flag() -> None:
    with pytest.raises(ImageError, match=r"too small \(4x4 px; minimum 16 px"):
        load_image(_bytes(Image.new("RGB", (4, 4)), "PNG"))
    with pytest.raises(ImageError, match=r"too small \(160x10 px; minimum 16 px"):
        load_image(_bytes(Image.new("RGB", (160, 10)), "PNG"))
    assert load_image(_bytes(Image.new("RGB", (4, 4)), "PNG"), min_side=4).width == 4


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_random_corruption_never_escapes_as_another_exception() -> None:
    """Flipped, spliced and cut bytes in every format: the result is an image or an ImageError."""
    rng = random.Random(0)
    cases = [
        ("JPEG", {}),
        ("JPEG", {"progressive": True}),
        ("PNG", {}),
        ("GIF", {}),
        ("WEBP", {}),
        ("BMP", {}),
        ("TIFF", {"compression": "tiff_deflate"}),
        ("TIFF", {"compression": "tiff_lzw"}),
    ]
    outcomes = {"ok": 0, "error": 0}
    for fmt, kw in cases:
        data = _bytes(scene(3, (64, 48)), fmt, **kw)
        for _ in range(60):
            d = bytearray(data)
            kind = rng.choice(["flip", "cut", "splice"])
            if kind == "flip":
                for _ in range(rng.randint(1, 8)):
                    d[rng.randrange(len(d))] = rng.randrange(256)
            elif kind == "cut":
                d = d[: rng.randrange(len(d))]
            else:
                p = rng.randrange(len(d))
                d[p : p + rng.randint(1, 40)] = bytes(rng.randrange(256) for _ in range(rng.randint(0, 40)))
            try:
                out = load_image(bytes(d), min_side=1)
            except ImageError as e:
                assert str(e) and "\n" not in str(e)
                outcomes["error"] += 1
            else:
                assert out.image.mode == "RGB" and out.image.size == (out.width, out.height)
                outcomes["ok"] += 1
    assert outcomes["error"] > 100  # the corruption really hits


# ---- good files --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [
        ("RGB", "JPEG"),
        ("L", "JPEG"),
        ("CMYK", "JPEG"),
        ("RGBA", "PNG"),
        ("LA", "PNG"),
        ("P", "PNG"),
        ("I;16", "PNG"),
        ("1", "BMP"),
        ("RGB", "WEBP"),
        ("RGBA", "WEBP"),
        ("CMYK", "TIFF"),
        ("I;16", "TIFF"),
        ("F", "TIFF"),
    ],
)
def test_modes_and_formats_decode_to_rgb(mode: str, fmt: str) -> None:
    base = scene(4)
    src = base.convert("L").convert(mode) if mode in ("I;16", "F") else base.convert(mode)
    out = load_image(_bytes(src, fmt))
    assert out.image.mode == "RGB" and (out.width, out.height) == (160, 120) == out.image.size
    lo, hi = out.image.getextrema()[1]
    assert lo < hi  # the shapes survive: not a blank conversion


def test_palette_with_transparency() -> None:
    img = scene(5).convert("P")
    out = load_image(_bytes(img, "PNG", transparency=0))
    assert out.image.mode == "RGB" and out.width == 160


def test_animated_gif_and_webp_and_multipage_tiff_give_the_first_frame() -> None:
    frames = [Image.new("RGB", (40, 30), c) for c in ((200, 0, 0), (0, 200, 0), (0, 0, 200))]
    for fmt in ("GIF", "WEBP", "TIFF"):
        data = _bytes(frames[0], fmt, save_all=True, append_images=frames[1:], lossless=True)
        with Image.open(io.BytesIO(data)) as check:
            assert getattr(check, "n_frames", 1) == 3, fmt
        out = load_image(data)
        r, g, b = out.image.getpixel((20, 15))
        assert r > 150 and g < 60 and b < 60, (fmt, (r, g, b))


def _exif(orientation: int | None = None, original: object = None, plain: object = None) -> bytes:
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    if original is not None:
        exif.get_ifd(0x8769)[0x9003] = original
    if plain is not None:
        exif[0x0132] = plain
    return exif.tobytes()


def test_exif_orientation_and_capture_time() -> None:
    out = load_image(_bytes(scene(6), "JPEG", exif=_exif(6, "2019:12:31 23:59:58")))
    assert (out.width, out.height) == (120, 160) == out.image.size
    assert out.captured_at is not None and out.captured_at.isoformat() == "2019-12-31T23:59:58"
    fallback = load_image(_bytes(scene(6), "JPEG", exif=_exif(plain="2001:02:03 04:05:06")))
    assert fallback.captured_at is not None and fallback.captured_at.year == 2001
    assert load_image(_bytes(scene(6), "JPEG")).captured_at is None


@pytest.mark.parametrize("bad", ["0000:00:00 00:00:00", "garbage", "2020-01-02", "    ", "2020:13:45 99:00:00"])
def test_bad_exif_dates_never_fail_the_image(bad: str) -> None:
    out = load_image(_bytes(scene(7), "JPEG", exif=_exif(original=bad)))
    assert out.captured_at is None and out.width == 160


def test_broken_exif_orientation_keeps_the_picture() -> None:
    out = load_image(_bytes(scene(8), "JPEG", exif=_exif(orientation=99)))
    assert (out.width, out.height) == (160, 120)


def test_draft_decodes_smaller_but_reports_the_real_size() -> None:
    big = scene(9, (1600, 1200))
    full = load_image(_bytes(big, "JPEG"))
    fast = load_image(_bytes(big, "JPEG"), draft=(224, 224))
    assert (full.width, full.height) == (fast.width, fast.height) == (1600, 1200)
    assert fast.image.size[0] < 1600 and min(fast.image.size) >= 2 * 224  # decoded at a reduced scale
    turned = load_image(_bytes(big, "JPEG", exif=_exif(6)), draft=(224, 224))
    assert (turned.width, turned.height) == (1200, 1600)
    assert turned.image.size[1] > turned.image.size[0]  # the picture itself is turned too
    square = load_image(_bytes(scene(9, (1600, 1600)), "JPEG", exif=_exif(8)), draft=(224, 224))
    assert (square.width, square.height) == (1600, 1600)
    png = load_image(_bytes(big, "PNG"), draft=(224, 224))  # draft only applies to JPEG
    assert png.image.size == (1600, 1200)


def test_postscript_wrapped_in_an_iptc_file_is_refused_without_running_ghostscript(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from PIL import EpsImagePlugin

    calls: list[object] = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *a, **k: calls.append(a))

    def field(record: int, dataset: int, data: bytes) -> bytes:
        return bytes([0x1C, record, dataset]) + struct.pack(">H", len(data)) + data

    eps = _bytes(scene(10), "EPS")
    iim = field(3, 60, b"\x01\x00") + field(3, 20, struct.pack(">H", 160)) + field(3, 30, struct.pack(">H", 120))
    iim += field(3, 120, b"\x05")  # "JPEG" compression: Pillow opens the payload with every format
    iim += b"".join(field(8, 10, eps[i : i + 30000]) for i in range(0, len(eps), 30000))
    with pytest.raises(ImageError, match="not an image"):
        load_image(iim)
    assert calls == []
    from fgsearch.scan import readable_extensions

    assert ".iim" not in readable_extensions()


def test_postscript_is_refused_without_running_ghostscript(monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import EpsImagePlugin

    calls: list[object] = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *a, **k: calls.append(a))
    eps = _bytes(scene(10), "EPS")
    with pytest.raises(ImageError, match="not an image"):
        load_image(eps)
    assert calls == []


# ---- every walked extension -----------------------------------------------------------------------
# Files of every format the walker picks up (issue 11.10: every PSD was "corrupt"). Pillow writes
# most; the rest are built here from their specifications, in the simplest valid layout. A format
# a new Pillow adds fails the test until it has a sample.

W, H = 64, 48


def _rgb(img: Image.Image) -> bytes:
    return img.convert("RGB").tobytes()


def _psd(img: Image.Image) -> bytes:
    """Photoshop: header, empty colour-mode/resources/layers sections, raw planar composite."""
    rgb = img.convert("RGB")
    head = b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, H, W, 8, 3) + struct.pack(">IIIH", 0, 0, 0, 0)
    return head + b"".join(band.tobytes() for band in rgb.split())


def _sun(img: Image.Image) -> bytes:
    """Sun raster, 24-bit standard type (BGR rows, even stride)."""
    bgr = Image.merge("RGB", img.convert("RGB").split()[::-1]).tobytes()
    return struct.pack(">8I", 0x59A66A95, W, H, 24, len(bgr), 1, 0, 0) + bgr


def _xpm(img: Image.Image) -> bytes:
    """X pixmap with a 2-character-per-pixel palette."""
    pal = img.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    colours = [*(pal.getpalette() or []), *[0] * 48][:48]
    keys = [f"{chr(97 + i)}{chr(97 + i)}" for i in range(16)]
    lines = [f'"{W} {H} 16 2",']
    lines += [f'"{keys[i]} c #{bytes(colours[3 * i : 3 * i + 3]).hex()}",' for i in range(16)]
    px = pal.tobytes()
    lines += ['"' + "".join(keys[px[y * W + x]] for x in range(W)) + '",' for y in range(H)]
    return ("/* XPM */\nstatic char *img[] = {\n" + "\n".join(lines) + "\n};\n").encode()


def _fits(img: Image.Image) -> bytes:
    """FITS: 2880-byte header of 80-character cards, then 8-bit data, bottom row first."""
    cards = ["SIMPLE  =                    T", "BITPIX  =                    8", "NAXIS   =                    2"]
    cards += [f"NAXIS1  = {W:>20}", f"NAXIS2  = {H:>20}", "END"]
    header = "".join(c.ljust(80) for c in cards).ljust(2880).encode()
    data = img.convert("L").transpose(Image.Transpose.FLIP_TOP_BOTTOM).tobytes()
    return header + data + b"\0" * (-len(data) % 2880)


def _dcx(img: Image.Image) -> bytes:
    """DCX: a page table around one PCX page."""
    return struct.pack("<III", 0x3ADE68B1, 12, 0) + _bytes(img.convert("RGB"), "PCX")


def _cur(img: Image.Image) -> bytes:
    """Windows cursor: an ICO with a 32-bit BMP entry and resource type 2."""
    ico = bytearray(_bytes(img.convert("RGBA"), "ICO", sizes=[(W, H)], bitmap_format="bmp"))
    ico[2] = 2
    return bytes(ico)


def _gbr(img: Image.Image) -> bytes:
    """GIMP brush, version 2, 8-bit grey."""
    name = b"brush\0"
    return (
        struct.pack(">5I", 28 + len(name), 2, W, H, 1)
        + b"GIMP"
        + struct.pack(">I", 10)
        + name
        + img.convert("L").tobytes()
    )


def _ftex(img: Image.Image) -> bytes:
    """Funcom texture, one uncompressed RGB mipmap."""
    data = _rgb(img)
    return b"FTEX" + struct.pack("<7i", 0, W, H, 1, 1, 1, 32) + struct.pack("<i", len(data)) + data


def _pixar(img: Image.Image) -> bytes:
    """Pixar PXR: 1024-byte header (size and RGB layout at fixed offsets), raw RGB."""
    head = bytearray(1024)
    head[:4] = b"\x80\xe8\x00\x00"
    struct.pack_into("<HH", head, 416, H, W)
    struct.pack_into("<HH", head, 424, 14, 2)
    return bytes(head) + _rgb(img)


def _fli(img: Image.Image) -> bytes:
    """Autodesk FLI animation, one frame: a 256-colour palette chunk and a raw copy chunk."""
    pal = img.convert("P", palette=Image.Palette.ADAPTIVE, colors=256)
    colours = struct.pack("<H", 1) + b"\x00\x00" + bytes([*(pal.getpalette() or []), *[0] * 768][:768])
    chunks = struct.pack("<IH", 6 + len(colours), 4) + colours
    chunks += struct.pack("<IH", 6 + W * H, 16) + pal.tobytes()
    frame = struct.pack("<IHH8x", 16 + len(chunks), 0xF1FA, 2) + chunks
    head = bytearray(128)
    struct.pack_into("<IHHHHHHI", head, 0, 128 + len(frame), 0xAF11, 1, W, H, 8, 0, 5)
    return bytes(head) + frame


def _pcd(img: Image.Image) -> bytes:
    """Kodak PhotoCD: the image pack header at 2048, 768x512 YCC data at 96 sectors (random)."""
    head = bytearray(96 * 2048)
    head[2048 : 2048 + 7] = b"PCD_IPI"
    rng = random.Random(img.size[0])
    return bytes(head) + rng.randbytes(768 * 512 * 3 // 2)


BUILT = {"PSD": _psd, "SUN": _sun, "XPM": _xpm, "FITS": _fits, "DCX": _dcx, "CUR": _cur, "GBR": _gbr}
BUILT |= {"FTEX": _ftex, "PIXAR": _pixar, "FLI": _fli, "PCD": _pcd}
OWN_SIZE = ("ICNS", "ICO", "PCD")  # icon writers resample to their sizes; PhotoCD is always 768x512


def _walked() -> list[tuple[str, str]]:
    from fgsearch.scan import readable_extensions

    Image.init()
    reg = Image.registered_extensions()
    return [(ext, reg.get(ext, "?")) for ext in sorted(readable_extensions())]


def _sample(fmt: str) -> bytes:
    img = scene(4, (W, H))
    if fmt in BUILT:
        return BUILT[fmt](img)
    for mode in ("RGB", "P", "L", "1"):  # the first mode the writer takes
        try:
            return _bytes(img.convert(mode), fmt)
        except (OSError, ValueError, KeyError):
            continue
    raise AssertionError(f"Pillow cannot write {fmt} in any common mode")


@pytest.mark.filterwarnings("ignore:IM image format is deprecated:DeprecationWarning")
@pytest.mark.parametrize(("ext", "fmt"), _walked())
def test_every_walked_extension_decodes_a_real_file_of_its_format(ext: str, fmt: str) -> None:
    assert fmt in Image.SAVE or fmt in BUILT, f"{ext} ({fmt}) is walked: add a sample file for it"
    data = _sample(fmt)
    with Image.open(io.BytesIO(data)) as check:
        assert check.format == fmt  # the sample really is that format
    out = load_image(data, min_side=8)
    assert out.image.mode == "RGB" and out.image.size == (out.width, out.height)
    if fmt not in OWN_SIZE:
        assert (out.width, out.height) == (W, H)
    lo, hi = out.image.convert("L").getextrema()
    assert lo < hi  # pixels, not a blank conversion


def test_photoshop_composite_keeps_its_pixels() -> None:
    img = scene(6, (W, H))
    assert load_image(_psd(img), min_side=8).image.tobytes() == img.tobytes()


@pytest.mark.parametrize("pillow_limit", [Image.MAX_IMAGE_PIXELS, 89_478_485, 500_000_000])
def test_a_bomb_is_refused_with_its_size(pillow_limit: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pillow_limit)
    with pytest.raises(ImageError, match=r"\(400 megapixels\), over the 50 megapixel limit"):
        load_image(png_bomb_header(20000, 20000), max_megapixels=50)


def test_a_pixel_budget_held_elsewhere_waits_then_says_busy() -> None:
    """A server's hold(wait=...): a share that stays taken past the wait is a BusyError naming the
    budget (the server's 503 + Retry-After); one freed in time is granted; every pixel comes back."""
    import threading
    import time

    from fgsearch.decode import PixelBudget
    from fgsearch.errors import BusyError

    budget = PixelBudget(100)
    with budget.hold() as held:
        held(80)
        with budget.hold(wait=0.2) as reserve:
            reserve(20)  # what is free is granted at once
        t0 = time.monotonic()
        refused = budget.hold(wait=0.2)
        with pytest.raises(BusyError, match=r"budget of 0\.0001 megapixels is held") as busy, refused as reserve:
            reserve(50)
        assert 0.15 < time.monotonic() - t0 < 5 and busy.value.retry_after == 1
        assert budget.free == 20  # the refused request took nothing
        granted: list[float] = []

        def waiter() -> None:
            with budget.hold(wait=10) as reserve:
                reserve(500)  # bigger than the budget: waits for all of it
                granted.append(time.monotonic())

        t = threading.Thread(target=waiter)
        t.start()
        time.sleep(0.2)
        released = time.monotonic()
    t.join(10)
    assert granted and granted[0] >= released
    assert budget.free == budget.total
