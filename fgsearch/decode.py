"""Reading one image file safely: every way a file can be bad becomes a short reason.

:func:`open_image` is the one way fgsearch opens an image file by path (indexing, query images,
thumbnails): regular files only (a FIFO or a device never blocks or floods the reader), then
:func:`load_image`. :func:`read_small_file` reads other untrusted files (sidecars) the same way,
with a size cap. :func:`load_image` reads the bytes once (they are hashed by the caller and decoded here), checks
the pixel count against ``max_megapixels`` BEFORE decoding pixels (decompression bombs), fully
decodes (truncated data is an error, never silently padded), applies EXIF orientation and returns
an 8-bit RGB image. Animated images and multi-page TIFFs give their first frame.
"""

from __future__ import annotations

import functools
import io
import logging
import math
import os
import re
import stat
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, BinaryIO

from PIL import Image, UnidentifiedImageError

from fgsearch.errors import BusyError, FgsearchError, ImageError
from fgsearch.model.preprocess import to_rgb

logger = logging.getLogger(__name__)

_EXIF_IFD = 0x8769
_DATETIME_ORIGINAL = 0x9003
_DATETIME = 0x0132
_ORIENTATION = 0x0112
# Pillow renders EPS by running Ghostscript on the file: never do that for an untrusted folder
# (a PostScript file renamed to .jpg would otherwise reach it). IPTC/NAA files wrap an image that
# Pillow opens with EVERY format, past any allow-list: PostScript inside one reached Ghostscript.
_REFUSED_FORMATS = frozenset({"EPS", "IPTC"})


def decodable_formats() -> list[str]:
    """Every format Pillow can open (plugins registered later included), minus the refused ones."""
    Image.init()
    return [f for f in Image.OPEN if f not in _REFUSED_FORMATS]


@dataclass
class LoadedImage:
    """A decoded image as displayed (EXIF-oriented RGB), with its displayed size and capture time."""

    image: Image.Image
    width: int
    height: int
    captured_at: datetime | None
    warnings: list[str] = field(default_factory=list)  # what Pillow warned about while decoding


class UnsafeFileError(FgsearchError):
    """A file to read is not a regular file (a FIFO, a device, a socket, a folder), or is bigger
    than its reader accepts."""


def open_regular(path: str | os.PathLike[str]) -> BinaryIO:
    """Open ``path`` for reading if it is a regular file (symbolic links followed).

    The check is made on the opened descriptor (no race with a file swapped in between), and the
    open itself does not block: opening a FIFO for reading would otherwise wait for a writer."""
    nonblock = getattr(os, "O_NONBLOCK", 0)  # POSIX; Windows has no FIFOs to block on
    fd = os.open(path, os.O_RDONLY | nonblock | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = "a folder" if stat.S_ISDIR(st.st_mode) else "a pipe, device or socket"
            raise UnsafeFileError(f"{os.fspath(path)} is {kind}, not a regular file; give an image file")
        if nonblock:
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_small_file(path: str | os.PathLike[str], limit: int) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes (a sidecar): :class:`UnsafeFileError`
    for a FIFO, a device or a bigger file (``/dev/zero`` would otherwise be read until memory
    runs out)."""
    with open_regular(path) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise UnsafeFileError(f"{os.fspath(path)} is bigger than {limit:,} bytes")
    return data


def open_image(
    path: str | os.PathLike[str],
    *,
    max_megapixels: float = 100.0,
    min_side: int = 1,
    draft: tuple[int, int] | None = None,
    limit_flag: str | None = "--max-megapixels",
) -> LoadedImage:
    """Decode the image file at ``path`` through every guard of :func:`load_image` (format
    allow-list: never Ghostscript; pixel limit before decoding) after :func:`open_regular`.
    Raises :class:`ImageError` with a short reason (the caller names the file)."""
    try:
        with open_regular(path) as f:
            return load_image(f, max_megapixels=max_megapixels, min_side=min_side, draft=draft, limit_flag=limit_flag)
    except UnsafeFileError as e:
        raise ImageError("not a regular file (a pipe, device, socket or folder); give an image file") from e
    except FileNotFoundError as e:
        raise ImageError("file does not exist") from e
    except PermissionError as e:
        raise ImageError("permission denied; make the file readable (chmod +r)") from e
    except OSError as e:  # load_image turns decoder errors into ImageError: this is the open itself
        raise ImageError(f"cannot read: {e.strerror or e}") from e


def _captured_at(img: Image.Image) -> datetime | None:
    try:
        exif = img.getexif()
        raw = exif.get_ifd(_EXIF_IFD).get(_DATETIME_ORIGINAL) or exif.get(_DATETIME)
        if not raw:
            return None
        text = raw.decode(errors="ignore") if isinstance(raw, bytes) else str(raw)
        return datetime.strptime(text.strip("\x00 ")[:19], "%Y:%m:%d %H:%M:%S")
    except Exception:  # EXIF is often broken; a bad date never fails the image
        return None


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(_ORIENTATION, 1))
    except Exception:  # broken EXIF: treat as upright, like to_rgb does
        return 1


def _let_pillow_open(max_pixels: int) -> None:
    """Make ``max_megapixels`` the limit that counts.

    Pillow refuses, while merely opening a file, images over its own global ``MAX_IMAGE_PIXELS``
    (about 89 MP: a warning, made an error below; twice that: an error), so without this a
    95 MP photo fails under the default 100 MP limit and ``--max-megapixels 300`` cannot admit a
    200 MP scan. Our own check runs right after ``open`` and before any pixel is decoded, so we
    raise Pillow's global to our limit (never lower it: other code in the process keeps its limit).
    """
    current = Image.MAX_IMAGE_PIXELS
    if current is not None and current < max_pixels:
        Image.MAX_IMAGE_PIXELS = max_pixels


def load_image(
    data: bytes | BinaryIO,
    *,
    max_megapixels: float = 100.0,
    min_side: int = 16,
    draft: tuple[int, int] | None = None,
    reserve: Callable[[int], None] | None = None,
    limit_flag: str | None = "--max-megapixels",
) -> LoadedImage:
    """Decode image bytes (or a binary file open at its start) or raise :class:`ImageError` with a
    short, actionable reason.

    ``draft`` (height, width): let JPEG decode at a reduced scale no smaller than twice this size
    (much faster for big photos; pixels then differ slightly from a full decode + resize).
    ``reserve(pixels)`` is called with the number of pixels about to be decoded, after the header
    is read and before any pixel is (a :class:`PixelBudget` waits there until memory is free).
    Warnings Pillow raises while decoding are kept in :attr:`LoadedImage.warnings`, or quoted in
    the error's reason, when :func:`routed_warnings` is in force. ``limit_flag``: the option a
    refused bomb's reason tells the user to raise (None: a caller whose user has no such option).
    """
    fp = _as_file(data)
    _let_pillow_open(int(max_megapixels * 1e6))
    too_big = f"over the {max_megapixels:g} megapixel limit (possible decompression bomb)"
    if limit_flag is not None:
        too_big += f"; raise it with {limit_flag}"
    heard: list[str] = []
    _sink.heard = heard
    try:
        img, rgb, captured, (w, h) = _decode(fp, max_megapixels, too_big, draft, reserve)
    except _DECODE_ERRORS as e:
        raise _decode_error(e, heard, too_big) from e
    finally:
        _sink.heard = None
    width, height = rgb.size
    if img.size != (w, h):  # JPEG draft decoded at a reduced scale: report the file's real size
        turned = rgb.size != img.size or (img.size[0] == img.size[1] and _orientation(img) in (5, 6, 7, 8))
        width, height = (h, w) if turned else (w, h)
    if min(width, height) < min_side:
        raise ImageError(f"image is too small ({width}x{height} px; minimum {min_side} px, see --min-side)")
    return LoadedImage(image=rgb, width=width, height=height, captured_at=captured, warnings=heard)


def _as_file(data: bytes | BinaryIO) -> BinaryIO:
    """A binary file over ``data``; empty bytes are an ImageError."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        if not data:
            raise ImageError("file is empty (zero bytes)")
        return io.BytesIO(data)
    return data


def _decode(
    fp: BinaryIO,
    max_megapixels: float,
    too_big: str,
    draft: tuple[int, int] | None,
    reserve: Callable[[int], None] | None,
) -> tuple[Image.Image, Image.Image, datetime | None, tuple[int, int]]:
    """Open (a format we decode), refuse a bomb from its header, reserve, decode: the image as
    decoded, its RGB, its capture time and the file's own size (before any draft scaling)."""
    img = Image.open(fp, formats=decodable_formats())
    w, h = img.size
    if w * h > max_megapixels * 1e6:
        raise ImageError(f"image is {w}x{h} ({w * h / 1e6:.0f} megapixels), {too_big}")
    if draft is not None and img.format == "JPEG":
        img.draft("RGB", (draft[1] * 2, draft[0] * 2))
    if reserve is not None:
        reserve(img.size[0] * img.size[1])
    img.load()
    return img, to_rgb(img), _captured_at(img), (w, h)


# what a broken file makes Pillow raise while opening or decoding it
_DECODE_ERRORS = (
    ImageError,
    Image.DecompressionBombError,
    OSError,  # UnidentifiedImageError included
    ValueError,
    SyntaxError,
    EOFError,
    IndexError,
    TypeError,
    MemoryError,
)


def _decode_error(e: BaseException, heard: list[str], too_big: str) -> ImageError:
    """The one-line ImageError for what decoding raised, quoting Pillow's warnings where it gave any."""
    if isinstance(e, ImageError):
        return ImageError(_with_warnings(str(e), heard))
    if isinstance(e, Image.DecompressionBombError):  # over twice Pillow's limit, found while opening
        pixels = re.search(r"\((\d+) pixels\)", str(e))  # Pillow's "Image size (N pixels) exceeds ..."
        size = f"too large ({int(pixels[1]) / 1e6:.0f} megapixels), " if pixels else ""
        return ImageError(f"image is {size}{too_big}")
    if isinstance(e, UnidentifiedImageError):
        return ImageError(_with_warnings("not an image Pillow can read (unknown format or corrupt header)", heard))
    if isinstance(e, OSError):
        msg = str(e)
        kind = "truncated" if "truncated" in msg.lower() else "corrupt"
        return ImageError(_with_warnings(f"{kind} image data ({msg})", heard))
    return ImageError(_with_warnings(f"corrupt image data ({type(e).__name__}: {e})", heard))


def _with_warnings(reason: str, heard: list[str]) -> str:
    return f"{reason}; Pillow warned: {' / '.join(list(dict.fromkeys(heard))[:2])}" if heard else reason


# ---- warnings of decode workers ------------------------------------------------------------------
_sink = threading.local()  # .heard: the list collecting the warnings of the image this thread decodes


def _route_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None, line: Any = None
) -> None:
    heard = getattr(_sink, "heard", None)
    text = f"{category.__name__}: {message}"
    if heard is not None:
        heard.append(text)
    else:
        logger.info("%s (%s:%d)", text, filename, lineno)


@contextmanager
def routed_warnings() -> Iterator[None]:
    """While in force (enter it in the main thread around a pool of decode workers), every
    warning goes to the image its thread is decoding (its reason if it fails, else the log),
    never to the terminal, where it would break a progress bar. Python's warning state is
    process-wide: this is entered once, never per image (that would race between threads)."""
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # every file hears its own warnings, not just the first one
        warnings.showwarning = _route_warning
        yield


TRIM_PIXELS = 16_000_000  # after a decode this big, free memory is handed back to the system


def _trim_malloc() -> None:
    """Hand free heap memory back to the system (glibc only; elsewhere nothing to do).

    glibc gives each thread its own heap ("arena") and keeps what a thread freed for that thread:
    three workers that decode one 100 MP image each, one after the other, would otherwise keep
    three images' worth of memory between them, as if they had decoded together."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Any:
    import ctypes

    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl)
        return None


class PixelBudget:
    """Pixels that decode workers may hold decoded at once. A big image waits until enough of the
    budget is free, so several huge images never decode together (peak memory stays near one
    huge image's) while ordinary photos still decode in parallel. An image bigger than the whole
    budget waits for all of it, then runs alone. After a big image the freed memory is returned
    to the system (:func:`_trim_malloc`), so the next one does not add to it.

    The indexer's workers wait as long as it takes (``hold()``); a server cannot keep a client
    waiting for ever, so it holds with ``wait`` seconds, past which :class:`BusyError` is raised
    (the server answers 503 with ``Retry-After``)."""

    def __init__(self, pixels: int) -> None:
        self.total = max(1, int(pixels))
        self.free = self.total
        self._cv = threading.Condition()

    @contextmanager
    def hold(self, wait: float | None = None) -> Iterator[Callable[[int], None]]:
        """``with budget.hold() as reserve:``; ``reserve(n)`` waits for ``n`` pixels, which are
        given back when the block ends (after the decoded image is dropped). With ``wait``
        (seconds), a reservation not granted in that time raises :class:`BusyError` instead."""
        taken = 0

        def reserve(n: int) -> None:
            nonlocal taken
            n = min(max(0, n), self.total)
            with self._cv:
                if not self._cv.wait_for(lambda: self.free >= n, timeout=wait):
                    raise BusyError(
                        f"{n / 1e6:.3g} megapixels to decode did not fit in {wait:g} s: the budget of "
                        f"{self.total / 1e6:.3g} megapixels is held by other images",
                        retry_after=max(1, math.ceil(wait or 0)),
                    )
                self.free -= n
            taken += n

        try:
            yield reserve
        finally:
            if taken >= TRIM_PIXELS:
                _trim_malloc()
            if taken:
                with self._cv:
                    self.free += taken
                    self._cv.notify_all()
